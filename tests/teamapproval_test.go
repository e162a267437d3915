package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// Two airlockd daemons, each with its own state dir, cgroup and control
// socket (two machines of a team), share one PostgreSQL team store. A
// statement held on A is listed and decided on B by another person; A's
// client gets its result or the denial naming who and why; the requester
// never approves their own request from B, under another uid or not; an
// access grant decided on B applies to A's sessions.
func TestTeamApprovalsAcrossDaemons(t *testing.T) {
	testnet.RequireRoot(t)
	team := pgtest.Start(t, pgtest.Options{})
	team.Psql(t, "postgres", "CREATE ROLE airlock_team LOGIN PASSWORD 'team-pw-5678'; CREATE DATABASE airlock_team OWNER airlock_team;")
	teamPW := filepath.Join(t.TempDir(), "team-pw")
	if err := os.WriteFile(teamPW, []byte("team-pw-5678\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf(`approvals:
  approvers_group: dba
  timeout: 2m
  hold_statements: ['4711']
  team_poll: 200ms
audit:
  store: postgres://airlock_team@%s:%d/airlock_team?sslmode=disable&connect_timeout=2
  password_file: %s
  commit_interval: 10ms
`, team.Addr, team.Port, teamPW)
	a := newIDWorld(t, extra)
	// On A, appdb requires a just-in-time grant, which B's approver gives.
	a.stopDaemon()
	cfgA, err := os.ReadFile(a.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.cfgPath, []byte(strings.Replace(string(cfgA), "    protocol: postgres\n", "    protocol: postgres\n    require_grant: true\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	a.startDaemon()
	// B: the same team's other machine, with its own daemon.
	b := &idWorld{env: newEnv(t), host: a.host, srv: a.srv, corp: a.corp, ci: a.ci, dsn: a.dsn}
	adminPW := filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(adminPW, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.writeConfig(extra, adminPW)
	// B's session roles must not look like A's leftovers, nor A's like B's.
	cfg, err := os.ReadFile(b.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.cfgPath, []byte(strings.Replace(string(cfg), "        ttl: 1h\n", "        ttl: 1h\n        role_prefix: airlockb_\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	b.startDaemon()

	a.loginToken(t, uidA, alice) // asks, on A
	a.loginToken(t, uidB, bob)   // an approver who asks, on A
	b.loginToken(t, uidC, carol) // approves, on B
	b.loginToken(t, uidA, bob)   // bob again, on B, at another uid

	// Access requested on A, granted on B: A's sessions are then allowed.
	a.refused(t, uidA, "needs an approved access grant")
	for _, uid := range []uint32{uidA, uidB} {
		out, e, err := a.cli(uid, "", "request", "appdb", "--for", "1h", "--reason", "incident 4711", "--json")
		if err != nil {
			t.Fatalf("airlock request on A as uid %d: %v %s", uid, err, e)
		}
		var ar approval.Request
		mustJSON(t, out, &ar)
		waitFor(t, "the access request in the team store", 30*time.Second, func() bool {
			return team.Psql(t, "airlock_team", "SELECT state FROM approval_requests WHERE id = '"+ar.ID+"'") == approval.StatePending
		})
		if out, e, err := b.cli(uidC, "", "approve", ar.ID); err != nil || !strings.Contains(out, "granted") {
			t.Fatalf("carol granting on B: %v %s %s", err, out, e)
		}
	}
	if out, err := a.psqlAs(uidA, "SELECT 1"); err != nil || out != "1" {
		t.Fatalf("alice on A after B's grant: %v %s", err, out)
	}

	// A held statement on A runs once carol approves it on B.
	_, wait := a.psqlBG(t, uidA, "SELECT 4711")
	r := b.pendingOne(t, uidC)
	if !r.Remote || r.Person.Subject != "sub-alice" || r.Statement != "SELECT 4711" || r.Team != approval.TeamShared || r.Daemon == "" {
		t.Fatalf("A's request as B's approver sees it: %+v", r)
	}
	if out, e, err := b.cli(uidC, "", "approvals"); err != nil || !strings.Contains(out, r.ID) || !strings.Contains(out, "WHERE") {
		t.Fatalf("airlock approvals on B: %v %s %s", err, out, e)
	}
	if out, e, err := b.cli(uidC, "", "approve", r.ID); err != nil || !strings.Contains(out, "approved") {
		t.Fatalf("carol approving on B: %v %s %s", err, out, e)
	}
	if out, err := wait(); err != nil || out != "4711" {
		t.Fatalf("approved statement on A: %v\n%s", err, out)
	}
	// Both daemons' audit chains have the decision, each its own.
	waitFor(t, "the decision in both daemons' records", 30*time.Second, func() bool {
		return team.Psql(t, "airlock_team", fmt.Sprintf(`SELECT count(DISTINCT daemon) FROM audit_blocks, regexp_split_to_table(records, E'\n') AS line
			WHERE line LIKE '%%"kind":"approval"%%' AND line LIKE '%%"id":"%s"%%' AND line LIKE '%%"decision":"approved"%%' AND line LIKE '%%carol%%'`, r.ID)) == "2"
	})

	// A denial on B reaches A's client as an ErrorResponse naming who and why.
	_, wait = a.psqlBG(t, uidA, "SELECT 4711 AS deny_me")
	r = b.pendingOne(t, uidC)
	if _, e, err := b.cli(uidC, "", "deny", r.ID, "--reason", "not during the freeze"); err != nil {
		t.Fatalf("carol denying on B: %v %s", err, e)
	}
	out, err := wait()
	if err == nil || !strings.Contains(out, "42501") || !strings.Contains(out, "denied by carol <carol@example.com>") ||
		!strings.Contains(out, "not during the freeze") {
		t.Fatalf("denied statement on A: %v\n%s", err, out)
	}

	// Bob asks on A; bob on B (another uid, the same person) cannot
	// approve it; carol can.
	_, wait = a.psqlBG(t, uidB, "SELECT 4711 AS bobs")
	r = b.pendingOne(t, uidC)
	if r.Person.Subject != "sub-bob" {
		t.Fatalf("request %+v", r)
	}
	if _, e, err := b.cli(uidA, "", "approve", r.ID); err == nil || !strings.Contains(e, "never decide their own") {
		t.Fatalf("bob approving his own request from B: %v %s", err, e)
	}
	if got := a.approvals(t, uidB); len(got) != 1 || got[0].State != approval.StatePending {
		t.Fatalf("after the self-approval attempt: %+v", got)
	}
	if _, e, err := b.cli(uidC, "", "approve", r.ID); err != nil {
		t.Fatalf("carol approving bob's: %v %s", err, e)
	}
	if out, err := wait(); err != nil || out != "4711" {
		t.Fatalf("bob's approved statement: %v\n%s", err, out)
	}
}
