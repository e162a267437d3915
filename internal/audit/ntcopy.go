package audit

import "unsafe"

// ntChunk is what one non-temporal store writes, aligned.
const ntChunk = 16

// streamCopy copies src into dst (which has room for it), like copy but
// around the cache where ntStores: the whole ntChunk-aligned chunks of
// dst with non-temporal stores, the bytes before the first and after the
// last with plain ones. The caller fences (storeFence) before publishing.
func streamCopy(dst, src []byte) {
	if !ntStores || len(src) < ntChunk {
		copy(dst, src)
		return
	}
	dst = dst[:len(src)]
	a := int(-uintptr(unsafe.Pointer(&dst[0])) & (ntChunk - 1))
	copy(dst[:a], src)
	chunks := (len(src) - a) / ntChunk
	ntCopy(&dst[a], &src[a], chunks)
	done := a + chunks*ntChunk
	copy(dst[done:], src[done:])
}
