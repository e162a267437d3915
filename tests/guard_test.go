package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The SQL guard through the real daemon (issue 10 items 1-3, issue 6
// item 9): refused statements never reach the server, the session goes
// on, role and password changes are refused whatever the spelling, and a
// policy reload applies to live sessions without dropping them.

const guardPolicy = `rules:
  - name: no-drop
    action: deny
    reason: nothing is dropped here
    commands: [DROP TABLE]
  - name: wipe-needs-approval
    action: hold
    flags: [no_where]
`

// serverLog is the server's own log; statements are logged for database
// app (log_statement = all, set before any session connects).
func (w *pgWorld) serverLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.srv.Dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGuardThroughDaemon(t *testing.T) {
	w := newPGWorldPolicy(t, "10m", guardPolicy)
	w.srv.Psql(t, "postgres", "ALTER DATABASE app SET log_statement = 'all'")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// psql, simple protocol: the refused string fails whole, the next
	// command of the same session runs.
	out, _ := w.run(ctx, "psql", "-X", "-At", w.dsn,
		"-c", "SELECT 'e2e_marker_simple'; DROP TABLE customers",
		"-c", "SELECT 'still_here', count(*) FROM customers")
	if !strings.Contains(out, "no-drop") || !strings.Contains(out, "still_here|1000") {
		t.Fatalf("psql: %s", out)
	}

	// Role and password changes, in many spellings, refused by the
	// built-in rule with no policy saying so.
	for _, sql := range []string{
		"ALTER ROLE CURRENT_USER PASSWORD 'e2e-pw-1'",
		"alter user current_user with encrypted password 'SCRAM-SHA-256$4096:e2e'",
		"/**/ALTER/**/USER/**/SESSION_USER/**/PASSWORD/**/'e2e-pw-2'",
		"COMMIT; ALTER ROLE CURRENT_USER VALID UNTIL 'infinity'",
		"CREATE ROLE e2e_backdoor LOGIN PASSWORD 'e2e-pw-3'",
		"DO $$BEGIN EXECUTE 'ALTER ROLE ' || current_user || ' PASSWORD ''e2e-pw-4'''; END$$",
		"GRANT app_rw TO CURRENT_USER",
	} {
		out, err := w.run(ctx, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", w.dsn, "-c", sql)
		if err == nil || !strings.Contains(out, "role_changes") {
			t.Errorf("%s: %v %s, want refused by role_changes", sql, err, out)
		}
	}

	// pgx, extended protocol: a batch, a DROP, a statement prepared by
	// name and executed later.
	m := w.pgxHelper(t, "guard", w.dsn)
	if !strings.HasPrefix(m["batch"], "42501") || !strings.Contains(m["batch"], "role_changes") {
		t.Errorf("pgx batch: %q", m["batch"])
	}
	if !strings.Contains(m["drop"], "no-drop") {
		t.Errorf("pgx DROP: %q", m["drop"])
	}
	if m["prepare"] != "" || !strings.Contains(m["execute"], "wipe-needs-approval") {
		t.Errorf("pgx prepared wipe: prepare %q, execute %q", m["prepare"], m["execute"])
	}
	if m["after"] != "1000" {
		t.Errorf("pgx session after refusals: %q", m["after"])
	}

	logText := w.serverLog(t)
	if !strings.Contains(logText, "still_here") {
		t.Fatalf("the server logs no statements: the checks below would prove nothing\n%s", logText)
	}
	for _, s := range []string{"e2e_marker_simple", "DROP TABLE", "e2e-pw", "SCRAM-SHA-256$4096:e2e", "e2e_backdoor", "e2e_pgx_marker", "pgx-batch-pw", "DELETE FROM customers", "GRANT app_rw"} {
		if strings.Contains(logText, s) {
			t.Errorf("the server saw %q", s)
		}
	}
	waitFor(t, "decision events in the daemon's log", 10*time.Second, func() bool {
		out := w.daemonOut.String()
		return strings.Contains(out, "kind=decision") && strings.Contains(out, "rule=role_changes")
	})
	daemonLog := w.daemonOut.String()
	for _, s := range []string{"e2e-pw-1", "e2e-pw-2", "e2e-pw-3", "pgx-batch-pw"} {
		if strings.Contains(daemonLog, s) {
			t.Errorf("a refused password (%s) reached the daemon's log", s)
		}
	}
}

func TestGuardReloadKeepsSessions(t *testing.T) {
	w := newPGWorldPolicy(t, "10m", guardPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-At", w.dsn)
	cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	stdin, _ := cmd.StdinPipe()
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	send := func(sql, want string) {
		t.Helper()
		if _, err := stdin.Write([]byte(sql + "\n")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "psql to print "+want, 30*time.Second, func() bool { return strings.Contains(out.String(), want) })
	}
	send("INSERT INTO customers VALUES (5001, 'a', 'b');", "INSERT 0 1")

	// A broken policy: rejected, the old one stays, the session lives.
	if err := os.WriteFile(w.policyFile, []byte("rules:\n  - name: x\n    action: perhaps\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = w.daemon.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the bad policy to be rejected", 20*time.Second, func() bool {
		return strings.Contains(w.daemonOut.String(), "SQL policy not reloaded")
	})
	send("DROP TABLE customers;", "no-drop")

	// A good one applies to the live session at its next statement.
	if err := os.WriteFile(w.policyFile, []byte(guardPolicy+"  - name: no-insert\n    action: deny\n    commands: [INSERT]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = w.daemon.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the policy to be reloaded", 20*time.Second, func() bool {
		return strings.Contains(w.daemonOut.String(), "SQL policy reloaded")
	})
	send("INSERT INTO customers VALUES (5002, 'a', 'b');", "no-insert")
	send("SELECT 'same_session', count(*) FROM customers;", "same_session|1001")
}

func TestPolicyCLI(t *testing.T) {
	airlock := filepath.Join(binDir, "airlock")
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - name: a\n    action: deny\n    tabels: [x]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(airlock, "policy", "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.yaml:4: rules[0].tabels: unknown key") {
		t.Fatalf("policy check of a bad file: %v\n%s", err, out)
	}
	example, err := filepath.Abs(filepath.Join("..", "deploy", "examples", "policy", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(airlock, "policy", "check", example).CombinedOutput(); err != nil {
		t.Fatalf("policy check of the example: %v\n%s", err, out)
	}
	cases := []struct {
		args           []string
		decision, rule string
	}{
		{[]string{"COMMIT; DELETE FROM t", "--class", "agent"}, "hold", "agent_holds"},
		{[]string{"DELETE FROM t"}, "allow", ""},
		{[]string{"ALTER USER me PASSWORD 'x'"}, "deny", "role_changes"},
		{[]string{"DROP TABLE t", "--class", "agent", "--connection", "prod"}, "deny", "prod-agents-read-only"},
		{[]string{"DROP TABLE t", "--class", "agent", "--group", "dba"}, "allow", "dba-ddl"},
		{[]string{"COPY t TO PROGRAM 'x'"}, "deny", "no-server-programs"},
	}
	for _, c := range cases {
		out, err := exec.Command(airlock, append([]string{"policy", "test", example, "--json"}, c.args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("policy test %v: %v\n%s", c.args, err, out)
		}
		var r struct{ Decision, Rule string }
		mustJSON(t, string(out), &r)
		if r.Decision != c.decision || r.Rule != c.rule {
			t.Errorf("policy test %v: %s by %q, want %s by %q", c.args, r.Decision, r.Rule, c.decision, c.rule)
		}
	}
}

// An agent is whoever runs in Cursor's tree: its DDL is held by default,
// and with no approver configured, refused; the same statement from a
// person's own psql is not.
func TestGuardAgentClass(t *testing.T) {
	w := newPGWorldWith(t, "10m", "", true)
	script := "psql -X -At '" + w.dsn + "' -c 'CREATE TABLE agent_made (id int)' 2>&1; echo done"
	line := w.runInCursor(t, w.clients, 0, []string{"sh", "-c", script}, "")
	if !strings.Contains(line, "agent_holds") {
		t.Fatalf("an agent's CREATE TABLE: %q, want refused by agent_holds\n%s", line, w.daemonOut.String())
	}
	waitFor(t, "a decision event with class=agent", 10*time.Second, func() bool {
		out := w.daemonOut.String()
		return strings.Contains(out, "kind=decision") && strings.Contains(out, "class=agent")
	})
	if n := w.srv.Psql(t, "app", "SELECT count(*) FROM pg_tables WHERE tablename = 'agent_made'"); n != "0" {
		t.Fatal("the agent's table exists")
	}
}
