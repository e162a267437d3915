package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// A daemon killed before it shipped anything: the next start finds the
// records in the journal, ships them in order and closes the open session
// as interrupted.
func TestJournalSurvivesAKilledWriter(t *testing.T) {
	state := t.TempDir()
	w, err := Open(context.Background(), Options{StateDir: state, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// No Run: nothing is ever shipped, as if killed right after writing.
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	for i := 0; i < 100; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{SQL: "SELECT " + string(rune('a'+i%26))}})
	}
	// Abandon w without closing anything, but for what the kernel does
	// for a killed process: its ring unmapped and unlocked.
	if w.j.rg != nil {
		_ = w.j.rg.close()
	}

	w2, cancel, done := openWriter(t, state, "", "", Policy{})
	defer func() { cancel(); <-done }()
	ctx := context.Background()
	if err := w2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w2.Flush(ctx); err != nil { // ships the interrupted end appended by the first
		t.Fatal(err)
	}
	wantInterrupted(t, ctx, w2, s, 100)
}

// wantInterrupted checks, after a restart, that the session s of a killed
// daemon is in w's store with its n statements and an interrupted end,
// and that the chain verifies.
func wantInterrupted(t *testing.T, ctx context.Context, w *Writer, s *session.Session, n int64) {
	t.Helper()
	d, err := w.Store().Session(ctx, s.ID, nil)
	if err != nil || d == nil {
		t.Fatalf("session lost: %v", err)
	}
	if d.Statements != n || d.End == nil || d.End.Reason != ReasonInterrupted {
		t.Fatalf("want %d statements and an interrupted end, got %d, %+v", n, d.Statements, d.End)
	}
	if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
		t.Fatalf("verify: %v %+v", err, rep)
	}
}

// A torn frame at the end of the journal (a machine crash inside the fsync
// window) is dropped; everything before it is kept.
func TestJournalDropsATornTail(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := j.append(&pending{Kind: "statement", Data: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	_ = j.close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte{0, 0, 0, 50, 1, 2, 3, 4, '{', '"'}) // half a frame
	f.Close()
	j2, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j2)
	recs, err := j2.read(0, 100)
	if err != nil || len(recs) != 10 || recs[9].Seq != 10 || j2.lastSeq() != 10 {
		t.Fatalf("after a torn tail: %d records (%v), last seq %d", len(recs), err, j2.lastSeq())
	}
	if err := j2.append(&pending{Kind: "statement", Data: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := j2.read(10, 100); len(recs) != 1 || recs[0].Seq != 11 {
		t.Fatalf("append after recovery: %+v", recs)
	}
}

// The journal's bound holds appends back until the store takes records.
func TestJournalBoundWaitsForTheStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		ring uint64
	}{{"ring", ringDefault}, {"ring of two frames", 2048}, {"no ring", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := openJournalRing(t.TempDir(), 2000, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			big := json.RawMessage(`"` + strings.Repeat("x", 850) + `"`)
			for i := 0; i < 3; i++ {
				if err := j.append(&pending{Kind: "statement", Data: big}); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan struct{})
			go func() {
				_ = j.append(&pending{Kind: "statement", Data: big})
				close(done)
			}()
			select {
			case <-done:
				t.Fatal("append past the bound did not wait")
			case <-time.After(200 * time.Millisecond):
			}
			j.release(3)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("append still waiting after the store took everything")
			}
			if recs, _ := j.read(3, 10); len(recs) != 1 || recs[0].Seq != 4 {
				t.Fatalf("record after the wait: %+v", recs)
			}
		})
	}
}

