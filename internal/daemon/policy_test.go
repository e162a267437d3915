package daemon

import "testing"

func TestProcessClassHelpers(t *testing.T) {
	for _, c := range []struct {
		path string
		want bool
	}{
		{"/airlock-e2e/airlock.tree/123-1", true},
		{"/user.slice/airlock.tree", true},
		{"/airlock.tree/5-2/sub", true},
		{"/user.slice/airlock.treehouse/1", false},
		{"/user.slice/not-airlock.tree/1", false},
		{"", false},
	} {
		if got := inTreeCgroup(c.path); got != c.want {
			t.Errorf("inTreeCgroup(%q) = %v", c.path, got)
		}
	}
	list := []string{"cursor", "/opt/agents/claude"}
	for _, c := range []struct {
		exe  string
		want bool
	}{
		{"/usr/share/cursor/cursor", true},
		{"/usr/share/cursor/cursor (deleted)", true},
		{"/opt/agents/claude", true},
		{"/usr/bin/claude", false},
		{"/usr/bin/cursor-helper", false},
		{"", false},
	} {
		if got := isAgentExe(list, c.exe); got != c.want {
			t.Errorf("isAgentExe(%q) = %v", c.exe, got)
		}
	}
}
