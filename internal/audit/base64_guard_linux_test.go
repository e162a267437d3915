package audit

import (
	"encoding/base64"
	"testing"

	"golang.org/x/sys/unix"
)

// appendBase64 reads no byte past its source and writes none past its
// output: each length's source ends, and its output's room ends, at a
// page the process may not touch (a read or write there is a fault, not
// a wrong byte a comparison could miss). The vector blocks load 16 bytes
// for the 12 they encode, the scalar rounds 8 for 6.
func TestAppendBase64StaysInBounds(t *testing.T) {
	page := unix.Getpagesize()
	guarded := func() []byte {
		m, err := unix.Mmap(-1, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			t.Fatalf("map the guarded pages: %v", err)
		}
		t.Cleanup(func() { _ = unix.Munmap(m) })
		if err := unix.Mprotect(m[page:], unix.PROT_NONE); err != nil {
			t.Fatalf("guard the second page: %v", err)
		}
		return m[:page]
	}
	in, out := guarded(), guarded()
	for i := range in {
		in[i] = byte(i*131 + 7)
	}
	for _, simd := range []bool{true, false} {
		if simd && !base64SIMD {
			continue
		}
		saved := base64SIMD
		base64SIMD = simd
		for n := 0; n <= 200; n++ {
			src := in[len(in)-n:]
			enc := base64.StdEncoding.EncodedLen(n)
			dst := out[len(out)-enc : len(out)-enc : len(out)] // no room past the encoding
			got := appendBase64(dst, src)
			if want := base64.StdEncoding.EncodeToString(src); string(got) != want {
				t.Fatalf("vector %v, %d bytes: %q, want %q", simd, n, got, want)
			}
			if enc > 0 && &got[0] != &out[len(out)-enc] {
				t.Fatalf("vector %v, %d bytes: the output moved (grown): the bound was not tested", simd, n)
			}
		}
		base64SIMD = saved
	}
}
