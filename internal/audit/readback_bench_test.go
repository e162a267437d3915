package audit

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// BenchmarkJournalReadInto is the shipper's reading of a statement record
// back from the journal, as ship does it: batches of shipBatch into a
// shipBuf reused from batch to batch. cpu-ns/op is the reading thread's
// CPU time, which other work on the machine does not inflate as it does
// the wall time.
func BenchmarkJournalReadInto(b *testing.B) {
	j, err := openJournal(b.TempDir(), 1<<40, 0)
	if err != nil {
		b.Fatal(err)
	}
	closeJournal(b, j)
	d := json.RawMessage(`{"protocol":"simple","sql":"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;","tag":"SELECT 1","rows":1,"bytes":11,"duration_us":80,"number":7}`)
	at := time.Now()
	for i := 0; i < b.N; i++ {
		if err := j.append(&pending{Time: at.Add(time.Duration(i)), Kind: "statement", Session: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Data: d}); err != nil {
			b.Fatal(err)
		}
	}
	if err := j.sync(); err != nil {
		b.Fatal(err)
	}
	var buf shipBuf
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	c0 := threadCPU()
	for n := int64(0); n < int64(b.N); {
		recs, err := j.readInto(&buf, n, shipBatch)
		if err != nil || len(recs) == 0 {
			b.Fatalf("read after %d: %d records, %v", n, len(recs), err)
		}
		n += int64(len(recs))
	}
	b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkEncodeStatementFrame is the data path's encoding of a pgbench
// statement alone: the frame's head, redaction and the statement's data,
// into a reused buffer, as Writer.Record does before the journal's lock.
// No ring and no other thread: the figure the noise of the machine moves
// least.
func BenchmarkEncodeStatementFrame(b *testing.B) {
	s := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1",
		Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond, Number: 7}
	sess := session.NewID()
	at := time.Now().UTC()
	buf := make([]byte, 0, 1024)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	c0 := threadCPU()
	for i := 0; i < b.N; i++ {
		fb, _ := appendFrameHead(buf, at, "statement", sess)
		st, _ := statementOf(s, Policy{})
		buf = append(appendStatement(fb, &st), '}')
	}
	b.ReportMetric(float64(threadCPU()-c0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkJournalSyncRead is the shipper's side of the journal at a
// steady rate: each round, sessions' worth of records (batch) reach the
// ring, the commit interval's sync moves them into the segment and the
// shipper reads them. cpu-ns/op is the shipper thread's CPU time for the
// sync and the read, per record (the appends are not counted).
func BenchmarkJournalSyncRead(b *testing.B) {
	for _, tc := range []struct {
		name string
		data json.RawMessage
	}{
		{"pgbench", json.RawMessage(`{"protocol":"simple","sql":"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;","tag":"SELECT 1","rows":1,"bytes":11,"duration_us":80}`)},
		{"sample", json.RawMessage(`{"protocol":"simple","sql":"SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 41000 AND 41000 + 19;","tag":"SELECT 20","rows":20,"bytes":1400,"duration_us":300,"sample":{"columns":["id","name","email","card","plan"],"rows":"` +
			strings.Repeat("QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", 14) + `","truncated":true}}`)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			j, err := openJournal(b.TempDir(), 1<<40, 0)
			if err != nil {
				b.Fatal(err)
			}
			closeJournal(b, j)
			at := time.Now()
			var buf shipBuf
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			var cpu time.Duration
			const batch = 1000
			for n := 0; n < b.N; {
				k := min(batch, b.N-n)
				for i := 0; i < k; i++ {
					if err := j.append(&pending{Time: at.Add(time.Duration(n + i)), Kind: "statement", Session: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Data: tc.data}); err != nil {
						b.Fatal(err)
					}
				}
				c0 := threadCPU()
				if err := j.sync(); err != nil {
					b.Fatal(err)
				}
				recs, err := j.readInto(&buf, int64(n), shipBatch)
				if err != nil || len(recs) != k {
					b.Fatalf("read after %d: %d records, want %d, %v", n, len(recs), k, err)
				}
				cpu += threadCPU() - c0
				n += k
				if n%(64*batch) == 0 {
					j.release(int64(n)) // as settle does
				}
			}
			b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
