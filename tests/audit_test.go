package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"

	_ "modernc.org/sqlite"
)

// newAuditWorld is newPGWorld with an audit section and extra server
// configuration (log_statement, for comparing with the server's own log).
func newAuditWorld(t *testing.T, auditYAML string, pgConf ...string) *pgWorld {
	t.Helper()
	w := configAuditWorld(t, auditYAML, pgConf...)
	w.startDaemon()
	w.dsn = fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=10", w.host.V4)
	return w
}

// configAuditWorld is newAuditWorld up to the daemon's configuration
// written, not started (for a test that changes it first).
func configAuditWorld(t *testing.T, auditYAML string, pgConf ...string) *pgWorld {
	t.Helper()
	w := &pgWorld{env: newEnv(t)}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host, Conf: pgConf})
	w.srv.Psql(t, "postgres", pgSetup)
	w.srv.Psql(t, "app", pgAppSetup)
	w.pwFile = filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.config(appdbConfig(w.host.V4, w.pwFile) + auditYAML)
	return w
}

// appdbConfig is a daemon configuration intercepting every process's
// connections to host's appdb and serving them with ephemeral roles in
// app_rw, made with the admin password in pwFile.
func appdbConfig(host netip.Addr, pwFile string) string {
	return fmt.Sprintf(`intercept:
  mode: all
targets:
  - name: appdb
    address: %s:5432
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb]
    postgres:
      databases: [app]
      upstream:
        tls:
          mode: disable
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: %s
        group_roles: [app_rw]
        ttl: 10m
`, host, pwFile)
}

// airlock runs the CLI as uid against the test daemon.
func (e *env) airlock(uid uint32, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "airlock"), args...)
	cmd.Env = append(os.Environ(), "AIRLOCK_SOCKET="+e.socket())
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) mustAirlock(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.airlock(0, args...)
	if err != nil {
		t.Fatalf("airlock %v: %v\n%s", args, err, out)
	}
	return out
}

