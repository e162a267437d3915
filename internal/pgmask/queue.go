package pgmask

// requests is the FIFO of client requests awaiting their answers. Every
// statement pushes and pops a few, so it reuses one backing array: a
// queue that empties (each ReadyForQuery) starts again at its front, and a
// pipelined client that keeps it from emptying has the consumed front
// reclaimed once it is most of the array. No allocation once warm.
type requests struct {
	q    []request
	head int
}

func (r *requests) push(rs ...request) {
	if r.head == len(r.q) {
		r.q, r.head = r.q[:0], 0
	} else if r.head > 32 && r.head*2 > len(r.q) {
		n := copy(r.q, r.q[r.head:])
		clear(r.q[n:])
		r.q, r.head = r.q[:n], 0
	}
	r.q = append(r.q, rs...)
}

func (r *requests) len() int { return len(r.q) - r.head }

// at is the i-th oldest request; i must be below len.
func (r *requests) at(i int) *request { return &r.q[r.head+i] }

// front is the oldest request; the queue must not be empty.
func (r *requests) front() request { return r.q[r.head] }

// pop drops the oldest request; the queue must not be empty.
func (r *requests) pop() request {
	x := r.q[r.head]
	r.q[r.head] = request{} // the portal name is not kept alive
	r.head++
	if r.head == len(r.q) {
		r.q, r.head = r.q[:0], 0
	}
	return x
}
