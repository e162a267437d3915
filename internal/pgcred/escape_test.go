package pgcred

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// The escapes of issue 6 that go through the database itself: what a
// session leaves behind, a password it sets for its own role, and a sweep
// that reaches other machines' roles.

const backdoorFn = `CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN EXECUTE 'CREATE ROLE bd LOGIN PASSWORD ''x'''; END $$`

func revokeEvent(rec *recorder, role string) *session.Credential {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, ev := range rec.events {
		if ev.Kind == session.KindCredentialRevoke && ev.Credential != nil && ev.Credential.Role == role {
			return ev.Credential
		}
	}
	return nil
}

// Item 8: a SECURITY DEFINER function a session leaves must never end up
// owned by the admin, whose CREATEROLE it would then run with.
func TestLeftoversNeverGoToAdmin(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	for _, a := range admins(s) {
		for _, mode := range []string{LeftoversReassign, LeftoversDrop} {
			t.Run(a.name+"/"+mode, func(t *testing.T) {
				s.Psql(t, "postgres", "DROP FUNCTION IF EXISTS public.f()")
				rec := newRecorder(t)
				e := newEph(t, connConfig(t, s, a.user, a.password, "postgres"), EphemeralOptions{
					GroupRoles: []string{"agent_read", "agent_write"}, Leftovers: mode})

				l1 := acquire(t, e, rec, newSess(rec, "mallory"), "postgres")
				c1, err := loginAs(ctx, s, l1, "postgres")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c1.Exec(ctx, backdoorFn); err != nil {
					t.Fatalf("create the function: %v", err)
				}
				if _, err := c1.Exec(ctx, "CREATE TABLE public.notes_"+a.name+"_"+mode+" (x int)"); err != nil {
					t.Fatal(err)
				}
				if err := l1.Release(ctx); err != nil {
					t.Fatalf("Release: %v", err)
				}

				ev := revokeEvent(rec, l1.User())
				if ev == nil || ev.Outcome != "ok" || ev.Leftovers == nil {
					t.Fatalf("revoke event %+v: want ok with leftovers", ev)
				}
				wantObjs := []string{"postgres: function public.f()", "postgres: table public.notes_" + a.name + "_" + mode}
				if ev.Leftovers.Count != 2 || !slices.Equal(ev.Leftovers.Objects, wantObjs) {
					t.Fatalf("leftovers %+v, want %v", ev.Leftovers, wantObjs)
				}

				owner := s.Psql(t, "postgres", "SELECT coalesce((SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'f' AND pronamespace = 'public'::regnamespace), '<none>')")
				switch mode {
				case LeftoversReassign:
					if ev.Leftovers.Action != "reassigned" || ev.Leftovers.Owner != "airlock_orphans" {
						t.Fatalf("leftovers %+v: want reassigned to airlock_orphans", ev.Leftovers)
					}
					if owner != "airlock_orphans" {
						t.Fatalf("f() owned by %s after release, want airlock_orphans", owner)
					}
					// The owner Airlock made has no login and no memberships.
					if got := s.Psql(t, "postgres", `SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole,
						(SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = 'airlock_orphans'`); got != "f|t|f|f|0" {
						t.Fatalf("airlock_orphans: %s, want NOLOGIN, member of nothing", got)
					}
				case LeftoversDrop:
					if ev.Leftovers.Action != "dropped" || ev.Leftovers.Owner != "" {
						t.Fatalf("leftovers %+v: want dropped", ev.Leftovers)
					}
					if owner != "<none>" {
						t.Fatalf("f() still there (owner %s) in drop mode", owner)
					}
				}

				// The next session calls it: no role may come of it.
				l2 := acquire(t, e, rec, newSess(rec, "mallory"), "postgres")
				defer l2.Release(ctx)
				c2, err := loginAs(ctx, s, l2, "postgres")
				if err != nil {
					t.Fatal(err)
				}
				defer c2.Close(ctx)
				_, err = c2.Exec(ctx, "SELECT public.f()")
				want := map[string]string{LeftoversReassign: "42501", LeftoversDrop: "42883"}[mode]
				if sqlState(err) != want {
					t.Fatalf("calling f(): %v, want SQLSTATE %s", err, want)
				}
				if roleExists(t, s, "bd") {
					t.Fatal("role bd exists: the leftover function ran with the admin's rights")
				}
			})
		}
	}
}

