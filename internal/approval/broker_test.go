package approval

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

var (
	alice = identity.Person{Name: "alice", UID: 1001, Issuer: "https://idp", Subject: "sub-alice", Email: "alice@example.com", Groups: []string{"dev"}}
	bob   = identity.Person{Name: "bob", UID: 1002, Issuer: "https://idp", Subject: "sub-bob", Groups: []string{"dba"}}
	// carol is an approver who asks for something herself.
	carol = identity.Person{Name: "carol", UID: 1003, Issuer: "https://idp", Subject: "sub-carol", Groups: []string{"dba"}}
)

type outcome struct {
	approved   bool
	by, reason string
}

type events struct {
	mu sync.Mutex
	ev []session.Event
}

func (e *events) record(ev session.Event) { e.mu.Lock(); e.ev = append(e.ev, ev); e.mu.Unlock() }
func (e *events) decisions() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.ev {
		out = append(out, ev.Approval.Decision)
	}
	return out
}

func sessFor(p identity.Person) *session.Session {
	s := session.New(nil)
	s.Person, s.Connection = p, "appdb"
	s.Origin = session.Origin{UID: p.UID, PID: 42, Exe: "/usr/bin/psql", Class: session.ClassAgent}
	return s
}

func TestBrokerDecisions(t *testing.T) {
	cases := []struct {
		name      string
		requester identity.Person
		approver  identity.Person
		approve   bool
		reason    string
		wantErr   error
		want      *outcome // nil: still pending after the call
		wantBy    string
	}{
		{name: "approver approves", requester: alice, approver: bob, approve: true, want: &outcome{approved: true, by: "bob"}},
		{name: "approver denies with reason", requester: alice, approver: bob, reason: "not during the freeze",
			want: &outcome{by: "bob", reason: "not during the freeze"}},
		{name: "non-approver refused", requester: bob, approver: alice, approve: true, wantErr: ErrNotApprover},
		{name: "self approval refused", requester: carol, approver: carol, approve: true, wantErr: ErrSelf},
		{name: "same subject other uid refused", requester: carol, approver: func() identity.Person { p := carol; p.UID = 2000; return p }(),
			approve: true, wantErr: ErrSelf},
		{name: "same uid other person refused", requester: alice, approver: func() identity.Person { p := bob; p.UID = alice.UID; return p }(),
			approve: true, wantErr: ErrSelf},
		{name: "no identity refused", requester: alice, approver: identity.Person{}, approve: true, wantErr: ErrNotApprover},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := &events{}
			b := New(Options{ApproversGroup: "dba", Timeout: time.Minute, Record: ev.record})
			got := make(chan outcome, 1)
			b.Ask(context.Background(), HoldRequest{Session: sessFor(tc.requester), SQL: "DROP TABLE t", Rule: "ddl"},
				func(ok bool, by, reason string) { got <- outcome{ok, by, reason} })
			reqs := b.List(Approver{Person: bob, UID: bob.UID})
			if len(reqs) != 1 {
				t.Fatalf("approver sees %d requests, want 1", len(reqs))
			}
			_, err := b.Decide(Approver{Person: tc.approver, UID: tc.approver.UID}, reqs[0].ID, tc.approve, tc.reason)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Decide: %v, want %v", err, tc.wantErr)
			}
			if tc.want == nil {
				select {
				case o := <-got:
					t.Fatalf("decided %+v, want still pending", o)
				default:
				}
				if n := len(b.List(Approver{Person: tc.requester, UID: tc.requester.UID})); n != 1 {
					t.Fatalf("requester sees %d requests, want their own 1", n)
				}
				b.Close()
				if o := <-got; o.approved {
					t.Fatal("closing the broker approved a request")
				}
				return
			}
			o := <-got
			if o.approved != tc.want.approved || !strings.HasPrefix(o.by, tc.want.by) || o.reason != tc.want.reason {
				t.Fatalf("outcome %+v, want %+v", o, *tc.want)
			}
			if d := ev.decisions(); len(d) != 2 || d[0] != StatePending {
				t.Fatalf("recorded %v", d)
			}
			if _, err := b.Decide(Approver{Person: bob, UID: bob.UID}, reqs[0].ID, true, ""); !errors.Is(err, ErrNotFound) {
				t.Fatalf("deciding twice: %v", err)
			}
		})
	}
}

