package audit

import (
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/internal/redact"
	"github.com/airlockhq/airlock/internal/session"
)

// The hand encoder must stay byte for byte what encoding/json makes of a
// Statement: the hash chain covers these bytes, and export prints them.
func TestAppendStatementMatchesEncodingJSON(t *testing.T) {
	if !fastStatement {
		t.Fatal("Statement or ResultSample changed: update statementFields/sampleFields and appendStatement (records go through encoding/json until then)")
	}
	tests := []struct {
		name string
		st   Statement
	}{
		{"empty", Statement{}},
		{"plain", Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, DurationUS: 80}},
		{"every field", Statement{Protocol: "extended", SQL: "SELECT $1 <> 'a&b'", Name: "s1", Params: []string{"x", ""}, ParamCount: 2,
			Tag: "SELECT 0", SQLState: "42P01", Error: "relation \"t\" does not exist", Rows: -1, Bytes: 1 << 40, DurationUS: 123456789,
			Class: "read", Decision: "allowed", Rule: "r1", Sample: &ResultSample{Columns: []string{"a", "b", "c"}, Rows: [][]*string{{ptr("1"), ptr("x\ny"), nil}, nil}, Truncated: true}, Number: 42}},
		{"empty sample", Statement{Sample: &ResultSample{}}},
		{"empty slices", Statement{Params: []string{}, Sample: &ResultSample{Columns: []string{}, Rows: [][]*string{}}}},
		{"escapes", Statement{SQL: "\x00\x01\x1f\t\r\n\b\f\"\\ é \u2028\u2029 \xff\xfe 😀 <script>&amp;</script>\x7f"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want, err := json.Marshal(tc.st)
			if err != nil {
				t.Fatal(err)
			}
			if got := appendStatement(nil, &tc.st); string(got) != string(want) {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
		})
	}
}

// plainPrefix, eight bytes at a time, stops at the first byte a JSON
// string does not hold as it is, wherever it is in a word or after the
// last whole one: every byte value at every place.
func TestPlainPrefix(t *testing.T) {
	for c := 0; c < 256; c++ {
		plain := c < utf8.RuneSelf && plainASCII[c]
		for at := 0; at < 19; at++ {
			b := []byte(strings.Repeat("a", 19))
			b[at] = byte(c)
			want := at
			if plain {
				want = len(b)
			}
			if got := plainPrefix(string(b)); got != want {
				t.Fatalf("plainPrefix with byte %#x at %d = %d, want %d", c, at, got, want)
			}
		}
	}
}

// allPlain reads short strings as one or two overlapping words: every
// byte value at every place of every length up to past two words, and
// appendString's answer for it the same as encoding/json's.
func TestAllPlain(t *testing.T) {
	for n := 0; n <= 19; n++ {
		if !allPlain(strings.Repeat("a", n)) {
			t.Fatalf("allPlain of %d plain bytes = false", n)
		}
		for c := 0; c < 256; c++ {
			plain := c < utf8.RuneSelf && plainASCII[c]
			for at := 0; at < n; at++ {
				b := []byte(strings.Repeat("a", n))
				b[at] = byte(c)
				if got := allPlain(string(b)); got != plain {
					t.Fatalf("allPlain of %d bytes with %#x at %d = %v, want %v", n, c, at, got, plain)
				}
				want, _ := json.Marshal(string(b))
				if got := appendString(nil, string(b)); string(got) != string(want) {
					t.Fatalf("appendString(%q) = %s, encoding/json %s", b, got, want)
				}
			}
		}
	}
}

// FuzzAppendString holds the string encoder to encoding/json on any input
// (statement text is the client's, so anything at all).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "SELECT 1", "a\"b\\c", "\x00\xff<>&", "\u2028é😀", "\xed\xa0\x80",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", "SELECT 'é' <> \"a&b\" FROM\tx\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Fatalf("appendString(%q) = %s, encoding/json %s", s, got, want)
		}
	})
}

// FuzzAppendTime holds the frame's time encoder to time.RFC3339Nano.
func FuzzAppendTime(f *testing.F) {
	for _, sec := range []int64{0, 1, 1764500000, -1, -62135596800, -62167219200, -62167219201, 253402300799, 253402300800} {
		for _, ns := range []int64{0, 1, 100000000, 123456789, 999999999} {
			f.Add(sec, ns, false)
		}
	}
	f.Add(int64(1764500000), int64(123456789), true)
	f.Fuzz(func(t *testing.T, sec, ns int64, local bool) {
		at := time.Unix(sec, ns).UTC()
		if local {
			at = at.In(time.FixedZone("X", 3600))
		}
		if got, want := appendTime(nil, at), at.AppendFormat(nil, time.RFC3339Nano); string(got) != string(want) {
			t.Fatalf("appendTime(%v) = %s, want %s", at, got, want)
		}
	})
}

func BenchmarkEncodeStatement(b *testing.B) {
	st := Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, DurationUS: 80}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, _ = encodeData(st)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, _ = json.Marshal(st)
		}
	})
}

