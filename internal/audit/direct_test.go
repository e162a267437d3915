package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// directStatement is a statement whose record is about 400 bytes of
// journal frame, numbered so that a record read back names its place.
func directStatement(i int) session.Event {
	return session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "simple",
		SQL: fmt.Sprintf("SELECT %d, '%s'", i, strings.Repeat("p", 200)), Tag: "SELECT 1", Rows: 1}}
}

// directEmitter starts a session on w and returns what emits its next k
// statements (directStatement, numbered from 1) and how many it emitted.
func directEmitter(w *Writer) (emit func(k int), emitted func() int) {
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	n := 0
	return func(k int) {
			for i := 0; i < k; i++ {
				n++
				s.Emit(directStatement(n))
			}
		}, func() int {
			return n
		}
}

// wantChain checks the store holds exactly statements 1 to n of one
// session, each once and in order, in a chain that verifies with no
// problem raised, and returns the session's detail.
func wantChain(t *testing.T, w *Writer, n int) *SessionDetail {
	t.Helper()
	ctx := context.Background()
	if st := w.Status(); st.Problem != "" {
		t.Fatalf("problem raised: %s", st.Problem)
	}
	if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	ss, err := w.Store().Sessions(ctx, Filter{})
	if err != nil || len(ss) != 1 {
		t.Fatalf("sessions: %v, %d of them", err, len(ss))
	}
	d, err := w.Store().Session(ctx, ss[0].ID, nil)
	if err != nil || d == nil {
		t.Fatalf("session: %v", err)
	}
	next := 1
	for _, r := range d.Records {
		if r.Kind != string(session.KindStatement) {
			continue
		}
		want := fmt.Sprintf(`SELECT %d, '`, next)
		if !strings.Contains(string(r.Data), want) {
			t.Fatalf("statement %d (seq %d) is %s", next, r.Seq, r.Data)
		}
		next++
	}
	if next-1 != n {
		t.Fatalf("%d statements stored, want %d", next-1, n)
	}
	return d
}

// A shipper killed with SIGKILL inside a store-direct batch (taken from
// the ring and not stored; stored and synced, the ring not yet released;
// released) loses no record and stores none twice: the next start moves
// the ring's frames into the segments and ships those after the store's
// last seq. A machine crash there (the kill, then the ring's tmpfs file
// gone) loses at most the batch not yet stored, and raises no alarm for
// the records the store has and no journal does.
func TestShipDirectSurvivesKill9(t *testing.T) {
	if state := os.Getenv("AIRLOCK_DIRECT_CHILD"); state != "" {
		directChild(state)
		return
	}
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	const n = 1500 // about 600 KB: more than ringDirectMin
	for _, tc := range []struct {
		name     string
		stage    shipStage
		ringLost bool
		want     int // statements in the store after the restart
	}{
		{"before the store's commit", shipRead, false, n},
		{"between the store's commit and the ring's release", shipStored, false, n},
		{"after the ring's release", shipReleased, false, n},
		{"machine crash before the store's commit", shipRead, true, 0},
		{"machine crash between the store's commit and the ring's release", shipStored, true, n},
		{"machine crash after the ring's release", shipReleased, true, n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestShipDirectSurvivesKill9$")
			cmd.Env = append(os.Environ(), "AIRLOCK_DIRECT_CHILD="+state,
				"AIRLOCK_DIRECT_STAGE="+strconv.Itoa(int(tc.stage)), "AIRLOCK_DIRECT_N="+strconv.Itoa(n))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the child was not killed at the stage: %v\n%s", err, out)
			}
			if tc.ringLost {
				if err := os.Remove(ringPath(filepath.Join(state, "audit", "journal"))); err != nil {
					t.Fatal(err)
				}
			}
			w, cancel, done := openWriter(t, state, "", "", Policy{})
			defer func() { cancel(); <-done }()
			ctx := context.Background()
			for i := 0; i < 2; i++ { // the records, then the interrupted end
				if err := w.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			d := wantChain(t, w, tc.want)
			if d.End == nil || d.End.Reason != ReasonInterrupted {
				t.Fatalf("want an interrupted end, got %+v", d.End)
			}
		})
	}
}

