package audit

import (
	"slices"
	"strings"
	"testing"
)

// redactArgsEveryPattern is redactArgs without the checks that skip a
// pattern: what it must always agree with.
func redactArgsEveryPattern(args []string) []string {
	if len(args) == 0 {
		return nil
	}
	out := make([]string, len(args))
	for i, a := range args {
		a = connPassword.ReplaceAllString(a, "${1}"+redacted)
		a = urlPassword.ReplaceAllString(a, "${1}"+redacted+"@")
		out[i] = redactSQL(a)
	}
	return out
}

func TestRedactArgsSkipsOnlyWhatCannotMatch(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want string // "" means: unchanged
	}{
		{"host=db password=hunter2 dbname=app", "host=db password=" + redacted + " dbname=app"},
		{"PASSWORD = 'a b\\' c' x", "PASSWORD = " + redacted + " x"},
		{"PaSsWoRd=hunter2", "PaSsWoRd=" + redacted},
		// Case folding beyond ASCII: the long s folds to "s".
		{"paſſword=hunter2", "paſſword=" + redacted},
		{"postgres://bob:hunter2@db/app", "postgres://bob:" + redacted + "@db/app"},
		{"HTTPS://bob:hunter2@example.com", "HTTPS://bob:" + redacted + "@example.com"},
		{"--db=postgresql://bob:hunter2@db password=x", "--db=postgresql://bob:" + redacted + "@db password=" + redacted},
		{"xpassword=hunter2", ""}, // no word boundary: not a libpq keyword
		{"passwor=hunter2", ""},
		{"--no-password", ""},
		{"postgres://db/app", ""},
		{"bob:hunter2@db", ""},
		{"/usr/bin/node", ""},
		{"--env {\"HOME\": \"/root\", \"LANG\": \"C.UTF-8\"}", ""},
		{"naïve password=hunter2", "naïve password=" + redacted},
		{"", ""},
	} {
		want := tc.want
		if want == "" {
			want = tc.arg
		}
		got := redactArgs([]string{tc.arg})
		if len(got) != 1 || got[0] != want {
			t.Errorf("redactArgs(%q) = %q, want %q", tc.arg, got, want)
		}
		if ref := redactArgsEveryPattern([]string{tc.arg}); !slices.Equal(got, ref) {
			t.Errorf("redactArgs(%q) = %q, every pattern gives %q", tc.arg, got, ref)
		}
	}
}

// FuzzRedactArgs holds redactArgs to what running every pattern on every
// argument gives: skipping a pattern must never keep a secret it would
// have removed. Command lines are the agent's to choose.
func FuzzRedactArgs(f *testing.F) {
	for _, s := range []string{"password=x", "PASSWORD='a'", "paſſword=x", "postgres://u:p@h/db",
		"x://a:b@c", "psql -c \"ALTER ROLE x PASSWORD 'y'\"", "--token=abc", "plain", "naïve://u:p@h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		got, want := redactArgs([]string{arg}), redactArgsEveryPattern([]string{arg})
		if !slices.Equal(got, want) {
			t.Fatalf("redactArgs(%q) = %q, every pattern gives %q", arg, got, want)
		}
	})
}

// BenchmarkRedactArgs is a session start record's command lines: a
// client's and its ancestors', none holding a password (the usual case).
func BenchmarkRedactArgs(b *testing.B) {
	args := []string{"/usr/bin/node", "/home/dev/.local/lib/agent/cli.js", "--model", "large",
		"--env", `{"HOME": "/home/dev", "LANG": "C.UTF-8", "PATH": "` + strings.Repeat("/usr/local/bin:", 60) + `"}`,
		"psql", "-h", "db.internal", "-d", "app", "-c", "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day'"}
	b.ReportAllocs()
	for b.Loop() {
		redactArgs(args)
	}
}
