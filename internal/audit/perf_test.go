package audit

import (
	"context"
	"encoding/json"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/session"
)

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
	// The daemon records pgbench -S's statement with the one-row sample
	// of its one integer column ("sample"): without it the benchmark
	// leaves out part of what a recorded statement costs there.
	oneRow := &session.Sample{Columns: []string{"abalance"}, OIDs: []uint32{23}, Data: storedRows([]string{"-4821"})}
	for _, tc := range []struct {
		name   string
		ring   int64
		sample *session.Sample
	}{{"ring", 0, nil}, {"ring-sample", 0, oneRow}, {"write", -1, nil}} {
		b.Run(tc.name, func(b *testing.B) {
			w := benchWriter(b, tc.ring)
			ev := session.Event{Kind: session.KindStatement, Session: session.NewID(), Time: time.Now(),
				Statement: &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond, Sample: tc.sample}}
			w.Record(ev)
			recordLoop(b, w, ev)
		})
	}
}

// BenchmarkWriterRecordParallel is BenchmarkWriterRecord's "ring-sample"
// from two goroutines at once, each on a thread of its own, as the
// daemon's two event loops record: what the journal's lock and the lines
// both write cost when they move between cores, which one loop never
// sees. cpu-ns/op is the two threads' CPU per record.
func BenchmarkWriterRecordParallel(b *testing.B) {
	const loops = 2
	oneRow := &session.Sample{Columns: []string{"abalance"}, OIDs: []uint32{23}, Data: storedRows([]string{"-4821"})}
	w := benchWriter(b, 0)
	var evs [loops]session.Event
	for i := range evs {
		evs[i] = session.Event{Kind: session.KindStatement, Session: session.NewID(), Time: time.Now(),
			Statement: &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond, Sample: oneRow}}
		w.Record(evs[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	var cpu [loops]time.Duration
	var wg sync.WaitGroup
	for i := range evs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			c0 := threadCPU()
			for n := i; n < b.N; n += loops {
				w.Record(evs[i])
			}
			cpu[i] = threadCPU() - c0
		}(i)
	}
	wg.Wait()
	b.ReportMetric(float64(cpu[0]+cpu[1])/float64(b.N), "cpu-ns/op")
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

// recCPU is this process's CPU time so far.
func recCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// recordLoop records ev b.N times on one locked thread and reports that
// thread's CPU time per record, which waiting for a core on a busy
// machine does not inflate.
func recordLoop(b *testing.B, w *Writer, ev session.Event) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	c0 := threadCPU()
	for i := 0; i < b.N; i++ {
		w.Record(ev)
	}
	b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "cpu-ns/op")
	// Records that found the ring full, and moved its frames out on the
	// recording thread: the daemon's data path does not, so a figure
	// with many is not the data path's alone.
	b.ReportMetric(float64(w.j.ringFull.Load())/float64(b.N), "ringfull/op")
}

// benchWriter opens a writer for a benchmark of the data path, with a
// goroutine standing in for the shipper: it moves the ring's frames out
// and releases them ten times per commit interval, more often than the
// daemon's shipper, since these loops record a statement a microsecond
// rather than one every hundred, and a ring filled between syncs would
// have the recording thread write(2) the frames itself, which the
// daemon's does not. ring is Options.ringSize (-1: no ring).
func benchWriter(b *testing.B, ring int64) *Writer {
	w, err := Open(context.Background(), Options{StateDir: b.TempDir(), CommitInterval: benchCommit, ringSize: ring})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
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
	b.Cleanup(func() { cancel(); <-done; _ = w.j.close(); _ = w.store.Close() })
	return w
}
