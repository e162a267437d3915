package pgcred

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// adminBackends counts the server's backends of the pooled admin role.
func adminBackends(t *testing.T, s *pgtest.Server) int {
	n, err := strconv.Atoi(s.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgcred_admin'"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// roundTrip acquires a role, logs in as it and releases it.
func roundTrip(t *testing.T, e *Ephemeral, rec *recorder, s *pgtest.Server, person string) {
	t.Helper()
	ctx := context.Background()
	l := acquire(t, e, rec, newSess(rec, person), "postgres")
	c, err := loginAs(ctx, s, l, "postgres")
	if err != nil {
		t.Fatalf("login as %s: %v", l.User(), err)
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n); err != nil || n != 2 {
		t.Fatalf("select: n=%d err=%v", n, err)
	}
	c.Close(ctx)
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if roleExists(t, s, l.User()) {
		t.Fatalf("%s survived Release", l.User())
	}
	if got, want := rec.kinds(l.User()), []string{"credential.create:ok", "credential.revoke:ok"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestAdminPoolReusesConnections(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}})
	pid := func() string {
		return s.Psql(t, "postgres", "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'pgcred_admin'")
	}
	// NewEphemeral's own connection stays open for the first session.
	first := pid()
	if first == "" || adminBackends(t, s) != 1 {
		t.Fatalf("admin backends after NewEphemeral: %q, want 1", first)
	}
	for i := 0; i < 5; i++ {
		roundTrip(t, e, rec, s, "kim")
	}
	if got := pid(); got != first {
		t.Fatalf("admin backends after 5 sessions: %s, want the same one (%s)", got, first)
	}
	if got := s.Psql(t, "postgres", "SELECT count(*) FROM pg_authid WHERE rolname LIKE 'airlock\\_%' AND rolname <> 'airlock_orphans'"); got != "0" {
		t.Fatalf("%s roles left", got)
	}

	e.Close()
	deadline := time.Now().Add(5 * time.Second)
	for adminBackends(t, s) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Close left admin connections open")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Leases outlive Close: Release opens a connection of its own.
	roundTrip(t, e, rec, s, "kim")
	if n := adminBackends(t, s); n != 0 {
		t.Fatalf("%d admin connections left open after Close", n)
	}
}

// TestAdminPoolSurvivesLostConnections kills the pooled admin connection
// (pg_terminate_backend, a server restart): the next Acquire and Release
// must still work, on a new connection.
func TestAdminPoolSurvivesLostConnections(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}, Logger: slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, rec), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	kill := func() {
		t.Helper()
		s.Psql(t, "postgres", "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = 'pgcred_admin'")
		if n := adminBackends(t, s); n != 0 {
			t.Fatalf("%d admin backends survived pg_terminate_backend", n)
		}
	}
	roundTrip(t, e, rec, s, "lee")

	pingAt := func(d time.Duration) {
		e.pool.mu.Lock()
		e.pool.pingAt = d
		e.pool.mu.Unlock()
	}
	// Killed a moment ago (no ping before reuse): CREATE ROLE and the drop
	// fail on the dead connection and run again on a new one.
	t.Run("terminated, retried", func(t *testing.T) {
		pingAt(time.Hour)
		defer pingAt(pingAfter)
		kill()
		roundTrip(t, e, rec, s, "lee")
		if got := rec.logged("pooled admin connection lost"); got != 1 {
			t.Fatalf("%d retries logged, want 1", got)
		}
		// The drop too.
		l := acquire(t, e, rec, newSess(rec, "lee"), "postgres")
		kill()
		if err := l.Release(context.Background()); err != nil {
			t.Fatalf("Release on a killed pooled connection: %v", err)
		}
		if roleExists(t, s, l.User()) {
			t.Fatal("role survived")
		}
		if got := rec.logged("pooled admin connection lost"); got != 2 {
			t.Fatalf("%d retries logged, want 2", got)
		}
	})
	// Idle long enough to be pinged: the dead connection is never used.
	t.Run("terminated, pinged", func(t *testing.T) {
		pingAt(0)
		defer pingAt(pingAfter)
		kill()
		roundTrip(t, e, rec, s, "lee")
		if got := rec.logged("pooled admin connection lost"); got != 2 {
			t.Fatalf("%d retries logged, want still 2 (the ping caught it)", got)
		}
	})
	// Several dead idle connections at once: all are discarded.
	t.Run("several terminated", func(t *testing.T) {
		t.Run("fill the pool", func(t *testing.T) {
			for i := 0; i < adminPoolSize; i++ {
				t.Run(strconv.Itoa(i), func(t *testing.T) { t.Parallel(); roundTrip(t, e, rec, s, "lee") })
			}
		})
		kill()
		roundTrip(t, e, rec, s, "lee")
		roundTrip(t, e, rec, s, "lee")
	})
	t.Run("server restarted", func(t *testing.T) {
		roundTrip(t, e, rec, s, "lee")
		restartPG(t, s)
		roundTrip(t, e, rec, s, "lee")
		if err := func() error { _, err := e.Sweep(context.Background()); return err }(); err != nil {
			t.Fatalf("Sweep after restart: %v", err)
		}
	})
}

