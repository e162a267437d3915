package audit

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/session"
)

// BenchmarkShipSteadyAged is BenchmarkShipSteady (batch=2000) against an
// embedded store that already holds records shipped the same way: does
// recording cost more as the store grows (issue 9)? The records come from
// ten concurrent sessions, replaced every agedSessionLen records, as
// pgbench -c10 runs leave them. The store is filled once per size and
// kept for the sub-benchmark's runs (its first run is b.N=1); it is
// removed when the whole benchmark ends. The store is settled (synced,
// head noted, journal released) every agedSettleEvery records, in the
// timed part, as the daemon does every 10 s at about 20,000 statements a
// second: whatever that costs more in a larger store is counted.
func BenchmarkShipSteadyAged(b *testing.B) {
	parent := b
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	for _, fill := range []struct {
		name       string
		size       int
		sessionLen int
	}{
		{"records=0", 0, agedSessionLen},
		{"records=1000000", 1_000_000, agedSessionLen},
		{"records=5000000", 5_000_000, agedSessionLen},
		// Ten sessions started every 20 statements (two statements
		// each, 500,000 sessions): the session tables and their
		// indexes, keyed by session ids, grow with the store.
		{"short-sessions-records=1000000", 1_000_000, 20},
	} {
		b.Run(fill.name, func(b *testing.B) {
			a := agedWriters[fill.name]
			if a == nil {
				a = newAgedWriter(b, parent.TempDir(), fill.size, fill.sessionLen, st)
				agedWriters[fill.name] = a
				parent.Cleanup(func() { delete(agedWriters, fill.name); a.close() })
			}
			b.ReportAllocs()
			var cpu, sys time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(2000, b.N-done)
				b.StopTimer()
				a.emit(n, agedSessionLen, st)
				b.StartTimer()
				c0, s0 := recCPU(), sysCPU()
				a.w.shipMu.Lock()
				err := a.w.ship(context.Background())
				a.w.shipMu.Unlock()
				cpu, sys = cpu+recCPU()-c0, sys+sysCPU()-s0
				if err != nil {
					b.Fatal(err)
				}
				done += n
				if a.emitted/agedSettleEvery != (a.emitted-n)/agedSettleEvery {
					c0, s0 := recCPU(), sysCPU()
					a.w.shipMu.Lock()
					a.w.settle(true)
					a.w.shipMu.Unlock()
					cpu, sys = cpu+recCPU()-c0, sys+sysCPU()-s0
				}
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(sys.Nanoseconds())/float64(b.N), "sys-ns/op")
			db, blocks := a.storeBytes()
			b.ReportMetric(float64(db)/(1<<20), "sqlite-MiB")
			b.ReportMetric(float64(blocks)/(1<<20), "blocks-MiB")
		})
	}
}

// agedSettleEvery is how many records are shipped between settles.
const agedSettleEvery = 200_000

// agedSessionLen is how many records a session of an aged store holds.
const agedSessionLen = 50_000

// agedWriters keeps each size's filled writer across the runs of its
// sub-benchmark; the benchmarks of a process run one at a time.
var agedWriters = map[string]*agedWriter{}

type agedWriter struct {
	w        *Writer
	dir      string
	sessions []*session.Session
	emitted  int
}

// newAgedWriter fills a writer's store in dir, the benchmark's (not the
// sub-benchmark's run's: the store outlives the run).
func newAgedWriter(b *testing.B, dir string, size, sessionLen int, st *session.Statement) *agedWriter {
	b.Helper()
	w, err := Open(context.Background(), Options{StateDir: dir, CommitInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	a := &agedWriter{w: w, dir: dir}
	t0, c0 := time.Now(), recCPU()
	for a.emitted < size {
		a.emit(min(2000, size-a.emitted), sessionLen, st)
		a.w.shipMu.Lock()
		err := a.w.ship(context.Background())
		a.w.shipMu.Unlock()
		if err != nil {
			a.close()
			b.Fatalf("fill the store to %d records: %v", size, err)
		}
	}
	// The fill's writeback is not the measured shipments' cost: without
	// this the kernel was still writing the fill's pages out during them,
	// and their own writes' copies into the page cache took three times
	// the CPU (perf: copy_folio_from_iter_atomic, 3% of samples to 11%).
	unix.Sync()
	db, blocks := a.storeBytes()
	b.Logf("filled to %d records in %s (%s CPU): SQLite %.0f MiB, block files %.0f MiB", size, time.Since(t0).Round(time.Millisecond),
		(recCPU() - c0).Round(time.Millisecond), float64(db)/(1<<20), float64(blocks)/(1<<20))
	return a
}

// emit writes n statements round-robin over ten sessions, ending them and
// starting ten new ones every sessionLen records.
func (a *agedWriter) emit(n, sessionLen int, st *session.Statement) {
	for i := 0; i < n; i++ {
		if a.emitted%sessionLen == 0 {
			for _, s := range a.sessions {
				s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit", Database: "bench", UpstreamRole: "airlock_x"}})
			}
			a.sessions = a.sessions[:0]
			for k := 0; k < 10; k++ {
				s := fakeSession(a.w, 1001, "alice", "/usr/bin/pgbench")
				s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
				a.sessions = append(a.sessions, s)
			}
		}
		a.sessions[a.emitted%10].Emit(session.Event{Kind: session.KindStatement, Statement: st})
		a.emitted++
	}
}

// storeBytes is the size of the store's files: SQLite's (database and
// WAL) and the block files.
func (a *agedWriter) storeBytes() (db, blocks int64) {
	dir := filepath.Join(a.dir, "audit")
	for _, name := range []string{"audit.db", "audit.db-wal"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil {
			db += fi.Size()
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "blocks", "*.blocks"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			blocks += fi.Size()
		}
	}
	return db, blocks
}

// sysCPU is the process's CPU time in the kernel.
func sysCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Stime.Nano())
}

func (a *agedWriter) close() {
	_ = a.w.j.close()
	_ = a.w.store.Close()
}
