package session

import (
	"context"
	"sync"
)

// Queue hands events to a slower sink (a log file, later the audit store)
// off the data path. It never drops an event: when the queue is full,
// Record waits, so a stuck sink slows sessions down rather than losing
// their record.
type Queue struct {
	ch    chan Event
	inner Sink
	flush func() // called when the queue runs empty; may be nil

	mu     sync.RWMutex
	closed bool
	done   chan struct{}
}

// NewQueue returns a queue of size events in front of inner; flush, if
// set, is called whenever the queue runs empty (to flush a buffered writer).
func NewQueue(inner Sink, size int, flush func()) *Queue {
	return &Queue{ch: make(chan Event, size), inner: inner, flush: flush, done: make(chan struct{})}
}

// Record enqueues ev. After Close, events go straight to the inner sink.
func (q *Queue) Record(ev Event) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		q.inner.Record(ev)
		return
	}
	q.ch <- ev
}

// Run delivers events until ctx is done, then drains what is queued.
func (q *Queue) Run(ctx context.Context) {
	defer close(q.done)
	for {
		select {
		case ev := <-q.ch:
			q.inner.Record(ev)
			if len(q.ch) == 0 && q.flush != nil {
				q.flush()
			}
		case <-ctx.Done():
			q.Close()
			return
		}
	}
}

// Close stops queueing and delivers what is left. Safe to call twice.
func (q *Queue) Close() {
	// Record holds the read lock while it may wait on a full queue, so the
	// queue keeps draining while Close waits for the write lock.
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case ev := <-q.ch:
				q.inner.Record(ev)
			case <-stop:
				return
			}
		}
	}()
	q.mu.Lock()
	already := q.closed
	q.closed = true
	q.mu.Unlock()
	close(stop)
	<-stopped
	if already {
		return
	}
	for {
		select {
		case ev := <-q.ch:
			q.inner.Record(ev)
		default:
			if q.flush != nil {
				q.flush()
			}
			return
		}
	}
}