// Retention removes old records only up to a signed checkpoint, and what is
// left verifies; a key rotation is signed by the old key.
func TestPruneAndRotateKeepVerification(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			spec, pw := sk.open(t)
			w, cancel, done := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancel(); <-done }()
			ctx := context.Background()
			writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 5)
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			w.shipMu.Lock()
			w.checkpoint(ctx, true)
			w.shipMu.Unlock()
			sealed := w.Expect().Checkpoint.Seq
			if _, err := w.RotateKey(); err != nil {
				t.Fatal(err)
			}
			writeSession(fakeSession(w, 1002, "bob", "/usr/bin/psql"), 3)
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			n, err := w.Prune(ctx, time.Now().Add(time.Hour))
			if err != nil || n != sealed {
				t.Fatalf("pruned %d records (%v), want the %d up to the checkpoint", n, err, sealed)
			}
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			w.shipMu.Lock()
			w.checkpoint(ctx, true)
			w.shipMu.Unlock()
			rep, err := Verify(ctx, w.Store(), "", w.Expect())
			if err != nil || !rep.OK {
				t.Fatalf("verify after prune and rotation: %v %+v", err, rep)
			}
			if c := rep.Chains[0]; c.First != sealed+1 || len(c.Keys) != 2 {
				t.Fatalf("chain after prune: %+v", c)
			}
			// A rotation without the old key's signature is reported.
			if _, err := w.Store().db.Exec(w.Store().q(`UPDATE audit_keys SET signature = '' WHERE key_id = ?`), w.sig.id); err != nil {
				t.Fatal(err)
			}
			rep, _ = Verify(ctx, w.Store(), "", w.Expect())
			if rep.OK || rep.First.Kind != BreakForged {
				t.Fatalf("unsigned rotation not reported: %+v", rep.First)
			}
		})
	}
}

func BenchmarkRecordStatement(b *testing.B) {
	w, err := Open(context.Background(), Options{StateDir: b.TempDir(), CommitInterval: benchCommit})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
		}
	})
	b.StopTimer()
	if err := w.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
}

var benchCommit = 50 * time.Millisecond

