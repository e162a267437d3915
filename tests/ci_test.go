package tests

import (
	"os"
	"strings"
	"testing"
)

// CI must not fail at random: timed fuzzing (whose outcome depends on the
// machine's load) stays out of .ci/run, while `make test` still runs every
// fuzz target's seed corpus (go test runs them unless -run excludes them).
func TestCIRunsNoTimedFuzzing(t *testing.T) {
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(ci), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.Contains(line, "make fuzz") || strings.Contains(line, "-fuzz") || strings.Contains(line, "fuzz.sh") {
			t.Errorf(".ci/run:%d runs timed fuzzing, which can fail at random: %q", i+1, line)
		}
	}
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	recipe := makeRecipe(string(mk), "test")
	if !strings.Contains(recipe, "go test") && !strings.Contains(recipe, "$(GO) test") {
		t.Fatalf("make test does not run go test:\n%s", recipe)
	}
	if strings.Contains(recipe, "-run") || strings.Contains(recipe, "-short") {
		t.Fatalf("make test narrows the tests it runs, so seed corpora may not run:\n%s", recipe)
	}
}

// makeRecipe returns the recipe lines of target in a Makefile.
func makeRecipe(mk, target string) string {
	var out []string
	in := false
	for _, line := range strings.Split(mk, "\n") {
		switch {
		case strings.HasPrefix(line, target+":"):
			in = true
		case in && strings.HasPrefix(line, "\t"):
			out = append(out, line)
		case in:
			return strings.Join(out, "\n")
		}
	}
	return strings.Join(out, "\n")
}
