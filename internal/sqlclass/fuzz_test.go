package sqlclass

import (
	"errors"
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzClassify feeds the classifier arbitrary strings: it must never
// panic, must return either a ParseError or statements that each have a
// kind, a command and a well-formed Lineage, must be deterministic, and its redacted form must not
// keep the secrets it found.
func FuzzClassify(f *testing.F) {
	b, err := os.ReadFile("testdata/corpus.yaml")
	if err != nil {
		f.Fatal(err)
	}
	var cases []corpusCase
	if err := yaml.Unmarshal(b, &cases); err != nil {
		f.Fatal(err)
	}
	for _, c := range cases {
		f.Add(c.SQL)
	}
	for _, c := range lineageCases {
		f.Add(c.sql)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		c := New(Options{})
		res, err := c.Classify(sql)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) && !errors.Is(err, ErrTooDeep) {
				t.Fatalf("%q: unexpected error type %T: %v", sql, err, err)
			}
			return
		}
		res.Walk(func(s *Statement) {
			lineageWellFormed(t, sql, s)
			if s.Kind == "" || s.Command == "" {
				t.Fatalf("%q: statement without kind or command: %+v", sql, s)
			}
			if s.Flags.Has(FlagSecret) {
				for _, v := range s.secretValues {
					if len(v) >= 4 && strings.Contains(s.Redacted, v) {
						t.Fatalf("%q: redacted %q keeps secret %q", sql, s.Redacted, v)
					}
				}
			}
		})
		again, err := New(Options{}).Classify(sql)
		if err != nil {
			t.Fatalf("%q: second classification failed: %v", sql, err)
		}
		if len(again.Statements) != len(res.Statements) || again.Flags() != res.Flags() {
			t.Fatalf("%q: classification not deterministic", sql)
		}
		for i, s := range res.Statements {
			if !sameLineage(s.Lineage, again.Statements[i].Lineage) {
				t.Fatalf("%q: lineage not deterministic", sql)
			}
		}
	})
}
