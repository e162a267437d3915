//go:build perf

package audit

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// TestRecordingCPU measures what recording costs the daemon in CPU time per
// statement record, everything included (encoding, the journal, fsyncs,
// chaining, the store's transactions), with the daemon's default intervals,
// at a steady rate like pgbench's through the proxy. CPU time is measured
// (getrusage), not throughput: it is the figure that holds on a busy
// machine. The data path's share is the CPU of the thread the statements
// are recorded on (Session.Emit, which includes copying the session's
// person, and Writer.Record). A measurement: built with -tags perf
// only.
func TestRecordingCPU(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Psql(t, "postgres", "CREATE DATABASE audit_cpu")
	stores := []struct{ name, spec, pw string }{
		{"sqlite", "", ""},
		{"postgres", fmt.Sprintf("postgres://%s@%s:%d/audit_cpu?sslmode=disable", srv.AdminUser, srv.Addr, srv.Port), srv.AdminPassword},
	}
	for _, rate := range []int{2000, 8000} {
		// The pacing loop alone, with nothing recorded: the process's CPU
		// and the pacing thread's own.
		var baseThread time.Duration
		base := func() time.Duration {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			t0 := threadCPU()
			defer func() { baseThread = threadCPU() - t0 }()
			s := fakeSession(discard{}, 1001, "alice", "/usr/bin/psql")
			st := &session.Statement{Protocol: "simple", SQL: "SELECT 1", Tag: "SELECT 1"}
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			c0 := recCPU()
			for i := 0; i < rate*4; {
				<-tick.C
				for k := 0; k < rate/100; k++ {
					s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
					i++
				}
			}
			return recCPU() - c0
		}()
		t.Logf("no recording at %d records/s: %.1f µs CPU per record (the pacing loop, subtracted below)", rate, float64(base.Microseconds())/float64(rate*4))
		for _, sk := range stores {
			for _, stk := range recordingCPUStatements() {
				w, err := Open(context.Background(), Options{StateDir: t.TempDir(), Store: sk.spec, Password: sk.pw})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); w.Run(ctx) }()
				s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
				s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
				if err := w.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
				st := stk.st
				const secs = 4
				n := rate * secs
				tick := time.NewTicker(10 * time.Millisecond)
				// The sessions' side is this thread: Record's own cost,
				// without the shipper's thread running beside it.
				runtime.LockOSThread()
				c0, t0 := recCPU(), threadCPU()
				for i := 0; i < n; {
					<-tick.C
					for k := 0; k < rate/100 && i < n; k++ {
						s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
						i++
					}
				}
				tick.Stop()
				data, path := recCPU()-c0-base, threadCPU()-t0-baseThread
				runtime.UnlockOSThread()
				if err := w.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
				all := recCPU() - c0 - base
				cancel()
				<-done
				t.Logf("%s store, %s at %d records/s: %.1f µs CPU per record (%.1f while recording, the rest shipping after; %.2f on the data path)",
					sk.name, stk.name, rate, float64(all.Microseconds())/float64(n), float64(data.Microseconds())/float64(n), float64(path.Nanoseconds())/1e3/float64(n))
			}
		}
	}
}

// recordingCPUStatements are the statements TestRecordingCPU records: a
// pgbench -S one, and the masked script's 20-row one with the 10-row sample
// of five columns the proxy takes of it (BenchmarkWriterRecordSample's).
func recordingCPUStatements() []struct {
	name string
	st   *session.Statement
} {
	var rows [][]string
	for g := 41000; g < 41010; g++ {
		id := strconv.Itoa(g)
		rows = append(rows, []string{id, "Person " + id, "h:3f9a0c1e5b7d2a64", "**** **** **** " + id[1:], "pro"})
	}
	return []struct {
		name string
		st   *session.Statement
	}{
		{"pgbench -S", &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}},
		{"20 rows, 10 sampled", &session.Statement{Protocol: "simple", SQL: "SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 41000 AND 41000 + 19;",
			Tag: "SELECT 20", Rows: 20, Bytes: 1400, Duration: 300 * time.Microsecond,
			Sample: &session.Sample{Columns: []string{"id", "name", "email", "card", "plan"}, OIDs: []uint32{23, 25, 25, 25, 25},
				Data: storedRows(rows...), Truncated: true}}},
	}
}
