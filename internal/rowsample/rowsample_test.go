package rowsample

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

// captured is v as a sample keeps it under limit and reads it back: Keep,
// AppendValue, then Render of that one-value row.
func captured(t testing.TB, v []byte, oid uint32, format int16, limit int) (string, bool) {
	t.Helper()
	n, cut := Keep(v, oid, format, limit)
	data := AppendValue(AppendCount(nil, 1), v[:n], cut)
	rows, err := Render(data, []uint32{oid}, []int16{format})
	if err != nil {
		t.Fatalf("Render of a captured value: %v", err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 || rows[0][0] == nil {
		t.Fatalf("Render of one value gave %v", rows)
	}
	return *rows[0][0], cut
}

// Every type docs/AUDIT.md lists, in both formats, whole and cut: what a
// reader renders of the captured bytes is what the proxy rendered when it
// rendered on the data path (appendRendered at the value's limit), and
// that is the value's text form.
func TestCapturedRendersAsBefore(t *testing.T) {
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	be64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	long := strings.Repeat("é", 200) // 400 bytes of two-byte runes
	cases := []struct {
		name   string
		v      []byte
		oid    uint32
		format int16
		limit  int
		want   string
		cut    bool
	}{
		{"text as sent", []byte("ada@example.com"), oidText, 0, 256, "ada@example.com", false},
		{"text format ignores the type", []byte("42"), oidInt4, 0, 256, "42", false},
		{"text cut at a rune", []byte("ééééé"), oidText, 0, 6, "é…", true},
		{"text cut at 256", []byte(long), oidText, 0, 256, strings.Repeat("é", 126) + "…", true},
		{"text cut to nothing", []byte("abcdef"), oidText, 0, 2, "…", true},
		{"text at the limit exactly", []byte("abcdefgh"), oidText, 0, 8, "abcdefgh", false},
		{"binary text", []byte("x"), oidText, 1, 256, "x", false},
		{"binary varchar", []byte("x"), oidVarchar, 1, 256, "x", false},
		{"binary bpchar cut", []byte(long), oidBPChar, 1, 20, strings.Repeat("é", 8) + "…", true},
		{"binary name", []byte("pg_class"), oidName, 1, 256, "pg_class", false},
		{"binary char", []byte("r"), oidChar, 1, 256, "r", false},
		{"binary json", []byte(`{"a":1}`), oidJSON, 1, 256, `{"a":1}`, false},
		{"binary xml cut", []byte("<a>" + long + "</a>"), oidXML, 1, 10, "<a>éé…", true},
		{"binary jsonb", append([]byte{1}, `{"a":1}`...), oidJSONB, 1, 256, `{"a":1}`, false},
		{"binary jsonb cut", append([]byte{1}, `{"a":"`+long+`"}`...), oidJSONB, 1, 12, `{"a":"é…`, true},
		{"binary jsonb cut to nothing", append([]byte{1}, `{"a":1}`...), oidJSONB, 1, 3, "…", true},
		{"binary jsonb of another version is hex", []byte{2, 0xab}, oidJSONB, 1, 256, `\x02ab`, false},
		{"binary jsonb of another version cut", bytes.Repeat([]byte{2}, 100), oidJSONB, 1, 11, `\x020202…`, true},
		{"binary bool", []byte{1}, oidBool, 1, 256, "t", false},
		{"binary bool false", []byte{0}, oidBool, 1, 256, "f", false},
		{"binary int2", []byte{0xff, 0xfe}, oidInt2, 1, 256, "-2", false},
		{"binary int4", be32(7), oidInt4, 1, 256, "7", false},
		{"binary int4 past a small limit", be32(math.MaxUint32 >> 1), oidInt4, 1, 8, "2147483647", false},
		{"binary oid", be32(math.MaxUint32), oidOID, 1, 256, "4294967295", false},
		{"binary int8", be64(math.MaxUint64), oidInt8, 1, 256, "-1", false},
		{"binary float8", be64(math.Float64bits(1.5)), oidFloat8, 1, 256, "1.5", false},
		{"binary float4", be32(math.Float32bits(0.25)), oidFloat4, 1, 256, "0.25", false},
		{"binary float8 NaN", be64(math.Float64bits(math.NaN())), oidFloat8, 1, 256, "NaN", false},
		{"binary uuid", bytes.Repeat([]byte{0xab}, 16), oidUUID, 1, 256, "abababab-abab-abab-abab-abababababab", false},
		{"binary uuid past a small limit", bytes.Repeat([]byte{0xab}, 16), oidUUID, 1, 8, "abababab-abab-abab-abab-abababababab", false},
		{"binary date", be32(math.MaxUint32), oidDate, 1, 256, "1999-12-31", false},
		{"binary date infinity", be32(math.MaxInt32), oidDate, 1, 256, "infinity", false},
		{"binary date -infinity", be32(1 << 31), oidDate, 1, 256, "-infinity", false},
		{"binary timestamp", be64(1_500_000), oidTimestamp, 1, 256, "2000-01-01 00:00:01.5", false},
		{"binary timestamp infinity", be64(math.MaxInt64), oidTimestamp, 1, 256, "infinity", false},
		{"binary timestamptz", be64(0), oidTimestampTZ, 1, 256, "2000-01-01 00:00:00Z", false},
		{"binary numeric is hex", []byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 7}, 1700, 1, 256, `\x00010000000000000007`, false},
		{"binary int4 of a wrong size is hex", []byte{1, 2}, oidInt4, 1, 256, `\x0102`, false},
		{"binary int4 of a wrong size cut", bytes.Repeat([]byte{1}, 300), oidInt4, 1, 13, `\x01010101…`, true},
		{"binary int4 cut to four bytes stays hex", bytes.Repeat([]byte{0xff}, 9), oidInt4, 1, 13, `\xffffffff…`, true},
		{"binary bytea", []byte{0xde, 0xad}, oidBytea, 1, 256, `\xdead`, false},
		{"binary hex cut", bytes.Repeat([]byte{0xff}, 100), oidBytea, 1, 13, `\xffffffff…`, true},
		{"binary hex cut to nothing", []byte{1, 2, 3}, oidBytea, 1, 6, `\x…`, true},
		{"binary empty bytea", nil, oidBytea, 1, 256, `\x`, false},
		{"binary unknown type", []byte("x"), 0, 1, 256, `\x78`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Appended after what the buffer already holds, which stays.
			b, cut := appendRendered([]byte("prev"), c.v, c.oid, c.format, c.limit)
			old, ok := strings.CutPrefix(string(b), "prev")
			if !ok || old != c.want || cut != c.cut {
				t.Fatalf("appendRendered = %q (cut %v), want %q (cut %v)", b, cut, "prev"+c.want, c.cut)
			}
			got, cut := captured(t, c.v, c.oid, c.format, c.limit)
			if got != old || cut != c.cut {
				t.Fatalf("captured then rendered %q (cut %v), rendered at once %q (cut %v)", got, cut, old, c.cut)
			}
			if c.cut && c.limit >= MinValue && len(got) > c.limit {
				t.Fatalf("%q is longer than the limit %d", got, c.limit)
			}
		})
	}
}

