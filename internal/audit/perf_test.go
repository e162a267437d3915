package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/session"
)

type staticLease struct{ user, pw string }

func (l staticLease) User() string                  { return l.user }
func (l staticLease) Password() string              { return l.pw }
func (l staticLease) Expires() time.Time            { return time.Time{} }
func (l staticLease) Release(context.Context) error { return nil }
func (l staticLease) Acquire(context.Context, *session.Session, string) (pgwire.Lease, error) {
	return l, nil
}

type discard struct{}

func (discard) Record(session.Event) {}

// serveProxy runs the real PostgreSQL proxy on loopback with sink.
func serveProxy(t *testing.T, pg *pgtest.Server, sink session.Sink) int {
	p, err := pgwire.New(pgwire.Options{Name: "bench", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: staticLease{pg.AdminUser, pg.AdminPassword}})
	if err != nil {
		t.Fatal(err)
	}
	addr := pgwiretest.Serve(t, p, func() *session.Session {
		s := session.New(sink)
		s.Person = identity.Person{Name: "bench", UID: 1000}
		s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
		return s
	}, func(s *session.Session) {
		s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
	})
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// TestPgbenchRecordingOverhead compares pgbench through the proxy with the
// audit writer as its sink (embedded SQLite store, and a PostgreSQL store on
// a server of its own) and with a sink that drops everything, in the same
// run, rotating the order. Besides TPS it reports the CPU time of this
// process (the proxy and the writer: what airlockd would spend) per
// transaction, including the shipping that was still to do when pgbench
// finished. Slow and load-sensitive: AIRLOCK_PERF=1 only.
func TestPgbenchRecordingOverhead(t *testing.T) {
	if os.Getenv("AIRLOCK_PERF") == "" {
		t.Skip("set AIRLOCK_PERF=1 to measure the recording overhead with pgbench")
	}
	secs := "8"
	if s := os.Getenv("AIRLOCK_PERF_SECONDS"); s != "" {
		secs = s
	}
	// The measured server does not wait for its disk (as in the
	// benchmark report): what is compared is the proxy's cost. The team
	// store keeps its durability.
	pg := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off", "synchronous_commit = off"}})
	storePG := pgtest.Start(t, pgtest.Options{})
	env := []string{"PGUSER=" + pg.AdminUser, "PGPASSWORD=" + pg.AdminPassword, "PGHOST=" + pg.Addr}
	pgbench := func(port int, args ...string) string {
		cmd := exec.Command("pgbench", append([]string{"-p", strconv.Itoa(port)}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pgbench(pg.Port, "-i", "-q", "-s", "10", "postgres")
	storePG.Psql(t, "postgres", "CREATE DATABASE audit")
	open := func(spec, pw string) *Writer {
		// The daemon's defaults: a 50 ms commit window.
		w, err := Open(context.Background(), Options{StateDir: t.TempDir(), Store: spec, Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return w
	}
	wl := open("", "")
	wp := open(fmt.Sprintf("postgres://%s@%s:%d/audit?sslmode=disable", storePG.AdminUser, storePG.Addr, storePG.Port), storePG.AdminPassword)
	type mode struct {
		name string
		port int
		w    *Writer
	}
	modes := []mode{{"off", serveProxy(t, pg, discard{}), nil}, {"sqlite", serveProxy(t, pg, wl), wl}, {"postgres", serveProxy(t, pg, wp), wp}}
	tps := regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	txs := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	measure := func(m mode, args []string) (float64, float64) {
		c0 := cpuTime()
		out := pgbench(m.port, append([]string{"-n", "-T", secs}, append(args, "postgres")...)...)
		if m.w != nil {
			// What shipping was still to do is part of the cost.
			if err := m.w.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		cpu := cpuTime() - c0
		a, b := tps.FindStringSubmatch(out), txs.FindStringSubmatch(out)
		if a == nil || b == nil {
			t.Fatalf("no tps in %s", out)
		}
		f, _ := strconv.ParseFloat(a[1], 64)
		n, _ := strconv.ParseFloat(b[1], 64)
		return f, float64(cpu.Microseconds()) / n
	}
	for i, args := range [][]string{{"-c", "1", "-S"}, {"-c", "10", "-j", "2", "-S"}, {"-c", "1"}, {"-c", "10", "-j", "2"}} {
		var tp, cpu [3]float64
		const rounds = 2
		for r := 0; r < rounds; r++ { // rotate, so drifting load hits every mode
			for k := range modes {
				j := (k + r + i) % len(modes)
				a, c := measure(modes[j], args)
				tp[j] += a / rounds
				cpu[j] += c / rounds
			}
		}
		t.Logf("pgbench %v: off %.0f tps %.1f µs/tx | sqlite %.0f tps (%.3f) %.1f µs/tx (+%.1f) | postgres %.0f tps (%.3f) %.1f µs/tx (+%.1f)",
			args, tp[0], cpu[0], tp[1], tp[1]/tp[0], cpu[1], cpu[1]-cpu[0], tp[2], tp[2]/tp[0], cpu[2], cpu[2]-cpu[0])
	}
	for _, w := range []*Writer{wl, wp} {
		st := w.Status()
		t.Logf("%s: records written %d, stored %d", st.Store, st.Written, st.Stored)
	}
}

// cpuTime is this process's CPU time so far (every thread).
func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriterRecord is the data path's share of recording one
// statement: Writer.Record of a pgbench-like statement event, with the
// journal moved to disk every commit interval on another goroutine (as
// the shipper's thread does). "ring" is the default journal; "write" the
// journal without a ring (one write(2) per record).
func BenchmarkWriterRecord(b *testing.B) {
	for _, tc := range []struct {
		name string
		ring int64
	}{{"ring", 0}, {"write", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			w, err := Open(context.Background(), Options{StateDir: b.TempDir(), CommitInterval: benchCommit, ringSize: tc.ring})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				// More often than the daemon's 50 ms: this loop records
				// a statement a microsecond, not one every hundred, and
				// a ring filled between syncs would have the recording
				// thread write(2) the frames itself, which the daemon's
				// does not.
				t := time.NewTicker(benchCommit / 10)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						_ = w.j.sync()
						w.j.release(w.j.lastSeq()) // as if shipped: keeps the spool under its bound
					}
				}
			}()
			defer func() { cancel(); <-done; _ = w.j.close(); _ = w.store.Close() }()
			ev := session.Event{Kind: session.KindStatement, Session: session.NewID(), Time: time.Now(),
				Statement: &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}}
			w.Record(ev)
			runtime.LockOSThread() // so that the thread's CPU time is the loop's
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			b.ResetTimer()
			c0 := threadCPU()
			for i := 0; i < b.N; i++ {
				w.Record(ev)
			}
			b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// threadCPU is the CPU time of the calling thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// BenchmarkJournalRead is the shipper's cost of reading a statement record
// back from the journal (per record, in batches of shipBatch).
func BenchmarkJournalRead(b *testing.B) {
	j, err := openJournal(b.TempDir(), 1<<40, 0)
	if err != nil {
		b.Fatal(err)
	}
	closeJournal(b, j)
	d := json.RawMessage(`{"protocol":"simple","sql":"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;","tag":"SELECT 1","rows":1,"bytes":11,"duration_us":80}`)
	for i := 0; i < b.N; i++ {
		if err := j.append(&pending{Time: time.Now().UTC(), Kind: "statement", Session: "abcdefghijklmnop", Data: d}); err != nil {
			b.Fatal(err)
		}
	}
	if err := j.sync(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := int64(0); n < int64(b.N); {
		recs, err := j.read(n, shipBatch)
		if err != nil || len(recs) == 0 {
			b.Fatalf("read after %d: %d records, %v", n, len(recs), err)
		}
		n += int64(len(recs))
	}
}