// Item 9: a password the session sets for its own role opens nothing
// outside Airlock, during the session or after it.
func TestOwnPasswordUselessOutsideProxy(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	s.Psql(t, "postgres", `CREATE TABLE big AS SELECT g AS x FROM generate_series(1, 100000) g; GRANT SELECT ON big TO agent_read`)
	for _, a := range admins(s) {
		t.Run(a.name, func(t *testing.T) {
			rec := newRecorder(t)
			e := newEph(t, connConfig(t, s, a.user, a.password, "postgres"), EphemeralOptions{GroupRoles: []string{"agent_read"}})
			l := acquire(t, e, rec, newSess(rec, "mallory"), "postgres")
			direct := func() error {
				cfg, err := pgx.ParseConfig(s.URL(l.User(), "x-self-set-pw", "postgres"))
				if err != nil {
					t.Fatal(err)
				}
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err == nil {
					c.Close(ctx)
				}
				return err
			}

			// What the proxy does: log in, then revoke LOGIN before the
			// client may speak.
			c, err := loginAs(ctx, s, l, "postgres")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if err := l.RevokeLogin(ctx); err != nil {
				t.Fatalf("RevokeLogin: %v", err)
			}
			if _, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD 'x-self-set-pw'"); err != nil {
				t.Fatalf("set own password: %v", err)
			}
			if err := direct(); sqlState(err) != "28000" {
				t.Fatalf("direct login with the self-set password during the session: %v, want 28000 (not permitted to log in)", err)
			}
			if _, err := loginAs(ctx, s, l, "postgres"); sqlState(err) != "28000" && sqlState(err) != "28P01" {
				t.Fatalf("second login with the lease's password: %v, want refused", err)
			}
			// The session itself keeps working: queries, parallel workers
			// (they start as the session's role) and cancel requests.
			if _, err := c.Exec(ctx, "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0"); err != nil {
				t.Fatal(err)
			}
			var plan []string
			rows, err := c.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM big")
			if err == nil {
				plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			launched := func(l string) bool {
				return strings.Contains(l, "Workers Launched:") && !strings.Contains(l, "Workers Launched: 0")
			}
			if err != nil || !slices.ContainsFunc(plan, launched) {
				t.Fatalf("parallel query after NOLOGIN: %v %q", err, plan)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			go func() {
				time.Sleep(200 * time.Millisecond)
				_ = c.PgConn().CancelRequest(cctx)
			}()
			if _, err := c.Exec(cctx, "SELECT pg_sleep(5)"); sqlState(err) != "57014" {
				t.Fatalf("cancel after NOLOGIN: %v, want 57014", err)
			}

			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := direct(); err == nil {
				t.Fatal("direct login with the self-set password works after the session")
			}
		})
	}
}

// Item 9, second line of defence: should LOGIN be still there (a crash
// between the proxy's login and RevokeLogin), CONNECTION LIMIT 1 leaves a
// direct login no slot while the proxy's backend lives.
func TestConnectionLimitHoldsTheSlot(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{GroupRoles: []string{"agent_read"}})
	l := acquire(t, e, rec, newSess(rec, "mallory"), "postgres")
	defer l.Release(ctx)
	c, err := loginAs(ctx, s, l, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD 'x-self-set-pw'"); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(s.URL(l.User(), "x-self-set-pw", "postgres"))
	if _, err := pgx.ConnectConfig(ctx, cfg); sqlState(err) != "53300" {
		t.Fatalf("direct login while the proxy's backend lives: %v, want 53300 (too many connections for role)", err)
	}
}

// Item 10: restarting one daemon leaves another host's live roles alone.
func TestSweepScopedToHost(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	cfg := connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres")
	opts := func(host string) EphemeralOptions {
		return EphemeralOptions{GroupRoles: []string{"agent_read"}, HostID: host}
	}
	a := newEph(t, cfg, opts("hostaaaa0001"))
	b := newEph(t, cfg, opts("hostbbbb0002"))
	aLeft := acquire(t, a, rec, newSess(rec, "ann"), "postgres")
	bLive := acquire(t, b, rec, newSess(rec, "ben"), "postgres")
	defer bLive.Release(ctx)
	bRecent := acquire(t, b, rec, newSess(rec, "ben"), "postgres")
	defer bRecent.Release(ctx)
	bStale := acquire(t, b, rec, newSess(rec, "ben"), "postgres")
	c, err := loginAs(ctx, s, bLive, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// Host b's clock may lag: a role just past VALID UNTIL may still serve
	// its session there; one long past it is a leftover of a dead daemon.
	s.Psql(t, "postgres", "ALTER ROLE "+bRecent.User()+" VALID UNTIL '"+time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)+"'")
	s.Psql(t, "postgres", "ALTER ROLE "+bStale.User()+" VALID UNTIL '"+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)+"'")

	// Host a restarts.
	a2 := newEph(t, cfg, opts("hostaaaa0001"))
	n, err := a2.Sweep(ctx)
	if err != nil || n != 2 {
		t.Fatalf("Sweep: n=%d err=%v, want 2 (a's own leftover, b's long-expired role)", n, err)
	}
	for role, want := range map[string]bool{aLeft.User(): false, bStale.User(): false, bLive.User(): true, bRecent.User(): true} {
		if got := roleExists(t, s, role); got != want {
			t.Errorf("after a's sweep, %s exists=%v, want %v", role, got, want)
		}
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("b's live session was cut by a's sweep: %v", err)
	}
	// The periodic sweep of expired roles keeps to the same rule.
	if n, err := a2.sweep(ctx, true); err != nil || n != 0 {
		t.Fatalf("expired sweep: n=%d err=%v, want 0", n, err)
	}
	if !roleExists(t, s, bRecent.User()) {
		t.Fatal("expired sweep dropped another host's role within the grace period")
	}
}

