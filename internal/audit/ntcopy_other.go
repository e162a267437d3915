//go:build !amd64

package audit

import "unsafe"

// ntCopy is a plain copy here: only amd64 has the instructions wired.
func ntCopy(dst, src *byte, chunks int) {
	copy(unsafe.Slice(dst, chunks*ntChunk), unsafe.Slice(src, chunks*ntChunk))
}

// storeFence does nothing here: publish's atomic store orders plain stores.
func storeFence() {}
