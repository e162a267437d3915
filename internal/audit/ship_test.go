package audit

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

func TestParseOwnTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		own  bool // read by parseOwnTime, not left to time.Parse
		want time.Time
	}{
		{"2026-11-30T13:54:50Z", true, time.Date(2026, 11, 30, 13, 54, 50, 0, time.UTC)},
		{"2026-11-30T13:54:50.1Z", true, time.Date(2026, 11, 30, 13, 54, 50, 100000000, time.UTC)},
		{"2026-11-30T13:54:50.000000001Z", true, time.Date(2026, 11, 30, 13, 54, 50, 1, time.UTC)},
		{"2026-11-30T13:54:50.999999999Z", true, time.Date(2026, 11, 30, 13, 54, 50, 999999999, time.UTC)},
		{"2024-02-29T00:00:00.5Z", true, time.Date(2024, 2, 29, 0, 0, 0, 500000000, time.UTC)},
		{"0000-01-01T00:00:00Z", true, time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)},
		// Not appendTime's form: time.Parse's business.
		{"2026-11-30T13:54:50.10Z", false, time.Time{}},
		{"2026-11-30T13:54:50+01:00", false, time.Time{}},
		{"2026-11-30T13:54:50.Z", false, time.Time{}},
		{"2026-11-30T13:54:50.1234567891Z", false, time.Time{}},
		{"2025-02-29T00:00:00Z", false, time.Time{}},
		{"2026-13-01T00:00:00Z", false, time.Time{}},
		{"2026-11-30T24:00:00Z", false, time.Time{}},
		{"2026-11-30T13:54:60Z", false, time.Time{}},
		{"2026-11-30 13:54:50Z", false, time.Time{}},
		{"2026-1a-30T13:54:50Z", false, time.Time{}},
		{"", false, time.Time{}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseOwnTime([]byte(tc.in))
			if ok != tc.own {
				t.Fatalf("parseOwnTime(%q) ok = %v, want %v", tc.in, ok, tc.own)
			}
			if ok && (!got.Equal(tc.want) || got.Location() != time.UTC) {
				t.Fatalf("parseOwnTime(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// FuzzParseOwnTime holds parseOwnTime to time.Parse wherever it reads a
// time, and to appendTime's output for any time.
func FuzzParseOwnTime(f *testing.F) {
	f.Add("2026-11-30T13:54:50.123Z", int64(0))
	f.Add("2024-02-29T23:59:59Z", int64(-1))
	f.Add("1999-12-31T23:59:59.000000001Z", int64(1<<62))
	f.Fuzz(func(t *testing.T, s string, ns int64) {
		if got, ok := parseOwnTime([]byte(s)); ok {
			want, err := time.Parse(time.RFC3339Nano, s)
			if err != nil || !got.Equal(want) || got.Location().String() != want.Location().String() {
				t.Fatalf("parseOwnTime(%q) = %v, time.Parse gives %v, %v", s, got, want, err)
			}
		}
		at := time.Unix(0, ns).UTC()
		b := appendTime(nil, at)
		got, ok := parseOwnTime(b)
		if !ok || !got.Equal(at) {
			t.Fatalf("appendTime gave %q for %v, read back as %v (%v)", b, at, got, ok)
		}
	})
}

// The shipper reuses its memory from one batch to the next: every record
// of several full batches, from sessions whose records interleave, must be
// stored with its own session, data and chain.
func TestShipBatchesKeepTheirRecords(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			state := t.TempDir()
			spec, pw := sk.open(t)
			ctx := context.Background()
			w, err := Open(ctx, Options{StateDir: state, Store: spec, Password: pw, CommitInterval: time.Hour, CheckpointInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = w.j.close(); _ = w.store.Close() }()
			var sess []*session.Session
			for i := range 3 {
				s := fakeSession(w, 1001+uint32(i), fmt.Sprintf("p%d", i), "/usr/bin/psql")
				s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
				sess = append(sess, s)
			}
			const n = 2*shipBatch + 123
			for i := range n {
				// A long statement now and then: payloads of
				// different sizes across the read buffer's chunks.
				sql := fmt.Sprintf("SELECT %d", i)
				if i%997 == 0 {
					sql += " -- " + strings.Repeat("x", 3000+i)
				}
				sess[i%3].Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "simple", SQL: sql, Tag: "SELECT 1"}})
				if i == shipBatch/2 || i == shipBatch+7 {
					// Shipments that end mid-way through the
					// writing, as at a steady rate.
					if err := w.Flush(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// The last batch was shorter than the full ones before it:
			// the reused slots past it hold none of theirs.
			w.shipMu.Lock()
			for i, r := range w.recBuf[len(w.recBuf):cap(w.recBuf)] {
				if !reflect.ValueOf(r).IsZero() {
					t.Errorf("slot %d past the last batch of %d holds record %d", len(w.recBuf)+i, len(w.recBuf), r.Seq)
				}
			}
			w.shipMu.Unlock()
			recs, err := w.Store().Scan(ctx, "", 0, n+100)
			if err != nil {
				t.Fatal(err)
			}
			var stmts []Record
			for _, r := range recs {
				if r.Kind == kindStatement {
					stmts = append(stmts, r)
				}
			}
			if len(stmts) != n {
				t.Fatalf("stored %d statements, want %d", len(stmts), n)
			}
			for i, r := range stmts {
				want := fmt.Sprintf(`"sql":"SELECT %d`, i)
				if r.Session != sess[i%3].ID || !strings.Contains(string(r.Data), want+`"`) && !strings.Contains(string(r.Data), want+" --") {
					t.Fatalf("statement %d (seq %d): %s, %s; want SELECT %d of %s", i, r.Seq, r.Session, r.Data, i, sess[i%3].ID)
				}
			}
			if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}