// exportRecords reads the whole record through `airlock audit export`.
func (e *env) exportRecords(t *testing.T) []audit.Record {
	t.Helper()
	out := e.mustAirlock(t, "audit", "export", "--format", "jsonl")
	var recs []audit.Record
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

func statementsOf(t *testing.T, recs []audit.Record) []string {
	t.Helper()
	var out []string
	for _, r := range recs {
		if r.Kind != "statement" {
			continue
		}
		var st audit.Statement
		if err := json.Unmarshal(r.Data, &st); err != nil {
			t.Fatal(err)
		}
		if st.SQLState == "" {
			out = append(out, strings.TrimSpace(st.SQL))
		}
	}
	return out
}

func TestAuditRecordsSessions(t *testing.T) {
	// The guard refuses password changes by default (tests/guard_test.go);
	// this test is about how the record redacts one that ran, so its policy
	// lets it through.
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte("role_changes: allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newAuditWorld(t, "audit:\n  commit_interval: 10ms\npolicy_file: "+policyFile+"\n")
	secret := "ALTER ROLE CURRENT_USER PASSWORD 'hunter2-top-secret'"
	// A secret on the client's command line too (psql -v sets a variable):
	// the session's start record keeps the command line, not the secret.
	w.psql(t, w.dsn, "-v", "api_token=sekrit-cmdline-77", "-c", "SELECT count(*) FROM customers WHERE id < 10", "-c", "SELECT 'audit-marker-42'", "-c", secret+"; SELECT 1")

	// psql may exit before the proxy has released the role and recorded
	// the session's end; the record has it shortly after.
	var ss []audit.SessionSummary
	waitFor(t, "the session's end in the record", 20*time.Second, func() bool {
		out := w.mustAirlock(t, "sessions", "--json")
		if err := json.Unmarshal([]byte(out), &ss); err != nil || len(ss) != 1 {
			t.Fatalf("airlock sessions: %v\n%s", err, out)
		}
		return ss[0].End != nil
	})
	s := ss[0]
	if s.Start.Person.Name != "root" || s.Start.Person.UID != 0 || !strings.HasSuffix(s.Start.Process.Exe, "/psql") ||
		s.Start.Connection != "appdb" || s.Start.Dest != w.host.V4.String()+":5432" || s.Start.Process.PID == 0 {
		t.Fatalf("session start recorded wrong: %+v", s.Start)
	}
	if s.End == nil || s.End.Reason != "client_quit" || s.End.Database != "app" || !strings.HasPrefix(s.End.UpstreamRole, "airlock_") {
		t.Fatalf("session end recorded wrong: %+v", s.End)
	}

	// Filters, as the CLI passes them.
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--person", "root"}, 1},
		{[]string{"--person", "nobody"}, 0},
		{[]string{"--process", "psql"}, 1},
		{[]string{"--process", "python"}, 0},
		{[]string{"--connection", "appdb"}, 1},
		{[]string{"--since", "1h"}, 1},
		{[]string{"--until", "1h"}, 0},
	} {
		var got []audit.SessionSummary
		if err := json.Unmarshal([]byte(w.mustAirlock(t, append([]string{"sessions", "--json"}, tc.args...)...)), &got); err != nil || len(got) != tc.want {
			t.Errorf("sessions %v: %d sessions (%v), want %d", tc.args, len(got), err, tc.want)
		}
	}

	// The statements, in order, with the password literal redacted.
	replay := w.mustAirlock(t, "replay", s.ID)
	for _, want := range []string{"SELECT count(*) FROM customers WHERE id < 10", "SELECT 'audit-marker-42'", "PASSWORD '<redacted>'", "→ SELECT 1 [1 rows"} {
		if !strings.Contains(replay, want) {
			t.Fatalf("replay lacks %q:\n%s", want, replay)
		}
	}
	if strings.Contains(replay, "hunter2") {
		t.Fatalf("a password reached the audit record:\n%s", replay)
	}
	cmdShow := w.mustAirlock(t, "sessions", "show", s.ID)
	if !strings.Contains(cmdShow, "api_token=<redacted>") {
		t.Fatalf("sessions show lacks the client's redacted command line:\n%s", cmdShow)
	}
	if export := w.mustAirlock(t, "audit", "export", "--format", "jsonl"); strings.Contains(cmdShow+export, "sekrit-cmdline-77") {
		t.Fatalf("a secret on the client's command line reached the audit record:\n%s", cmdShow)
	}
	if i, j := strings.Index(replay, "customers"), strings.Index(replay, "audit-marker-42"); i < 0 || j < i {
		t.Fatalf("replay out of order:\n%s", replay)
	}
	show := w.mustAirlock(t, "sessions", "show", s.ID)
	for _, want := range []string{`person\s+root, uid 0`, `/psql`, `after \S+ \(client_quit\)`, `credential\.create\s+ephemeral role airlock_`, `TIMELINE`} {
		if !regexp.MustCompile(want).MatchString(show) {
			t.Fatalf("sessions show lacks %q:\n%s", want, show)
		}
	}
	// The password was on psql's command line too.
	if strings.Contains(show, "hunter2") {
		t.Fatalf("a password reached the audit record through the command line:\n%s", show)
	}

	// Statements are in the record, not in the daemon's log.
	if strings.Contains(w.daemonOut.String(), "audit-marker-42") || strings.Contains(w.daemonOut.String(), "hunter2") {
		t.Fatalf("statement text reached the daemon log:\n%s", w.daemonOut.String())
	}

	// Another user sees none of root's sessions and may not export or verify.
	out, err := w.airlock(65534, "sessions", "--json")
	if err != nil || strings.TrimSpace(out) != "null" && strings.TrimSpace(out) != "[]" {
		t.Fatalf("nobody's view of the sessions: %v %q", err, out)
	}
	if out, err := w.airlock(65534, "replay", s.ID); err == nil {
		t.Fatalf("nobody replayed root's session:\n%s", out)
	}
	if out, err := w.airlock(65534, "audit", "export"); err == nil || !strings.Contains(out, "auditor_group") {
		t.Fatalf("nobody exported the record: %v\n%s", err, out)
	}

	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify: %s", out)
	}
	st := w.status()
	if st.Audit == nil || !st.Audit.Reachable || st.Audit.Stored == 0 || !strings.HasPrefix(st.Audit.Store, "sqlite:") {
		t.Fatalf("status audit: %+v", st.Audit)
	}

	// Tampering with the embedded store is caught by the daemon's verify:
	// the statement's text edited in place in its block file.
	w.stopDaemon()
	files, _ := filepath.Glob(filepath.Join(w.state, "audit", "blocks", "*.blocks"))
	edited := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "audit-marker-42") {
			continue
		}
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(string(b), "audit-marker-42", "innocent-mark42")), 0o600); err != nil {
			t.Fatalf("tamper: %v", err)
		}
		edited++
	}
	if edited == 0 {
		t.Fatalf("no block file among %v holds the statement", files)
	}
	w.startDaemon()
	out, err = w.airlock(0, "audit", "verify")
	if err == nil || !strings.Contains(out, "edited") {
		t.Fatalf("verify missed an edited statement: %v\n%s", err, out)
	}
}

