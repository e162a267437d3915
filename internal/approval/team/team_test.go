package team

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

var (
	alice = identity.Person{Name: "alice", UID: 1001, Issuer: "https://idp", Subject: "sub-alice", Groups: []string{"dev"}}
	carol = identity.Person{Name: "carol", UID: 1003, Issuer: "https://idp", Subject: "sub-carol", Email: "carol@example.com", Groups: []string{"dba"}}
	// bob is an approver who asks for something himself.
	bob = identity.Person{Name: "bob", UID: 1002, Issuer: "https://idp", Subject: "sub-bob", Groups: []string{"dba"}}
)

type events struct {
	mu sync.Mutex
	ev []session.Event
}

func (e *events) record(ev session.Event) { e.mu.Lock(); e.ev = append(e.ev, ev); e.mu.Unlock() }

// find returns the approval events of request id, as "decision by".
func (e *events) find(id string) []session.Approval {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []session.Approval
	for _, ev := range e.ev {
		if ev.Approval != nil && ev.Approval.ID == id {
			out = append(out, *ev.Approval)
		}
	}
	return out
}

// daemon is one airlockd's approvals: a Broker and its team Store.
type daemon struct {
	b   *approval.Broker
	s   *Store
	rec *events
}

func startDaemon(t *testing.T, id, url string) *daemon {
	t.Helper()
	return startDaemonWith(t, id, url, "dba")
}

