package sqlclass

import (
	"hash/maphash"
	"sync"
)

// lru is a size-bounded least-recently-used map of strings, split into
// shards so that sessions on different cores rarely wait for one another.
// Each shard evicts on its own when its entry count or its byte budget is
// exceeded, so an adversary sending unique statements costs at most the
// budget. A lookup's key does not escape (the shape lookups pass a key
// built on the caller's stack).
type lru[V any] struct {
	seed   maphash.Seed
	shards []lruShard[string, V]
}

type lruShard[K comparable, V any] struct {
	mu         sync.Mutex
	items      map[K]*lruEntry[K, V]
	head       lruEntry[K, V] // sentinel: head.next is the most recent
	bytes      int
	maxEntries int
	maxBytes   int
}

type lruEntry[K comparable, V any] struct {
	key        K
	val        V
	size       int
	prev, next *lruEntry[K, V]
}

const lruShards = 16

func newLRU[V any](maxEntries, maxBytes int) *lru[V] {
	c := &lru[V]{seed: maphash.MakeSeed(), shards: make([]lruShard[string, V], lruShards)}
	perEntries := max(1, maxEntries/lruShards)
	perBytes := max(1, maxBytes/lruShards)
	for i := range c.shards {
		s := &c.shards[i]
		s.items = make(map[string]*lruEntry[string, V])
		s.head.next, s.head.prev = &s.head, &s.head
		s.maxEntries, s.maxBytes = perEntries, perBytes
	}
	return c
}

func (c *lru[V]) shard(k string) *lruShard[string, V] {
	return &c.shards[maphash.String(c.seed, k)%lruShards]
}

func (c *lru[V]) get(k string) (V, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.items[k]
	if !ok {
		s.mu.Unlock()
		var zero V
		return zero, false
	}
	if s.head.next != e {
		s.unlink(e)
		s.pushFront(e)
	}
	v := e.val
	s.mu.Unlock()
	return v, true
}

// put stores v under k; size is what the entry costs against the byte
// budget. An entry larger than a shard's whole budget is not stored.
func (c *lru[V]) put(k string, v V, size int) {
	s := c.shard(k)
	if size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.items[k]; ok {
		s.bytes += size - e.size
		e.val, e.size = v, size
		s.unlink(e)
		s.pushFront(e)
	} else {
		e := &lruEntry[string, V]{key: k, val: v, size: size}
		s.items[k] = e
		s.bytes += size
		s.pushFront(e)
	}
	for len(s.items) > s.maxEntries || s.bytes > s.maxBytes {
		old := s.head.prev
		s.unlink(old)
		delete(s.items, old.key)
		s.bytes -= old.size
	}
}

func (c *lru[V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.items)
		s.mu.Unlock()
	}
	return n
}

func (c *lru[V]) sizeBytes() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.bytes
		s.mu.Unlock()
	}
	return n
}

func (s *lruShard[K, V]) unlink(e *lruEntry[K, V]) {
	e.prev.next, e.next.prev = e.next, e.prev
}

func (s *lruShard[K, V]) pushFront(e *lruEntry[K, V]) {
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
}