// Killing airlockd under load loses no statement whose result reached a
// client: every statement the server logged (log_statement=all) is in the
// record, except at most one in flight per connection at the moment of the
// kill; sessions cut that way are closed as interrupted at the next start.
func TestAuditKill9UnderPgbenchLosesNothing(t *testing.T) {
	w := newAuditWorld(t, "audit:\n  commit_interval: 200ms\n",
		"log_statement = all", "log_line_prefix = '%u|'")
	script := filepath.Join(t.TempDir(), "bench.sql")
	if err := os.WriteFile(script, []byte("\\set n random(1, 1000000000)\nSELECT :client_id, :n, 'k9';\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Dir(script), 0o755)
	const clients = 4
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bench := exec.CommandContext(ctx, "pgbench", "-n", "-c", fmt.Sprint(clients), "-T", "20", "-M", "simple", "-f", script, w.dsn)
	bench.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	var benchOut lockedBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once statements are flowing.
	waitFor(t, "pgbench load through airlockd", 90*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(w.srv.Dir, "server.log"))
		return strings.Count(string(b), "'k9'") > 2000
	})
	w.killDaemon()
	_ = bench.Wait()

	w.startDaemon()
	var recs []audit.Record
	waitFor(t, "the journal shipped and interrupted sessions closed", 90*time.Second, func() bool {
		recs = w.exportRecords(t)
		ends := 0
		for _, r := range recs {
			if r.Kind == "session.end" && strings.Contains(string(r.Data), `"interrupted"`) {
				ends++
			}
		}
		return ends == clients
	})
	got := map[string]int{}
	for _, s := range statementsOf(t, recs) {
		got[s]++
	}
	b, err := os.ReadFile(filepath.Join(w.srv.Dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	logged := regexp.MustCompile(`(?m)^airlock_[a-z0-9_]*\|LOG:  statement: (SELECT \d+, \d+, 'k9';)$`).FindAllStringSubmatch(string(b), -1)
	if len(logged) < 2000 {
		t.Fatalf("server logged only %d statements", len(logged))
	}
	missing := 0
	var missed []string
	for _, m := range logged {
		sql := m[1]
		if got[sql] > 0 {
			got[sql]--
			continue
		}
		missing++
		missed = append(missed, sql)
	}
	for sql, n := range got {
		if n > 0 && strings.Contains(sql, "'k9'") {
			t.Errorf("recorded %d× a statement the server never ran: %s", n, sql)
		}
	}
	// A statement whose response had not been forwarded when the daemon
	// died never reached its client: at most one per connection.
	if missing > clients {
		t.Fatalf("%d of %d statements the server ran are not in the record (at most %d may have been in flight): %v",
			missing, len(logged), clients, missed)
	}
	t.Logf("server ran %d statements; the record has all but %d (in flight at the kill)", len(logged), missing)
	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify after kill -9: %s", out)
	}
}

// tcpGate forwards a loopback port to addr and can be shut and reopened,
// standing in for a network outage between a daemon and its team store.
type tcpGate struct {
	t      *testing.T
	listen string
	to     string
	mu     sync.Mutex
	l      net.Listener
	conns  []net.Conn
}

func (g *tcpGate) open() {
	g.t.Helper()
	var l net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if l, err = net.Listen("tcp4", g.listen); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatal(err)
	}
	g.mu.Lock()
	g.l = l
	g.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp4", g.to)
			if err != nil {
				c.Close()
				continue
			}
			g.mu.Lock()
			g.conns = append(g.conns, c, u)
			g.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
}

