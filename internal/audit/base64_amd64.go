package audit

import "golang.org/x/sys/cpu"

// base64Blocks encodes blocks*12 bytes of src as blocks*16 characters at
// dst with SSSE3: sixteen characters in a dozen instructions where the
// table encoder makes eight look-ups and two stores (the sample's base64
// was a fifth of recording a 10-row sample, BenchmarkWriterRecordSample).
// Each block reads 16 bytes of src.
//
//go:noescape
func base64Blocks(dst, src *byte, blocks int)

// base64SIMD is whether base64Blocks can run here.
var base64SIMD = cpu.X86.HasSSSE3

// appendBase64Blocks encodes the longest prefix of src that base64Blocks
// can into out, and says how many bytes of each it used.
func appendBase64Blocks(out, src []byte) (int, int) {
	if !base64SIMD || len(src) < 16 {
		return 0, 0
	}
	// A block reads 16 bytes and writes 16: the last one must leave 4
	// bytes of src unused, and the output has room for all of them.
	n := min((len(src)-4)/12, len(out)/16)
	if n <= 0 {
		return 0, 0
	}
	base64Blocks(&out[0], &src[0], n)
	return n * 12, n * 16
}
