package audit

import (
	"context"
	"testing"
	"time"
)

// TestBenchSkip: each benchmark step of recording does the work of the
// steps before it and leaves out what it names. With Store the shipper
// releases what was journaled and stores nothing; with StoreSync it stores
// everything (the chain verifies) and releases the journal all the same.
// Ring (encode) journals no statement, Copy (ringcopy) journals them
// copied in; both store nothing, as Store, so neither record verifies.
func TestBenchSkip(t *testing.T) {
	tests := []struct {
		name       string
		skip       BenchSkip
		stored     bool
		statements bool // journaled
	}{
		{"recording", BenchSkip{}, true, true},
		{"no store sync", BenchSkip{StoreSync: true}, true, true},
		{"no store", BenchSkip{Store: true}, false, true},
		{"encode only", BenchSkip{Ring: true}, false, false},
		{"copied in", BenchSkip{Copy: true}, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			w, err := Open(ctx, Options{StateDir: t.TempDir(), CommitInterval: 5 * time.Millisecond,
				ShipInterval: 5 * time.Millisecond, CheckpointInterval: time.Hour, Bench: tc.skip})
			if err != nil {
				t.Fatalf("open audit writer: %v", err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); w.Run(rctx) }()
			defer func() { cancel(); <-done }()

			const n = 50
			s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			writeSession(s, n)
			if err := w.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
			st := w.Status()
			// A key record, the session's start and end, n statements.
			want := int64(3)
			if tc.statements {
				want += n
			}
			if st.Written != want || st.Stored != st.Written || st.Spooled != 0 {
				t.Fatalf("status %+v: want %d written and as many shipped", st, want)
			}
			recs, err := w.Store().Scan(ctx, "", 0, 1000)
			if err != nil {
				t.Fatalf("scan the store: %v", err)
			}
			if tc.stored != (int64(len(recs)) == want) || !tc.stored && len(recs) != 0 {
				t.Fatalf("the store holds %d records, want %v for all %d", len(recs), tc.stored, want)
			}
			if tc.stored {
				if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
					t.Fatalf("verify: %v %+v", err, rep)
				}
			}
		})
	}
}

// TestRingFullCounted: appends that find the ring full (no shipper
// draining it) are counted for `airlock status`, and still journaled.
func TestRingFullCounted(t *testing.T) {
	tests := []struct {
		name     string
		ring     int64
		wantFull bool
	}{
		{"default ring", 0, false},
		{"small ring", 8192, true},
		{"no ring", -1, false}, // every append goes through a segment: none found a ring full
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			w, err := Open(ctx, Options{StateDir: t.TempDir(), CommitInterval: time.Hour, ringSize: tc.ring})
			if err != nil {
				t.Fatalf("open audit writer: %v", err)
			}
			defer func() { _ = w.j.close(); _ = w.store.Close() }()
			const n = 200
			writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), n)
			st := w.Status()
			if (st.RingFull > 0) != tc.wantFull || st.RingFull > n+3 {
				t.Fatalf("%d of %d records found the ring full; want some: %v", st.RingFull, n+3, tc.wantFull)
			}
			if err := w.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if st := w.Status(); st.Stored != n+3 {
				t.Fatalf("stored %d records, want %d", st.Stored, n+3)
			}
			if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}
