package session

import (
	"bytes"
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

// The data path reuses a statement's memory once Record returns (see Sink):
// what the queue delivers later is the statement as it was recorded.
func TestQueueKeepsStatementCopies(t *testing.T) {
	c := &capture{}
	q := NewQueue(c, 16, nil)
	row := []byte("\x00\x01#alice@example.com") // one row of one value (package rowsample)
	st := &Statement{SQL: "select $1", Params: []string{"1"},
		Sample: &Sample{Columns: []string{"email"}, OIDs: []uint32{25}, Formats: []int16{1}, Data: bytes.Clone(row)}}
	q.Record(Event{Kind: KindStatement, Statement: st})
	// The caller's next statement, in the same memory.
	st.SQL, st.Params[0], st.Sample.Columns[0], st.Sample.OIDs[0], st.Sample.Formats[0] = "select 2", "2", "n", 23, 0
	copy(st.Sample.Data[3:], "bob")
	q.Close()
	got := c.evs[0].Statement
	switch {
	case got.SQL != "select $1" || got.Params[0] != "1" || got.Sample.Columns[0] != "email":
		t.Errorf("delivered %+v, changed after Record", got)
	case got.Sample.OIDs[0] != 25 || got.Sample.Formats[0] != 1 || !bytes.Equal(got.Sample.Data, row):
		t.Errorf("delivered sample %+v, changed after Record", got.Sample)
	}
}

type wantsNoStatements struct{ capture }

func (*wantsNoStatements) Wants(ev Event) bool { return ev.Statement == nil }

// A queue in front of a Filter holds only what the filter wants.
func TestQueueFilter(t *testing.T) {
	tests := []struct {
		name string
		ev   Event
		kept bool
	}{
		{"statement", Event{Kind: KindStatement, Statement: &Statement{SQL: "select 1"}}, false},
		{"end", Event{Kind: KindSessionEnd, End: &End{Reason: "client_quit"}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &wantsNoStatements{}
			q := NewQueue(c, 16, nil)
			q.Record(tc.ev)
			q.Close()
			if kept := len(c.evs) == 1; kept != tc.kept {
				t.Errorf("delivered %d events, want kept=%v", len(c.evs), tc.kept)
			}
		})
	}
}
