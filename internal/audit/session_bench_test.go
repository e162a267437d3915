package audit

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// BenchmarkShipShortSessions is what a client that connects per statement
// (pgbench -C, an agent's tool that opens a connection per query) costs
// the embedded store (issue 9): one op is one session (start, one
// statement, end) shipped, in shipments of shortShipSessions sessions,
// into a store that already holds 0 or 1M sessions shipped the same way.
// cpu-ns/op is the process's CPU per session for shipping and settling
// (the emitting is not timed). The filled store is kept for the
// sub-benchmark's runs and removed at the end, unless
// AIRLOCK_BENCH_SESSIONS_DIR names a directory to keep filled ones in across
// processes (filling a million sessions takes minutes: alternated
// before/after runs reuse it; each build of the code needs its own).
func BenchmarkShipShortSessions(b *testing.B) {
	parent := b
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	for _, fill := range []struct {
		name     string
		sessions int
	}{
		{"sessions=0", 0},
		{"sessions=1000000", 1_000_000},
	} {
		b.Run(fill.name, func(b *testing.B) {
			a := shortWriters[fill.name]
			if a == nil {
				a = newShortWriter(b, parent, fill.name, fill.sessions, st)
				shortWriters[fill.name] = a
				parent.Cleanup(func() { delete(shortWriters, fill.name); a.close() })
			}
			b.ReportAllocs()
			var cpu time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(shortShipSessions, b.N-done)
				b.StopTimer()
				a.emitSessions(n, st)
				b.StartTimer()
				c0 := recCPU()
				if err := a.shipOnce(); err != nil {
					b.Fatal(err)
				}
				cpu += recCPU() - c0
				done += n
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			db, _ := a.storeBytes()
			b.ReportMetric(float64(db)/(1<<20), "sqlite-MiB")
		})
	}
}

// shortShipSessions is how many sessions one shipment holds: 1,800
// records, about a shipment of the daemon's at a few hundred connections
// a second.
const shortShipSessions = 600

// shortSettleEvery is how many sessions are shipped between settles: a
// settle every 10 s at a few thousand connections a second.
const shortSettleEvery = 30_000

var shortWriters = map[string]*shortWriter{}

// shortWriter is an agedWriter that ships whole short sessions.
type shortWriter struct {
	*agedWriter
	shipped int // sessions shipped
}

// newShortWriter opens a writer whose store holds size short sessions:
// filled now, or found filled in AIRLOCK_BENCH_SESSIONS_DIR.
func newShortWriter(b *testing.B, parent *testing.B, name string, size int, st *session.Statement) *shortWriter {
	b.Helper()
	dir := parent.TempDir()
	if keep := os.Getenv("AIRLOCK_BENCH_SESSIONS_DIR"); keep != "" && size > 0 {
		dir = keep + "/" + name
		if err := os.MkdirAll(dir, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	w, err := Open(context.Background(), Options{StateDir: dir, CommitInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	a := &shortWriter{agedWriter: &agedWriter{w: w, dir: dir}}
	var have int
	if err := w.store.db.QueryRow(`SELECT COUNT(*) FROM audit_sessions`).Scan(&have); err != nil {
		a.close()
		b.Fatal(err)
	}
	t0, c0 := time.Now(), recCPU()
	for have < size {
		n := min(shortShipSessions, size-have)
		a.emitSessions(n, st)
		if err := a.shipOnce(); err != nil {
			a.close()
			b.Fatalf("fill the store to %d sessions: %v", size, err)
		}
		have += n
	}
	a.w.shipMu.Lock()
	a.w.settle(true)
	a.w.shipMu.Unlock()
	db, blocks := a.storeBytes()
	b.Logf("store of %d sessions ready in %s (%s CPU): SQLite %.0f MiB, block files %.0f MiB", size, time.Since(t0).Round(time.Millisecond),
		(recCPU() - c0).Round(time.Millisecond), float64(db)/(1<<20), float64(blocks)/(1<<20))
	return a
}

// emitSessions records n whole sessions of one statement each.
func (a *shortWriter) emitSessions(n int, st *session.Statement) {
	for i := 0; i < n; i++ {
		s := fakeSession(a.w, 1001, "alice", "/usr/bin/pgbench")
		s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
		s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
		s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit", Database: "bench", UpstreamRole: "airlock_x"}})
		a.emitted++
	}
}

// shipOnce ships what was emitted, and settles every shortSettleEvery
// sessions as the daemon does every few seconds.
func (a *shortWriter) shipOnce() error {
	a.w.shipMu.Lock()
	defer a.w.shipMu.Unlock()
	if err := a.w.ship(context.Background()); err != nil {
		return err
	}
	if a.emitted/shortSettleEvery != a.shipped/shortSettleEvery {
		a.w.settle(true)
	}
	a.shipped = a.emitted
	return nil
}
