package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// pgWorld is a remote PostgreSQL (SCRAM, TLS on) in a namespace, prepared as
// an Airlock admin would, and a daemon serving it through interception.
type pgWorld struct {
	*env
	host   *testnet.Host
	srv    *pgtest.Server
	dsn    string // what an agent would use: the real host, no password
	pwFile string
	// policyFile, when set, is the daemon's policy_file.
	policyFile string
	tree       bool // intercept mode tree instead of all
}

const pgSetup = `
CREATE ROLE airlock_admin LOGIN CREATEROLE PASSWORD 'admin-secret-1234';
CREATE ROLE app_rw NOLOGIN;
CREATE DATABASE app;
`

const pgAppSetup = `
CREATE TABLE customers (id int PRIMARY KEY, email text, card text);
INSERT INTO customers SELECT g, 'user' || g || '@example.com', '4111 1111 1111 ' || lpad(g::text, 4, '0') FROM generate_series(1, 1000) g;
GRANT USAGE, CREATE ON SCHEMA public TO app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_rw;
`

func newPGWorld(t *testing.T, ttl string) *pgWorld {
	t.Helper()
	return newPGWorldPolicy(t, ttl, "")
}

// newPGWorldPolicy is newPGWorld with a SQL policy file (none when empty).
func newPGWorldPolicy(t *testing.T, ttl, policy string) *pgWorld {
	t.Helper()
	return newPGWorldWith(t, ttl, policy, false)
}

// newPGWorldWith: tree intercepts in tree mode (Cursor's tree only).
func newPGWorldWith(t *testing.T, ttl, policy string, tree bool) *pgWorld {
	t.Helper()
	return newPGWorldConfig(t, ttl, policy, tree, nil)
}

// newPGWorldConfig is newPGWorldWith with a chance to edit the daemon's
// configuration before it starts.
func newPGWorldConfig(t *testing.T, ttl, policy string, tree bool, edit func(string) string) *pgWorld {
	t.Helper()
	w := &pgWorld{env: newEnv(t), tree: tree}
	if policy != "" {
		w.policyFile = filepath.Join(t.TempDir(), "policy.yaml")
		if err := os.WriteFile(w.policyFile, []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host, SSL: true})
	w.srv.Psql(t, "postgres", pgSetup)
	w.srv.Psql(t, "app", pgAppSetup)
	w.pwFile = filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := w.daemonConfig(ttl)
	if w.tree {
		cfg = strings.Replace(cfg, "  mode: all\n", "  mode: tree\n  executables: [cursor]\n", 1)
	}
	if edit != nil {
		cfg = edit(cfg)
	}
	w.config(cfg)
	w.startDaemon()
	w.dsn = fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=10", w.host.V4)
	return w
}

// daemonConfig is the configuration of a daemon serving w's server.
func (w *pgWorld) daemonConfig(ttl string) string {
	return fmt.Sprintf(`intercept:
  mode: all
targets:
  - name: appdb
    address: %s:5432
  - name: appdb6
    address: "[%s]:5432"
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb, appdb6]
    postgres:
      databases: [app]
      upstream:
        tls:
          mode: verify-full
          ca_file: %s
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: %s
        group_roles: [app_rw]
        ttl: %s
`, w.host.V4, w.host.V6, w.srv.CACert, w.pwFile, ttl) + w.policyLine()
}

func (w *pgWorld) policyLine() string {
	if w.policyFile == "" {
		return ""
	}
	return "policy_file: " + w.policyFile + "\n"
}