func TestBrokerTimeoutAndCancel(t *testing.T) {
	cases := []struct {
		name   string
		cancel bool
		state  string
	}{
		{name: "timeout denies", state: StateExpired},
		{name: "client cancel withdraws", cancel: true, state: StateCanceled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := &events{}
			timeout := 50 * time.Millisecond
			if tc.cancel {
				timeout = time.Hour
			}
			b := New(Options{ApproversGroup: "dba", Timeout: timeout, Record: ev.record})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := make(chan outcome, 2)
			b.Ask(ctx, HoldRequest{Session: sessFor(alice), SQL: "DELETE FROM t"}, func(ok bool, by, reason string) { got <- outcome{ok, by, reason} })
			if tc.cancel {
				cancel()
			}
			select {
			case o := <-got:
				if o.approved || o.by != "" || o.reason == "" {
					t.Fatalf("outcome %+v", o)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no decision")
			}
			if d := ev.decisions(); d[len(d)-1] != tc.state {
				t.Fatalf("recorded %v, want last %s", d, tc.state)
			}
			if len(b.List(Approver{Person: bob, UID: bob.UID})) != 0 {
				t.Fatal("a finished request is still pending")
			}
			select {
			case o := <-got:
				t.Fatalf("done called twice: %+v", o)
			case <-time.After(20 * time.Millisecond):
			}
		})
	}
}

func TestBrokerConcurrentDecisions(t *testing.T) {
	b := New(Options{ApproversGroup: "dba", Timeout: time.Minute})
	var calls sync.WaitGroup
	var n sync.Mutex
	count := 0
	calls.Add(1)
	b.Ask(context.Background(), HoldRequest{Session: sessFor(alice), SQL: "DROP TABLE t"}, func(bool, string, string) {
		n.Lock()
		count++
		n.Unlock()
		calls.Done()
	})
	id := b.List(Approver{Person: bob, UID: bob.UID})[0].ID
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, _ = b.Decide(Approver{Person: []identity.Person{bob, carol}[i%2], UID: uint32(5000 + i)}, id, i%3 == 0, "")
		}(i)
	}
	wg.Wait()
	calls.Wait()
	if count != 1 {
		t.Fatalf("done called %d times", count)
	}
}

