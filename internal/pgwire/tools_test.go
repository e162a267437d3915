package pgwire

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/localtls"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// TestUpstreamAuthAndTLS logs in upstream with each supported method and
// TLS mode.
func TestUpstreamAuthAndTLS(t *testing.T) {
	scram := pgtest.Start(t, pgtest.Options{})
	md5 := pgtest.Start(t, pgtest.Options{Auth: "md5"})
	ssl := pgtest.Start(t, pgtest.Options{SSL: true})
	tests := []struct {
		name       string
		pg         *pgtest.Server
		mode, ca   string
		serverName string
		wantSSL    bool
		wantCode   string
	}{
		{"scram plain", scram, "disable", "", "", false, ""},
		{"scram prefer without server TLS", scram, "prefer", "", "", false, ""},
		{"md5 plain", md5, "disable", "", "", false, ""},
		{"tls require", ssl, "require", "", "", true, ""},
		{"tls prefer", ssl, "prefer", "", "", true, ""},
		{"tls verify-full", ssl, "verify-full", ssl.CACert, "", true, ""},
		{"tls verify-full wrong name", ssl, "verify-full", ssl.CACert, "db.example", false, "08001"},
		{"tls require against plain server", scram, "require", "", "", false, "08001"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.pg, func(o *Options) {
				o.Upstream.TLSMode, o.Upstream.CAFile, o.Upstream.ServerName = tc.mode, tc.ca, tc.serverName
			})
			c, err := pgx.Connect(ctx(t), h.url("postgres"))
			if tc.wantCode != "" {
				if pgCode(err) != tc.wantCode {
					t.Fatalf("connect: %v, want %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx(t))
			var ssl bool
			if err := c.QueryRow(ctx(t), "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil {
				t.Fatal(err)
			}
			if ssl != tc.wantSSL {
				t.Fatalf("upstream ssl = %v, want %v", ssl, tc.wantSSL)
			}
		})
	}
}

func clientTLS(t testing.TB) (func(*Options), string) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, err := localtls.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *Options) { o.ClientTLS = cfg }, filepath.Join(dir, "proxy.crt")
}

func run(t *testing.T, h *harness, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGPORT="+itoa(h.port), "PGUSER=whoever",
		"PGDATABASE=postgres", "PGCONNECT_TIMEOUT=10")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// requireTools skips the test when a client tool is missing, except under
// CI=true, where a missing tool is a broken CI machine and must fail the
// build rather than quietly drop the test.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found on PATH (CI=true: install it with tests/deps.sh): %v", tool, err)
			}
			t.Skipf("%s not installed (tests/deps.sh installs it)", tool)
		}
	}
}

// TestRequireTools checks that a missing tool fails the test under CI=true
// and skips it otherwise.
func TestRequireTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // an empty folder: no psql, no pgbench
	for _, tc := range []struct {
		ci                 string
		wantFail, wantSkip bool
	}{
		{"true", true, false},
		{"", false, true},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			rec := &recordingTB{TB: t}
			done := make(chan struct{})
			go func() { defer close(done); requireTools(rec, "psql", "pgbench") }()
			<-done
			if rec.failed != tc.wantFail || rec.skipped != tc.wantSkip {
				t.Fatalf("CI=%q: failed=%v skipped=%v, want failed=%v skipped=%v (%s)",
					tc.ci, rec.failed, rec.skipped, tc.wantFail, tc.wantSkip, rec.msg)
			}
		})
	}
}

// recordingTB records Fatalf and Skipf instead of acting on the real test;
// like them, it ends the calling goroutine.
type recordingTB struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestTools drives psql and pgbench through the proxy, with TLS on the
// client leg and verify-full TLS upstream.
func TestTools(t *testing.T) {
	requireTools(t, "psql", "pgbench")
	pg := pgtest.Start(t, pgtest.Options{SSL: true})
	tlsOpt, proxyCert := clientTLS(t)
	h := newHarness(t, pg, func(o *Options) {
		tlsOpt(o)
		o.Upstream.TLSMode, o.Upstream.CAFile = "verify-full", pg.CACert
	})
	req := []string{"PGSSLMODE=require"}

	t.Run("psql over TLS", func(t *testing.T) {
		out := run(t, h, req, "psql", "-X", "-w", "-c", `\conninfo`)
		if !strings.Contains(out, "SSL connection") {
			t.Fatalf("psql did not use TLS: %s", out)
		}
		// A client that verifies the proxy against proxy.crt.
		run(t, h, []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + proxyCert}, "psql", "-X", "-w", "-c", "select 1")
		// Direct TLS negotiation (PostgreSQL 17 clients), here from pgx.
		for _, neg := range []string{"postgres", "direct"} {
			c, err := pgx.Connect(ctx(t), h.url("postgres", "sslmode", "require", "sslnegotiation", neg))
			if err != nil {
				t.Fatalf("sslnegotiation=%s: %v", neg, err)
			}
			if c.PgConn().Conn().(interface{ ConnectionState() tls.ConnectionState }).ConnectionState().Version == 0 {
				t.Fatal("not TLS")
			}
			_ = c.Close(ctx(t))
		}
	})

	t.Run("psql copy", func(t *testing.T) {
		dir := t.TempDir()
		in := filepath.Join(dir, "in.tsv")
		var b strings.Builder
		for i := 0; i < 5000; i++ {
			b.WriteString(itoa(i) + "\tline " + itoa(i) + "\n")
		}
		if err := os.WriteFile(in, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "out.tsv")
		run(t, h, req, "psql", "-X", "-w", "-v", "ON_ERROR_STOP=1",
			"-c", "create table if not exists cpy (id int, s text)",
			"-c", `\copy cpy from '`+in+`'`,
			"-c", `\copy (select * from cpy order by id) to '`+out+`'`)
		got, err := os.ReadFile(out)
		if err != nil || string(got) != b.String() {
			t.Fatalf("\\copy round trip: %v, %d bytes", err, len(got))
		}
	})

	t.Run("pgbench", func(t *testing.T) {
		run(t, h, req, "pgbench", "-i", "-q", "-s", "1")
		for _, mode := range []string{"simple", "extended", "prepared"} {
			out := run(t, h, req, "pgbench", "-n", "-c", "4", "-t", "50", "-M", mode)
			if !strings.Contains(out, "number of transactions actually processed: 200/200") {
				t.Fatalf("pgbench -M %s:\n%s", mode, out)
			}
			if strings.Contains(out, "number of failed transactions: ") && !strings.Contains(out, "failed transactions: 0 ") {
				t.Fatalf("pgbench -M %s had failures:\n%s", mode, out)
			}
		}
	})
}