// run runs a client command inside the intercepted cgroup.
func (w *pgWorld) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (w *pgWorld) psql(t *testing.T, dsn string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := w.run(ctx, "psql", append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1", dsn}, args...)...)
	if err != nil {
		t.Fatalf("psql %v: %v\n%s\ndaemon:\n%s", args, err, out, w.daemonOut.String())
	}
	return strings.TrimSpace(out)
}

func (w *pgWorld) ourRoles(t *testing.T) []string {
	out := w.srv.Psql(t, "postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'airlock\\_%' AND rolname NOT IN ('airlock_admin', 'airlock_orphans') ORDER BY 1")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", d, what)
}

func TestPostgresThroughAirlock(t *testing.T) {
	for _, sockhash := range []bool{false, true} {
		t.Run(fmt.Sprintf("sockhash=%v", sockhash), func(t *testing.T) {
			w := newPGWorldConfig(t, "10m", "", false, func(cfg string) string {
				return strings.Replace(cfg, "  mode: all\n", fmt.Sprintf("  mode: all\n  sockhash: %v\n", sockhash), 1)
			})
			testPostgresThroughAirlock(t, w, sockhash)
		})
	}
}

// testPostgresThroughAirlock runs real clients through w's daemon, with the
// client leg on loopback TCP or through the sockhash.
func testPostgresThroughAirlock(t *testing.T, w *pgWorld, sockhash bool) {

	t.Run("psql reaches the real server as a just-in-time role", func(t *testing.T) {
		out := w.psql(t, w.dsn, "-c", "SELECT current_user, current_setting('application_name'), count(*) FROM customers")
		parts := strings.Split(out, "|")
		if len(parts) != 3 || !strings.HasPrefix(parts[0], "airlock_") || parts[2] != "1000" {
			t.Fatalf("unexpected answer %q", out)
		}
		if !strings.HasPrefix(parts[1], "airlock:") || !strings.HasSuffix(parts[1], ":root") {
			t.Errorf("application_name %q does not attribute the session (want airlock:<session>:root)", parts[1])
		}
		waitFor(t, "the session's role to be dropped", 10*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	})

	t.Run("psql with sslmode=require on the client leg", func(t *testing.T) {
		out := w.psql(t, strings.Replace(w.dsn, "sslmode=disable", "sslmode=require", 1), "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		if out != "t" {
			t.Fatalf("upstream leg not TLS (pg_stat_ssl.ssl = %q)", out)
		}
	})

	t.Run("psql \\copy both ways", func(t *testing.T) {
		dir := t.TempDir()
		_ = os.Chmod(dir, 0o777)
		f := filepath.Join(dir, "out.csv")
		w.psql(t, w.dsn, "-c", fmt.Sprintf(`\copy (SELECT id, email FROM customers WHERE id <= 100) TO '%s' CSV`, f))
		b, err := os.ReadFile(f)
		if err != nil || strings.Count(string(b), "\n") != 100 {
			t.Fatalf("copy out wrote %d lines (%v)", strings.Count(string(b), "\n"), err)
		}
		w.psql(t, w.dsn, "-c", "CREATE TEMP TABLE t(id int, email text)", "-c", fmt.Sprintf(`\copy t FROM '%s' CSV`, f),
			"-c", "SELECT count(*) FROM t")
	})

	t.Run("psql cancel of pg_sleep", func(t *testing.T) {
		cmd := exec.Command("psql", "-X", "-At", w.dsn, "-c", "SELECT pg_sleep(30)")
		cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "pg_sleep to run upstream", 15*time.Second, func() bool {
			return w.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'") == "1"
		})
		_ = cmd.Process.Signal(syscall.SIGINT) // what Ctrl-C does: psql sends a CancelRequest
		_ = cmd.Wait()
		if !strings.Contains(out.String(), "canceling statement due to user request") || time.Since(start) > 20*time.Second {
			t.Fatalf("cancel did not reach the upstream backend: %q after %s", out.String(), time.Since(start))
		}
	})

	t.Run("pgbench simple, extended and prepared", func(t *testing.T) {
		// Tables are created by the admin: ephemeral roles own nothing.
		init := exec.Command("pgbench", "-i", "-s", "1", "-q", "-h", w.srv.Dir, "-p", "5432", "-U", "postgres", "app")
		if out, err := init.CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		w.srv.Psql(t, "app", "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_rw")
		for _, mode := range []string{"simple", "extended", "prepared"} {
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			out, err := w.run(ctx, "pgbench", "-n", "-c", "4", "-t", "50", "-M", mode, w.dsn)
			cancel()
			if err != nil || !strings.Contains(out, "number of failed transactions: 0") {
				t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
			}
			if !strings.Contains(out, "number of transactions actually processed: 200/200") {
				t.Fatalf("pgbench -M %s did not finish every transaction:\n%s", mode, out)
			}
		}
	})

	t.Run("pgx: simple, extended, batch, COPY, LISTEN/NOTIFY, large result, errors", func(t *testing.T) {
		res := w.pgxHelper(t, "scenario", w.dsn)
		for _, check := range []string{"simple", "extended", "batch", "copy_from", "copy_to", "notify", "large", "sqlstate"} {
			if res[check] != "ok" {
				t.Errorf("pgx %s: %s", check, res[check])
			}
		}
	})

	t.Run("psycopg2", func(t *testing.T) {
		script := `
import sys, psycopg2
c = psycopg2.connect(sys.argv[1])
cur = c.cursor()
cur.execute("SELECT count(*) FROM customers WHERE id < %s", (11,))
print(cur.fetchone()[0])
cur.execute("SELECT current_user")
print(cur.fetchone()[0])
c.close()
`
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := w.run(ctx, "/usr/bin/python3", "-c", script, w.dsn)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if err != nil || len(lines) != 2 || lines[0] != "10" || !strings.HasPrefix(lines[1], "airlock_") {
			t.Fatalf("psycopg2: %v\n%s", err, out)
		}
	})

	t.Run("refusals reach the client as ErrorResponses", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := w.run(ctx, "psql", "-X", "-At", strings.Replace(w.dsn, "dbname=app", "dbname=postgres", 1), "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, "postgres") || !strings.Contains(out, "app") {
			t.Fatalf("a database outside the allowed list must be refused with a message naming the allowed ones: %v\n%s", err, out)
		}
	})

	t.Run("garbage instead of a startup message is refused and the daemon keeps serving", func(t *testing.T) {
		res := e2eDialRaw(t, w, "GET / HTTP/1.1\r\nHost: db\r\n\r\n")
		if !strings.Contains(res, "08P01") {
			t.Fatalf("want an ErrorResponse with SQLSTATE 08P01, got %q", res)
		}
		if out := w.psql(t, w.dsn, "-c", "SELECT 42"); out != "42" {
			t.Fatalf("after garbage, psql got %q", out)
		}
		if strings.Contains(w.daemonOut.String(), "panic") {
			t.Fatal("daemon panicked")
		}
	})

	t.Run("the client leg went where configured", func(t *testing.T) {
		st := w.status()
		want := "tcp (disabled)"
		if sockhash {
			want = "sockhash"
		}
		if st.Daemon.ClientLeg != want {
			t.Fatalf("client leg %q, want %q", st.Daemon.ClientLeg, want)
		}
		// With the sockhash every client above sent through it: psql, TLS,
		// COPY both ways, pgbench, pgx; without it nothing.
		if redirected := st.Counters["client_leg_redirected"]; sockhash != (redirected >= 1000 && st.Counters["client_leg_joined"] > 0) {
			t.Fatalf("client leg %q, counters %v", st.Daemon.ClientLeg, st.Counters)
		}
		if out := w.mustAirlock(t, "status"); !strings.Contains(out, "client leg") || !strings.Contains(out, want) {
			t.Fatalf("airlock status does not show the client leg:\n%s", out)
		}
	})

	t.Run("two sessions of one person get two roles, each only in app_rw", func(t *testing.T) {
		a := w.pgxHold(t, w.dsn)
		defer a.release()
		b := w.pgxHold(t, w.dsn)
		defer b.release()
		if a.user == b.user {
			t.Fatalf("both sessions got role %s", a.user)
		}
		for _, r := range []string{a.user, b.user} {
			got := w.srv.Psql(t, "postgres", fmt.Sprintf(`SELECT string_agg(g.rolname, ','), bool_and(r.rolvaliduntil > now()) FROM pg_roles r
				JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = '%s' GROUP BY r.rolname`, r))
			if got != "app_rw|t" {
				t.Errorf("role %s: memberships|valid = %q, want app_rw|t", r, got)
			}
		}
		a.release()
		b.release()
		waitFor(t, "both roles dropped after their sessions", 15*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	})
}

func TestEphemeralRoleLifetime(t *testing.T) {
	w := newPGWorld(t, "5s")

	t.Run("a session outliving its TTL is cut", func(t *testing.T) {
		s := w.pgxHold(t, w.dsn)
		defer s.release()
		time.Sleep(7 * time.Second)
		after := s.release()
		if !strings.Contains(after, "expired") && !strings.Contains(after, "57P01") {
			t.Fatalf("query after the TTL should fail with the session cut, got %q", after)
		}
		waitFor(t, "the expired session's role to be dropped", 15*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	})

	t.Run("kill -9 mid-session: role expires, then is swept on restart", func(t *testing.T) {
		s := w.pgxHold(t, w.dsn)
		defer s.release()
		role := s.user
		w.killDaemon()
		// Prove VALID UNTIL is what stops it: give the role back the LOGIN
		// the proxy took away after its login, and a password we know; the
		// expiry must still refuse the login.
		w.srv.Psql(t, "postgres", fmt.Sprintf("ALTER ROLE %s LOGIN PASSWORD 'known-pw'", pgx.Identifier{role}.Sanitize()))
		time.Sleep(6 * time.Second)
		direct := w.srv.URL(role, "known-pw", "app")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, direct); err == nil {
			c.Close(ctx)
			t.Fatalf("role %s could still log in after VALID UNTIL passed", role)
		}
		if len(w.ourRoles(t)) == 0 {
			t.Fatal("role vanished without the daemon: the test proves nothing")
		}
		w.startDaemon()
		waitFor(t, "the restarted daemon to sweep the leftover role", 15*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	})
}

// held is a pgx session kept open by the helper until release.
type held struct {
	user    string
	release func() string
}

func (w *pgWorld) pgxHold(t *testing.T, dsn string) held {
	t.Helper()
	cmd := w.clientIn(w.clients, 0, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=hold", "PGX_DSN="+dsn)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("pgx helper: %v\ndaemon:\n%s", err, w.daemonOut.String())
	}
	var first map[string]string
	mustJSON(t, line, &first)
	if first["error"] != "" {
		t.Fatalf("pgx helper: %s", first["error"])
	}
	done := false
	var after string
	return held{user: first["user"], release: func() string {
		if done {
			return after
		}
		done = true
		_ = stdin.Close()
		rest, _ := io.ReadAll(r)
		_ = cmd.Wait()
		var m map[string]string
		if json.Unmarshal(rest, &m) == nil {
			after = m["after"]
		}
		return after
	}}
}

func (w *pgWorld) pgxHelper(t *testing.T, mode, dsn string) map[string]string {
	t.Helper()
	cmd := w.clientIn(w.clients, 0, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE="+mode, "PGX_DSN="+dsn)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pgx helper: %v\n%s", err, out)
	}
	var m map[string]string
	mustJSON(t, string(out), &m)
	return m
}

// e2eDialRaw sends payload from inside the intercepted cgroup to the
// database's address and returns everything the proxy answered.
func e2eDialRaw(t *testing.T, w *pgWorld, payload string) string {
	t.Helper()
	cmd := w.clientIn(w.clients, 0, "AIRLOCK_E2E_HELPER=raw", "RAW_ADDR="+net.JoinHostPort(w.host.V4.String(), "5432"), "RAW_PAYLOAD="+payload)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("raw helper: %v", err)
	}
	return string(out)
}

// helperRaw writes RAW_PAYLOAD to RAW_ADDR and copies the answer to stdout
// until the peer closes (bounded by a deadline).
func helperRaw() {
	c, err := net.DialTimeout("tcp", os.Getenv("RAW_ADDR"), 5*time.Second)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte(os.Getenv("RAW_PAYLOAD")))
	_, _ = io.Copy(os.Stdout, c)
}
