package guard_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

type sink struct {
	mu  sync.Mutex
	evs []session.Event
}

func (s *sink) Record(ev session.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.Statement = ev.Statement.Clone() // it is ours only during Record
	s.evs = append(s.evs, ev)
}

func (s *sink) decisions() []session.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []session.Decision
	for _, ev := range s.evs {
		if ev.Decision != nil {
			out = append(out, *ev.Decision)
		}
	}
	return out
}

func (s *sink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, ev := range s.evs {
		if ev.Statement != nil {
			b.WriteString(ev.Statement.SQL + "\n")
		}
		if ev.Decision != nil {
			b.WriteString(ev.Decision.SQL + " " + ev.Decision.Reason + "\n")
		}
	}
	return b.String()
}

type creds struct{ user, password string }

type lease struct{ c creds }

func (c creds) Acquire(context.Context, *session.Session, string) (pgwire.Lease, error) {
	return lease{c}, nil
}
func (l lease) User() string                  { return l.c.user }
func (l lease) Password() string              { return l.c.password }
func (l lease) Expires() time.Time            { return time.Time{} }
func (l lease) Release(context.Context) error { return nil }

// approver decides holds as the test tells it, recording the requests.
type approver struct {
	mu       sync.Mutex
	approve  bool
	requests []guard.HoldRequest
}

// Timeout is the approvers' own (approvals.timeout): holds whose rule
// sets none wait this long.
func (a *approver) Timeout() time.Duration { return 7 * time.Minute }

func (a *approver) Ask(_ context.Context, req guard.HoldRequest, done func(bool, string, string)) {
	a.mu.Lock()
	a.requests = append(a.requests, req)
	ok := a.approve
	a.mu.Unlock()
	// Decided from another goroutine, as a person would be.
	go func() {
		if ok {
			done(true, "bob", "")
		} else {
			done(false, "bob", "not on a Friday")
		}
	}()
}

type env struct {
	pg       *pgtest.Server
	log      string // the server's own log, log_statement = all
	sink     *sink
	store    *policy.Store
	polPath  string
	g        *guard.Guard
	addr     string
	class    string
	classMu  sync.Mutex
	approver *approver
}

func start(t testing.TB, pol string) *env {
	return startWith(t, pol, true)
}

