package audit

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/airlockhq/airlock/internal/session"
)

// withNTStores runs f with ntStores set to nt (where the platform has
// them), and restores it.
func withNTStores(t *testing.T, nt bool, f func(t *testing.T)) {
	t.Helper()
	name := "fallback"
	if nt {
		name = "non-temporal"
	}
	t.Run(name, func(t *testing.T) {
		saved := ntStores
		if nt && !saved {
			t.Skip("no non-temporal stores on this platform")
		}
		ntStores = nt
		defer func() { ntStores = saved }()
		f(t)
	})
}

// lineAligned returns n bytes starting at a cache line's start.
func lineAligned(n int) []byte {
	b := make([]byte, n+ringLine)
	skip := int(-uintptr(unsafe.Pointer(&b[0])) & (ringLine - 1))
	return b[skip : skip+n : skip+n]
}

// streamCopy writes exactly what copy writes, whatever the length and the
// alignment of either side: the bytes before dst's first whole chunk,
// the chunks, the bytes after, and nothing outside dst[:len(src)].
func TestStreamCopy(t *testing.T) {
	src := lineAligned(512)
	for i := range src {
		src[i] = byte(i*37 + 11)
	}
	for _, nt := range []bool{true, false} {
		withNTStores(t, nt, func(t *testing.T) {
			for _, tc := range []struct {
				name           string
				dstOff, srcOff int
			}{
				{"both aligned", 0, 0},
				{"dst odd", 1, 0},
				{"dst mid-chunk", 7, 0},
				{"dst a byte before a chunk", 15, 0},
				{"dst at a second chunk", 16, 0},
				{"dst odd past a chunk", 17, 0},
				{"dst a byte before a line", 63, 0},
				{"src odd", 0, 3},
				{"both odd", 9, 5},
				{"both odd, far", 33, 13},
			} {
				t.Run(tc.name, func(t *testing.T) {
					got, want := lineAligned(512), lineAligned(512)
					for n := 0; n <= 300; n++ {
						for i := range got {
							got[i], want[i] = 0xee, 0xee
						}
						s := src[tc.srcOff : tc.srcOff+n]
						copy(want[tc.dstOff:], s)
						streamCopy(got[tc.dstOff:], s)
						if !bytes.Equal(got, want) {
							i := 0
							for got[i] == want[i] {
								i++
							}
							t.Fatalf("%d bytes: byte %d is %#x, copy wrote %#x", n, i, got[i], want[i])
						}
					}
				})
			}
		})
	}
}

// Frames streamed in with putStaged land in the ring byte for byte as
// put's plain copy puts them, at any start (aligned or not), of any length
// (under a line, a line exactly, odd), mixed with frames written by put
// and in place (so the first line is read back rather than carried),
// after the ring has wrapped; the bytes of the frames before head never
// change.
func TestRingPutStaged(t *testing.T) {
	tests := []struct {
		name  string
		size  uint64
		start uint64 // head and tail when the frames begin
		lens  []int
	}{
		{"aligned start, odd lengths", 4096, 0, []int{1, 3, 17, 31, 33, 100, 5, 300}},
		{"unaligned start", 4096, 7, []int{9, 64, 63, 1, 65, 128, 129}},
		{"within one line", 4096, 3, []int{2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}},
		{"exact lines", 4096, 64, []int{64, 128, 192, 64}},
		{"up to the end", 4096, 4096 - 1000, []int{200, 17, 1, 400, 318}},
		{"after many wraps", 2048, 10*2048 + 1001, []int{200, 17, 1, 400, 333}},
	}
	for _, tc := range tests {
		for _, mixed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, mixed %v", tc.name, mixed), func(t *testing.T) {
				r, err := mapRing(filepath.Join(t.TempDir(), "ring"), tc.size, 1, 2)
				if err != nil {
					t.Fatalf("map ring: %v", err)
				}
				defer func() { _ = r.close() }()
				// Stale bytes everywhere, so that a line written from the
				// wrong place shows.
				for i := range r.buf {
					r.buf[i] = 0xa5
				}
				r.setTail(tc.start)
				r.setHead(tc.start)
				rng := rand.New(rand.NewPCG(uint64(len(tc.lens)), tc.start))
				var want []byte
				for i, n := range tc.lens {
					b := make([]byte, n)
					for k := range b {
						b[k] = byte(rng.IntN(255) + 1)
					}
					switch {
					case mixed && i%3 == 1:
						r.put(b)
					case mixed && i%3 == 2:
						h, room := r.room()
						r.publish(h + uint64(len(append(room, b...))))
					default:
						h, room, ok := r.staged(n)
						if !ok {
							t.Fatalf("frame %d: not staged (%d bytes, %d free)", i, n, r.free())
						}
						if got := append(room, b...); &got[0] != &room[:1][0] {
							t.Fatalf("frame %d: the stage's room was not %d bytes", i, n)
						}
						r.putStaged(h, n)
					}
					want = append(want, b...)
					a, c := r.bytes(r.tail(), r.head())
					if got := append(append([]byte(nil), a...), c...); !bytes.Equal(got, want) {
						t.Fatalf("after frame %d (%d bytes): ring holds\n%x\nwant\n%x", i, n, got, want)
					}
				}
			})
		}
	}
}