func (g *tcpGate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.l != nil {
		g.l.Close()
		g.l = nil
	}
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

// A team store that goes away and comes back loses nothing: records spool
// in the journal, status says so, and they arrive in order, verifiable.
func TestAuditTeamStoreDownAndBack(t *testing.T) {
	testnet.RequireRoot(t)
	team := pgtest.Start(t, pgtest.Options{})
	team.Psql(t, "postgres", "CREATE ROLE airlock_audit LOGIN PASSWORD 'audit-pw-5678'; CREATE DATABASE airlock_audit OWNER airlock_audit;")
	gate := &tcpGate{t: t, listen: fmt.Sprintf("127.0.0.1:%d", freePort(t)), to: fmt.Sprintf("%s:%d", team.Addr, team.Port)}
	gate.open()
	t.Cleanup(gate.shut)
	pw := filepath.Join(t.TempDir(), "audit-pw")
	if err := os.WriteFile(pw, []byte("audit-pw-5678\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newAuditWorld(t, fmt.Sprintf("audit:\n  store: postgres://airlock_audit@%s/airlock_audit?sslmode=disable&connect_timeout=2\n  password_file: %s\n  commit_interval: 10ms\n", gate.listen, pw))

	w.psql(t, w.dsn, "-c", "SELECT 'before-outage'")
	waitFor(t, "records in the team store", 20*time.Second, func() bool {
		return team.Psql(t, "airlock_audit", `SELECT count(*) FROM audit_blocks, regexp_split_to_table(records, E'\n') AS line
			WHERE line LIKE '%"kind":"statement"%' AND line LIKE '%before-outage%'`) == "1"
	})

	gate.shut()
	for i := 0; i < 5; i++ {
		w.psql(t, w.dsn, "-c", fmt.Sprintf("SELECT 'during-outage-%d'", i))
	}
	waitFor(t, "status to report the outage", 30*time.Second, func() bool {
		a := w.status().Audit
		return a != nil && !a.Reachable && a.Spooled > 0
	})
	out := w.mustAirlock(t, "status")
	if !strings.Contains(out, "STORE UNREACHABLE") || !strings.Contains(out, "spooled") {
		t.Fatalf("airlock status does not say the store is down:\n%s", out)
	}

	gate.open()
	waitFor(t, "the spool to drain into the team store", 60*time.Second, func() bool {
		a := w.status().Audit
		return a != nil && a.Reachable && a.Spooled == 0
	})
	var stmts []string
	for _, r := range w.exportRecords(t) {
		if r.Kind == "statement" {
			var st audit.Statement
			_ = json.Unmarshal(r.Data, &st)
			stmts = append(stmts, st.SQL)
		}
	}
	want := []string{"SELECT 'before-outage'"}
	for i := 0; i < 5; i++ {
		want = append(want, fmt.Sprintf("SELECT 'during-outage-%d'", i))
	}
	if strings.Join(stmts, "\n") != strings.Join(want, "\n") {
		t.Fatalf("statements in the team store:\n%s\nwant:\n%s", strings.Join(stmts, "\n"), strings.Join(want, "\n"))
	}
	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify on the team store: %s", out)
	}
}

// A daemon killed with a live session leaves its just-in-time role behind;
// the restarted daemon sweeps it before serving, and says so in its own
// chain: a credential.sweep record (no session) naming the role, what
// became of it and of what it owned.
func TestAuditRecordsCredentialSweep(t *testing.T) {
	w := newAuditWorld(t, "")
	s := w.pgxHold(t, w.dsn)
	defer s.release()
	role := s.user
	if !strings.HasPrefix(role, "airlock_") {
		t.Fatalf("session role %q is not a just-in-time role", role)
	}
	w.killDaemon()
	if roles := w.ourRoles(t); len(roles) != 1 || roles[0] != role {
		t.Fatalf("after kill -9 the server has roles %v, want the session's %s left behind", roles, role)
	}
	w.startDaemon()
	waitFor(t, "the restarted daemon to sweep the leftover role", 30*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	var sweep *audit.Credential
	var rec audit.Record
	waitFor(t, "a credential.sweep record in the export", 30*time.Second, func() bool {
		for _, r := range w.exportRecords(t) {
			if r.Kind != "credential.sweep" {
				continue
			}
			var c audit.Credential
			if err := json.Unmarshal(r.Data, &c); err != nil {
				t.Fatalf("credential.sweep data %s: %v", r.Data, err)
			}
			if c.Role == role {
				sweep, rec = &c, r
				return true
			}
		}
		return false
	})
	if sweep.Outcome != "ok" || sweep.Mode != "ephemeral" || sweep.Error != "" {
		t.Fatalf("sweep record of %s: %+v", role, sweep)
	}
	if rec.Session != "" {
		t.Fatalf("a sweep belongs to no session, got session %q", rec.Session)
	}
	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify: %s", out)
	}
}

// Connections refused before their session starts reach the record as
// session.refused with what is known of them: a session over the per-uid
// cap (its process and uid, SQLSTATE 53300), and a connection made straight
// to the proxy port, which the kernel did not redirect (its address only).
func TestAuditRecordsRefusalsBeforeASession(t *testing.T) {
	w := newAuditWorld(t, "")
	w.stopDaemon()
	w.setProxyLimits("  max_sessions_per_uid: 1\n")
	w.startDaemon()

	s := w.pgxHold(t, w.dsn)
	defer s.release()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := w.run(ctx, "psql", "-X", "-At", "-c", "SELECT 1", w.dsn); err == nil || !strings.Contains(out, "max_sessions_per_uid") {
		t.Fatalf("a second session of uid 0 was not refused by the per-uid cap: %v\n%s", err, out)
	}

	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", w.port), 5*time.Second)
	if err != nil {
		t.Fatalf("dial the proxy port directly: %v", err)
	}
	direct := c.LocalAddr().String()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a connection the kernel did not redirect was served (%d bytes)", n)
	}
	c.Close()

	var capped, unredirected *audit.Refusal
	waitFor(t, "both refusals in the export", 30*time.Second, func() bool {
		capped, unredirected = nil, nil
		for _, r := range w.exportRecords(t) {
			if r.Kind != "session.refused" {
				continue
			}
			var f audit.Refusal
			if err := json.Unmarshal(r.Data, &f); err != nil {
				t.Fatalf("session.refused data %s: %v", r.Data, err)
			}
			switch {
			case f.Code == "max_sessions_per_uid":
				capped = &f
			case f.Code == "no_kernel_record" && f.Client == direct:
				unredirected = &f
			}
		}
		return capped != nil && unredirected != nil
	})
	if capped.SQLState != "53300" || capped.Process == nil || capped.Process.UID != 0 || capped.Process.PID == 0 ||
		capped.Connection != "appdb" || !strings.HasSuffix(capped.Dest, ":5432") || !strings.Contains(capped.Reason, "max_sessions_per_uid") {
		t.Fatalf("per-uid cap refusal recorded as %+v (process %+v)", capped, capped.Process)
	}
	if unredirected.Process != nil || unredirected.Reason == "" {
		t.Fatalf("unredirected connection recorded as %+v", unredirected)
	}
	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify: %s", out)
	}
}