func startWith(t testing.TB, pol string, guarded bool) *env {
	t.Helper()
	pg := pgtest.Start(t, pgtest.Options{Conf: []string{"log_statement = 'all'", "log_min_messages = info"}})
	e := &env{pg: pg, log: filepath.Join(pg.Dir, "server.log"), sink: &sink{}, class: session.ClassPerson}
	e.polPath = filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(e.polPath, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.store, err = policy.NewStore(e.polPath); err != nil {
		t.Fatal(err)
	}
	e.g = &guard.Guard{Connection: "testdb", Policies: e.store, Classifier: sqlclass.New(sqlclass.Options{})}
	p, err := pgwire.New(pgwire.Options{Name: "testdb", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: creds{pg.AdminUser, pg.AdminPassword},
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Stages: func(s *session.Session) pgwire.Stages {
			if !guarded {
				return pgwire.Stages{}
			}
			return e.g.Stages(s)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.addr = pgwiretest.Serve(t, p, func() *session.Session {
		sess := session.New(e.sink)
		sess.Origin.UID = 1000
		e.classMu.Lock()
		sess.Origin.Class = e.class
		e.classMu.Unlock()
		sess.Person = identity.Person{Name: "alice", UID: 1000, Groups: []string{"staff"}}
		return sess
	}, nil)
	pg.Psql(t, "postgres", "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1), (2)")
	return e
}

func (e *env) setClass(c string) {
	e.classMu.Lock()
	defer e.classMu.Unlock()
	e.class = c
}

func (e *env) connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://x:y@"+e.addr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func (e *env) serverLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(e.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// refused checks err is the guard's 42501 naming rule.
func refused(t *testing.T, what string, err error, rule string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, rule) {
		t.Fatalf("%s: got %v, want SQLSTATE 42501 naming %s", what, err, rule)
	}
}

func count(t *testing.T, c *pgx.Conn) int {
	t.Helper()
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM victim").Scan(&n); err != nil {
		t.Fatalf("the session does not go on: %v", err)
	}
	return n
}

const testPolicy = `
rules:
  - name: no-secrets
    action: deny
    reason: secrets are off limits
    tables: [public.secrets]
  - name: no-drop
    action: deny
    reason: nothing is dropped here
    commands: [DROP TABLE]
`

func TestGuardRefusesAndTheServerNeverSees(t *testing.T) {
	e := start(t, testPolicy)
	c := e.connect(t)
	ctx := context.Background()

	// Simple protocol, a multi-statement string: nothing of it runs.
	_, err := c.Exec(ctx, "SELECT 'marker_simple_1'; DROP TABLE victim", pgx.QueryExecModeSimpleProtocol)
	refused(t, "multi-statement DROP", err, "no-drop")
	if count(t, c) != 2 {
		t.Fatal("victim changed")
	}
	// Dressed up: comments, case, a DO block, a read-only wrapper.
	for _, sql := range []string{
		"/* x */ dRoP/**/TABLE \"victim\"",
		"DO $x$ BEGIN DROP TABLE victim; END $x$",
		"BEGIN READ ONLY; COMMIT; DROP TABLE victim",
	} {
		_, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		refused(t, sql, err, "no-drop")
	}
	// The password change, built in, in several spellings.
	for _, sql := range []string{
		"ALTER ROLE CURRENT_USER PASSWORD 'hunter2_simple'",
		"alter user current_user with encrypted password 'hunter2_lower'",
		"DO $$BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'dyn_value'); END$$",
	} {
		_, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		refused(t, sql, err, policy.RuleRoleChanges)
	}
	// Extended protocol: the batch with the refused statement fails
	// whole; the harmless statement queued before it never runs.
	b := &pgx.Batch{}
	b.Queue("SELECT 'marker_batch_1'")
	b.Queue("ALTER ROLE CURRENT_USER PASSWORD 'hunter2_batch'")
	err = c.SendBatch(ctx, b).Close()
	refused(t, "batch with a password change", err, policy.RuleRoleChanges)
	_, err = c.Exec(ctx, "SELECT * FROM secrets WHERE $1::int = 1", 1)
	refused(t, "extended read of secrets", err, "no-secrets")

	if count(t, c) != 2 {
		t.Fatal("victim changed")
	}
	logText := e.serverLog(t)
	for _, s := range []string{"marker_simple_1", "DROP TABLE", "hunter2", "marker_batch_1", "secrets"} {
		if strings.Contains(logText, s) {
			t.Errorf("the server's log shows %q: a refused batch reached it\n%s", s, logText)
		}
	}
	if !strings.Contains(logText, "SELECT count(*) FROM victim") {
		t.Fatalf("log_statement is not logging: the check above proves nothing\n%s", logText)
	}
	if strings.Contains(e.sink.all(), "hunter2") {
		t.Errorf("a password reached the session's records:\n%s", e.sink.all())
	}
	ds := e.sink.decisions()
	if len(ds) < 8 {
		t.Fatalf("decisions recorded: %+v", ds)
	}
	for _, d := range ds {
		if d.Action != "deny" || d.Rule == "" || d.SQL == "" {
			t.Errorf("decision record %+v", d)
		}
	}
}

func TestGuardPreparedStatementsKeepTheirDecision(t *testing.T) {
	e := start(t, "")
	e.setClass(session.ClassAgent)
	c := e.connect(t)
	ctx := context.Background()

	// Preparing runs nothing: allowed. Executing it by name is held, and
	// with no approver configured, refused.
	if _, err := c.Prepare(ctx, "wipe", "DELETE FROM victim"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "wipe")
	refused(t, "prepared wipe", err, policy.RuleAgentHolds)
	_, err = c.Exec(ctx, "wipe")
	refused(t, "prepared wipe again", err, policy.RuleAgentHolds)
	// The unnamed statement too: parsed in one batch, run by a later one.
	if _, err := c.PgConn().Prepare(ctx, "", "DELETE FROM victim", nil); err != nil {
		t.Fatal(err)
	}
	err = c.PgConn().ExecPrepared(ctx, "", nil, nil, nil).Read().Err
	refused(t, "unnamed prepared wipe", err, policy.RuleAgentHolds)
	// SQL PREPARE then EXECUTE by name.
	if _, err := c.Exec(ctx, "PREPARE wipe2 AS DELETE FROM victim", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "EXECUTE wipe2", pgx.QueryExecModeSimpleProtocol)
	refused(t, "EXECUTE wipe2", err, policy.RuleAgentHolds)
	_, err = c.Exec(ctx, "SELECT 1; eXeCuTe wipe2", pgx.QueryExecModeSimpleProtocol)
	refused(t, "SELECT 1; EXECUTE wipe2", err, policy.RuleAgentHolds)
	if count(t, c) != 2 {
		t.Fatal("victim changed")
	}
	if strings.Contains(e.serverLog(t), "EXECUTE wipe2") {
		t.Fatal("a refused EXECUTE reached the server")
	}

	// With an approver: a refusal names who and why; an approval runs it.
	e.approver = &approver{}
	e.g.SetApprover(e.approver)
	_, err = c.Exec(ctx, "wipe")
	refused(t, "denied wipe", err, "bob denied")
	if count(t, c) != 2 {
		t.Fatal("a denied hold ran")
	}
	e.approver.mu.Lock()
	e.approver.approve = true
	e.approver.mu.Unlock()
	if _, err := c.Exec(ctx, "wipe"); err != nil {
		t.Fatalf("approved wipe: %v", err)
	}
	if count(t, c) != 0 {
		t.Fatal("the approved statement did not run")
	}
	e.approver.mu.Lock()
	reqs := append([]guard.HoldRequest(nil), e.approver.requests...)
	e.approver.mu.Unlock()
	if len(reqs) != 2 || reqs[0].Rule != policy.RuleAgentHolds || reqs[0].SQL != "DELETE FROM victim" || reqs[0].Session == nil || reqs[0].Timeout != 7*time.Minute {
		t.Fatalf("hold requests: %+v", reqs)
	}
}

func TestGuardReloadKeepsSessions(t *testing.T) {
	e := start(t, testPolicy)
	c := e.connect(t)
	ctx := context.Background()
	if _, err := c.Exec(ctx, "INSERT INTO victim VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	// A broken policy is refused and the old one stays.
	if err := os.WriteFile(e.polPath, []byte("rules:\n  - name: x\n    action: maybe\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Reload(); err == nil {
		t.Fatal("a broken policy loaded")
	}
	_, err := c.Exec(ctx, "DROP TABLE victim")
	refused(t, "drop after a bad reload", err, "no-drop")
	// A good one applies to the live session at its next statement.
	if err := os.WriteFile(e.polPath, []byte(testPolicy+"  - name: no-insert\n    action: deny\n    commands: [INSERT]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "INSERT INTO victim VALUES (4)")
	refused(t, "insert after reload", err, "no-insert")
	if count(t, c) != 3 {
		t.Fatal("victim changed")
	}
}

// BenchmarkSelectGuard runs pgbench -S's statement through the proxy with
// the guard on and off, against the same server, in one run.
func BenchmarkSelectGuard(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			e := startWith(b, testPolicy, on)
			c := e.connect(b)
			ctx := context.Background()
			var n int
			for b.Loop() {
				if err := c.QueryRow(ctx, "SELECT count(*) FROM victim WHERE id = $1", 1).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
