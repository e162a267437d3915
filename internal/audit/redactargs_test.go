package audit

import (
	"slices"
	"strings"
	"testing"
)

// redactArgsEveryPattern is redactArgs without the checks that skip a
// pattern: what it must always agree with.
func redactArgsEveryPattern(args []string) []string {
	return redactArgsWith(args, func(string) argWords { return argWords{secret: true, password: true, auth: true} })
}

// TestRedactArgsSecretsInCommandLines: what an agent's tools put on their
// command lines reaches the audit record without the credentials in it.
func TestRedactArgsSecretsInCommandLines(t *testing.T) {
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
	for _, tc := range []struct {
		name       string
		args, want []string
	}{
		{"option and value", []string{"tool", "--api-key", "k-12345", "--model", "m"},
			[]string{"tool", "--api-key", redacted, "--model", "m"}},
		{"password option", []string{"mysql", "--password", "hunter2", "-h", "db"},
			[]string{"mysql", "--password", redacted, "-h", "db"}},
		{"option=value", []string{"tool", "--client-secret=s3cr3t", "--TOKEN=abc"},
			[]string{"tool", "--client-secret=" + redacted, "--TOKEN=" + redacted}},
		{"env variable", []string{"env", "PGPASSWORD=hunter2", "GITHUB_TOKEN=x", "LANG=C", "psql"},
			[]string{"env", "PGPASSWORD=" + redacted, "GITHUB_TOKEN=" + redacted, "LANG=C", "psql"}},
		{"bearer header", []string{"curl", "-H", "Authorization: Bearer abc.def", "https://api"},
			[]string{"curl", "-H", "Authorization: Bearer " + redacted, "https://api"}},
		{"header without scheme", []string{"curl", "-H", "authorization:abc", "-H", "Accept: x"},
			[]string{"curl", "-H", "authorization:" + redacted, "-H", "Accept: x"}},
		{"credential on its own", []string{"tool", jwt, "AKIAABCDEFGHIJKLMNOP", "plain"},
			[]string{"tool", redacted, redacted, "plain"}},
		{"negated option takes no value", []string{"psql", "--no-password", "app"},
			[]string{"psql", "--no-password", "app"}},
		{"option followed by an option", []string{"tool", "--token", "--verbose"},
			[]string{"tool", "--token", "--verbose"}},
		{"SQL with = is not a key", []string{"psql", "-c", "SELECT 1 WHERE a=1"},
			[]string{"psql", "-c", "SELECT 1 WHERE a=1"}},
		{"inside a shell command", []string{"sh", "-c", `DB_PASSWORD="a b" ./run --api-key k1 --no-password x && curl -H 'Authorization: Bearer t0k' u`},
			[]string{"sh", "-c", "DB_PASSWORD=" + redacted + " ./run --api-key " + redacted + " --no-password x && curl -H 'Authorization: Bearer " + redacted + " u"}},
		{"ordinary options", []string{"node", "cli.js", "--author", "ada", "--port=5432"},
			[]string{"node", "cli.js", "--author", "ada", "--port=5432"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redactArgs(tc.args)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("redactArgs(%q) = %q, want %q", tc.args, got, tc.want)
			}
			if ref := redactArgsEveryPattern(tc.args); !slices.Equal(got, ref) {
				t.Fatalf("redactArgs(%q) = %q, every pattern gives %q", tc.args, got, ref)
			}
		})
	}
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
		// Not a libpq keyword (no word boundary), but a variable named for
		// a password (as DB_PASSWORD=…): its value goes.
		{"xpassword=hunter2", "xpassword=" + redacted},
		{"a xpassword=hunter2", "a xpassword=" + redacted},
		{"passwor=hunter2", "passwor=" + redacted}, // pass…=: any word with "pass" in it
		{"passer=hunter2", "passer=" + redacted},
		{"pas=hunter2", ""},
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