// Rows of several values, NULLs, an empty row, and the formats by Bind's
// rules, as a reader renders them.
func TestRender(t *testing.T) {
	row := func(vals ...[]byte) []byte {
		b := AppendCount(nil, len(vals))
		for _, v := range vals {
			if v == nil {
				b = AppendNull(b)
			} else {
				b = AppendValue(b, v, false)
			}
		}
		return b
	}
	s := func(v string) *string { return &v }
	seven := []byte{0, 0, 0, 7}
	for _, tc := range []struct {
		name    string
		data    []byte
		oids    []uint32
		formats []int16
		want    [][]*string
	}{
		{"no rows", nil, []uint32{23}, nil, [][]*string{}},
		{"text", append(row([]byte("1"), nil), row([]byte("2"), []byte("b"))...), []uint32{23, 25}, nil,
			[][]*string{{s("1"), nil}, {s("2"), s("b")}}},
		{"one format for all", row(seven, seven), []uint32{23, 23}, []int16{1}, [][]*string{{s("7"), s("7")}}},
		{"one format each", row(seven, seven), []uint32{23, 23}, []int16{0, 1}, [][]*string{{s(`` + "\x00\x00\x00\x07"), s("7")}}},
		{"more values than types", row([]byte("x"), []byte("y")), []uint32{25}, []int16{1}, [][]*string{{s("x"), s(`\x79`)}}},
		{"an empty row", append(row(), row([]byte(""))...), nil, nil, [][]*string{{}, {s("")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.data, tc.oids, tc.formats)
			if err != nil {
				t.Fatal(err)
			}
			if !sameRows(got, tc.want) {
				t.Fatalf("Render = %v, want %v", show(got), show(tc.want))
			}
		})
	}
}

