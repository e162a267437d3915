package session

import (
	"context"
	"sync"
	"time"
)

// batchDelay is how long an event may wait for others before the queue's
// goroutine wakes to deliver them. Waking once per statement costs the data
// path a thread wake-up per query; once per batch costs almost nothing.
const batchDelay = 20 * time.Millisecond

// Queue hands events to a slower sink (a log file, later the audit store)
// off the data path, in batches. It never drops an event: when the queue is
// full, Record waits, so a stuck sink slows sessions down rather than losing
// their record.
type Queue struct {
	inner Sink
	flush func() // called after each delivered batch; may be nil
	max   int

	mu     sync.Mutex
	space  *sync.Cond // signalled when a batch is taken
	buf    []Event
	armed  bool // a delivery is scheduled
	closed bool
	kick   chan struct{}

	deliver sync.Mutex // keeps batches in order between Run and Close
}

// NewQueue returns a queue of size events in front of inner; flush, if
// set, is called after each delivered batch (to flush a buffered writer).
func NewQueue(inner Sink, size int, flush func()) *Queue {
	q := &Queue{inner: inner, flush: flush, max: size, kick: make(chan struct{}, 1)}
	q.space = sync.NewCond(&q.mu)
	return q
}

// Record enqueues ev, unless the inner sink is a Filter that does not want
// it (a statement for the log: queueing it would cost the data path a lock
// and a copy for nothing). After Close, events go straight to the inner
// sink.
func (q *Queue) Record(ev Event) {
	if f, ok := q.inner.(Filter); ok && !f.Wants(ev) {
		return
	}
	// The statement is the caller's only during this call (see Sink).
	ev.Statement = ev.Statement.Clone()
	q.mu.Lock()
	for len(q.buf) >= q.max && !q.closed {
		q.wake()
		q.space.Wait()
	}
	if q.closed {
		q.mu.Unlock()
		q.deliver.Lock()
		q.inner.Record(ev)
		q.deliver.Unlock()
		return
	}
	q.buf = append(q.buf, ev)
	switch {
	case len(q.buf) >= q.max/2:
		q.wake()
	case !q.armed:
		q.armed = true
		time.AfterFunc(batchDelay, q.wake)
	}
	q.mu.Unlock()
}

func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Run delivers batches until ctx is done, then delivers what is left.
func (q *Queue) Run(ctx context.Context) {
	for {
		select {
		case <-q.kick:
			q.drain(false)
		case <-ctx.Done():
			q.Close()
			return
		}
	}
}

// Close stops queueing and delivers what is left. Safe to call twice.
func (q *Queue) Close() { q.drain(true) }

func (q *Queue) drain(closing bool) {
	q.deliver.Lock()
	defer q.deliver.Unlock()
	q.mu.Lock()
	batch := q.buf
	q.buf, q.armed = nil, false
	if closing {
		q.closed = true
	}
	q.space.Broadcast()
	q.mu.Unlock()
	for _, ev := range batch {
		q.inner.Record(ev)
	}
	if len(batch) > 0 && q.flush != nil {
		q.flush()
	}
}