func TestAccessGrants(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.json")
	store, err := OpenGrants(path)
	if err != nil {
		t.Fatal(err)
	}
	b := New(Options{ApproversGroup: "dba", Timeout: time.Minute, Grants: store})
	r, err := b.RequestAccess(alice, alice.UID, "appdb", time.Hour, "incident 42")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.GrantFor(alice, "appdb"); ok {
		t.Fatal("granted before a decision")
	}
	if _, err := b.Decide(Approver{Person: alice, UID: alice.UID}, r.ID, true, ""); err == nil {
		t.Fatal("alice decided her own request")
	}
	if _, err := b.Decide(Approver{Person: bob, UID: bob.UID}, r.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	g, ok := b.GrantFor(alice, "appdb")
	if !ok || g.By != "bob" || time.Until(g.Expires) < 59*time.Minute {
		t.Fatalf("grant %+v %v", g, ok)
	}
	for _, other := range []struct {
		p    identity.Person
		conn string
	}{{bob, "appdb"}, {alice, "otherdb"}, {func() identity.Person { p := alice; p.Issuer = "https://evil"; return p }(), "appdb"}} {
		if _, ok := b.GrantFor(other.p, other.conn); ok {
			t.Fatalf("%s on %s has alice's grant", other.p.Name, other.conn)
		}
	}
	// A restart keeps it.
	again, err := OpenGrants(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again.Find(alice, "appdb", time.Now()); !ok {
		t.Fatal("grant lost on reopen")
	}
	if _, ok := again.Find(alice, "appdb", time.Now().Add(2*time.Hour)); ok {
		t.Fatal("grant outlives its expiry")
	}
	// Denied requests grant nothing; pending ones expire on their own.
	short := New(Options{ApproversGroup: "dba", Timeout: 30 * time.Millisecond})
	r2, _ := short.RequestAccess(alice, alice.UID, "appdb", time.Hour, "x")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _ := short.Find(r2.ID); got.State == StateExpired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pending access request never expired")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := short.GrantFor(alice, "appdb"); ok {
		t.Fatal("an expired request granted access")
	}
}

func TestRedact(t *testing.T) {
	cases := []struct{ in, want string }{
		{"ALTER ROLE x PASSWORD 'hunter2'", "ALTER ROLE x PASSWORD '<redacted>'"},
		{"alter role x with password 'it''s'", "alter role x with password '<redacted>'"},
		{"CREATE ROLE x PASSWORD $$s3cret$$ LOGIN", "CREATE ROLE x PASSWORD '<redacted>' LOGIN"},
		{"SELECT dblink_connect('host=h password=abc user=u')", "SELECT dblink_connect('<redacted>')"},
		{"SELECT dblink('postgres://u:pw@h/db', 'x')", "SELECT dblink('<redacted>', 'x')"},
		{"DROP TABLE t", "DROP TABLE t"},
	}
	for _, tc := range cases {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestWebhookRetriesAndSlackShape(t *testing.T) {
	var mu sync.Mutex
	attempts := 0
	got := make(chan Message, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer tok-123" || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable) // retried
			return
		}
		body, _ := io.ReadAll(r.Body)
		var m Message
		if err := json.Unmarshal(body, &m); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		got <- m
	}))
	defer srv.Close()
	wh := NewWebhook(Webhook{URL: srv.URL, Token: "tok-123", Backoff: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); wh.Run(ctx) }()
	defer func() { cancel(); <-done }()

	b := New(Options{ApproversGroup: "dba", Timeout: time.Minute, Notifier: wh})
	b.Ask(context.Background(), HoldRequest{Session: sessFor(alice), SQL: "ALTER ROLE app PASSWORD 'hunter2' -- <!channel>", Rule: "ddl", Class: "DCL"},
		func(bool, string, string) {})
	select {
	case m := <-got:
		if !strings.Contains(m.Text, "alice") || !strings.Contains(m.Text, "airlock approve "+m.Airlock.ID) {
			t.Fatalf("text %q", m.Text)
		}
		if len(m.Attachments) != 1 || len(m.Attachments[0].Fields) < 5 {
			t.Fatalf("attachments %+v", m.Attachments)
		}
		if m.Airlock.Person.Subject != "sub-alice" || m.Airlock.Process.Exe != "/usr/bin/psql" || m.Airlock.Rule != "ddl" {
			t.Fatalf("request %+v", m.Airlock)
		}
		if st := m.Attachments[0].Fields[5].Value; !strings.Contains(st, "&lt;!channel&gt;") {
			t.Fatalf("statement field not escaped for Slack: %q", st)
		}
		raw, _ := json.Marshal(m)
		if strings.Contains(string(raw), "hunter2") {
			t.Fatal("the webhook carried the password")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("webhook never delivered")
	}
	b.Close()
}

func TestBrokerBoundsPendingPerUID(t *testing.T) {
	b := New(Options{ApproversGroup: "dba", Timeout: time.Hour})
	defer b.Close()
	refused := make(chan string, 1)
	for i := 0; i <= MaxPendingPerUID; i++ {
		b.Ask(context.Background(), HoldRequest{Session: sessFor(alice), SQL: "DROP TABLE t"}, func(ok bool, by, reason string) {
			if !ok && by == "" {
				select { // Close denies the rest too
				case refused <- reason:
				default:
				}
			}
		})
	}
	select {
	case why := <-refused:
		if !strings.Contains(why, "already has") {
			t.Fatalf("reason %q", why)
		}
	default:
		t.Fatal("a flood of holds was not bounded")
	}
	if _, err := b.RequestAccess(alice, alice.UID, "appdb", time.Hour, "x"); err == nil {
		t.Fatal("access request past the bound accepted")
	}
	if _, err := b.RequestAccess(bob, bob.UID, "appdb", time.Hour, "x"); err != nil {
		t.Fatalf("another uid is not affected: %v", err)
	}
}