func show(rows [][]*string) [][]string {
	out := [][]string{}
	for _, r := range rows {
		var o []string
		for _, v := range r {
			if v == nil {
				o = append(o, "<null>")
			} else {
				o = append(o, *v)
			}
		}
		out = append(out, o)
	}
	return out
}

func sameRows(a, b [][]*string) bool {
	if a == nil || len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			x, y := a[i][j], b[i][j]
			if (x == nil) != (y == nil) || (x != nil && *x != *y) {
				return false
			}
		}
	}
	return true
}

// Stored bytes that do not parse are an error naming where, never a value.
func TestRenderMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"half a count", []byte{0}},
		{"a count and no tag", []byte{0, 1}},
		{"a tag cut short", []byte{0, 1, 0x80}},
		{"a tag past 64 bits", append([]byte{0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "secret"...)},
		{"a value past the end", append([]byte{0, 1, 1 + 10<<1}, "secret"...)},
		{"a cut value past the end", append([]byte{0, 1, 1 + (10<<1 | 1)}, "secret"...)},
		{"the largest length", append([]byte{0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "secret"...)},
		{"a second row short", append(AppendValue(AppendCount(nil, 1), []byte("ok"), false), 0, 2, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := Render(tc.data, []uint32{25}, nil)
			if !errors.Is(err, ErrMalformed) || rows != nil {
				t.Fatalf("Render = %v, %v: want ErrMalformed", rows, err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("the error %q shows a value", err)
			}
		})
	}
}

// FuzzCapturedRendersAsBefore holds capture then rendering to rendering at
// once, for any value, type, format and limit a sample can give.
func FuzzCapturedRendersAsBefore(f *testing.F) {
	for _, oid := range []uint32{0, oidBool, oidBytea, oidInt4, oidText, oidJSONB, oidUUID, oidTimestampTZ} {
		f.Add([]byte("ééé\x01\xffabc"), oid, int16(1), 8)
		f.Add([]byte{1, 'x', 'y'}, oid, int16(0), 256)
	}
	f.Fuzz(func(t *testing.T, v []byte, oid uint32, format int16, limit int) {
		if limit < MinValue || limit > MaxValue {
			return // the sampler stops below MinValue and never asks more than MaxValue
		}
		old, oldCut := appendRendered(nil, v, oid, format, limit)
		got, cut := captured(t, v, oid, format, limit)
		if got != string(old) || cut != oldCut {
			t.Fatalf("captured then rendered %q (cut %v), rendered at once %q (cut %v)", got, cut, old, oldCut)
		}
	})
}

// FuzzRender reads stored rows as an attacker with access to the store
// could have edited them: rows or an error, never a panic.
func FuzzRender(f *testing.F) {
	f.Add(AppendValue(AppendCount(nil, 1), []byte("x"), false), []byte{1}, uint32(25))
	f.Add(AppendValue(AppendCount(nil, 2), []byte{0, 0, 0, 7}, true), []byte{1, 0}, uint32(23))
	f.Add(AppendNull(AppendCount(nil, 1)), []byte(nil), uint32(0))
	f.Fuzz(func(t *testing.T, data, formats []byte, oid uint32) {
		var fm []int16
		for _, c := range formats {
			fm = append(fm, int16(c%3))
		}
		rows, err := Render(data, []uint32{oid, oidJSONB, oidUUID}, fm)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || rows != nil {
				t.Fatalf("Render = %v, %v", rows, err)
			}
			return
		}
		if rows == nil {
			t.Fatal("rows nil without an error")
		}
	})
}
