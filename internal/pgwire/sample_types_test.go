package pgwire

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// Every type docs/AUDIT.md renders from the binary format, sent by a real
// PostgreSQL in binary (Bind asking binary for every column) and in text
// (the simple protocol): the sample stored as wire bytes renders each
// binary value as the server's own text for it, but for the two documented
// differences (timestamptz in UTC as Z, numeric as hex).
func TestSampleBinaryRendersAsText(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	h := newHarness(t, pg, func(o *Options) { o.SampleRows, o.SampleBytes = 10, 4096 })
	c := h.connect(ctx(t), t)
	if _, err := c.Exec(ctx(t), "SET TimeZone = 'UTC'"); err != nil {
		t.Fatal(err)
	}
	cols := []struct{ expr, name string }{
		{"true", "bool"}, {"7::int2", "int2"}, {"-8::int4", "int4"}, {"9000000000::int8", "int8"}, {"26::oid", "oid"},
		{"1.5::float4", "float4"}, {"-2.25::float8", "float8"}, {"'tx é'::text", "text"}, {"'vc'::varchar", "varchar"},
		{"'bp'::bpchar(3)", "bpchar"}, {"'nm'::name", "name"}, {`'c'::"char"`, "char"}, {`'{"a":1}'::json`, "json"},
		{`'{"a": [1, "x"]}'::jsonb`, "jsonb"}, {"'<x>1</x>'::xml", "xml"}, {"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "uuid"},
		{"'2024-02-29'::date", "date"}, {"'infinity'::date", "dateinf"}, {"'2024-02-29 12:34:56.789'::timestamp", "ts"},
		{`'\xdead'::bytea`, "bytea"}, {"NULL::text", "null"},
		{"'2024-02-29 12:34:56+02'::timestamptz", "tstz"}, {"12.5::numeric", "numeric"},
	}
	var sel []string
	for _, c := range cols {
		sel = append(sel, c.expr+" AS "+c.name)
	}
	sql := "SELECT " + strings.Join(sel, ", ")

	if _, err := c.Exec(ctx(t), sql+" /*text*/", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	rr := c.PgConn().ExecParams(ctx(t), sql+" /*binary*/", nil, nil, nil, []int16{1}).Read()
	if rr.Err != nil {
		t.Fatal(rr.Err)
	}
	text := rendered(t, lastStatement(t, h, "/*text*/").Sample)
	bin := lastStatement(t, h, "/*binary*/")
	if got := strings.Join(bin.Sample.Columns, ","); got != strings.Join(lastStatement(t, h, "/*text*/").Sample.Columns, ",") {
		t.Fatalf("binary columns %q", got)
	}
	binRows := rendered(t, bin.Sample)
	if len(text) != 1 || len(binRows) != 1 || len(text[0]) != len(cols) || len(binRows[0]) != len(cols) {
		t.Fatalf("text %v, binary %v: want one row of %d", text, binRows, len(cols))
	}
	differ := map[string]string{"tstz": "2024-02-29 10:34:56Z", "numeric": `\x`}
	for i, c := range cols {
		tv, bv := text[0][i], binRows[0][i]
		if (tv == nil) != (bv == nil) {
			t.Fatalf("%s: text %v, binary %v", c.name, tv, bv)
		}
		if tv == nil {
			continue
		}
		if want, ok := differ[c.name]; ok {
			if !strings.HasPrefix(*bv, want) {
				t.Errorf("%s: binary rendered %q, want %q…", c.name, *bv, want)
			}
			continue
		}
		if *bv != *tv {
			t.Errorf("%s: binary rendered %q, the server's text %q", c.name, *bv, *tv)
		}
	}
}
