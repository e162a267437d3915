package policy

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/sqlclass"
)

type decisionCase struct {
	line                    int
	who, conn, action, rule string
	sql                     string
}

func loadDecisionCases(t *testing.T) []decisionCase {
	t.Helper()
	f, err := os.Open("testdata/decisions.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []decisionCase
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		parts := strings.SplitN(line, "|", 5)
		if len(parts) < 5 || len(parts[0]) != 1 {
			// A statement spanning lines.
			if len(out) == 0 {
				t.Fatalf("decisions.txt:%d: continuation without a case", n)
			}
			out[len(out)-1].sql += "\n" + line
			continue
		}
		out = append(out, decisionCase{line: n, who: parts[0], conn: parts[1], action: parts[2], rule: parts[3], sql: parts[4]})
	}
	return out
}

func (c decisionCase) whoFor() Who {
	w := Who{Connection: "dev", Class: ClassPerson}
	if c.conn != "" {
		w.Connection = c.conn
	}
	switch c.who {
	case "a":
		w.Class = ClassAgent
	case "d":
		w.Groups = []string{"staff", "dba"}
	}
	return w
}

// TestDecisionCorpus checks every statement of testdata/decisions.txt, as
// written and reworded three ways a hostile client might: behind a
// comment, after a harmless statement, inside a transaction block.
func TestDecisionCorpus(t *testing.T) {
	pol, err := Load("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl := sqlclass.New(sqlclass.Options{})
	cases := loadDecisionCases(t)
	if len(cases) < 200 {
		t.Fatalf("the corpus has %d statements, want at least 200", len(cases))
	}
	variants := []struct {
		name string
		fn   func(string) string
	}{
		{"as written", func(s string) string { return s }},
		{"behind a comment", func(s string) string { return "/* harmless */ " + s }},
		{"after a harmless statement", func(s string) string { return "SELECT 1; " + s }},
		{"inside a transaction", func(s string) string { return "BEGIN; " + s + "; COMMIT" }},
	}
	checked := 0
	for _, c := range cases {
		for _, v := range variants {
			sql := v.fn(c.sql)
			res, err := cl.Classify(sql)
			d := pol.Decide(res, err, c.whoFor())
			checked++
			if d.Action.String() != c.action || d.Rule != c.rule {
				t.Errorf("decisions.txt:%d (%s, %s): %q: got %s by %q (%s), want %s by %q",
					c.line, c.who, v.name, sql, d.Action, d.Rule, d.Reason, c.action, c.rule)
			}
		}
	}
	t.Logf("%d statements, %d decisions checked", len(cases), checked)
}
