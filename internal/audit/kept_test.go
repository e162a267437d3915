package audit

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"unsafe"
)

// The shipper takes the frames its own syncs moved out of the ring from
// the copy kept of them, not from the segment: every batch is still the
// records after the stored seq, in order, whole, whichever way they got
// there — frames moved by a session that found the ring full, a batch
// that takes only part of what was kept, a shipment that failed and is
// read again, segments released and rotated.
func TestJournalReadsKeptFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ring uint64
		// max is the batch size; failEvery makes every so many reads a
		// failed shipment (read again from the same seq).
		max, failEvery int
		release        bool
		// wantKept is the least share of records that must come from
		// the kept frames.
		wantKept float64
	}{
		{"steady", ringDefault, 5000, 0, true, 0.99},
		{"batches smaller than a sync", ringDefault, 70, 0, false, 0.95},
		{"failed shipments", ringDefault, 5000, 3, false, 0.5},
		{"small ring, sessions move frames", 4096, 500, 0, true, 0},
		{"small ring, failed shipments", 4096 + 13, 90, 4, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := openJournalRing(t.TempDir(), 1<<30, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			if j.rg == nil {
				t.Fatalf("no ring: %q", j.notes)
			}
			rnd := rand.New(rand.NewPCG(1, uint64(tc.ring)))
			var buf shipBuf
			var stored, appended int64
			var reads, fromKept, total int
			// Enough records for the segment to rotate (8 MiB) a few
			// times.
			segments := map[string]bool{}
			for appended < 100000 {
				for n := rnd.IntN(400); n > 0; n-- {
					appended++
					if err := j.append(ringRecord(int(appended))); err != nil {
						t.Fatal(err)
					}
				}
				if rnd.IntN(3) > 0 {
					if err := j.sync(); err != nil { // the commit interval's
						t.Fatal(err)
					}
				}
				for {
					recs, err := j.readInto(&buf, stored, tc.max)
					if err != nil {
						t.Fatal(err)
					}
					reads++
					// No slot past the batch holds an earlier one's
					// record (it would keep that one's bytes alive).
					for i, p := range buf.recs[len(recs):cap(buf.recs)] {
						if !reflect.ValueOf(p).IsZero() {
							t.Fatalf("read %d: slot %d past the batch of %d holds seq %d", reads, len(recs)+i, len(recs), p.Seq)
						}
					}
					kept := 0
					for i := range recs {
						r := &recs[i]
						if want := stored + int64(i) + 1; r.Seq != want {
							t.Fatalf("read %d after %d: record %d has seq %d, want %d", reads, stored, i, r.Seq, want)
						}
						if want := ringRecord(int(r.Seq)).Data; string(r.Data) != string(want) {
							t.Fatalf("record %d: data %s, want %s", r.Seq, r.Data, want)
						}
						if within(r.Data, buf.kept) {
							kept++
						}
					}
					if tc.failEvery > 0 && reads%tc.failEvery == 0 {
						continue // the store refused it: read again
					}
					total += len(recs)
					fromKept += kept
					stored += int64(len(recs))
					segments[j.segs[len(j.segs)-1].path] = true
					if tc.release && rnd.IntN(4) == 0 {
						j.release(stored)
					}
					if len(recs) < tc.max {
						break
					}
				}
				if stored != appended {
					t.Fatalf("stored through %d after reading everything, %d appended", stored, appended)
				}
			}
			share := float64(fromKept) / float64(total)
			t.Logf("%d reads, %d records, %.0f%% from the kept frames", reads, total, 100*share)
			if share < tc.wantKept {
				t.Fatalf("%.2f of the records came from the kept frames, want at least %.2f", share, tc.wantKept)
			}
			if len(segments) < 3 {
				t.Fatalf("the journal wrote %d segments, want the active one rotated more than once", len(segments))
			}
			if !tc.release {
				checkRecords(t, j, appended) // all of it, from the segments
			}
		})
	}
}

// within says whether b lies in buf's memory.
func within(b, buf []byte) bool {
	if len(b) == 0 || cap(buf) == 0 {
		return false
	}
	p, lo := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	return p >= lo && p < lo+uintptr(cap(buf))
}

// A kept-frames buffer grows at most twice, to keptSmall and then to
// keptMax, which drain never needs more than; a buffer with room is
// returned as it is (no copy), and a grown one holds the same bytes.
func TestRoomKeptGrowsOnceToItsBound(t *testing.T) {
	full := func(n, c int) []byte {
		b := make([]byte, n, c)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		b       []byte
		n       int
		wantCap int
		same    bool
	}{
		{"nil, one frame", nil, 300, keptSmall, false},
		{"nil, a drain past small", nil, keptSmall + 1, keptMax, false},
		{"room left", full(100, keptSmall), 1000, keptSmall, true},
		{"small outgrown", full(keptSmall-10, keptSmall), 11, keptMax, false},
		{"at the bound", full(keptMax-5, keptMax), 5, keptMax, true},
		{"past the bound (drain never asks)", full(keptMax, keptMax), 1, keptMax + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := roomKept(tc.b, tc.n)
			if cap(got) != tc.wantCap {
				t.Fatalf("cap %d, want %d", cap(got), tc.wantCap)
			}
			if len(got) != len(tc.b) {
				t.Fatalf("len %d, want %d", len(got), len(tc.b))
			}
			if same := len(tc.b) > 0 && unsafe.SliceData(got) == unsafe.SliceData(tc.b); same != tc.same {
				t.Fatalf("same buffer %v, want %v", same, tc.same)
			}
			for i := range got {
				if got[i] != byte(i) {
					t.Fatalf("byte %d is %d after growing, want %d", i, got[i], byte(i))
				}
			}
		})
	}
}