// appendTime appends t as time.RFC3339Nano does: how frames of the
// previous version carried their time (parseOwnTime reads it); a UTC time
// of years 0 to 9999 without time's general formatter.
func appendTime(b []byte, t time.Time) []byte {
	y, mo, d := t.Date()
	if t.Location() != time.UTC || y < 0 || y > 9999 {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	h, mi, s := t.Clock()
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-',
		byte('0'+mo/10), byte('0'+mo%10), '-', byte('0'+d/10), byte('0'+d%10), 'T',
		byte('0'+h/10), byte('0'+h%10), ':', byte('0'+mi/10), byte('0'+mi%10), ':', byte('0'+s/10), byte('0'+s%10))
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

// redact.PlainWord agrees with plainASCII, the JSON encoder's own class,
// byte by byte on words mixing every byte it tests for with their neighbours (where a subtraction's
// borrow or a merged test could go wrong), in every combination of
// places.
func TestPlainWordIsPlainASCII(t *testing.T) {
	vals := []byte{0, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x26, 0x27, 0x2e, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x5b, 0x5c, 0x5d, 0x61, 0x7e, 0x7f, 0x80, 0xa2, 0xfe, 0xff}
	rnd := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 2_000_000; n++ {
		var w [8]byte
		want := true
		for i := range w {
			w[i] = vals[rnd.IntN(len(vals))]
			if rnd.IntN(3) == 0 {
				w[i] = 'a'
			}
			want = want && w[i] < utf8.RuneSelf && plainASCII[w[i]]
		}
		if got := redact.PlainWord(binary.LittleEndian.Uint64(w[:])); got != want {
			t.Fatalf("redact.PlainWord(% x) = %v, want %v", w, got, want)
		}
	}
}

// redact.PlainByte is plainASCII: the bytes the scan for secrets counts as
// plain are those appendString copies as they are.
func TestPlainByteIsPlainASCII(t *testing.T) {
	for c := 0; c < 256; c++ {
		if got, want := redact.PlainByte(byte(c)), c < utf8.RuneSelf && plainASCII[c]; got != want {
			t.Fatalf("redact.PlainByte(%#x) = %v, want %v", c, got, want)
		}
	}
}

// FuzzStatementPlain holds the data path's statement encoding, which takes
// the text's plain bytes from the redaction's scan instead of looking
// again, to the two passes it replaces (redact.SQL, then appendStatement)
// and to encoding/json, on any text: the agent writes it, and a byte
// wrongly counted plain would let it out of its JSON string.
func FuzzStatementPlain(f *testing.F) {
	for _, s := range []string{"", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", "SELECT 1 /*<>*/",
		"ALTER ROLE x PASSWORD 'hunter2'", "select \"token\" from t -- \n", "SELECT 'é\u2028' <> 'a&b'", "selecT * FROM secrets\x00",
		"x'://a:b@c'", "SELECT 12345678\"", "\xff\xfe SELECT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		st, plain := statementOf(&session.Statement{Protocol: "simple", SQL: sql, Tag: "SELECT 1", Rows: 1}, Policy{})
		if st.SQL != redact.SQL(sql) {
			t.Fatalf("statementOf(%q).SQL = %q, redact.SQL %q", sql, st.SQL, redact.SQL(sql))
		}
		if plain < 0 || plain > plainPrefix(st.SQL) {
			t.Fatalf("%q: %d bytes counted plain, %d are", st.SQL, plain, plainPrefix(st.SQL))
		}
		got := appendStatementPlain(nil, &st, plain)
		if two := appendStatement(nil, &st); string(got) != string(two) {
			t.Fatalf("%q: one pass %s, two passes %s", sql, got, two)
		}
		want, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("%q: %s, encoding/json %s", sql, got, want)
		}
	})
}

// BenchmarkStatementText is the data path's work on a statement's text,
// redaction and encoding (and the scans alone, "-scan"), as two passes (redact.SQL, then appendStatement
// looking for bytes to escape) and as one (redact.SQLPlain, then copying
// the plain bytes). "cold" takes each statement from 32 MiB of distinct
// texts, out of cache as the daemon's are under load; "hot" reuses one.
func BenchmarkStatementText(b *testing.B) {
	const n = 1 << 19 // 64-byte texts, 32 MiB
	texts := make([]string, n)
	for i := range texts {
		texts[i] = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(1e6+i) + ";     "
	}
	for _, tc := range []struct {
		name string
		enc  func([]byte, *session.Statement) []byte
	}{
		// The scans alone: SQL and then plainPrefix, or SQLPlain.
		{"two-passes-scan", func(buf []byte, s *session.Statement) []byte {
			sql := redact.SQL(s.SQL)
			return append(buf, byte(plainPrefix(sql)))
		}},
		{"one-pass-scan", func(buf []byte, s *session.Statement) []byte {
			_, plain := redact.SQLPlain(s.SQL)
			return append(buf, byte(plain))
		}},
		{"two-passes", func(buf []byte, s *session.Statement) []byte {
			st := Statement{Protocol: s.Protocol, SQL: redact.SQL(s.SQL), Tag: s.Tag, Rows: s.Rows}
			return appendStatement(buf, &st)
		}},
		{"one-pass", func(buf []byte, s *session.Statement) []byte {
			sql, plain := redact.SQLPlain(s.SQL)
			st := Statement{Protocol: s.Protocol, SQL: sql, Tag: s.Tag, Rows: s.Rows}
			return appendStatementPlain(buf, &st, plain)
		}},
	} {
		for _, cold := range []bool{false, true} {
			name := tc.name + "/hot"
			if cold {
				name = tc.name + "/cold"
			}
			b.Run(name, func(b *testing.B) {
				buf := make([]byte, 0, 256)
				s := session.Statement{Protocol: "simple", SQL: texts[0], Tag: "SELECT 1", Rows: 1}
				i := 0
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				c0 := threadCPU()
				for b.Loop() {
					if cold {
						// A stride of 4 KiB and more so that no prefetcher
						// brings the next text in.
						i = (i + 4099) % n
						s.SQL = texts[i]
					}
					buf = tc.enc(buf[:0], &s)
				}
				b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
