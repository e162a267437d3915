package pgmask

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// fixedCatalog answers from a map: the fuzz target exercises the stage's
// parsing of server messages, not the catalog.
type fixedCatalog map[Attr][]mask.Source

func (c fixedCatalog) Resolve(_ context.Context, _ string, attrs []Attr) (map[Attr][]mask.Source, error) {
	out := map[Attr][]mask.Source{}
	for _, a := range attrs {
		if s, ok := c[a]; ok {
			out[a] = s
		}
	}
	return out, nil
}

// Relations finds the relations the map's chains start at, by name.
func (c fixedCatalog) Relations(_ context.Context, _ string, names []string) (map[string][]Relation, error) {
	out := map[string][]Relation{}
	for _, n := range names {
		schema, table := splitName(n)
		var rel *Relation
		for _, chain := range c {
			if len(chain) == 0 || chain[0].Table != table || schema != "" && chain[0].Schema != schema {
				continue
			}
			if rel == nil {
				out[n] = append(out[n], Relation{Schema: chain[0].Schema, Name: table, Columns: map[string][]mask.Source{}})
				rel = &out[n][len(out[n])-1]
			}
			rel.Columns[chain[0].Column] = chain
		}
	}
	return out, nil
}

// compileRules compiles a policy's YAML under the tests' masking key.
func compileRules(t testing.TB, yaml string) *mask.RuleSet {
	t.Helper()
	var pol mask.Policy
	if err := yamlStrict(yaml, &pol); err != nil {
		t.Fatal(err)
	}
	rs, err := mask.Compile(pol, bytes.Repeat([]byte("k"), 32))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func fuzzStage(t testing.TB) *Stage {
	rs := compileRules(t, policyYAML)
	cat := fixedCatalog{{1, 1}: {{Schema: "public", Table: "users", Column: "email"}}, {1, 2}: {{Schema: "public", Table: "users", Column: "plan"}}}
	return New(rs.ForSubject(mask.Subject{Process: "agent"}), cat, session.New(nil), nil)
}

func enc(m interface{ Encode([]byte) ([]byte, error) }) []byte {
	b, _ := m.Encode(nil)
	return b
}

// FuzzServerMessages feeds the stage arbitrary backend messages: it must
// not panic, and whatever it sends instead is whole messages.
func FuzzServerMessages(f *testing.F) {
	rd := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("e"), TableOID: 1, TableAttributeNumber: 1, DataTypeOID: 25},
		{Name: []byte("c"), DataTypeOID: 25},
		{Name: []byte("n"), DataTypeOID: 20, Format: 1}}})
	row := enc(&pgproto3.DataRow{Values: [][]byte{[]byte("a@corp-mail.com"), []byte("4111111111111111"), {0, 0, 0, 0, 0, 0, 0, 1}}})
	f.Add(rd, row)
	f.Add(rd, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "23505", Message: "dup", Detail: "Key (email)=(a@corp-mail.com) already exists.", SchemaName: "public", TableName: "users"}))
	f.Add(rd, enc(&pgproto3.NotificationResponse{PID: 1, Channel: "c", Payload: "a@corp-mail.com"}))
	f.Add(rd, enc(&pgproto3.CopyOutResponse{OverallFormat: 0}))
	f.Add([]byte("T\x00\x00\x00\x06\x00\x01"), row)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		s := fuzzStage(t)
		s.push(request{kind: 'Q'})
		// Copies: the stage may mask a row in place.
		for _, msg := range [][]byte{bytes.Clone(a), bytes.Clone(b), bytes.Clone(row)} {
			if len(msg) < 5 {
				continue
			}
			body := msg[5:]
			v := s.Server(&pgwire.ServerMsg{Type: msg[0], Body: body, Len: len(body)})
			if v.Action == pgwire.Replace {
				checkWhole(t, v.Msgs)
			}
		}
		_ = TargetOrigins(string(a))
		_, _ = numericText(b)
	})
}

func checkWhole(t *testing.T, b []byte) {
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("truncated message %q", b)
		}
		n := int(binary.BigEndian.Uint32(b[1:]))
		if n < 4 || n+1 > len(b) {
			t.Fatalf("bad length %d of %d", n, len(b))
		}
		b = b[1+n:]
	}
}

func TestNumericText(t *testing.T) {
	for _, tt := range []struct {
		nd, weight, sign, dscale int
		digits                   []int
		want                     string
	}{
		{4, 3, 0, 0, []int{4111, 1111, 1111, 1111}, "4111111111111111"},
		{2, 0, 0x4000, 2, []int{12, 5000}, "-12.5000"},
		{1, -1, 0, 4, []int{5}, "0.0005"},
		{0, 0, 0, 0, nil, "0"},
		{1, 1, 0, 0, []int{7}, "70000"},
		{1, -2, 0, 8, []int{5000}, "0.00005000"},
		{3, 0, 0, 0, []int{1, 2, 30}, "1.00020030"},
	} {
		b := binary.BigEndian.AppendUint16(nil, uint16(tt.nd))
		b = binary.BigEndian.AppendUint16(b, uint16(int16(tt.weight)))
		b = binary.BigEndian.AppendUint16(b, uint16(tt.sign))
		b = binary.BigEndian.AppendUint16(b, uint16(tt.dscale))
		for _, d := range tt.digits {
			b = binary.BigEndian.AppendUint16(b, uint16(d))
		}
		got, ok := numericText(b)
		if !ok || string(got) != tt.want {
			t.Errorf("numericText(%v) = %q %v, want %q", tt.digits, got, ok, tt.want)
		}
	}
}
