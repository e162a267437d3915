package redact

import (
	"strings"
	"testing"
)

func TestSQL(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "SELECT 1", "SELECT 1"},
		{"no secret, constants kept", "SELECT * FROM t WHERE name = 'alice'", "SELECT * FROM t WHERE name = 'alice'"},
		{"password literal", "ALTER ROLE x PASSWORD 'hunter2'", "ALTER ROLE x PASSWORD '<redacted>'"},
		{"doubled quote", "alter user x with encrypted password 'a''b'", "alter user x with encrypted password '<redacted>'"},
		{"dollar quoted", "CREATE ROLE x LOGIN PASSWORD $$s3cret$$", "CREATE ROLE x LOGIN PASSWORD '<redacted>'"},
		{"tagged dollar", "CREATE ROLE x PASSWORD $p$s3$$cret$p$ LOGIN", "CREATE ROLE x PASSWORD '<redacted>' LOGIN"},
		{"escape string", `ALTER ROLE x PASSWORD E'hun\'ter2'`, "ALTER ROLE x PASSWORD '<redacted>'"},
		{"format argument", "DO $$BEGIN EXECUTE format('ALTER ROLE x PASSWORD %L', 'hunter2'); END$$", "DO '<redacted>'"},
		{"format outside DO", "SELECT format('ALTER ROLE x PASSWORD %L', 'hunter2')", "SELECT format('<redacted>', '<redacted>')"},
		{"dblink url", "SELECT dblink('postgres://u:pw@h/db', 'select 1')", "SELECT dblink('<redacted>', 'select 1')"},
		{"dblink conninfo", "SELECT dblink_connect('host=h password=abc user=u')", "SELECT dblink_connect('<redacted>')"},
		{"token compared", "SELECT * FROM sessions WHERE token = 'abc'", "SELECT * FROM sessions WHERE token = '<redacted>'"},
		{"credential value alone", "INSERT INTO t VALUES ('AKIAABCDEFGHIJKLMNOP', 'x')", "INSERT INTO t VALUES ('<redacted>', 'x')"},
		{"parameters kept", "UPDATE users SET password_hash = $1 WHERE id = $2", "UPDATE users SET password_hash = $1 WHERE id = $2"},
		{"quoted identifier is not a constant", `ALTER ROLE "it's" PASSWORD 'x'`, `ALTER ROLE "it's" PASSWORD '<redacted>'`},
		{"comment is not a constant", "ALTER ROLE x /* don't */ PASSWORD 'x' -- it's", "ALTER ROLE x /* don't */ PASSWORD '<redacted>' -- it's"},
		{"nested comment", "ALTER ROLE x /* a /* 'b' */ c' */ PASSWORD 'x'", "ALTER ROLE x /* a /* 'b' */ c' */ PASSWORD '<redacted>'"},
		{"unterminated", "ALTER ROLE x PASSWORD 'hunter2", "ALTER ROLE x PASSWORD '<redacted>'"},
		{"credential outside constants", "SELECT 1 -- postgres://u:pw@h/db", Marker},
		{"name ending in E", "SELECT somE'x' FROM t WHERE secret = 1", "SELECT somE'<redacted>' FROM t WHERE secret = 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SQL(tc.in); got != tc.want {
				t.Errorf("SQL(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

func FuzzSQL(f *testing.F) {
	for _, s := range []string{
		"ALTER ROLE x PASSWORD 'hunter2'", "DO $$BEGIN EXECUTE format('ALTER ROLE x PASSWORD %L', 'hunter2'); END$$",
		`E'\\'`, "$a$ $a", "/* /* */", `"a""b" 'c''d'`, "password $1 $$", "x'://a:b@c'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// The prefilter must pass whatever the patterns match (ASCII: the
		// patterns' case folding also knows U+017F and U+212A, which no
		// SQL keyword is spelt with).
		if ascii(s) && (secretWords.MatchString(s) || secretValue.MatchString(s)) && !suspect(s) {
			t.Fatalf("prefilter misses %q", s)
		}
		if suspect(s) != containsTrigger(s) {
			t.Fatalf("suspect(%q) = %v, but the triggers say otherwise", s, suspect(s))
		}
		out := SQL(s)
		if SQL(out) != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, out, SQL(out))
		}
		if !secretWords.MatchString(out) {
			return
		}
		// In a statement that names a secret, no constant but the marker is left.
		lex(out, func(start, end int) {
			if c := out[start:end]; c != Marker {
				t.Fatalf("SQL(%q) = %q keeps constant %q", s, out, c)
			}
		})
		if strings.Contains(s, "hunter2") && strings.Count(out, "hunter2") > strings.Count(s, "hunter2") {
			t.Fatalf("grew a secret: %q", out)
		}
	})
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// containsTrigger is suspect the slow way: the text folded to lower case
// (ASCII only, as suspect does), searched for each trigger.
func containsTrigger(s string) bool {
	b := []byte(s)
	for i, c := range b {
		b[i] = lower(c)
	}
	for _, t := range triggers {
		if strings.Contains(string(b), t) {
			return true
		}
	}
	return false
}

// Every recorded statement passes through SQL: one with nothing secret in
// it must cost next to nothing.
func BenchmarkSQLClean(b *testing.B) {
	s := "SELECT abalance FROM pgbench_accounts WHERE aid = 48213; UPDATE pgbench_tellers SET tbalance = tbalance + 12 WHERE tid = 7;"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if SQL(s) != s {
			b.Fatal("changed")
		}
	}
}

