package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/sqlclass"
)

func TestParseErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown top key", "rules: []\nrulez: []\n", "p.yaml:2: rulez: unknown key"},
		{"unknown rule key", "rules:\n  - name: a\n    action: deny\n    tabels: [x]\n", "p.yaml:4: rules[0].tabels: unknown key"},
		{"bad action", "rules:\n  - name: a\n    action: block\n", `p.yaml:2: rules[0]: action: "block"`},
		{"missing name", "rules:\n  - action: deny\n", "p.yaml:2: rules[0]: name: every rule needs a name"},
		{"bad kind", "rules:\n  - name: a\n    action: deny\n    kinds: [dml]\n", `kinds: "dml": unknown kind`},
		{"bad flag", "rules:\n  - name: a\n    action: deny\n    flags: [nowhere]\n", `flags: "nowhere": unknown flag`},
		{"bad regex", "rules:\n  - name: a\n    action: deny\n    regex: '('\n", "regex:"},
		{"bad pattern", "rules:\n  - name: a\n    action: deny\n    tables: ['[']\n", "not a valid pattern"},
		{"timeout on deny", "rules:\n  - name: a\n    action: deny\n    timeout: 1m\n", "only hold rules wait"},
		{"bad timeout", "rules:\n  - name: a\n    action: hold\n    timeout: soon\n", `"soon" is not a positive duration`},
		{"duplicate", "rules:\n  - name: a\n    action: deny\n  - name: a\n    action: deny\n", `p.yaml:4: rules[1].name: rule "a" is defined twice`},
		{"builtin name", "rules:\n  - name: role_changes\n    action: allow\n", "built-in rule's name"},
		{"bad class", "rules:\n  - name: a\n    action: deny\n    class: robot\n", `class: "robot"`},
		{"bad unparseable", "unparseable: maybe\n", `unparseable: "maybe": write deny or allow`},
		{"bad fast path class", "fast_path: {robot: deny}\n", "fast_path.robot: unknown process class"},
		{"not a mapping", "- a\n", "p.yaml:1: a policy is a mapping"},
		{"broken yaml", "rules: [\n", "p.yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestBuiltinsAndSwitches(t *testing.T) {
	cl := sqlclass.New(sqlclass.Options{})
	decide := func(p *Policy, sql string, w Who) Decision {
		res, err := cl.Classify(sql)
		return p.Decide(res, err, w)
	}
	agent, person := Who{Class: ClassAgent}, Who{Class: ClassPerson}
	def := Default()
	if d := decide(def, "ALTER ROLE CURRENT_USER PASSWORD 'x'", person); d.Action != Deny || d.Rule != RuleRoleChanges {
		t.Errorf("default policy: password change got %+v", d)
	}
	if d := decide(def, "SELEC 1", person); d.Action != Deny || d.Rule != RuleUnparseable {
		t.Errorf("default policy: unparseable got %+v", d)
	}
	if d := decide(def, "DROP TABLE t", agent); d.Action != Hold || d.Rule != RuleAgentHolds || d.Timeout != 0 {
		// No timeout of its own: approvals.timeout decides.
		t.Errorf("default policy: agent DDL got %+v", d)
	}
	if d := def.DecideFastPath("", agent); d.Action != Deny || d.Rule != RuleFastPath {
		t.Errorf("default policy: agent fast path got %+v", d)
	}
	if d := def.DecideFastPath("", person); d.Action != Allow {
		t.Errorf("default policy: person fast path got %+v", d)
	}
	if d := def.DecideFastPath("pg_catalog.set_config", person); d.Action != Allow {
		t.Errorf("default policy: resolved fast-path set_config got %+v", d)
	}
	rules, err := Load("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d := rules.DecideFastPath("pg_catalog.set_config", person); d.Action != Deny || d.Rule != "no-side-effects" {
		t.Errorf("resolved fast-path set_config got %+v", d)
	}
	off, err := Parse("p.yaml", []byte("unparseable: allow\nrole_changes: allow\nagent_holds: false\nfast_path: {agent: allow}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"ALTER ROLE x PASSWORD 'y'", "SELEC 1", "DROP TABLE t"} {
		if d := decide(off, sql, agent); d.Action != Allow {
			t.Errorf("switched off: %q got %+v", sql, d)
		}
	}
	if d := off.DecideFastPath("", agent); d.Action != Allow {
		t.Errorf("switched off: fast path got %+v", d)
	}
}

func TestStoreReloadKeepsOldOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("rules:\n  - name: one\n    action: deny\n    kinds: [write]\n")
	st, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	first := st.Policy()
	write("rules:\n  - name: one\n    action: nope\n")
	if err := st.Reload(); err == nil || !strings.Contains(err.Error(), "previous policy stays") || !strings.Contains(err.Error(), "policy.yaml:2") {
		t.Fatalf("bad policy reload: %v", err)
	}
	if st.Policy() != first {
		t.Fatal("a bad policy replaced the one in force")
	}
	write("rules:\n  - name: two\n    action: hold\n")
	if err := st.Reload(); err != nil {
		t.Fatal(err)
	}
	if r := st.Policy().Rules(); len(r) != 1 || r[0].Name != "two" || r[0].Line != 2 {
		t.Fatalf("reloaded rules: %+v", r)
	}
	if _, err := NewStore(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("a missing policy file loaded")
	}
}

