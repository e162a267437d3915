package sqlclass

import (
	"flag"
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite testdata/corpus.yaml's expectations from the classifier's output (review the diff!)")

// corpusCase is one statement string and what classifying it must give.
// Lists are exact (order-insensitive where the classifier sorts).
type corpusCase struct {
	Note string `yaml:"note,omitempty"`
	SQL  string `yaml:"sql"`
	// Error: the parser must reject the string.
	Error bool `yaml:"error,omitempty"`
	// Kinds and Commands of the top-level statements, in order.
	Kinds    []string `yaml:"kinds,flow,omitempty"`
	Commands []string `yaml:"commands,flow,omitempty"`
	// Flags set on any statement, nested ones included.
	Flags     []string `yaml:"flags,flow,omitempty"`
	Read      []string `yaml:"read,flow,omitempty"`
	Written   []string `yaml:"written,flow,omitempty"`
	Functions []string `yaml:"functions,flow,omitempty"`
	// NestedKinds are the kinds of every nested statement, depth first.
	NestedKinds []string `yaml:"nested_kinds,flow,omitempty"`
	Prepared    string   `yaml:"prepared,omitempty"`
	Setting     string   `yaml:"setting,omitempty"`
	// RoleOrPassword is Result.ChangesRoleOrPassword.
	RoleOrPassword bool `yaml:"role_or_password,omitempty"`
	// SwitchesRole is Result.SwitchesRole.
	SwitchesRole bool `yaml:"switches_role,omitempty"`
	// Redacted, when given, is Result.Redacted.
	Redacted string `yaml:"redacted,omitempty"`
}

func observe(t *testing.T, c *Classifier, sql string) corpusCase {
	t.Helper()
	got := corpusCase{SQL: sql}
	res, err := c.Classify(sql)
	if err != nil {
		if _, ok := err.(*ParseError); !ok && err != ErrTooDeep {
			t.Errorf("%q: error of type %T: %v", sql, err, err)
		}
		got.Error = true
		return got
	}
	var all Flag
	res.Walk(func(s *Statement) { all |= s.Flags })
	got.Flags = all.Names()
	for _, s := range res.Statements {
		got.Kinds = append(got.Kinds, string(s.Kind))
		got.Commands = append(got.Commands, s.Command)
		if s.PreparedName != "" {
			got.Prepared = s.PreparedName
		}
		if s.Setting != "" {
			got.Setting = s.Setting
		}
		for _, n := range s.Nested {
			n.Walk(func(n *Statement) { got.NestedKinds = append(got.NestedKinds, string(n.Kind)) })
		}
	}
	got.Read = res.TablesRead()
	got.Written = res.TablesWritten()
	got.Functions = res.Functions()
	got.RoleOrPassword = res.ChangesRoleOrPassword()
	got.SwitchesRole = res.SwitchesRole()
	if res.Has(FlagSecret) {
		got.Redacted = res.Redacted()
	}
	return got
}

func loadCorpus(t *testing.T) []corpusCase {
	t.Helper()
	b, err := os.ReadFile("testdata/corpus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cases []corpusCase
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("testdata/corpus.yaml: %v", err)
	}
	return cases
}

func TestCorpus(t *testing.T) {
	cases := loadCorpus(t)
	if len(cases) < 200 {
		t.Errorf("corpus has %d statements; the issue asks for at least 200", len(cases))
	}
	c := New(Options{})
	if *update {
		for i := range cases {
			got := observe(t, c, cases[i].SQL)
			got.Note = cases[i].Note
			cases[i] = got
		}
		out, err := yaml.Marshal(cases)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("testdata/corpus.yaml", out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	// Twice: the second pass is served from the caches and must agree.
	for pass := 0; pass < 2; pass++ {
		for _, want := range cases {
			got := observe(t, c, want.SQL)
			got.Note = want.Note
			if !reflect.DeepEqual(got, want) {
				gb, _ := yaml.Marshal(got)
				wb, _ := yaml.Marshal(want)
				t.Errorf("pass %d: %q\n got: %s\nwant: %s", pass, want.SQL, gb, wb)
			}
		}
	}
}
