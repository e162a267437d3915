package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/oidctest"
)

// uidC is a third local account (bin on Debian): carol, a second approver.
const uidC = 2

var carol = oidctest.User{Subject: "sub-carol", Name: "carol", Email: "carol@example.com", Groups: []string{"dba"}}

// hooks is an HTTP server on loopback that keeps what the approvals
// webhook posts.
type hooks struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []approval.Message
	raw []string
}

func newHooks(t *testing.T) *hooks {
	h := &hooks{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m approval.Message
		if r.Header.Get("Authorization") != "Bearer hook-token-1" || json.Unmarshal(b, &m) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.got, h.raw = append(h.got, m), append(h.raw, string(b))
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hooks) find(id string) (approval.Message, string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, m := range h.got {
		if m.Airlock.ID == id {
			return m, h.raw[i], true
		}
	}
	return approval.Message{}, "", false
}

func approvalsWorld(t *testing.T, timeout string, hook *hooks) *idWorld {
	t.Helper()
	tokFile := t.TempDir() + "/hook-token"
	if err := os.WriteFile(tokFile, []byte("hook-token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("approvals:\n  approvers_group: dba\n  timeout: %s\n  hold_statements: ['4711']\n  webhook_url: %s\n  webhook_token_file: %s\n",
		timeout, hook.srv.URL, tokFile)
	return newIDWorld(t, extra)
}

func (w *idWorld) loginToken(t *testing.T, uid uint32, u oidctest.User) {
	t.Helper()
	tok, err := w.corp.IDToken(u, oidctest.TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, e, err := w.cli(uid, tok, "login", "--id-token-file", "-"); err != nil {
		t.Fatalf("login %s as uid %d: %v %s", u.Name, uid, err, e)
	}
}

func (w *idWorld) approvals(t *testing.T, uid uint32) []approval.Request {
	t.Helper()
	out, e, err := w.cli(uid, "", "approvals", "--json")
	if err != nil {
		t.Fatalf("airlock approvals as uid %d: %v %s", uid, err, e)
	}
	var rs []approval.Request
	mustJSON(t, out, &rs)
	return rs
}

// pendingOne waits until uid sees exactly one pending request.
func (w *idWorld) pendingOne(t *testing.T, uid uint32) approval.Request {
	t.Helper()
	var r approval.Request
	waitFor(t, "a pending approval request", 30*time.Second, func() bool {
		for _, x := range w.approvals(t, uid) {
			if x.State == approval.StatePending {
				r = x
				return true
			}
		}
		return false
	})
	return r
}

// psqlBG starts psql as uid in the intercepted cgroup; wait returns its
// output.
func (w *idWorld) psqlBG(t *testing.T, uid uint32, sql string) (*exec.Cmd, func() (string, error)) {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", w.dsn, "-c", sql)
	cmd.SysProcAttr = w.clientIn(w.clients, uid).SysProcAttr
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10", "HOME=/tmp"}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, func() (string, error) {
		select {
		case err := <-done:
			return strings.TrimSpace(out.String()), err
		case <-time.After(90 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("psql %q never finished", sql)
			return "", nil
		}
	}
}

func TestApprovalHolds(t *testing.T) {
	hook := newHooks(t)
	w := approvalsWorld(t, "20s", hook)
	w.loginToken(t, uidA, alice) // analysts: asks
	w.loginToken(t, uidB, bob)   // dba: approves, and asks
	w.loginToken(t, uidC, carol) // dba: approves

	// A held statement runs only after another person approves it.
	_, wait := w.psqlBG(t, uidA, "SELECT 4711")
	r := w.pendingOne(t, uidC)
	if r.Kind != approval.KindStatement || r.Person.Subject != "sub-alice" || r.Person.Email != "alice@example.com" ||
		r.Statement != "SELECT 4711" || r.Connection != "appdb" || r.Process.UID != uidA || !strings.HasSuffix(r.Process.Exe, "psql") ||
		r.Rule != "approvals.hold_statements" || r.Session == "" || !r.Expires.After(r.Created) {
		t.Fatalf("request as approvers see it: %+v", r)
	}
	// The requester sees their own; other sessions are not blocked.
	if mine := w.approvals(t, uidA); len(mine) != 1 || mine[0].ID != r.ID {
		t.Fatalf("alice's own requests: %+v", mine)
	}
	if out, err := w.psqlAs(uidA, "SELECT 1"); err != nil || out != "1" {
		t.Fatalf("another session while one is held: %v %s", err, out)
	}
	// Alice is not an approver, for her own request or any.
	if _, e, err := w.cli(uidA, "", "approve", r.ID); err == nil || !strings.Contains(e, `not in group "dba"`) {
		t.Fatalf("alice approving: %v %s", err, e)
	}
	// Not from a process Airlock watches, though it runs as an approver's
	// uid: an agent must not approve with its person's login.
	if _, e, err := w.cli(uidC, "", "run", "--socket", w.socket(), "--", "/proc/self/exe", "approve", r.ID); err == nil ||
		!strings.Contains(e, "not from a process Airlock watches") {
		t.Fatalf("approving from an intercepted process: %v %s", err, e)
	}
	if out, e, err := w.cli(uidC, "", "approve", r.ID); err != nil || !strings.Contains(out, "approved") {
		t.Fatalf("carol approving: %v %s %s", err, out, e)
	}
	if out, err := wait(); err != nil || out != "4711" {
		t.Fatalf("approved statement: %v\n%s", err, out)
	}
	// The extended protocol (pgx): held the same way; approvers see the
	// statement with its placeholder, never the bound value.
	pgxCmd := w.clientIn(w.clients, uidA, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=query", "PGX_DSN="+w.dsn,
		"PGX_SQL=SELECT ($1::int + 4711)::text", "PGX_PARAM=1")
	var pgxOut strings.Builder
	pgxCmd.Stdout = &pgxOut
	if err := pgxCmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgxDone := make(chan error, 1)
	go func() { pgxDone <- pgxCmd.Wait() }()
	pr := w.pendingOne(t, uidC)
	if pr.Statement != "SELECT ($1::int + 4711)::text" {
		t.Fatalf("extended statement as approvers see it: %q", pr.Statement)
	}
	if _, e, err := w.cli(uidC, "", "approve", pr.ID); err != nil {
		t.Fatalf("approve the pgx statement: %v %s", err, e)
	}
	select {
	case <-pgxDone:
	case <-time.After(60 * time.Second):
		_ = pgxCmd.Process.Kill()
		t.Fatal("pgx never finished")
	}
	if !strings.Contains(pgxOut.String(), `"result":"4712"`) {
		t.Fatalf("approved pgx statement: %s", pgxOut.String())
	}

	// The webhook got the request, Slack-compatible, with a bearer token.
	waitFor(t, "the webhook notice", 30*time.Second, func() bool { _, _, ok := hook.find(r.ID); return ok })
	m, raw, _ := hook.find(r.ID)
	if !strings.Contains(m.Text, "alice") || !strings.Contains(m.Text, "airlock approve "+r.ID) || len(m.Attachments) != 1 ||
		m.Airlock.Statement != "SELECT 4711" || !strings.Contains(raw, `"subject":"sub-alice"`) {
		t.Fatalf("webhook body: %s", raw)
	}

	// Self-approval is refused, even for an approver; another denies,
	// and the client hears who and why.
	_, wait = w.psqlBG(t, uidB, "SELECT 4711")
	r = w.pendingOne(t, uidC)
	if _, e, err := w.cli(uidB, "", "approve", r.ID); err == nil || !strings.Contains(e, "never decide their own") {
		t.Fatalf("bob approving his own statement: %v %s", err, e)
	}
	if _, e, err := w.cli(uidC, "", "deny", r.ID, "--reason", "change freeze until Monday"); err != nil {
		t.Fatalf("carol denying: %v %s", err, e)
	}
	out, err := wait()
	if err == nil || !strings.Contains(out, "42501") || !strings.Contains(out, "denied by carol <carol@example.com>: change freeze until Monday") {
		t.Fatalf("denied statement: %v\n%s", err, out)
	}

	// Nobody decides: denied at the timeout.
	_, wait = w.psqlBG(t, uidA, "SELECT 4711")
	r = w.pendingOne(t, uidB)
	out, err = wait()
	if err == nil || !strings.Contains(out, "42501") || !strings.Contains(out, "no approver decided within 20s") {
		t.Fatalf("timed-out statement: %v\n%s", err, out)
	}

	// The client's cancel (psql's Ctrl-C) ends the hold and withdraws the
	// request.
	cmd, wait := w.psqlBG(t, uidA, "SELECT 4711")
	r2 := w.pendingOne(t, uidB)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	out, err = wait()
	if err == nil || !strings.Contains(out, "57014") {
		t.Fatalf("cancelled hold: %v\n%s", err, out)
	}
	waitFor(t, "the request to be withdrawn", 10*time.Second, func() bool { return len(w.approvals(t, uidB)) == 0 })
	if _, e, err := w.cli(uidB, "", "approve", r2.ID); err == nil || !strings.Contains(e, "already canceled") {
		t.Fatalf("approving a withdrawn request: %v %s", err, e)
	}

	// Every step is a recorded event. The session records the cancel's
	// event as the hold ends, which can be just after the request is
	// seen withdrawn: wait for each, do not race it.
	for _, re := range []string{
		`kind=approval .*approval_kind=statement decision=pending`,
		`kind=approval .*decision=approved by="carol <carol@example.com>"`,
		`kind=approval .*decision=denied by="carol <carol@example.com>" reason="change freeze until Monday"`,
		`kind=approval .*decision=expired`,
		`kind=approval .*approval_id=` + r2.ID + ` .*decision=canceled`,
	} {
		rx := regexp.MustCompile(re)
		waitFor(t, "an event matching "+re+" in the daemon log", 10*time.Second, func() bool { return rx.MatchString(w.daemonOut.String()) })
	}
	_ = r
}

func TestAccessRequests(t *testing.T) {
	hook := newHooks(t)
	w := approvalsWorld(t, "10s", hook)
	// appdb requires a grant.
	w.stopDaemon()
	cfg, err := os.ReadFile(w.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(cfg), "    protocol: postgres\n", "    protocol: postgres\n    require_grant: true\n", 1)
	if err := os.WriteFile(w.cfgPath, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	w.startDaemon()
	w.loginToken(t, uidA, alice)
	w.loginToken(t, uidC, carol)

	w.refused(t, uidA, "needs an approved access grant")
	w.refused(t, uidA, "airlock request appdb")

	request := func(d string) approval.Request {
		out, e, err := w.cli(uidA, "", "request", "appdb", "--for", d, "--reason", "incident 4711", "--json")
		if err != nil {
			t.Fatalf("airlock request: %v %s", err, e)
		}
		var r approval.Request
		mustJSON(t, out, &r)
		return r
	}
	// A request nobody decides expires on its own and grants nothing.
	r := request("1h")
	waitFor(t, "the access request to expire", 30*time.Second, func() bool {
		for _, x := range w.approvals(t, uidA) {
			if x.ID == r.ID && x.State == approval.StateExpired {
				return true
			}
		}
		return false
	})
	w.refused(t, uidA, "needs an approved access grant")
	if _, e, err := w.cli(uidA, "", "request", "appdb", "--for", "48h", "--reason", "x"); err == nil || !strings.Contains(e, "max_grant") {
		t.Fatalf("a request past max_grant: %v %s", err, e)
	}

	// Granted: alice's sessions are allowed, also after a daemon restart.
	r = request("30s")
	if _, e, err := w.cli(uidA, "", "approve", r.ID); err == nil {
		t.Fatalf("alice approved her own access: %s", e)
	}
	if out, e, err := w.cli(uidC, "", "approve", r.ID); err != nil || !strings.Contains(out, "granted alice access to appdb") {
		t.Fatalf("carol granting: %v %s %s", err, out, e)
	}
	waitFor(t, "the webhook notice of the access request", 30*time.Second, func() bool { _, _, ok := hook.find(r.ID); return ok })
	if m, raw, _ := hook.find(r.ID); m.Airlock.Kind != approval.KindAccess || !strings.Contains(m.Text, "incident 4711") {
		t.Fatalf("access webhook: %s", raw)
	}
	waitFor(t, "the grant's approval event", 10*time.Second, func() bool {
		return regexp.MustCompile(`kind=approval .*approval_kind=access decision=approved by="carol <carol@example.com>"`).MatchString(w.daemonOut.String())
	})
	w.stopDaemon()
	w.startDaemon()
	if out, err := w.psqlAs(uidA, "SELECT 1"); err != nil || out != "1" {
		t.Fatalf("a session with a grant: %v %s", err, out)
	}

	// A live session ends when the grant expires, and says so.
	cmd := w.clientIn(w.clients, uidA, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=hold", "PGX_DSN="+w.dsn)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(stdout)
	if line, err := rd.ReadString('\n'); err != nil || !strings.Contains(line, `"user":"airlock_`) {
		t.Fatalf("pgx session with a grant: %q %v", line, err)
	}
	waitFor(t, "the session to end at the grant's expiry", 60*time.Second, func() bool {
		return regexp.MustCompile(`kind=session.end .*reason=grant_expired detail="access grant to appdb expired`).MatchString(w.daemonOut.String())
	})
	_ = stdin.Close()
	rest, _ := io.ReadAll(rd)
	_ = cmd.Wait()
	if strings.Contains(string(rest), `"after":"ok"`) {
		t.Fatalf("the session answered after its grant expired: %s", rest)
	}
	w.refused(t, uidA, "needs an approved access grant")
}