func restartPG(t *testing.T, s *pgtest.Server) {
	t.Helper()
	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(s.Dir, "data")
	for _, args := range [][]string{
		{"stop", "-D", data, "-m", "fast", "-w"},
		{"start", "-D", data, "-w", "-l", filepath.Join(s.Dir, "restart.log")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, "pg_ctl")}, args...)...)
		cmd.Dir = s.Dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("pg_ctl %s: %v: %s", args[0], err, out)
		}
	}
}

// TestAdminPoolConcurrent runs many sessions at once: the pool never opens
// more than adminPoolSize admin connections (plus none per session), and
// drops leave Acquire a connection.
func TestAdminPoolConcurrent(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}})
	ctx := context.Background()
	su, err := pgx.ConnectConfig(ctx, connConfig(t, s, s.AdminUser, s.AdminPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	stop := make(chan struct{})
	maxSeen := 0
	var watchErr error
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := su.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgcred_admin'").Scan(&n); err != nil {
				watchErr = err
				return
			}
			maxSeen = max(maxSeen, n)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Run("clients", func(t *testing.T) {
		for g := 0; g < 12; g++ {
			t.Run(strconv.Itoa(g), func(t *testing.T) {
				t.Parallel()
				for i := 0; i < 3; i++ {
					roundTrip(t, e, rec, s, "max")
				}
			})
		}
	})
	close(stop)
	watch.Wait()
	if watchErr != nil {
		t.Fatal(watchErr)
	}
	if maxSeen > adminPoolSize {
		t.Fatalf("%d admin connections open at once, want at most %d", maxSeen, adminPoolSize)
	}
	if n := e.pool.idleCount(""); n < 1 || n > adminPoolSize {
		t.Fatalf("%d idle admin connections", n)
	}
	t.Logf("at most %d admin connections for 12 concurrent clients", maxSeen)
}

// TestAdminPoolOtherDatabases: connections to other databases (REASSIGN and
// DROP OWNED after a 2BP01) are kept for reuse, then closed when idle.
func TestAdminPoolOtherDatabases(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	s.Psql(t, "postgres", "CREATE DATABASE other")
	s.Psql(t, "other", "GRANT CREATE ON SCHEMA public TO agent_write")
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_write"}})
	for i := 0; i < 2; i++ {
		l := acquire(t, e, rec, newSess(rec, "ned"), "other")
		c, err := loginAs(ctx, s, l, "other")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "CREATE TABLE t_"+l.User()+" (x int)"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if roleExists(t, s, l.User()) {
			t.Fatal("role survived")
		}
	}
	if n := e.pool.idleCount("other"); n != 1 {
		t.Fatalf("%d idle connections to other, want 1 (reused)", n)
	}
	otherBackends := func() string {
		return s.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgcred_admin' AND datname = 'other'")
	}
	if got := otherBackends(); got != "1" {
		t.Fatalf("%s admin backends in other, want 1", got)
	}
	// An hour later: the other database's connection is closed, the newest
	// admin connection stays.
	e.pool.mu.Lock()
	e.pool.now = func() time.Time { return time.Now().Add(time.Hour) }
	e.pool.mu.Unlock()
	e.pool.reap()
	if n, m := e.pool.idleCount("other"), e.pool.idleCount(""); n != 0 || m != 1 {
		t.Fatalf("after reap: %d idle to other (want 0), %d idle admin (want 1)", n, m)
	}
	deadline := time.Now().Add(5 * time.Second)
	for otherBackends() != "0" {
		if time.Now().After(deadline) {
			t.Fatal("reaped connection still open on the server")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestVerifierIterations(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, s.AdminUser, s.AdminPassword, "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}})
	l := acquire(t, e, rec, newSess(rec, "olga"), "postgres")
	defer l.Release(ctx)
	want := fmt.Sprintf("SCRAM-SHA-256$%d:", scramIterations)
	if got := s.Psql(t, "postgres", "SELECT left(rolpassword, "+strconv.Itoa(len(want))+") FROM pg_authid WHERE rolname = '"+l.User()+"'"); got != want {
		t.Fatalf("verifier starts %q, want %q", got, want)
	}
	c, err := loginAs(ctx, s, l, "postgres")
	if err != nil {
		t.Fatalf("login with a %d-iteration verifier: %v", scramIterations, err)
	}
	c.Close(ctx)
}

// Write makes the recorder a log sink too, for rec.logged.
func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, string(p))
	return len(p), nil
}

// logged counts the log lines that contain s.
func (r *recorder) logged(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.logs {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
