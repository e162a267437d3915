//go:build linux

package pgwire

import "testing"

// TestLoopSides holds the loop's descriptor table (a slice indexed by the
// descriptor) to what the map it replaced answered: the side registered
// last for a descriptor, nil for one never or no longer registered, and
// nothing for descriptors out of its range.
func TestLoopSides(t *testing.T) {
	a, b, c := &lside{src: 3}, &lside{src: 9}, &lside{src: 4}
	type step struct {
		fd   int
		set  *lside // registered (nil: removed) before the lookups
		want map[int32]*lside
	}
	l := &evloop{}
	for i, st := range []step{
		{fd: 3, set: a, want: map[int32]*lside{3: a, 0: nil, 4: nil, 9: nil, -1: nil, 1 << 30: nil}},
		{fd: 9, set: b, want: map[int32]*lside{3: a, 9: b, 8: nil, 10: nil}},
		{fd: 4, set: c, want: map[int32]*lside{3: a, 4: c, 9: b}},
		{fd: 3, set: nil, want: map[int32]*lside{3: nil, 4: c, 9: b}},
		{fd: 50, set: nil, want: map[int32]*lside{50: nil, 9: b}}, // removing what was never there
		{fd: 3, set: b, want: map[int32]*lside{3: b, 4: c, 9: b}}, // a descriptor reused
	} {
		l.setSide(st.fd, st.set)
		for fd, want := range st.want {
			if got := l.side(fd); got != want {
				t.Fatalf("step %d: side(%d) = %p, want %p", i, fd, got, want)
			}
		}
	}
	if len(l.fds) != 10 {
		t.Fatalf("table of %d for descriptors up to 9", len(l.fds))
	}
}
