package pgcred

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// recorder is a session sink that also checks, when the test ends, that no
// event ever carried one of the secrets handed out.
type recorder struct {
	mu      sync.Mutex
	events  []session.Event
	secrets []string
	logs    []string
}

func (r *recorder) Record(ev session.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) secret(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secrets = append(r.secrets, s)
}

func (r *recorder) kinds(role string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		if ev.Credential != nil && ev.Credential.Role == role {
			out = append(out, string(ev.Kind)+":"+ev.Credential.Outcome)
		}
	}
	return out
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		b, err := json.Marshal(r.events)
		if err != nil {
			t.Errorf("marshal events: %v", err)
		}
		for _, s := range r.secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("an event carries a password: %s", b)
			}
		}
	})
	return r
}

func newSess(rec *recorder, person string) *session.Session {
	s := session.New(rec)
	s.Person = identity.Person{Name: person, UID: 1000}
	return s
}

const setupSQL = `
CREATE ROLE agent_read NOLOGIN;
CREATE ROLE agent_write NOLOGIN;
CREATE ROLE unrelated NOLOGIN;
CREATE TABLE things (id int primary key, name text);
INSERT INTO things VALUES (1, 'one'), (2, 'two');
GRANT SELECT ON things TO agent_read;
GRANT CREATE ON SCHEMA public TO agent_write;
CREATE ROLE pgcred_admin LOGIN CREATEROLE PASSWORD 'admin-pw-5f1e';
CREATE ROLE pgcred_plain LOGIN PASSWORD 'plain-pw-77aa';
CREATE ROLE super_group SUPERUSER NOLOGIN;
CREATE ROLE createrole_group CREATEROLE NOLOGIN;
CREATE ROLE createdb_group CREATEDB NOLOGIN;
CREATE ROLE bypassrls_group BYPASSRLS NOLOGIN;
CREATE ROLE replication_group REPLICATION NOLOGIN;
CREATE ROLE read_files_group NOLOGIN IN ROLE pg_read_server_files;
CREATE ROLE write_files_group NOLOGIN IN ROLE pg_write_server_files;
CREATE ROLE program_group NOLOGIN IN ROLE pg_execute_server_program;
CREATE ROLE signal_group NOLOGIN IN ROLE pg_signal_backend;
CREATE ROLE mid_group NOLOGIN IN ROLE super_group;
CREATE ROLE top_group NOLOGIN IN ROLE mid_group;
CREATE ROLE via_admin_group NOLOGIN IN ROLE pgcred_admin;
CREATE ROLE deep_files_group NOLOGIN IN ROLE read_files_group;
CREATE ROLE nested_read NOLOGIN IN ROLE agent_read;
CREATE ROLE owner_login LOGIN;
CREATE ROLE owner_wider NOLOGIN IN ROLE unrelated;
CREATE ROLE owner_ok NOLOGIN IN ROLE agent_read;
GRANT owner_ok, owner_wider, owner_login TO pgcred_admin;
`

// testHostID is the host id of the Ephemerals tests make, unless a test
// says otherwise.
const testHostID = "testhost0001"

func startPG(t testing.TB, opts pgtest.Options) *pgtest.Server {
	t.Helper()
	s := pgtest.Start(t, opts)
	s.Psql(t, "postgres", setupSQL)
	return s
}