// staged declines what putStaged cannot write (the caller then encodes in
// place, as before): no non-temporal stores, a ring not of whole lines, a
// frame past the ring's end with its last line, or without a line of
// free room to spare, or over stageMax.
func TestRingStagedDeclines(t *testing.T) {
	tests := []struct {
		name       string
		size       uint64
		head, tail uint64
		n          int
		nt         bool
		want       bool
	}{
		{"room", 4096, 0, 0, 300, true, true},
		{"no non-temporal stores", 4096, 0, 0, 300, false, false},
		{"ring not of whole lines", 4096 + 8, 0, 0, 300, true, false},
		{"ends at the ring's end", 4096, 4096 - 300, 4096 - 300, 300, true, true},
		{"last line past the ring's end", 4096, 4096 - 300, 4096 - 300, 301, true, false},
		{"last line within the ring's end", 4096, 4096 - 301, 4096 - 301, 300, true, true},
		{"a line to spare", 4096, 4096, 364, 300, true, true},
		{"less than a line to spare", 4096, 4096, 363, 300, true, false},
		{"over stageMax", 1 << 20, 0, 0, stageMax + 1, true, false},
		{"stageMax", 1 << 20, 0, 0, stageMax, true, true},
		{"empty", 4096, 0, 0, 0, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.nt && !ntStores {
				t.Skip("no non-temporal stores on this platform")
			}
			saved := ntStores
			ntStores = tc.nt
			defer func() { ntStores = saved }()
			r, err := mapRing(filepath.Join(t.TempDir(), "ring"), tc.size, 1, 2)
			if err != nil {
				t.Fatalf("map ring: %v", err)
			}
			defer func() { _ = r.close() }()
			r.setTail(tc.tail)
			r.setHead(tc.head)
			_, room, ok := r.staged(tc.n)
			if ok != tc.want {
				t.Fatalf("staged(%d) = %v, want %v", tc.n, ok, tc.want)
			}
			if ok && cap(room) != tc.n {
				t.Fatalf("room of %d bytes, want %d", cap(room), tc.n)
			}
		})
	}
}

