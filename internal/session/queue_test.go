package session

import (
	"context"
	"sync"
	"testing"
)

type capture struct {
	mu  sync.Mutex
	evs []Event
}

func (c *capture) Record(ev Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
}

func TestQueueDeliversEverythingInOrder(t *testing.T) {
	for _, size := range []int{1, 16, 1024} {
		c := &capture{}
		flushes := 0
		q := NewQueue(c, size, func() { flushes++ })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { q.Run(ctx); close(done) }()
		s := New(q)
		const n = 5000
		for i := 0; i < n; i++ {
			s.Emit(Event{Kind: KindStatement, Statement: &Statement{Rows: int64(i)}})
		}
		cancel()
		<-done
		s.Emit(Event{Kind: KindSessionEnd, End: &End{Reason: "after close"}})
		if len(c.evs) != n+1 {
			t.Fatalf("size %d: delivered %d events, want %d", size, len(c.evs), n+1)
		}
		for i := 0; i < n; i++ {
			if c.evs[i].Statement.Rows != int64(i) || c.evs[i].Session != s.ID {
				t.Fatalf("size %d: event %d out of order or unstamped: %+v", size, i, c.evs[i])
			}
		}
		if flushes == 0 {
			t.Fatalf("size %d: flush never called", size)
		}
	}
}

// A full queue whose consumer stops must not deadlock Close.
func TestQueueCloseWithBlockedSenders(t *testing.T) {
	c := &capture{}
	q := NewQueue(c, 1, nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); q.Record(Event{Kind: KindStatement}) }()
	}
	q.Close()
	wg.Wait()
	q.Close()
	if len(c.evs) != 8 {
		t.Fatalf("delivered %d of 8", len(c.evs))
	}
}