// TestSuspect holds suspect to the triggers, where a pair of bytes starts
// one trigger but the text goes on as another's.
func TestSuspect(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"", false},
		{"s", false},
		{"SELECT 1", false},
		{"seonfig", false}, // "se" starts "secret", "onfig" ends "sconfig"
		{"SCONFIG", true},
		{"x sk-", true},
		{"sk", false},
		{"a secret", true},
		{"a SeCrEt", true},
		{"ends in passw", true},
		{"ends in pass", false},
		{"://", true},
		// Triggers at odd and even offsets, found by their first pair or
		// by their second; pairs of one trigger around another's start.
		{"xapi", true},
		{"xxapi", true},
		{"xxxmd5", true},
		{"abcde SK-", true},
		{"ap", false},
		{"xap", false},
		{"pasSw", true},
		{"opassw", true},
		{"ecr", false},
		{"secre", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := suspect(tc.in); got != tc.want || got != containsTrigger(tc.in) {
				t.Fatalf("suspect(%q) = %v, want %v (triggers: %v)", tc.in, got, tc.want, containsTrigger(tc.in))
			}
		})
	}
}

// FuzzSuspect holds suspect, which looks at every other pair of bytes, to
// the plain search for every trigger, on any text.
func FuzzSuspect(f *testing.F) {
	for _, s := range []string{"", "SELECT 1", "a secret", "xx SK-abc", "x://y", "-----BEGIN ", "pgp_sym_encrypt", "xpgp_sy"} {
		f.Add(s)
	}
	for _, t := range triggers {
		f.Add("x" + strings.ToUpper(t))
		f.Add(t[:len(t)-1])
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := suspect(s), containsTrigger(s); got != want {
			t.Fatalf("suspect(%q) = %v, the triggers say %v", s, got, want)
		}
	})
}

// TestSQLPlain holds the one pass to the two it replaces (SQL, then
// counting plain bytes one by one) where the scan changes hands: a trigger
// or a byte to escape in each place of a word, the last whole word and the
// bytes after it.
func TestSQLPlain(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"pgbench", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"},
		{"redacted", "ALTER ROLE x PASSWORD 'hunter2'"},
		{"trigger kept", "SELECT * FROM tokens WHERE id = 1"},
		{"quote then trigger", `SELECT "a" FROM t WHERE secret = 'x'`},
		{"newline", "SELECT 1\nFROM t"},
		{"non-ASCII", "SELECT 'é' FROM t"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkSQLPlain(t, tc.in) })
	}
	for _, odd := range []string{"api", "\"", "<", "\n", "\x80", "sk-"} {
		for at := 0; at < 20; at++ {
			checkSQLPlain(t, strings.Repeat("a", at)+odd+strings.Repeat("b", 20-at))
		}
	}
	// Every length around the last whole word, the odd byte at each place
	// (the tail is read as a word overlapping the one before).
	for n := 0; n <= 25; n++ {
		checkSQLPlain(t, strings.Repeat("c", n))
		for _, odd := range []byte{'"', '<', '\\', '&', '\n', 0x7f, 0x80, 0xff} {
			for at := 0; at < n; at++ {
				b := []byte(strings.Repeat("c", n))
				b[at] = odd
				checkSQLPlain(t, string(b))
			}
		}
	}
}

// FuzzSQLPlain holds SQLPlain to SQL and to the plain bytes counted one by
// one, on any text.
func FuzzSQLPlain(f *testing.F) {
	for _, s := range []string{"", "SELECT 1", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
		"ALTER ROLE x PASSWORD 'hunter2'", "select 1 -- <b>\n", "xxxxxxxAPI", "xxxxxxxxsk-", "x://y", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(checkSQLPlain)
}

// checkSQLPlain: the text is SQL's; the plain bytes counted are plain, and
// all of them where the text holds no trigger (a suspect text is rare, and
// the encoder looks at the rest itself).
func checkSQLPlain(t *testing.T, in string) {
	out, plain := SQLPlain(in)
	if want := SQL(in); out != want {
		t.Fatalf("SQLPlain(%q) = %q, SQL %q", in, out, want)
	}
	n := 0
	for n < len(out) && plainByte(out[n]) {
		n++
	}
	if plain < 0 || plain > n {
		t.Fatalf("SQLPlain(%q): %d bytes counted plain, %d are", in, plain, n)
	}
	if !suspect(in) && plain != n {
		t.Fatalf("SQLPlain(%q): %d bytes counted plain, all %d could be", in, plain, n)
	}
}

// plainByte is PlainByte's definition, one byte at a time.
func plainByte(c byte) bool {
	return c >= 0x20 && c < 0x80 && !strings.ContainsRune(`"\<>&`, rune(c))
}

// TestPlainWord holds PlainWord to PlainByte on each byte in each place of
// a word, and PlainByte to plainByte.
func TestPlainWord(t *testing.T) {
	for c := 0; c < 256; c++ {
		if PlainByte(byte(c)) != plainByte(byte(c)) {
			t.Fatalf("PlainByte(%#x) = %v", c, PlainByte(byte(c)))
		}
		for at := 0; at < 8; at++ {
			x := uint64(0x6161616161616161)&^(0xff<<(8*at)) | uint64(c)<<(8*at)
			if PlainWord(x) != plainByte(byte(c)) {
				t.Fatalf("PlainWord with %#x at %d = %v", c, at, PlainWord(x))
			}
		}
	}
}

// BenchmarkSQLPlain is the recorder's pass over pgbench -S's statement.
func BenchmarkSQLPlain(b *testing.B) {
	s := "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
	for b.Loop() {
		if out, plain := SQLPlain(s); out != s || plain != len(s) {
			b.Fatal("changed")
		}
	}
}