func TestLoadOrCreateHostID(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	mid1, mid2 := filepath.Join(dir, "mid1"), filepath.Join(dir, "mid2")
	os.WriteFile(mid1, []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	os.WriteFile(mid2, []byte("fedcba9876543210fedcba9876543210\n"), 0o644)

	id1, err := LoadOrCreateHostID(state, mid1)
	if err != nil {
		t.Fatal(err)
	}
	if !hostIDRE.MatchString(id1) {
		t.Fatalf("id %q is not a host id", id1)
	}
	if fi, err := os.Stat(filepath.Join(state, HostIDFile)); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("host id file: %v %v", fi, err)
	}
	again, err := LoadOrCreateHostID(state, mid1)
	if err != nil || again != id1 {
		t.Fatalf("second load: %q %v, want %q (persisted)", again, err, id1)
	}
	// A clone of the image with a fresh machine-id gets an id of its own.
	if clone, err := LoadOrCreateHostID(state, mid2); err != nil || clone == id1 {
		t.Fatalf("clone with another machine-id: %q %v", clone, err)
	}
	// No machine-id at all still works.
	if _, err := LoadOrCreateHostID(state, filepath.Join(dir, "none")); err != nil {
		t.Fatal(err)
	}
	// Two fresh state dirs: two ids.
	if other, err := LoadOrCreateHostID(filepath.Join(dir, "state2"), mid1); err != nil || other == id1 {
		t.Fatalf("second host: %q %v", other, err)
	}
	os.WriteFile(filepath.Join(state, HostIDFile), []byte("not an id!\n"), 0o600)
	if _, err := LoadOrCreateHostID(state, mid1); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("damaged file: %v", err)
	}
}

// A session plants functions and operators that match the admin's own
// queries better than pg_catalog's, in the admin's database and in the
// session's: the admin must never run them.
func TestAdminQueriesIgnorePlantedObjects(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	s.Psql(t, "postgres", "CREATE DATABASE appdb")
	s.Psql(t, "appdb", "GRANT CREATE ON SCHEMA public TO agent_write")
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{GroupRoles: []string{"agent_write"}})
	l := acquire(t, e, rec, newSess(rec, "mallory"), "appdb")
	const plant = `
CREATE FUNCTION public.pwn() RETURNS void LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'CREATE ROLE pwned_' || replace(current_user, '"', ''); EXCEPTION WHEN OTHERS THEN NULL; END $$;
CREATE FUNCTION public.left(name, integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.pwn(); RETURN pg_catalog.left($1::text, $2); END $$;
CREATE FUNCTION public.oid_int_eq(oid, integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.pwn(); RETURN $1 = $2::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = public.oid_int_eq);
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;`
	for _, db := range []string{"postgres", "appdb"} {
		c, err := loginAs(ctx, s, l, db)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, plant); err != nil {
			t.Fatalf("plant in %s: %v", db, err)
		}
		closeAndWait(t, s, c, l.User())
	}
	// The planted operator really is what an unqualified query picks.
	if got := s.Psql(t, "appdb", "SET ROLE pgcred_admin; SELECT count(*) FROM pg_database WHERE oid = 0"); got != "0" {
		t.Fatalf("probe: %q", got)
	}
	if got := s.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pwned%'"); got != "1" {
		t.Fatalf("the planted operator did not run for a plain query (%s roles): the test proves nothing", got)
	}
	s.Psql(t, "postgres", "DROP ROLE pwned_pgcred_admin")

	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := e.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sweep(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := s.Psql(t, "postgres", "SELECT coalesce(string_agg(rolname, ','), '') FROM pg_roles WHERE rolname LIKE 'pwned%'"); got != "" {
		t.Fatalf("the admin ran planted code: roles %s exist", got)
	}
}

