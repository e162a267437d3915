//go:build !amd64

package audit

import "unsafe"

// ntStores is false here: only amd64 has the stores wired, and the data
// path encodes in the ring in place, as it always did.
var ntStores = false

// ntCopy is a plain copy here (never called while ntStores is false).
func ntCopy(dst, src *byte, chunks int) {
	n := chunks * ntChunk
	copy(unsafe.Slice(dst, n), unsafe.Slice(src, n))
}

// storeFence does nothing here: plain stores are ordered before head's
// atomic store.
func storeFence() {}