// BenchmarkRawAppend is the floor under BenchmarkRecordStatement: one
// write(2) of a record-sized frame to a file in the same kind of folder.
func BenchmarkRawAppend(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 700)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestJournalFrameIsJSON(t *testing.T) {
	j, err := openJournal(t.TempDir(), 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, sess := range []string{"abc", "we\"ird\\\x01é"} {
		if err := j.append(&pending{Time: at, Kind: "statement", Session: sess, Data: json.RawMessage(`{"sql":"SELECT 1"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := j.read(0, 10)
	if err != nil || len(recs) != 2 || recs[1].Session != "we\"ird\\\x01é" || !recs[0].Time.Equal(at) || string(recs[0].Data) != `{"sql":"SELECT 1"}` {
		t.Fatalf("frames did not round-trip: %v %+v", err, recs)
	}
}

// Records slipped into this daemon's chain while it was down are not
// silently adopted: the daemon says so in a record its next checkpoint signs.
func TestForeignRecordsAreCalledOut(t *testing.T) {
	state := t.TempDir()
	w, cancel, done := openWriter(t, state, "", "", Policy{})
	writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 2)
	cancel()
	<-done
	st, err := OpenStore(context.Background(), filepath.Join(state, "audit", "audit.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	ex := expectOf(t, state)
	forged := Record{Daemon: ex.Daemon, Seq: ex.Stored + 1, Time: time.Now().UTC(), Kind: "statement", Session: "x",
		Data: json.RawMessage(`{"sql":"SELECT 'all is well'"}`), PrevHash: ex.Hash}
	forged.Hash = hashRecord(forged.PrevHash, &forged)
	if err := st.append(context.Background(), []Record{forged}, nil, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()

	w2, cancel2, done2 := openWriter(t, state, "", "", Policy{})
	defer func() { cancel2(); <-done2 }()
	if p := w2.Status().Problem; !strings.Contains(p, "never wrote") {
		t.Fatalf("status problem = %q", p)
	}
	writeSession(fakeSession(w2, 1001, "alice", "/usr/bin/psql"), 1)
	ctx := context.Background()
	if err := w2.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := w2.Store().Scan(ctx, "", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	alert := false
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			t.Fatalf("chain has a gap at %d: %+v", i+1, r)
		}
		alert = alert || (r.Kind == KindAlert && strings.Contains(string(r.Data), fmt.Sprintf(`"from_seq":%d`, ex.Stored+1)))
	}
	if !alert {
		t.Fatal("no audit.alert record names the foreign records")
	}
}

// BenchmarkShip is the writer's cost per record off the data path: read
// back from the journal, chain, insert and commit into SQLite.
func BenchmarkShip(b *testing.B) {
	w, err := Open(context.Background(), Options{StateDir: b.TempDir(), CommitInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	for i := 0; i < b.N; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
	}
	b.ResetTimer()
	c0 := recCPU()
	if err := w.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	// CPU rather than wall time: the fsyncs' waits are not the shipper's
	// cost, and other work on the machine is not either.
	b.ReportMetric(float64((recCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// Shipments between settles are not synced in the store: the head file
// and the journal stay at the last settle, so that whatever a crash leaves
// of the store (everything, after a kill; only what was settled, after a
// power loss) is completed from the journal at the next start, without a
// false alarm and with a chain that verifies.
func TestUnsettledShipmentsAreKeptInTheJournal(t *testing.T) {
	for _, tc := range []struct {
		name string
		// powerLoss puts the store back as it was at the settle, as a
		// machine crash could leave it (the later commits were never
		// synced).
		powerLoss bool
		// filesLost puts only the block files back as they were at the
		// settle: the store's later commits reached the disk (SQLite's
		// own checkpoint, the kernel's writeback) but not the text they
		// name, which is synced only when a shipment is settled.
		filesLost bool
	}{
		{"daemon killed", false, false},
		{"machine crashed", true, false},
		{"machine crashed, the block files behind the store", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			ctx := context.Background()
			w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
			emit := func(n int) {
				for i := 0; i < n; i++ {
					s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{SQL: fmt.Sprintf("SELECT %d", i)}})
				}
			}
			ship := func() {
				w.shipMu.Lock()
				defer w.shipMu.Unlock()
				if err := w.ship(ctx); err != nil {
					t.Fatal(err)
				}
			}
			emit(50)
			ship() // the first shipment settles: nothing was settled before
			settled := w.stored
			dir := filepath.Join(state, "audit")
			db := filepath.Join(dir, "audit.db")
			saved := map[string][]byte{}
			keep := []string{db, db + "-wal"}
			if tc.filesLost {
				keep, _ = filepath.Glob(filepath.Join(dir, "blocks", "*.blocks"))
				if len(keep) == 0 {
					t.Fatal("no block file")
				}
			}
			for _, p := range keep {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				saved[p] = b
			}
			emit(50)
			ship()
			if w.stored != settled+50 {
				t.Fatalf("stored through %d, want %d", w.stored, settled+50)
			}
			hf, _, err := readHead(filepath.Join(dir, "head"))
			if err != nil || hf.Seq != settled {
				t.Fatalf("head file at seq %d (%v), want the settled %d", hf.Seq, err, settled)
			}
			if recs, err := w.j.read(settled, shipBatch); err != nil || len(recs) != 50 {
				t.Fatalf("journal holds %d unsettled records (%v), want 50", len(recs), err)
			}
			// Gone, as a killed process: its ring unmapped, its store
			// connection closed without a word.
			if w.j.rg != nil {
				_ = w.j.rg.close()
			}
			if tc.powerLoss || tc.filesLost {
				_ = w.store.Close()
				if tc.powerLoss {
					_ = os.Remove(db + "-shm")
				}
				for p, b := range saved {
					if err := os.WriteFile(p, b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}

			w2, cancel, done := openWriter(t, state, "", "", Policy{})
			defer func() { cancel(); <-done }()
			if err := w2.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if err := w2.Flush(ctx); err != nil { // the interrupted end
				t.Fatal(err)
			}
			if st := w2.Status(); st.Problem != "" {
				t.Fatalf("false alarm: %s", st.Problem)
			}
			wantInterrupted(t, ctx, w2, s, 100)
		})
	}
}

// BenchmarkShipSteady is the shipper at a steady rate: each shipment
// takes the records written since the last (batch of them), so that the
// fixed costs of a shipment (its store commit and whatever it syncs) are
// spread over batch records, as at batch records a second.
func BenchmarkShipSteady(b *testing.B) {
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	for _, batch := range []int{100, 2000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { shipSteady(b, batch, st) })
	}
}

// BenchmarkShipSteadySample is BenchmarkShipSteady with
// BenchmarkWriterRecordSample's statement (a 10-row sample, a record of
// about 1.3 KB): what the shipper pays for issue 11's masked rows.
func BenchmarkShipSteadySample(b *testing.B) {
	var rows [][]string
	for g := 41000; g < 41010; g++ {
		id := strconv.Itoa(g)
		rows = append(rows, []string{id, "Person " + id, "h:3f9a0c1e5b7d2a64", "**** **** **** " + id[1:], "pro"})
	}
	st := &session.Statement{Protocol: "simple", SQL: "SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 41000 AND 41000 + 19;",
		Tag: "SELECT 20", Rows: 20, Bytes: 1400, Duration: 300 * time.Microsecond,
		Sample: &session.Sample{Columns: []string{"id", "name", "email", "card", "plan"}, OIDs: []uint32{23, 25, 25, 25, 25},
			Data: storedRows(rows...), Truncated: true}}
	b.Run("batch=2000", func(b *testing.B) { shipSteady(b, 2000, st) })
}

// BenchmarkShipSteadyPgbench is the shipper's load in TestPgbenchOneMode
// (pgbench -S -c 10 through the proxy, recording with samples): its
// statement with the one-row sample the proxy takes, from ten sessions
// whose records interleave, in shipments of 2,000 (the benchmark's above)
// and of 4,500, what the shipper found waiting a shipment there (199,000
// records in 44 shipments, 2026-12-01).
func BenchmarkShipSteadyPgbench(b *testing.B) {
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond,
		Sample: &session.Sample{Columns: []string{"abalance"}, OIDs: []uint32{23}, Data: storedRows([]string{"0"})}}
	for _, batch := range []int{2000, 4500} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { shipSteadyFrom(b, batch, 10, st) })
	}
}

func shipSteady(b *testing.B, batch int, st *session.Statement) { shipSteadyFrom(b, batch, 1, st) }

// shipSteadyFrom is shipSteady with the statements spread over sessions
// sessions in turn.
func shipSteadyFrom(b *testing.B, batch, sessions int, st *session.Statement) {
	w, err := Open(context.Background(), Options{StateDir: b.TempDir(), CommitInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = w.j.close(); _ = w.store.Close() }()
	ss := make([]*session.Session, sessions)
	for i := range ss {
		ss[i] = fakeSession(w, 1001, "alice", "/usr/bin/psql")
	}
	ctx := context.Background()
	// The shipper's own thread as well as the process: the process's
	// figure takes in the garbage collector's work for the emits, which
	// the other work on a busy machine makes vary from run to run.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	var cpu, thread time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(batch, b.N-done)
		b.StopTimer()
		for i := 0; i < n; i++ {
			ss[(done+i)%sessions].Emit(session.Event{Kind: session.KindStatement, Statement: st})
		}
		b.StartTimer()
		c0, t0 := recCPU(), threadCPU()
		w.shipMu.Lock()
		err := w.ship(ctx)
		w.shipMu.Unlock()
		cpu, thread = cpu+recCPU()-c0, thread+threadCPU()-t0
		if err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(thread.Nanoseconds())/float64(b.N), "thread-ns/op")
}

// A daemon killed after its first shipment, between creating the head file
// and writing its first slot, leaves the file empty: the next start treats
// that as no head yet (the state before the first), ships what the journal
// holds, and the chain verifies. It used to refuse to start.
func TestEmptyHeadFileAfterAKill(t *testing.T) {
	state := t.TempDir()
	ctx := context.Background()
	w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	for i := 0; i < 30; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{SQL: fmt.Sprintf("SELECT %d", i)}})
	}
	w.shipMu.Lock()
	err = w.ship(ctx)
	w.shipMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for i := 30; i < 50; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{SQL: fmt.Sprintf("SELECT %d", i)}})
	}
	if err := os.WriteFile(filepath.Join(state, "audit", "head"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if w.j.rg != nil { // killed: what the kernel does for it
		_ = w.j.rg.close()
	}
	_ = w.store.Close()

	w2, cancel, done := openWriter(t, state, "", "", Policy{})
	defer func() { cancel(); <-done }()
	for range 2 { // the second ships the interrupted end the first appended
		if err := w2.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wantInterrupted(t, ctx, w2, s, 50)
}

// A segment that cannot be created leaves the active one active: appends
// go on into it, a sync keeps it open, and the next rotation that can
// create its file takes over. (Rotating used to hand the active file to
// the next sync first, which closed it under every later append.)
func TestJournalRotateFailureKeepsActiveSegment(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	appendN := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if err := j.append(&pending{Time: time.Now(), Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN(3)
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	// A directory where the next segment's file would go: creating it fails,
	// as on a full or read-only file system.
	blocker := filepath.Join(dir, fmt.Sprintf("%020d.seg", j.lastSeq()+1))
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	j.fileMu.Lock()
	j.mu.Lock()
	rerr := j.rotateLocked()
	unsynced := len(j.unsynced)
	j.mu.Unlock()
	j.fileMu.Unlock()
	if rerr == nil {
		t.Fatal("rotating onto a directory succeeded")
	}
	if unsynced != 0 {
		t.Fatalf("a failed rotation queued %d files for the next sync to close", unsynced)
	}
	for round := 0; round < 2; round++ {
		appendN(2)
		if err := j.sync(); err != nil {
			t.Fatalf("sync after a failed rotation (round %d): %v", round, err)
		}
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	j.fileMu.Lock()
	j.mu.Lock()
	rerr = j.rotateLocked()
	j.mu.Unlock()
	j.fileMu.Unlock()
	if rerr != nil {
		t.Fatalf("rotating once the file can be made: %v", rerr)
	}
	appendN(1)
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	recs, err := j.read(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 8 {
		t.Fatalf("read %d records back, want 8", len(recs))
	}
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
	}
}

// A torn frame left at the end of the active segment (its write failed and
// could not be cut off) is never followed by another frame in that file: a
// reader stops at a damaged frame, so whatever came after would be lost.
func TestJournalWritesNothingAfterATornFrame(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	add := func() error {
		return j.append(&pending{Time: time.Now(), Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)})
	}
	// The journal's first segment holds no whole frame: rotating would
	// reopen the same file, which must be refused, not done.
	j.fileMu.Lock()
	j.mu.Lock()
	rerr := j.rotateLocked()
	j.mu.Unlock()
	j.fileMu.Unlock()
	if rerr == nil {
		t.Fatal("rotating an empty active segment onto itself succeeded")
	}
	for i := 0; i < 2; i++ {
		if err := add(); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	// The state a failed write leaves when neither its cut nor a new
	// segment worked: half a frame at the end, marked torn.
	j.fileMu.Lock()
	j.mu.Lock()
	if _, err := j.f.Write([]byte{0, 0, 0, 40, 1, 2, 3, 4, '{', '"'}); err != nil {
		t.Fatal(err)
	}
	j.torn = true
	j.mu.Unlock()
	j.fileMu.Unlock()
	for i := 0; i < 3; i++ {
		if err := add(); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	recs, err := j.read(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 5 {
		t.Fatalf("read %d records back, want 5 (records after the torn frame lost)", len(recs))
	}
	// A new journal over the same folder (the next start) reads them too.
	closeJ := j.close()
	if closeJ != nil {
		t.Fatal(closeJ)
	}
	j2, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.close()
	recs, err = j2.read(0, 100)
	if err != nil || len(recs) != 5 {
		t.Fatalf("after reopening: %d records, %v; want 5", len(recs), err)
	}
}

// The shipper may drain the ring while the journal closes (shutdown): the
// drain finds the ring gone and does nothing, never a nil ring (run with
// -race: the ring's presence is read under the journal's lock).
func TestJournalDrainWhileClosing(t *testing.T) {
	for round := 0; round < 20; round++ {
		j, err := openJournal(t.TempDir(), 1<<30, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			if err := j.append(ringRecord(i)); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() {
			var err error
			for i := 0; i < 200 && err == nil; i++ {
				err = j.drain()
			}
			done <- err
		}()
		if err := j.close(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("round %d: drain while closing: %v", round, err)
		}
	}
}
