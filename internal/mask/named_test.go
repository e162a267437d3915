package mask

import "testing"

// NamedRule matches a column as a statement writes it: an unqualified
// relation may be in any schema, an empty column is any column.
func TestNamedRule(t *testing.T) {
	rs, err := Compile(Policy{Rules: []Rule{
		{Name: "detect", Detectors: []string{"email"}, Strategy: Redact},
		{Name: "pii", Columns: []string{"public.users.name", "*.people.email"}, Strategy: Redact},
		{Name: "bare", Columns: []string{"ssn"}, Strategy: Redact, ExceptGroups: []string{"hr"}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := rs.ForSubject(Subject{})
	for _, c := range []struct {
		src  Source
		rule string
	}{
		{Source{Schema: "public", Table: "users", Column: "name"}, "pii"},
		{Source{Table: "users", Column: "name"}, "pii"},
		{Source{Schema: "other", Table: "users", Column: "name"}, ""},
		{Source{Table: "users", Column: "plan"}, ""},
		{Source{Table: "users"}, "pii"},
		{Source{Schema: "x", Table: "people", Column: "EMAIL"}, "pii"},
		{Source{Table: "anything", Column: "ssn"}, "bare"},
		{Source{Table: "anything"}, "bare"}, // a column-only pattern can name any relation's column
	} {
		rule, ok := m.NamedRule(c.src)
		if rule != c.rule || ok != (c.rule != "") {
			t.Errorf("%+v: %q %v, want %q", c.src, rule, ok, c.rule)
		}
	}
	if !m.WholeColumns() {
		t.Error("WholeColumns: false with column rules in force")
	}
	if rs.Masker(func(r *Rule) bool { return r.Name == "detect" }).WholeColumns() {
		t.Error("WholeColumns: true with detectors only")
	}
	if _, ok := rs.ForSubject(Subject{Groups: []string{"hr"}}).NamedRule(Source{Table: "t", Column: "ssn"}); ok {
		t.Error("a rule out of force named a column")
	}
}