func startDaemonWith(t *testing.T, id, url, approvers string) *daemon {
	t.Helper()
	d := &daemon{rec: &events{}}
	var late struct{ *approval.Broker }
	s, err := Open(url, "team-pw-1234", &late, Options{Daemon: id, Host: "host-" + id, Poll: 100 * time.Millisecond, Wait: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d.s = s
	d.b = approval.New(approval.Options{ApproversGroup: approvers, Timeout: time.Minute, Record: d.rec.record,
		Daemon: id, Host: "host-" + id, Shared: s.Changed})
	late.Broker = d.b
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { d.b.Close(); cancel(); <-done; s.Close() })
	return d
}

type outcome struct {
	approved   bool
	by, reason string
}

func (d *daemon) hold(t *testing.T, p identity.Person) (approval.Request, chan outcome) {
	t.Helper()
	s := session.New(nil)
	s.Person, s.Connection = p, "appdb"
	s.Origin = session.Origin{UID: p.UID, PID: 42, Exe: "/usr/bin/psql", Class: session.ClassAgent}
	got := make(chan outcome, 1)
	d.b.Ask(context.Background(), approval.HoldRequest{Session: s, SQL: "DROP TABLE t", Rule: "agent-holds"},
		func(ok bool, by, reason string) { got <- outcome{ok, by, reason} })
	for _, r := range d.b.Pending() {
		if r.Person.Subject == p.Subject {
			d.waitShared(t, r.ID)
			return r, got
		}
	}
	t.Fatal("the hold filed no request")
	return approval.Request{}, nil
}

func (d *daemon) waitShared(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if r, _ := d.b.Find(id); r.Team == approval.TeamShared {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("request %s never reached the team store", id)
}

func wait(t *testing.T, c chan outcome) outcome {
	t.Helper()
	select {
	case o := <-c:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("the held statement was never decided")
		return outcome{}
	}
}

func teamDB(t *testing.T) (*pgtest.Server, string) {
	t.Helper()
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Psql(t, "postgres", "CREATE ROLE airlock_team LOGIN PASSWORD 'team-pw-1234'; CREATE DATABASE airlock_team OWNER airlock_team;")
	return srv, fmt.Sprintf("postgres://airlock_team@%s:%d/airlock_team?sslmode=disable&connect_timeout=5", srv.Addr, srv.Port)
}

func TestTeamApprovals(t *testing.T) {
	srv, url := teamDB(t)
	a := startDaemon(t, "daemon-a", url)
	b := startDaemon(t, "daemon-b", url)
	ctx := context.Background()

	t.Run("approved on another machine", func(t *testing.T) {
		r, got := a.hold(t, alice)
		list, err := b.s.List(ctx, approval.Approver{Person: carol})
		if err != nil || len(list) != 1 || list[0].ID != r.ID || !list[0].Remote || list[0].Daemon != "daemon-a" || list[0].Statement != "DROP TABLE t" {
			t.Fatalf("B lists %+v, %v", list, err)
		}
		// A non-approver sees only their own.
		if mine, _ := b.s.List(ctx, approval.Approver{Person: alice}); len(mine) != 1 {
			t.Fatalf("alice on B sees %+v", mine)
		}
		if theirs, _ := b.s.List(ctx, approval.Approver{Person: identity.Person{Name: "dave", Subject: "sub-dave", Issuer: "https://idp"}}); len(theirs) != 0 {
			t.Fatalf("dave on B sees %+v", theirs)
		}
		dec, err := b.s.Decide(ctx, approval.Approver{Person: carol, UID: 5000}, r.ID, true, "")
		if err != nil || dec.State != approval.StateApproved {
			t.Fatalf("decide on B: %+v %v", dec, err)
		}
		o := wait(t, got)
		if !o.approved || o.by != "carol <carol@example.com> on host-daemon-b" {
			t.Fatalf("A got %+v", o)
		}
		// Both daemons' records have the decision, naming who decided.
		if ev := a.rec.find(r.ID); len(ev) != 2 || ev[1].Decision != approval.StateApproved || !strings.Contains(ev[1].By, "carol") {
			t.Fatalf("A's record: %+v", ev)
		}
		if ev := b.rec.find(r.ID); len(ev) != 1 || ev[0].Decision != approval.StateApproved || ev[0].Holder != "daemon-a" {
			t.Fatalf("B's record: %+v", ev)
		}
		if st := srv.Psql(t, "airlock_team", "SELECT state || ' ' || decided_by FROM approval_requests WHERE id = '"+r.ID+"'"); !strings.HasPrefix(st, "approved carol") {
			t.Fatalf("team row: %q", st)
		}
	})

	t.Run("denied with reason", func(t *testing.T) {
		r, got := a.hold(t, alice)
		if _, err := b.s.Decide(ctx, approval.Approver{Person: carol}, r.ID, false, "not during the freeze"); err != nil {
			t.Fatal(err)
		}
		if o := wait(t, got); o.approved || o.reason != "not during the freeze" || !strings.Contains(o.by, "carol") {
			t.Fatalf("A got %+v", o)
		}
		// Deciding again is too late, and says so.
		if _, err := b.s.Decide(ctx, approval.Approver{Person: carol}, r.ID, true, ""); !errors.Is(err, approval.ErrNotFound) || !strings.Contains(err.Error(), "already denied") {
			t.Fatalf("second decision: %v", err)
		}
	})

	t.Run("self approval refused across machines", func(t *testing.T) {
		r, got := a.hold(t, bob)
		// Bob on B, under another uid: the same person all the same.
		if _, err := b.s.Decide(ctx, approval.Approver{Person: func() identity.Person { p := bob; p.UID = 7; return p }(), UID: 7}, r.ID, true, ""); !errors.Is(err, approval.ErrSelf) {
			t.Fatalf("bob approving his own from B: %v", err)
		}
		if _, err := b.s.Decide(ctx, approval.Approver{Person: alice}, r.ID, true, ""); !errors.Is(err, approval.ErrNotApprover) {
			t.Fatalf("alice approving from B: %v", err)
		}
		// Rows forged straight into the store (a daemon with other rules,
		// or someone with the store's password) are checked again by A.
		forge := func(p identity.Person) string {
			body, _ := json.Marshal(p)
			return srv.Psql(t, "airlock_team", fmt.Sprintf(`INSERT INTO approval_decisions (id, approve, daemon, host, person, uid)
				VALUES ('%s', true, 'daemon-x', 'host-x', '%s', 0) RETURNING seq`, r.ID, body))
		}
		for _, p := range []identity.Person{bob, alice} {
			seq := forge(p)
			srv.Psql(t, "airlock_team", "SELECT pg_notify('airlock_approvals', 'daemon-a')")
			deadline := time.Now().Add(20 * time.Second)
			var out string
			for time.Now().Before(deadline) {
				if out = srv.Psql(t, "airlock_team", "SELECT outcome FROM approval_decisions WHERE seq = "+seq); out != "" {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.HasPrefix(out, "refused: ") {
				t.Fatalf("forged decision by %s: outcome %q", p.Name, out)
			}
		}
		if cur, _ := a.b.Find(r.ID); cur.State != approval.StatePending {
			t.Fatalf("a refused decision decided: %+v", cur)
		}
		// A real approver still can.
		if _, err := b.s.Decide(ctx, approval.Approver{Person: carol}, r.ID, true, ""); err != nil {
			t.Fatal(err)
		}
		if o := wait(t, got); !o.approved {
			t.Fatalf("A got %+v", o)
		}
	})

	t.Run("a daemon with other rules cannot decide", func(t *testing.T) {
		// C counts "ops" as approvers; A does not.
		c := startDaemonWith(t, "daemon-c", url, "ops")
		r, got := a.hold(t, alice)
		dave := identity.Person{Name: "dave", Issuer: "https://idp", Subject: "sub-dave", Groups: []string{"ops"}}
		_, err := c.s.Decide(ctx, approval.Approver{Person: dave}, r.ID, true, "looks fine")
		if err == nil || !strings.Contains(err.Error(), "refused the decision") || !strings.Contains(err.Error(), `not in group "dba"`) {
			t.Fatalf("dave deciding from C: %v", err)
		}
		if ev := c.rec.find(r.ID); len(ev) != 1 || !strings.Contains(ev[0].Reason, "not in effect") {
			t.Fatalf("C's record: %+v", ev)
		}
		if cur, _ := a.b.Find(r.ID); cur.State != approval.StatePending {
			t.Fatalf("A honoured it: %+v", cur)
		}
		if _, err := b.s.Decide(ctx, approval.Approver{Person: carol}, r.ID, false, "no"); err != nil {
			t.Fatal(err)
		}
		if o := wait(t, got); o.approved {
			t.Fatalf("A got %+v", o)
		}
	})

	t.Run("access granted on another machine", func(t *testing.T) {
		r, err := a.b.RequestAccess(alice, alice.UID, "appdb", time.Hour, "incident 42")
		if err != nil {
			t.Fatal(err)
		}
		a.waitShared(t, r.ID)
		dec, err := b.s.Decide(ctx, approval.Approver{Person: carol}, r.ID, true, "")
		if err != nil || dec.GrantEnd.IsZero() {
			t.Fatalf("grant from B: %+v %v", dec, err)
		}
		if g, ok := a.b.GrantFor(alice, "appdb"); !ok || !strings.Contains(g.By, "carol") {
			t.Fatalf("A has no grant from B: %+v", g)
		}
	})

	t.Run("old ended rows are removed by their daemon", func(t *testing.T) {
		srv.Psql(t, "airlock_team", `INSERT INTO approval_requests (id, daemon, kind, request, created, expires, state) VALUES
			('oldone', 'daemon-p', 'statement', '{}', now() - interval '31 days', now() - interval '31 days', 'approved'),
			('recent', 'daemon-p', 'statement', '{}', now() - interval '1 day', now() - interval '1 day', 'approved'),
			('others', 'daemon-q', 'statement', '{}', now() - interval '31 days', now() - interval '31 days', 'approved')`)
		startDaemon(t, "daemon-p", url)
		deadline := time.Now().Add(20 * time.Second)
		for srv.Psql(t, "airlock_team", "SELECT string_agg(id, ',' ORDER BY id) FROM approval_requests WHERE id IN ('oldone', 'recent', 'others')") != "others,recent" {
			if time.Now().After(deadline) {
				t.Fatal("the old row was not removed, or too much was")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("a restarted daemon closes its old requests", func(t *testing.T) {
		r, _ := a.hold(t, alice)
		startDaemon(t, "daemon-a", url)
		deadline := time.Now().Add(20 * time.Second)
		for srv.Psql(t, "airlock_team", "SELECT state FROM approval_requests WHERE id = '"+r.ID+"'") != approval.StateCanceled {
			if time.Now().After(deadline) {
				t.Fatal("the old run's request stayed pending")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// With the team store down, requests are marked local-only and this
// machine's approvers still decide them.
func TestTeamStoreDown(t *testing.T) {
	// Nothing listens on port 1 of loopback.
	a := startDaemon(t, "daemon-a", "postgres://airlock_team@127.0.0.1:1/airlock_team?sslmode=disable&connect_timeout=1")
	s := session.New(nil)
	s.Person, s.Origin = alice, session.Origin{UID: alice.UID}
	got := make(chan outcome, 1)
	a.b.Ask(context.Background(), approval.HoldRequest{Session: s, SQL: "DROP TABLE t"}, func(ok bool, by, reason string) { got <- outcome{ok, by, reason} })
	p := a.b.Pending()
	if len(p) != 1 || p[0].Team != approval.TeamLocalOnly {
		t.Fatalf("pending %+v", p)
	}
	time.Sleep(300 * time.Millisecond) // a few failed syncs
	if r, _ := a.b.Find(p[0].ID); r.Team != approval.TeamLocalOnly {
		t.Fatalf("team %q with the store down", r.Team)
	}
	if _, err := a.b.Decide(approval.Approver{Person: carol, UID: carol.UID}, p[0].ID, true, ""); err != nil {
		t.Fatal(err)
	}
	if o := wait(t, got); !o.approved {
		t.Fatalf("%+v", o)
	}
}