func connConfig(t testing.TB, s *pgtest.Server, user, password, db string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(s.URL(user, password, db))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// admins are the two kinds of admin role the daemon may be given.
func admins(s *pgtest.Server) []struct{ name, user, password string } {
	return []struct{ name, user, password string }{
		{"superuser", s.AdminUser, s.AdminPassword},
		{"createrole", "pgcred_admin", "admin-pw-5f1e"},
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newEph(t *testing.T, cfg *pgx.ConnConfig, opts EphemeralOptions) *Ephemeral {
	t.Helper()
	opts.Admin = cfg
	if opts.HostID == "" {
		opts.HostID = testHostID
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	e, err := NewEphemeral(context.Background(), opts)
	if err != nil {
		t.Fatalf("NewEphemeral: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

func acquire(t *testing.T, e *Ephemeral, rec *recorder, sess *session.Session, db string) *Lease {
	t.Helper()
	l, err := e.Acquire(context.Background(), sess, db)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	rec.secret(l.Password())
	return l
}

func loginAs(ctx context.Context, s *pgtest.Server, l *Lease, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.URL(l.User(), l.Password(), db))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func roleExists(t *testing.T, s *pgtest.Server, role string) bool {
	return s.Psql(t, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", role)) == "1"
}

func TestEphemeralLifecycle(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	s.Psql(t, "postgres", "CREATE DATABASE other")
	s.Psql(t, "other", "GRANT CREATE ON SCHEMA public TO agent_write")
	ctx := context.Background()

	for _, a := range admins(s) {
		t.Run(a.name, func(t *testing.T) {
			rec := newRecorder(t)
			e := newEph(t, connConfig(t, s, a.user, a.password, "postgres"), EphemeralOptions{
				GroupRoles: []string{"agent_read", "agent_write"}, TTL: time.Hour})

			t.Run("create, use, terminate, drop", func(t *testing.T) {
				sess := newSess(rec, "alice")
				before := time.Now()
				l := acquire(t, e, rec, sess, "postgres")
				if l.User() != "airlock_"+sess.ID {
					t.Fatalf("user = %q, want airlock_%s", l.User(), sess.ID)
				}
				if len(l.Password()) < 40 {
					t.Fatalf("password of %d characters: want 32+ random bytes", len(l.Password()))
				}
				if d := l.Expires().Sub(before.Add(time.Hour)); d < -time.Second || d > 5*time.Second {
					t.Fatalf("Expires %v not ≈ now+1h", l.Expires())
				}
				if got := sess.UpstreamRole(); got != l.User() {
					t.Fatalf("session attr upstream_role = %q", got)
				}

				row := s.Psql(t, "postgres", fmt.Sprintf(`SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolconnlimit,
					extract(epoch FROM rolvaliduntil)::numeric(20,3), shobj_description(oid, 'pg_authid')
					FROM pg_roles WHERE rolname = '%s'`, l.User()))
				f := strings.Split(row, "|")
				if len(f) != 7 || f[0] != "t" || f[1] != "t" || f[2] != "f" || f[3] != "f" || f[4] != "1" {
					t.Fatalf("pg_roles row = %q", row)
				}
				var epoch float64
				fmt.Sscan(f[5], &epoch)
				if got := time.Unix(0, int64(epoch*1e9)); got.Sub(l.Expires()).Abs() > time.Second {
					t.Fatalf("rolvaliduntil = %v, lease says %v", got, l.Expires())
				}
				if want := "airlock-managed host=" + testHostID + " session=" + sess.ID + " person=alice"; f[6] != want {
					t.Fatalf("comment = %q, want %q", f[6], want)
				}
				groups := s.Psql(t, "postgres", fmt.Sprintf(`SELECT string_agg(g.rolname, ',' ORDER BY g.rolname)
					FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
					WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = '%s')`, l.User()))
				if groups != "agent_read,agent_write" {
					t.Fatalf("member of %q, want agent_read,agent_write only", groups)
				}

				c, err := loginAs(ctx, s, l, "postgres")
				if err != nil {
					t.Fatalf("login as %s: %v", l.User(), err)
				}
				defer c.Close(ctx)
				var n int
				if err := c.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n); err != nil || n != 2 {
					t.Fatalf("select through group role: n=%d err=%v", n, err)
				}
				if _, err := c.Exec(ctx, "DELETE FROM things"); err == nil {
					t.Fatal("DELETE succeeded: the role has more than its groups")
				}

				if err := l.Release(ctx); err != nil {
					t.Fatalf("Release: %v", err)
				}
				if err := c.Ping(ctx); err == nil {
					t.Fatal("the role's live connection survived Release")
				}
				if roleExists(t, s, l.User()) {
					t.Fatal("role still in pg_roles after Release")
				}
				if err := l.Release(ctx); err != nil {
					t.Fatalf("second Release: %v", err)
				}
				if got, want := rec.kinds(l.User()), []string{"credential.create:ok", "credential.revoke:ok"}; !slices.Equal(got, want) {
					t.Fatalf("events %v, want %v", got, want)
				}
				if _, err := loginAs(ctx, s, l, "postgres"); err == nil {
					t.Fatal("login works after Release")
				}
			})

			t.Run("owned objects in two databases (2BP01)", func(t *testing.T) {
				sess := newSess(rec, "bob")
				l := acquire(t, e, rec, sess, "postgres")
				table := "made_by_" + sess.ID
				for _, db := range []string{"postgres", "other"} {
					c, err := loginAs(ctx, s, l, db)
					if err != nil {
						t.Fatalf("login to %s: %v", db, err)
					}
					if _, err := c.Exec(ctx, "CREATE TABLE "+table+" (x int); INSERT INTO "+table+" VALUES (1)"); err != nil {
						t.Fatalf("create table in %s: %v", db, err)
					}
					closeAndWait(t, s, c, l.User()) // CONNECTION LIMIT 1: the next login needs the slot back
				}
				// A live connection too.
				c, err := loginAs(ctx, s, l, "postgres")
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(ctx)

				if err := l.Release(ctx); err != nil {
					t.Fatalf("Release: %v", err)
				}
				if roleExists(t, s, l.User()) {
					t.Fatal("role still exists")
				}
				for _, db := range []string{"postgres", "other"} {
					owner := s.Psql(t, db, "SELECT tableowner FROM pg_tables WHERE tablename = '"+table+"'")
					if owner != "airlock_orphans" {
						t.Fatalf("%s: table owner after Release = %q, want airlock_orphans (reassigned, never to the admin)", db, owner)
					}
				}
				if got, want := rec.kinds(l.User()), []string{"credential.create:ok", "credential.revoke:ok"}; !slices.Equal(got, want) {
					t.Fatalf("events %v, want %v", got, want)
				}
			})

			t.Run("two sessions of one person get two roles", func(t *testing.T) {
				l1 := acquire(t, e, rec, newSess(rec, "carol"), "postgres")
				l2 := acquire(t, e, rec, newSess(rec, "carol"), "postgres")
				if l1.User() == l2.User() || l1.Password() == l2.Password() {
					t.Fatalf("same role or password for two sessions: %s %s", l1.User(), l2.User())
				}
				for _, l := range []*Lease{l1, l2} {
					c, err := loginAs(ctx, s, l, "postgres")
					if err != nil {
						t.Fatalf("login as %s: %v", l.User(), err)
					}
					c.Close(ctx)
				}
				if err := l1.Release(ctx); err != nil {
					t.Fatal(err)
				}
				if !roleExists(t, s, l2.User()) {
					t.Fatal("releasing one session's role dropped the other's")
				}
				if err := l2.Release(ctx); err != nil {
					t.Fatal(err)
				}
			})

			t.Run("same session twice is refused", func(t *testing.T) {
				sess := newSess(rec, "dave")
				l := acquire(t, e, rec, sess, "postgres")
				defer l.Release(ctx)
				if _, err := e.Acquire(ctx, sess, "postgres"); err == nil || !strings.Contains(err.Error(), "already exists") {
					t.Fatalf("second Acquire for one session: %v", err)
				}
			})
		})
	}
}

func TestValidUntilExpires(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, s.AdminUser, s.AdminPassword, "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}, TTL: 2 * time.Second})
	l := acquire(t, e, rec, newSess(rec, "erin"), "postgres")
	c, err := loginAs(ctx, s, l, "postgres")
	if err != nil {
		t.Fatalf("login before expiry: %v", err)
	}
	c.Close(ctx)
	time.Sleep(3 * time.Second)
	_, err = loginAs(ctx, s, l, "postgres")
	if err == nil {
		t.Fatal("login works after VALID UNTIL")
	}
	if sqlState(err) != "28P01" && !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("login after expiry: %v, want 28P01", err)
	}
	if strings.Contains(err.Error(), l.Password()) {
		t.Fatal("error carries the password")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAuthMethods(t *testing.T) {
	// The server gets a SCRAM verifier, never the password: check that
	// logins work whether pg_hba says scram-sha-256 or md5.
	for _, auth := range []string{"scram-sha-256", "md5"} {
		t.Run(auth, func(t *testing.T) {
			s := startPG(t, pgtest.Options{Auth: auth})
			ctx := context.Background()
			rec := newRecorder(t)
			e := newEph(t, connConfig(t, s, s.AdminUser, s.AdminPassword, "postgres"), EphemeralOptions{
				GroupRoles: []string{"agent_read"}})
			l := acquire(t, e, rec, newSess(rec, "frank"), "postgres")
			if got := s.Psql(t, "postgres", "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = '"+l.User()+"'"); got != "SCRAM-SHA-256$" {
				t.Fatalf("stored password starts %q", got)
			}
			c, err := loginAs(ctx, s, l, "postgres")
			if err != nil {
				t.Fatalf("login with %s: %v", auth, err)
			}
			c.Close(ctx)
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSweep(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	cfg := connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres")
	opts := EphemeralOptions{GroupRoles: []string{"agent_read", "agent_write"}}
	e1 := newEph(t, cfg, opts)
	l1 := acquire(t, e1, rec, newSess(rec, "gina"), "postgres")
	l2 := acquire(t, e1, rec, newSess(rec, "gina"), "postgres")
	// A leftover that owns a table and is still connected.
	c, err := loginAs(ctx, s, l2, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE leftover_table (x int)"); err != nil {
		t.Fatal(err)
	}

	s.Psql(t, "postgres", `
		CREATE ROLE airlock_untagged LOGIN;
		CREATE ROLE airlock_othercomment LOGIN; COMMENT ON ROLE airlock_othercomment IS 'hand-made';
		CREATE ROLE notours LOGIN; COMMENT ON ROLE notours IS 'airlock-managed session=x person=y';`)

	if n, err := e1.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("Sweep with live leases: n=%d err=%v, want 0 (live leases are not leftovers)", n, err)
	}

	// The daemon restarts: a new Ephemeral finds the two roles left over,
	// and records what it did with each in the daemon's own record.
	swept := &recorder{}
	opts2 := opts
	opts2.Events = swept
	e2 := newEph(t, cfg, opts2)
	n, err := e2.Sweep(ctx)
	if err != nil || n != 2 {
		t.Fatalf("Sweep: n=%d err=%v, want 2", n, err)
	}
	byRole := map[string]*session.Credential{}
	for _, ev := range swept.events {
		if ev.Kind != session.KindCredentialSweep || ev.Session != "" || ev.Credential == nil {
			t.Fatalf("sweep recorded %+v, want credential.sweep events with no session", ev)
		}
		byRole[ev.Credential.Role] = ev.Credential
	}
	if c := byRole[l1.User()]; len(byRole) != 2 || c == nil || c.Outcome != "ok" || c.Mode != "ephemeral" {
		t.Fatalf("sweep events %+v, want one ok event for each of %s and %s", byRole, l1.User(), l2.User())
	}
	if c := byRole[l2.User()]; c == nil || c.Outcome != "ok" || c.Leftovers == nil || c.Leftovers.Count < 1 ||
		!strings.Contains(strings.Join(c.Leftovers.Objects, " "), "leftover_table") {
		t.Fatalf("sweep of the role that owned a table recorded %+v, want its leftovers", c)
	}
	for _, r := range []string{l1.User(), l2.User()} {
		if roleExists(t, s, r) {
			t.Fatalf("%s survived the sweep", r)
		}
	}
	for _, r := range []string{"airlock_untagged", "airlock_othercomment", "notours", "agent_read", "agent_write", "unrelated", "pgcred_admin"} {
		if !roleExists(t, s, r) {
			t.Fatalf("sweep dropped %s, which is not ours", r)
		}
	}
	if err := c.Ping(ctx); err == nil {
		t.Fatal("leftover role's connection survived the sweep")
	}
	if n, err := e2.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("second Sweep: n=%d err=%v", n, err)
	}
	// The old leases' Release finds nothing left to do.
	if err := l1.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRunSweepsExpired(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	cfg := connConfig(t, s, s.AdminUser, s.AdminPassword, "postgres")
	e1 := newEph(t, cfg, EphemeralOptions{TTL: time.Second})
	leftover := acquire(t, e1, rec, newSess(rec, "hank"), "postgres")
	held := acquire(t, e1, rec, newSess(rec, "hank"), "postgres")
	defer held.Release(ctx)
	e1.mu.Lock()
	delete(e1.active, leftover.User()) // as if its lease had been lost
	e1.mu.Unlock()

	e1.sweepEvery = 200 * time.Millisecond
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { e1.Run(runCtx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for roleExists(t, s, leftover.User()) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep the expired leftover role")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !roleExists(t, s, held.User()) {
		t.Fatal("Run swept an expired role whose lease is still held")
	}
	e1.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

func TestReleasePendingRetry(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	s.Psql(t, "postgres", "CREATE DATABASE locked")
	s.Psql(t, "locked", "GRANT CREATE ON SCHEMA public TO agent_write")
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_write"}, RetryInterval: 200 * time.Millisecond})
	l := acquire(t, e, rec, newSess(rec, "ivy"), "postgres")
	c, err := loginAs(ctx, s, l, "locked")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE stuck (x int)"); err != nil {
		t.Fatal(err)
	}
	// Nobody can connect to the database holding the role's table any more,
	// so the drop cannot clean it: the role must end NOLOGIN and pending.
	s.Psql(t, "postgres", "ALTER DATABASE locked ALLOW_CONNECTIONS false")

	err = l.Release(ctx)
	if !errors.Is(err, ErrDropPending) {
		t.Fatalf("Release: %v, want ErrDropPending", err)
	}
	if strings.Contains(err.Error(), l.Password()) {
		t.Fatal("error carries the password")
	}
	if c.Ping(ctx) == nil {
		t.Fatal("live connection survived")
	}
	if got := s.Psql(t, "postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = '"+l.User()+"'"); got != "f" {
		t.Fatalf("rolcanlogin = %q, want f", got)
	}
	if _, err := loginAs(ctx, s, l, "postgres"); err == nil {
		t.Fatal("login works on a NOLOGIN role")
	}
	if got := e.Pending(); !slices.Equal(got, []string{l.User()}) {
		t.Fatalf("Pending = %v", got)
	}
	if got, want := rec.kinds(l.User()), []string{"credential.create:ok", "credential.revoke:nologin"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("second Release: %v (want a no-op)", err)
	}

	s.Psql(t, "postgres", "ALTER DATABASE locked ALLOW_CONNECTIONS true")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go e.Run(runCtx)
	deadline := time.Now().Add(10 * time.Second)
	for len(e.Pending()) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not retry the pending drop")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if roleExists(t, s, l.User()) {
		t.Fatal("role still exists after the retry")
	}
	if got, want := rec.kinds(l.User()), []string{"credential.create:ok", "credential.revoke:nologin", "credential.revoke:ok"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if owner := s.Psql(t, "locked", "SELECT tableowner FROM pg_tables WHERE tablename = 'stuck'"); owner != "airlock_orphans" {
		t.Fatalf("stuck table owner = %q", owner)
	}
}

func TestNewEphemeralRefuses(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	s.Psql(t, "postgres", "CREATE ROLE handmade_orphans NOLOGIN")
	tests := []struct {
		name       string
		user, pw   string
		opts       EphemeralOptions
		wantSubstr []string
	}{
		{"admin without CREATEROLE", "pgcred_plain", "plain-pw-77aa", EphemeralOptions{GroupRoles: []string{"agent_read"}},
			[]string{"pgcred_plain", "CREATEROLE"}},
		{"missing group role", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"agent_read", "no_such_group"}},
			[]string{"no_such_group", "do not exist"}},
		{"superuser group role", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"super_group"}},
			[]string{"super_group", "superuser"}},
		{"bad prefix", s.AdminUser, s.AdminPassword, EphemeralOptions{Prefix: "Bad-Prefix"},
			[]string{"prefix"}},
		{"missing owner", s.AdminUser, s.AdminPassword, EphemeralOptions{Owner: "nobody_here"},
			[]string{"nobody_here"}},
		// Item 11: what a group role reaches, directly or through others.
		{"CREATEROLE group", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"agent_read", "createrole_group"}},
			[]string{`"createrole_group" has CREATEROLE`}},
		{"CREATEDB group", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"createdb_group"}},
			[]string{`"createdb_group" has CREATEDB`}},
		{"BYPASSRLS group", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"bypassrls_group"}},
			[]string{`"bypassrls_group" has BYPASSRLS`}},
		{"REPLICATION group", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"replication_group"}},
			[]string{`"replication_group" has REPLICATION`}},
		{"reads server files", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"read_files_group"}},
			[]string{`"read_files_group" reaches "pg_read_server_files"`}},
		{"writes server files", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"write_files_group"}},
			[]string{`pg_write_server_files`}},
		{"runs server programs", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"program_group"}},
			[]string{`pg_execute_server_program`}},
		{"signals backends", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"signal_group"}},
			[]string{`pg_signal_backend`}},
		{"superuser two levels up", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"top_group"}},
			[]string{`"top_group" reaches "super_group" (SUPERUSER) through "top_group" → "mid_group" → "super_group"`}},
		{"member of the admin", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"via_admin_group"}},
			[]string{`"via_admin_group" reaches "pgcred_admin" (CREATEROLE)`}},
		{"files two levels up", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"nested_read", "deep_files_group"}},
			[]string{`"deep_files_group" reaches "pg_read_server_files"`}},
		// Item 8: who may own what sessions leave behind.
		{"owner is the admin", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"agent_read"}, Owner: "pgcred_admin"},
			[]string{"is the admin role"}},
		{"owner can log in", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"agent_read"}, Owner: "owner_login"},
			[]string{"owner_login", "can log in"}},
		{"owner reaches more than the groups", "pgcred_admin", "admin-pw-5f1e", EphemeralOptions{GroupRoles: []string{"agent_read"}, Owner: "owner_wider"},
			[]string{`"owner_wider" reaches "unrelated"`, "more than their groups"}},
		{"owner is a superuser group", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"agent_read"}, Owner: "super_group"},
			[]string{`"super_group" has SUPERUSER`}},
		{"orphans role not ours", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"agent_read"}, Prefix: "handmade_"},
			[]string{"handmade_orphans", "did not make it"}},
		{"owner with drop", s.AdminUser, s.AdminPassword, EphemeralOptions{GroupRoles: []string{"agent_read"}, Owner: "owner_ok", Leftovers: LeftoversDrop},
			[]string{"only applies when leftovers are reassigned"}},
		{"bad leftovers mode", s.AdminUser, s.AdminPassword, EphemeralOptions{Leftovers: "keep"},
			[]string{`leftovers "keep"`}},
		{"bad host id", s.AdminUser, s.AdminPassword, EphemeralOptions{HostID: "Not An Id"},
			[]string{"host id"}},
		{"wrong admin password", s.AdminUser, "not-the-password-9d2c", EphemeralOptions{},
			[]string{"cannot connect"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.Admin = connConfig(t, s, tt.user, tt.pw, "postgres")
			if opts.HostID == "" {
				opts.HostID = testHostID
			}
			opts.Logger = testLogger(t)
			e, err := NewEphemeral(ctx, opts)
			if err == nil {
				e.Close()
				t.Fatal("NewEphemeral succeeded")
			}
			for _, w := range tt.wantSubstr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), tt.pw) {
				t.Errorf("error carries the admin password: %v", err)
			}
		})
	}
}