// directChild is the killed daemon of TestShipDirectSurvivesKill9: it
// records a session's statements, then ships them straight from the ring
// and kills itself at the stage the parent names.
func directChild(state string) {
	stage, _ := strconv.Atoi(os.Getenv("AIRLOCK_DIRECT_STAGE"))
	n, _ := strconv.Atoi(os.Getenv("AIRLOCK_DIRECT_N"))
	ctx := context.Background()
	w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour})
	if err != nil || w.j.rg == nil {
		fmt.Fprintln(os.Stderr, "child: open writer:", err)
		os.Exit(2)
	}
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	// The start-up shipment (the key record): through the segments, as
	// the ring holds less than ringDirectMin.
	if err := w.Flush(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child: flush:", err)
		os.Exit(2)
	}
	for i := 1; i <= n; i++ {
		s.Emit(directStatement(i))
	}
	w.directed = func(at shipStage) {
		if int(at) == stage {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Minute) // bounded: the signal lands first
		}
	}
	w.shipMu.Lock()
	err = w.ship(ctx)
	w.shipMu.Unlock()
	fmt.Fprintln(os.Stderr, "child: shipped without reaching the stage:", err)
	os.Exit(3)
}

// Sessions that find the ring full while the shipper is behind (a store
// that stalls) move its frames into the segments themselves; the next
// shipment takes the segments first, in order, and the shipper goes back
// to shipping straight from the ring once the store has them all.
func TestShipDirectAfterTheRingFills(t *testing.T) {
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	ctx := context.Background()
	w, err := Open(ctx, Options{StateDir: t.TempDir(), CommitInterval: time.Hour, ringSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.j.close(); _ = w.store.Close() }()
	ship := func() {
		t.Helper()
		w.shipMu.Lock()
		defer w.shipMu.Unlock()
		if err := w.ship(ctx); err != nil {
			t.Fatal(err)
		}
	}
	emit, emitted := directEmitter(w)
	emit(300) // about 120 KB: straight from the ring
	ship()
	if w.directBatches == 0 {
		t.Fatal("a ring over ringDirectMin was not shipped straight from it")
	}
	direct := w.directBatches
	emit(3000) // about 1.2 MB: the ring fills, sessions move it out
	if w.j.ringFull.Load() == 0 {
		t.Fatal("the ring never filled")
	}
	emit(200) // in the ring, after the segments' records
	ship()
	if w.directBatches != direct {
		t.Fatal("shipped from the ring while the segments held records the store had not")
	}
	emit(300)
	ship()
	if w.directBatches == direct {
		t.Fatal("not back to shipping from the ring once the store had the segments")
	}
	wantChain(t, w, emitted())
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := w.Status(); st.Spooled != 0 {
		t.Fatalf("%d records still spooled", st.Spooled)
	}
}

// A team store that goes down spools the records into the segments
// (bounded and fsynced as before); when it is back, the segments are
// shipped first, then the ring, and the chain is whole and in order.
func TestShipDirectStoreDownAndBack(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a PostgreSQL server")
	}
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	pgSrv := pgtest.Start(t, pgtest.Options{})
	db := fmt.Sprintf("audit_direct_%d", os.Getpid())
	pgSrv.Psql(t, "postgres", "CREATE DATABASE "+db)
	spec := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", pgSrv.AdminUser, pgSrv.Addr, pgSrv.Port, db)
	pw := pgSrv.AdminPassword
	ctx := context.Background()
	w, err := Open(ctx, Options{StateDir: t.TempDir(), Store: spec, Password: pw, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.j.close(); _ = w.store.Close() }()
	ship := func() error {
		w.shipMu.Lock()
		defer w.shipMu.Unlock()
		return w.ship(ctx)
	}
	emit, emitted := directEmitter(w)
	emit(300)
	if err := ship(); err != nil {
		t.Fatal(err)
	}
	if w.directBatches == 0 {
		t.Fatal("not shipped straight from the ring")
	}
	direct := w.directBatches
	// Down: no new connection to the database, the writer's cut.
	pgSrv.Psql(t, "postgres", "ALTER DATABASE "+db+" ALLOW_CONNECTIONS false")
	pgSrv.Psql(t, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '"+db+"'")
	emit(300)
	if err := ship(); err == nil {
		t.Fatal("shipped to a store that refuses connections")
	}
	if w.Status().Spooled == 0 || w.j.written < w.j.lastSeq() {
		t.Fatalf("the ring was not moved into the segments while the store was down: %+v", w.Status())
	}
	emit(300) // in the ring, after the spooled segments
	pgSrv.Psql(t, "postgres", "ALTER DATABASE "+db+" ALLOW_CONNECTIONS true")
	if err := ship(); err != nil {
		t.Fatal(err)
	}
	emit(300)
	if err := ship(); err != nil {
		t.Fatal(err)
	}
	if w.directBatches == direct {
		t.Fatal("not back to shipping from the ring after the store came back")
	}
	wantChain(t, w, emitted())
}
