package pgmask

import (
	"strconv"
	"testing"
)

// TestRequests: the queue is first in, first out whatever the mix of
// pushes and pops (a pipelining client keeps it from emptying, which
// reclaims its front), and reuses its array once warm.
func TestRequests(t *testing.T) {
	for _, tt := range []struct {
		name      string
		lag       int // pushed before the first pop: the queue never empties
		push, pop int // per step
		steps     int
	}{
		{"one at a time", 0, 1, 1, 100},
		{"a batch of four", 0, 4, 4, 100},
		{"pipelined: one behind", 1, 1, 1, 1000},
		{"pipelined: 100 behind", 100, 3, 3, 1000},
		{"growing backlog", 0, 2, 1, 500},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var q requests
			next, want := 0, 0
			for range tt.lag {
				q.push(request{kind: 'E', portal: strconv.Itoa(next)})
				next++
			}
			for range tt.steps {
				for range tt.push {
					q.push(request{kind: 'E', portal: strconv.Itoa(next)})
					next++
				}
				for range tt.pop {
					if got := q.pop().portal; got != strconv.Itoa(want) {
						t.Fatalf("popped %s, want %d", got, want)
					}
					want++
				}
			}
			if q.len() != next-want {
				t.Fatalf("%d left, want %d", q.len(), next-want)
			}
			// A consumed front is reclaimed once it is most of the array.
			if max := 4*(next-want) + 128; cap(q.q) > max {
				t.Fatalf("array grew to %d for %d waiting", cap(q.q), next-want)
			}
		})
	}
	var q requests
	q.push(request{kind: 'Q'})
	q.pop()
	if n := testing.AllocsPerRun(100, func() { q.push(request{kind: 'Q'}, request{kind: 'S'}); q.pop(); q.pop() }); n != 0 {
		t.Fatalf("%v allocations per push and pop", n)
	}
}