func TestAdaptSatisfiesConsumerInterface(t *testing.T) {
	// The same shapes as pgwire's interfaces.
	type leaseI interface {
		User() string
		Password() string
		Expires() time.Time
		Release(ctx context.Context) error
	}
	type credentialsI interface {
		Acquire(ctx context.Context, sess *session.Session, database string) (leaseI, error)
	}
	var creds credentialsI = Adapt[leaseI](NewStatic("app", "static-pw-31c9"))
	rec := newRecorder(t)
	rec.secret("static-pw-31c9")
	l, err := creds.Acquire(context.Background(), newSess(rec, "jane"), "postgres")
	if err != nil || l.User() != "app" || l.Password() != "static-pw-31c9" || !l.Expires().IsZero() {
		t.Fatalf("static lease: %v %v", l, err)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.kinds("app"), []string{"credential.create:ok"}; !slices.Equal(got, want) {
		t.Fatalf("events %v", got)
	}
	if rec.events[0].Credential.Mode != "static" {
		t.Fatalf("mode %q", rec.events[0].Credential.Mode)
	}

	var failing credentialsI = Adapt[leaseI](failSource{})
	l, err = failing.Acquire(context.Background(), nil, "")
	if err == nil || l != nil {
		t.Fatalf("failing source: lease %v (nil interface wanted), err %v", l, err)
	}

	defer func() {
		if recover() == nil {
			t.Fatal("Adapt to an interface *Lease lacks did not panic")
		}
	}()
	Adapt[interface{ Nope() }](failSource{})
}

type failSource struct{}

func (failSource) Acquire(context.Context, *session.Session, string) (*Lease, error) {
	return nil, errors.New("no")
}

func TestNoPasswordInRenderings(t *testing.T) {
	const pw = "s3cret-Pa55word-0123456789"
	l := &Lease{user: "airlock_abc", password: pw, expires: time.Now().Add(time.Hour), mode: "ephemeral"}
	st := NewStatic("app", pw)
	var buf strings.Builder
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("lease", "lease", l, "static", st)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("lease", "lease", l, "static", st)
	j, _ := json.Marshal(l)
	js, _ := json.Marshal(st)
	outs := []string{
		fmt.Sprint(l), fmt.Sprintf("%v|%+v|%#v|%s|%q", l, l, l, l, l), fmt.Sprintf("%v %+v %#v", st, st, st),
		fmt.Sprintf("%v", []any{l, st}), buf.String(), string(j), string(js),
	}
	for _, o := range outs {
		if strings.Contains(o, pw) {
			t.Errorf("password in %q", o)
		}
	}
	if !strings.Contains(fmt.Sprint(l), "airlock_abc") {
		t.Errorf("String lost the user: %s", l)
	}
}

func TestScrub(t *testing.T) {
	const pw = "Zm9vYmFyYmF6cXV4cXV1eA"
	pgErr := &pgconn.PgError{Severity: "ERROR", Code: "42601", Message: "syntax error", Detail: "near '" + pw + "'"}
	tests := []struct {
		name string
		err  error
	}{
		{"in message", errors.New("create role x password '" + pw + "': boom")},
		{"wrapped pg error detail", fmt.Errorf("create: %w", pgErr)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := scrub(tt.err, pw)
			if strings.Contains(got.Error(), pw) || errors.Unwrap(got) != nil {
				t.Fatalf("scrubbed error %q still carries or wraps the secret", got)
			}
			var s interface{ SQLState() string }
			if errors.As(tt.err, &s) && sqlState(got) != s.SQLState() {
				t.Fatalf("SQLSTATE lost: %q", sqlState(got))
			}
		})
	}
	clean := errors.New("nothing secret")
	if scrub(clean, pw) != clean {
		t.Fatal("clean error replaced")
	}
}

// closeAndWait closes c and waits until its backend is gone: with CONNECTION
// LIMIT 1 the role's next login needs the slot back.
func closeAndWait(t *testing.T, s *pgtest.Server, c *pgx.Conn, role string) {
	t.Helper()
	c.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for s.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+role+"'") != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("backend of %s still there 10s after Close", role)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
