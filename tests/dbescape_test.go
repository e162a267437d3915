package tests

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Escapes through the database itself (issue 6, items 8 and 9): an agent
// that keeps access after its session ends.

// Item 8: a SECURITY DEFINER function left by one session must not run with
// the CREATEROLE admin's rights in the next.
func TestLeftoverFunctionCannotEscalate(t *testing.T) {
	// The proxy refuses this function (it creates a role): switch the
	// refusal off so that the credential side, the defence behind it, is
	// what is tested, as a spelling the proxy missed would.
	w := newPGWorldPolicy(t, "10m", "role_changes: allow\n")

	w.psql(t, w.dsn, "-c", `CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN EXECUTE 'CREATE ROLE bd LOGIN PASSWORD ''x'''; END $$`)
	waitFor(t, "the first session's role to be dropped", 15*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })

	owner := w.srv.Psql(t, "app", "SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'f' AND pronamespace = 'public'::regnamespace")
	if owner == "airlock_admin" || owner != "airlock_orphans" {
		t.Fatalf("f() is owned by %q after the session, want airlock_orphans (never the admin)", owner)
	}
	waitFor(t, "the revoke event to list the leftover", 10*time.Second, func() bool {
		out := w.daemonOut.String()
		return strings.Contains(out, "kind=credential.revoke") && strings.Contains(out, "leftovers_action=reassigned") &&
			strings.Contains(out, "leftovers_owner=airlock_orphans") && strings.Contains(out, "app: function public.f()")
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := w.run(ctx, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", w.dsn, "-c", "SELECT public.f()")
	if err == nil || !strings.Contains(out, "permission denied to create role") {
		t.Fatalf("the next session calling f(): %v\n%s\nwant permission denied", err, out)
	}
	if n := w.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'bd'"); n != "0" {
		t.Fatal("role bd exists: a leftover function ran with the admin's rights")
	}
}

// Item 9: a password the session gives its own role opens nothing outside
// Airlock, while the session lives or after it ends.
func TestSelfSetPasswordUselessOutsideAirlock(t *testing.T) {
	w := newPGWorld(t, "10m")

	cmd := exec.Command("psql", "-X", "-At", w.dsn,
		"-c", "ALTER ROLE CURRENT_USER PASSWORD 'self-set-pw-4d1'",
		"-c", "SELECT pg_sleep(60)")
	cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var role string
	waitFor(t, "the session's pg_sleep to run upstream", 20*time.Second, func() bool {
		role = w.srv.Psql(t, "postgres", "SELECT usename FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'")
		return role != ""
	})
	// The proxy refuses the statement (the built-in role_changes rule) and
	// the session goes on to its pg_sleep. Give the role a known password
	// by other means, as a spelling the proxy missed would, so that the
	// credential side, the defence behind the proxy, is still tested.
	if o := out.String(); !strings.Contains(o, "42501") && !strings.Contains(o, "role_changes") {
		t.Fatalf("ALTER ROLE CURRENT_USER PASSWORD was not refused by the proxy: %q", o)
	}
	w.srv.Psql(t, "postgres", fmt.Sprintf("ALTER ROLE %s PASSWORD 'self-set-pw-4d1'", pgx.Identifier{role}.Sanitize()))
	if got := w.srv.Psql(t, "postgres", "SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = '"+role+"'"); got != "f|1" {
		t.Fatalf("role %s during its session: rolcanlogin|rolconnlimit = %q, want f|1", role, got)
	}

	direct := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, w.srv.URL(role, "self-set-pw-4d1", "app"))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	if err := direct(); err == nil || !strings.Contains(err.Error(), "not permitted to log in") {
		t.Fatalf("direct login with the self-set password during the session: %v, want refused (not permitted to log in)", err)
	}

	// End the session as a person would (Ctrl-C cancels, then psql exits),
	// then try again.
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	waitFor(t, "the role to be dropped", 15*time.Second, func() bool { return len(w.ourRoles(t)) == 0 })
	if err := direct(); err == nil {
		t.Fatal("direct login with the self-set password works after the session")
	}
}

// Item 10: two workstations share one server, admin and prefix. Restarting
// one daemon sweeps its own leftovers and leaves the other's live roles and
// sessions alone.
func TestRestartSparesOtherDaemonsRoles(t *testing.T) {
	a := newPGWorld(t, "10m")
	b := &pgWorld{env: newEnv(t), host: a.host, srv: a.srv, pwFile: a.pwFile, dsn: a.dsn}
	b.config(b.daemonConfig("10m"))
	b.startDaemon()

	bSess := b.pgxHold(t, b.dsn)
	defer bSess.release()
	aSess := a.pgxHold(t, a.dsn)
	defer aSess.release()
	if aSess.user == bSess.user {
		t.Fatalf("both daemons made role %s", aSess.user)
	}
	hostOf := func(role string) string {
		c := a.srv.Psql(t, "postgres", "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '"+role+"'")
		f := strings.Fields(c)
		if len(f) < 2 || !strings.HasPrefix(f[1], "host=") {
			t.Fatalf("role %s comment %q carries no host id", role, c)
		}
		return f[1]
	}
	if hostOf(aSess.user) == hostOf(bSess.user) {
		t.Fatalf("two daemons tag their roles with one host id (%s)", hostOf(aSess.user))
	}

	// Daemon a dies with a session open, and comes back.
	a.killDaemon()
	aSess.release()
	a.startDaemon()
	waitFor(t, "a's restart to sweep its leftover role", 15*time.Second, func() bool {
		return a.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = '"+aSess.user+"'") == "0"
	})
	if n := a.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = '"+bSess.user+"'"); n != "1" {
		t.Fatalf("a's restart dropped b's live role %s", bSess.user)
	}
	if after := bSess.release(); after != "ok" {
		t.Fatalf("b's session after a's restart: %q, want ok", after)
	}
	waitFor(t, "b's role to be dropped by b", 15*time.Second, func() bool {
		return a.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = '"+bSess.user+"'") == "0"
	})
}
