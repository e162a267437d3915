package audit

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// TestRingPutNT: frames copied in with non-temporal stores land in the
// ring byte for byte as put's plain copy puts them, at any start (aligned
// or not), of any length (odd, under a chunk, a chunk exactly), across
// the ring's end, mixed with frames written by put; the bytes of the
// frames before head never change.
func TestRingPutNT(t *testing.T) {
	tests := []struct {
		name  string
		size  uint64
		start uint64 // head and tail when the frames begin
		lens  []int
	}{
		{"aligned start, odd lengths", 4096, 0, []int{1, 3, 17, 31, 33, 100, 5}},
		{"unaligned start", 4096, 7, []int{9, 16, 15, 1, 64, 65}},
		{"within one chunk", 4096, 3, []int{2, 2, 2, 2, 2, 2, 2, 2}},
		{"exact chunks", 4096, 16, []int{16, 32, 48, 16}},
		{"across the end", 4096, 4096 - 21, []int{40, 7, 300}},
		{"across the end aligned", 4096, 4096 - 32, []int{64, 16}},
		{"ends at the end", 4096, 4096 - 50, []int{50, 13}},
		{"after many wraps", 1024, 10*1024 + 1001, []int{200, 17, 1, 400, 333}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, mixed := range []bool{false, true} {
				r, err := mapRing(filepath.Join(t.TempDir(), "ring"), tc.size, 1, 2)
				if err != nil {
					t.Fatalf("map ring: %v", err)
				}
				// Stale bytes everywhere, so that a chunk written from
				// the wrong place shows.
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
					if !r.canPutNT(n) {
						t.Fatalf("frame %d: no room for %d bytes in %d free", i, n, r.free())
					}
					if mixed && i%2 == 1 {
						r.put(b)
					} else {
						r.putNT(padForNT(b))
					}
					want = append(want, b...)
					a, c := r.bytes(r.tail(), r.head())
					if got := append(append([]byte(nil), a...), c...); !bytes.Equal(got, want) {
						t.Fatalf("mixed %v, after frame %d (%d bytes): ring holds\n%x\nwant\n%x", mixed, i, n, got, want)
					}
				}
				if err := r.close(); err != nil {
					t.Fatalf("close ring: %v", err)
				}
			}
		})
	}
}

// TestRingNTNotWhenItCannot: a ring whose size is not a whole number of
// chunks, or without room for a frame's last chunk, is not written by
// putNT (appendCopied leaves the frame to appendFrame).
func TestRingNTNotWhenItCannot(t *testing.T) {
	tests := []struct {
		name string
		size uint64
		used uint64
		n    int
		want bool
	}{
		{"room", 4096, 0, 100, true},
		{"odd size", 4096 + 8, 0, 100, false},
		{"no room for the last chunk", 4096, 4096 - 110, 100, false},
		{"room with the last chunk", 4096, 4096 - 116, 100, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := mapRing(filepath.Join(t.TempDir(), "ring"), tc.size, 1, 2)
			if err != nil {
				t.Fatalf("map ring: %v", err)
			}
			defer r.close()
			r.setHead(tc.used)
			if got := r.canPutNT(tc.n); got != tc.want {
				t.Fatalf("canPutNT(%d) with %d of %d used = %v, want %v", tc.n, tc.used, tc.size, got, tc.want)
			}
		})
	}
}