// Item 8 with a configured owner, and objects in a schema the session itself
// created: the new owner needs CREATE on the database and on that schema,
// which it borrows from the dropped role for the REASSIGN only.
func TestLeftoversConfiguredOwnerOwnSchema(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	s.Psql(t, "postgres", "CREATE DATABASE schemadb; GRANT CREATE ON DATABASE schemadb TO agent_write")
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read", "agent_write"}, Owner: "owner_ok"})
	l := acquire(t, e, rec, newSess(rec, "mallory"), "schemadb")
	c, err := loginAs(ctx, s, l, "schemadb")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, `CREATE SCHEMA s1; CREATE TABLE s1.t (x int); `+strings.Replace(backdoorFn, "public.f()", "s1.f()", 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ev := revokeEvent(rec, l.User())
	want := []string{"schemadb: function s1.f()", "schemadb: schema s1", "schemadb: table s1.t"}
	if ev == nil || ev.Leftovers == nil || ev.Leftovers.Owner != "owner_ok" || !slices.Equal(ev.Leftovers.Objects, want) {
		t.Fatalf("revoke event %+v, want leftovers %v reassigned to owner_ok", ev, want)
	}
	got := s.Psql(t, "schemadb", `SELECT (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 's1') || ',' ||
		(SELECT relowner::regrole::text FROM pg_class WHERE oid = 's1.t'::regclass) || ',' ||
		(SELECT proowner::regrole::text FROM pg_proc WHERE oid = 's1.f()'::regprocedure)`)
	if got != "owner_ok,owner_ok,owner_ok" {
		t.Fatalf("owners %q, want owner_ok for all", got)
	}
	if m := s.Psql(t, "postgres", `SELECT string_agg(g.rolname, ',') FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
		WHERE a.member = 'owner_ok'::regrole`); m != "agent_read" {
		t.Fatalf("owner_ok is a member of %q after the reassign, want agent_read only", m)
	}
}

// Item 11 after start: a grant made while the daemon runs makes it refuse
// new sessions until the grant is undone.
func TestRecheckRefusesAfterBadGrant(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"nested_read"}, SweepInterval: 100 * time.Millisecond})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go e.Run(runCtx)

	// until waits for Acquire to fail with want in its error ("" : succeed).
	until := func(want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			l, err := e.Acquire(ctx, newSess(rec, "mallory"), "postgres")
			if l != nil {
				rec.secret(l.Password())
				if err := l.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if (want == "" && err == nil) || (want != "" && err != nil && strings.Contains(err.Error(), want)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Acquire: %v, want %q within 15s", err, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	tests := []struct{ name, grant, revoke, want string }{
		{"group reaches pg_signal_backend two levels up", "GRANT pg_signal_backend TO agent_read", "REVOKE pg_signal_backend FROM agent_read",
			`"nested_read" reaches "pg_signal_backend"`},
		{"group role made CREATEROLE", "ALTER ROLE agent_read CREATEROLE", "ALTER ROLE agent_read NOCREATEROLE",
			`"nested_read" reaches "agent_read" (CREATEROLE)`},
		{"orphans owner given a membership", "GRANT agent_write TO airlock_orphans", "REVOKE agent_write FROM airlock_orphans",
			"must be a member of no role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			until("")
			s.Psql(t, "postgres", tt.grant)
			until(tt.want)
			s.Psql(t, "postgres", tt.revoke)
			until("")
		})
	}
}
