package audit

// ntCopy copies chunks*ntChunk bytes from src to dst (ntChunk-aligned)
// with non-temporal stores (MOVNTDQ): the destination's lines are written
// whole through the write-combining buffers, not first read into the
// cache for ownership. The stores are weakly ordered: storeFence before
// anything that makes them visible to a reader.
//
//go:noescape
func ntCopy(dst, src *byte, chunks int)

// storeFence orders every earlier store, non-temporal ones included,
// before every later one (SFENCE).
func storeFence()