// Statements streamed into the ring leave the very same segments as the
// same statements encoded in place, whether the ring is drained often or
// not, wraps, is not of whole lines (nothing streamed), or has too little
// room before its end for a frame and its last line.
func TestStreamedRawFramesLeaveTheSameSegments(t *testing.T) {
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	if !ntStores {
		t.Skip("no non-temporal stores on this platform")
	}
	for _, tc := range []struct {
		name       string
		ring       uint64
		drainEvery int
	}{
		{"default ring, drained at the end", ringDefault, 0},
		{"default ring, drained often", ringDefault, 7},
		{"small ring, wraps", 16384, 3},
		{"small ring, drained seldom", 16384, 11},
		{"small odd ring", 8192 + 13, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := map[bool]map[string][]byte{}
			for _, nt := range []bool{true, false} {
				ntStores = nt
				dir := filepath.Join(t.TempDir(), "journal")
				j, err := openJournalRing(dir, 1<<30, 0, tc.ring)
				if err != nil || j.rg == nil {
					ntStores = true
					t.Fatalf("open: %v %q", err, j.notes)
				}
				w := statementWriter(j, true, Policy{RecordParams: true})
				cases := rawCases()
				for i := 0; i < 400; i++ {
					c := cases[i%len(cases)]
					st := c.st
					st.SQL += strings.Repeat("·", i%97)
					w.Record(session.Event{Kind: session.Kind(c.kind), Session: c.sess, Time: time.Unix(1764500000, int64(i)), Statement: &st})
					if tc.drainEvery > 0 && i%tc.drainEvery == 0 {
						if err := j.drain(); err != nil {
							ntStores = true
							t.Fatal(err)
						}
					}
				}
				ntStores = true
				closeJournal(t, j)
				segs[nt] = readSegments(t, dir)
			}
			if len(segs[true]) == 0 || len(segs[true]) != len(segs[false]) {
				t.Fatalf("%d segments streamed, %d in place", len(segs[true]), len(segs[false]))
			}
			for name, b := range segs[false] {
				if !bytes.Equal(segs[true][name], b) {
					t.Fatalf("segment %s differs: %d bytes streamed, %d in place", name, len(segs[true][name]), len(b))
				}
			}
		})
	}
}

// BenchmarkRingStream is a pgbench -S statement's raw frame journaled
// into an 8 MiB ring, encoded in place ("inplace", as before) or built in
// the stage and streamed in ("stream"): alone, and beside a working set
// of 768 KiB read between statements ("beside"), as the client's and the
// server's share the cache with the proxy; set-ns/op is the time reading
// it took, which the ring's lines evict from the cache or not. The ring
// is emptied (its tail moved to head) as it fills, as the drain would.
func BenchmarkRingStream(b *testing.B) {
	s := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1",
		Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond,
		Sample: &session.Sample{Columns: []string{"abalance"}, OIDs: []uint32{23}, Data: storedRows([]string{"-4821"})}}
	set := lineAligned(768 << 10)
	for _, nt := range []bool{false, true} {
		for _, beside := range []bool{false, true} {
			name := map[bool]string{false: "inplace", true: "stream"}[nt] + map[bool]string{false: "", true: "-beside"}[beside]
			b.Run(name, func(b *testing.B) {
				if nt && !ntStores {
					b.Skip("no non-temporal stores on this platform")
				}
				saved := ntStores
				ntStores = nt
				defer func() { ntStores = saved }()
				j, err := openJournalRing(b.TempDir(), 1<<40, 0, ringDefault)
				if err != nil || j.rg == nil {
					b.Fatalf("open: %v", err)
				}
				defer func() { _ = j.close() }()
				at := time.Now().UnixNano()
				var setNs time.Duration
				var sum byte
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if j.rg.free() < 1<<20 {
						j.rg.setTail(j.rg.head())
					}
					if !j.appendRaw(at, "statement", "0f3c9a2b7d", s, false) {
						// The ring's end: emptied and started again at its
						// start, as a drain and the next frame would.
						h := (j.rg.head()/j.rg.size + 1) * j.rg.size
						j.rg.setTail(h)
						j.rg.setHead(h)
						if !j.appendRaw(at, "statement", "0f3c9a2b7d", s, false) {
							b.Fatal("not journaled in the ring")
						}
					}
					if beside {
						// 32 lines of the set, a different stretch each time.
						t0 := time.Now()
						off := (i * 32 * ringLine * 7) % len(set)
						for k := 0; k < 32; k++ {
							sum += set[(off+k*ringLine*5)%len(set)]
						}
						setNs += time.Since(t0)
					}
				}
				b.ReportMetric(float64(setNs.Nanoseconds())/float64(b.N), "set-ns/op")
				if sum == 255 {
					b.Log(sum) // keeps the reads
				}
			})
		}
	}
}
