package audit

// ntStores is whether the data path streams statement frames into the
// ring with non-temporal stores (streamCopy, ring.putStaged). SSE2's are
// part of amd64 itself; a variable so that tests run the fallback too.
var ntStores = true

// ntCopy copies chunks*ntChunk bytes from src to dst, which is
// ntChunk-aligned, with non-temporal stores (MOVNTDQ): each line goes to
// memory through a write-combining buffer, not first read into the cache
// for ownership, and is not left in the cache after. They are weakly
// ordered: storeFence before anything that makes them visible.
//
//go:noescape
func ntCopy(dst, src *byte, chunks int)

// storeFence orders every earlier store, non-temporal ones included,
// before every later one (SFENCE). An XCHG (atomic.StoreUint64) orders
// plain stores but, on AMD, not non-temporal ones.
func storeFence()
