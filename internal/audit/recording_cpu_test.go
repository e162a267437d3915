package audit

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// TestRecordingCPU measures what recording costs the daemon in CPU time per
// statement record, everything included (encoding, the journal, fsyncs,
// chaining, the store's transactions), with the daemon's default intervals,
// at a steady rate like pgbench's through the proxy. CPU time is measured
// (getrusage), not throughput: it is the figure that holds on a busy
// machine. AIRLOCK_PERF=1 only.
func TestRecordingCPU(t *testing.T) {
	if os.Getenv("AIRLOCK_PERF") == "" {
		t.Skip("set AIRLOCK_PERF=1 to measure the recording's CPU cost per record")
	}
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Psql(t, "postgres", "CREATE DATABASE audit_cpu")
	stores := []struct{ name, spec, pw string }{
		{"sqlite", "", ""},
		{"postgres", fmt.Sprintf("postgres://%s@%s:%d/audit_cpu?sslmode=disable", srv.AdminUser, srv.Addr, srv.Port), srv.AdminPassword},
	}
	for _, rate := range []int{2000, 8000} {
		// The pacing loop alone, with nothing recorded.
		base := func() time.Duration {
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
			st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
			const secs = 4
			n := rate * secs
			tick := time.NewTicker(10 * time.Millisecond)
			c0 := recCPU()
			for i := 0; i < n; {
				<-tick.C
				for k := 0; k < rate/100 && i < n; k++ {
					s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
					i++
				}
			}
			tick.Stop()
			data := recCPU() - c0 - base
			if err := w.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			all := recCPU() - c0 - base
			cancel()
			<-done
			t.Logf("%s store at %d records/s: %.1f µs CPU per record (%.1f while recording, the rest shipping after)",
				sk.name, rate, float64(all.Microseconds())/float64(n), float64(data.Microseconds())/float64(n))
		}
	}
}

func recCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