// countRows is a server stage that decodes every DataRow and rewrites
// none: the decoding path under real clients.
type countRows struct{ rows atomic.Int64 }

func (c *countRows) ServerTypes() string { return "D" }
func (c *countRows) Server(m *ServerMsg) Verdict {
	c.Row(m)
	return Verdict{}
}

func (c *countRows) Row(m *ServerMsg) []byte {
	if m.Body != nil {
		c.rows.Add(1)
	}
	return nil
}

// serverOnly hides a stage's Row: its rows go through Server, the path of
// stages that have no Row.
type serverOnly struct{ ServerStage }

// TestToolsThroughStages drives psql, pgbench (simple, extended, prepared)
// and psycopg2 through a pipeline that refuses some statements and decodes
// every row: each client sees the refusal as an ordinary error and goes on.
func TestToolsThroughStages(t *testing.T) {
	for _, tool := range []string{"psql", "pgbench", "/usr/bin/python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed (tests/deps.sh)", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	pg := pgtest.Start(t, pgtest.Options{})
	rows := &countRows{}
	h := newHarness(t, pg, func(o *Options) {
		o.Stages = func(*session.Session) Stages {
			return Stages{Client: []ClientStage{&refuseStage{types: "QP", match: "forbidden", code: "42501"}},
				Server: []ServerStage{rows}}
		}
	})

	t.Run("psql", func(t *testing.T) {
		out := run(t, h, nil, "psql", "-X", "-w", "-c", "select 'fine' as a", "-c", "begin",
			"-c", "select 'forbidden'", "-c", "select 1", "-c", "rollback", "-c", "select 'after'")
		for _, want := range []string{"fine", "after"} {
			if !strings.Contains(out, want) {
				t.Fatalf("psql output lacks %q:\n%s", want, out)
			}
		}
		cmd := exec.Command("psql", "-X", "-w", "-v", "ON_ERROR_STOP=1", "-c", "select 'forbidden'")
		cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGPORT="+itoa(h.port), "PGUSER=whoever", "PGDATABASE=postgres")
		b, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(b), "refused by the test stage") {
			t.Fatalf("psql refused statement: %v\n%s", err, b)
		}
	})

	t.Run("pgbench", func(t *testing.T) {
		run(t, h, nil, "pgbench", "-i", "-q", "-s", "1")
		before := rows.rows.Load()
		for _, mode := range []string{"simple", "extended", "prepared"} {
			out := run(t, h, nil, "pgbench", "-n", "-c", "4", "-t", "50", "-S", "-M", mode)
			if !strings.Contains(out, "number of transactions actually processed: 200/200") {
				t.Fatalf("pgbench -M %s:\n%s", mode, out)
			}
		}
		if got := rows.rows.Load() - before; got < 600 {
			t.Fatalf("the row stage saw %d rows of pgbench's 600", got)
		}
	})

	t.Run("psycopg2", func(t *testing.T) {
		script := `
import psycopg2, sys
c = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="whoever", dbname="postgres")
cur = c.cursor()
cur.execute("select %s::text", ("fine",))
assert cur.fetchone()[0] == "fine"
try:
    cur.execute("select %s::text || 'forbidden'", ("x",))
    print("not refused"); sys.exit(1)
except psycopg2.Error as e:
    assert e.pgcode == "42501", e.pgcode
c.rollback()
cur.execute("select 2")
assert cur.fetchone()[0] == 2
print("ok")
`
		out := run(t, h, nil, "/usr/bin/python3", "-c", script, itoa(h.port))
		if strings.TrimSpace(out) != "ok" {
			t.Fatalf("psycopg2: %s", out)
		}
	})
}
