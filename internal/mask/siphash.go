package mask

import (
	"encoding/binary"
	"math/bits"
)

// sipKey is a SipHash-2-4 key (Aumasson and Bernstein, "SipHash: a fast
// short-input PRF", 2012). The hash strategy needs a keyed PRF over short
// values (an email, a card number): without the key its output says nothing
// about the value and cannot be searched offline, equal values give equal
// outputs, and it answers 64 bits. SipHash-2-4 is a PRF built for exactly
// that (128-bit key, 64-bit output), in a few dozen additions and rotations
// where HMAC-SHA256 costs two SHA-256 compressions plus the HMAC state
// handling per value.
type sipKey struct{ k0, k1 uint64 }

func newSipKey(k []byte) sipKey {
	return sipKey{binary.LittleEndian.Uint64(k), binary.LittleEndian.Uint64(k[8:])}
}

func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}

// sum is SipHash-2-4 of b.
func (k sipKey) sum(b []byte) uint64 {
	v0 := k.k0 ^ 0x736f6d6570736575
	v1 := k.k1 ^ 0x646f72616e646f6d
	v2 := k.k0 ^ 0x6c7967656e657261
	v3 := k.k1 ^ 0x7465646279746573
	n, m := len(b), b
	for len(m) >= 8 {
		w := binary.LittleEndian.Uint64(m)
		v3 ^= w
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= w
		m = m[8:]
	}
	// The last word: the remaining bytes, little-endian, and the length
	// (mod 256) in the top byte.
	w := uint64(n) << 56
	if r := len(m); r > 0 && n >= 8 {
		// They are the top r of b's last eight: one load, not a loop
		// of r.
		w |= binary.LittleEndian.Uint64(b[n-8:]) >> (64 - 8*uint(r))
	} else {
		for i := r - 1; i >= 0; i-- {
			w |= uint64(m[i]) << (8 * uint(i))
		}
	}
	v3 ^= w
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= w
	v2 ^= 0xff
	// The four finalization rounds written out: the compiler does not
	// unroll loops, and this runs for every hashed value.
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	return v0 ^ v1 ^ v2 ^ v3
}