func TestExamplePolicyLoads(t *testing.T) {
	if _, err := Load("../../deploy/examples/policy/policy.yaml"); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkDecideCached is the per-statement cost on the data path for a
// statement already in the classifier's cache.
func BenchmarkDecideCached(b *testing.B) {
	pol, err := Load("testdata/policy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	cl := sqlclass.New(sqlclass.Options{})
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	w := Who{Connection: "dev", Class: ClassAgent, Groups: []string{"staff"}}
	cl.Classify(sql)
	b.ReportAllocs()
	for b.Loop() {
		res, err := cl.Classify(sql)
		if d := pol.Decide(res, err, w); d.Action != Allow {
			b.Fatal(d)
		}
	}
}

// BenchmarkMemoDecideCached is what the guard stage pays per repeated
// statement: the classifier's cache, then the session's memo.
func BenchmarkMemoDecideCached(b *testing.B) {
	pol, err := Load("testdata/policy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	cl := sqlclass.New(sqlclass.Options{})
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	m := pol.Memo(Who{Connection: "dev", Class: ClassAgent, Groups: []string{"staff"}})
	b.ReportAllocs()
	for b.Loop() {
		res, err := cl.Classify(sql)
		if d := m.Decide(res, err); d.Action != Allow {
			b.Fatal(d)
		}
	}
}

func TestMemoAgreesWithPolicy(t *testing.T) {
	pol, err := Load("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl := sqlclass.New(sqlclass.Options{})
	for _, c := range loadDecisionCases(t) {
		m := pol.Memo(c.whoFor())
		for i := 0; i < 2; i++ {
			res, err := cl.Classify(c.sql)
			if got, want := m.Decide(res, err), pol.Decide(res, err, c.whoFor()); got != want {
				t.Fatalf("decisions.txt:%d: memo %+v, policy %+v", c.line, got, want)
			}
		}
	}
}

// The most specific hold timeout wins: the rule's, else the policy's
// agent_hold_timeout; neither leaves it to approvals.timeout (zero here).
func TestHoldTimeouts(t *testing.T) {
	agent := Who{Class: ClassAgent}
	cl := sqlclass.New(sqlclass.Options{})
	decide := func(p *Policy, sql string, w Who) Decision {
		res, err := cl.Classify(sql)
		return p.Decide(res, err, w)
	}
	cases := []struct {
		name, file, sql string
		want            time.Duration
	}{
		{"nothing set", "", "DROP TABLE t", 0},
		{"agent_hold_timeout", "agent_hold_timeout: 3m\n", "DROP TABLE t", 3 * time.Minute},
		{"rule without timeout", "rules:\n  - name: h\n    action: hold\n    kinds: [write]\n", "DELETE FROM t WHERE a = 1", 0},
		{"rule inherits agent_hold_timeout", "agent_hold_timeout: 3m\nrules:\n  - name: h\n    action: hold\n    kinds: [write]\n", "DELETE FROM t WHERE a = 1", 3 * time.Minute},
		{"rule's own", "agent_hold_timeout: 3m\nrules:\n  - name: h\n    action: hold\n    timeout: 1m\n    kinds: [write]\n", "DELETE FROM t WHERE a = 1", time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if d := decide(p, tc.sql, agent); d.Action != Hold || d.Timeout != tc.want {
				t.Fatalf("%+v, want a hold of %s", d, tc.want)
			}
		})
	}
}
