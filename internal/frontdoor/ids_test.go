package frontdoor

import (
	"slices"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/internal/session"
)

// TestLiveSessionIDsUnique: a new session whose id a live session already
// has is given another before anything records or names it, so the two
// never share a role name or audit records, and one ending leaves the
// other in the live list.
func TestLiveSessionIDsUnique(t *testing.T) {
	s := &Server{sessions: map[string]*session.Session{}}
	start := func(id string) *session.Session {
		sess := session.New(nil)
		if id != "" {
			sess.ID = id
		}
		s.reserve(sess)
		s.add(sess)
		return sess
	}
	live := func() []string {
		var ids []string
		for _, v := range s.Sessions() {
			ids = append(ids, v.ID)
		}
		slices.Sort(ids)
		return ids
	}

	a := start("")
	clashing := a.ID
	b := start(clashing)
	if b.ID == a.ID || len(b.ID) != len(a.ID) {
		t.Fatalf("a second live session under %s got id %q: want a fresh id of the same form", a.ID, b.ID)
	}
	if got, want := live(), slices.Sorted(slices.Values([]string{a.ID, b.ID})); !slices.Equal(got, want) {
		t.Fatalf("live sessions %v, want %v", got, want)
	}

	// Reserved but not started: not listed, yet its id is taken.
	r := session.New(nil)
	r.ID = b.ID
	s.reserve(r)
	if r.ID == b.ID || slices.Contains(live(), r.ID) {
		t.Fatalf("reserved %s (clashing with %s): listed %v", r.ID, b.ID, live())
	}
	c := session.New(nil)
	c.ID = r.ID
	s.reserve(c)
	if c.ID == r.ID {
		t.Fatalf("a reserved id %s was given again", r.ID)
	}
	s.remove(r)
	s.remove(c)

	s.remove(b)
	if got := live(); !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("after the second session ended: live %v, want only the first, %s", got, a.ID)
	}
	// Its id is free again once it ended.
	if d := start(b.ID); d.ID != b.ID {
		t.Fatalf("the id of an ended session %s was not given again: %s", b.ID, d.ID)
	}
}

// TestLiveSessionIDsUniqueConcurrently: sessions admitted at once, all
// made with one id, end up under distinct ids.
func TestLiveSessionIDsUniqueConcurrently(t *testing.T) {
	s := &Server{sessions: map[string]*session.Session{}}
	const workers, each = 8, 50
	clash := session.NewID()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				sess := session.New(nil)
				sess.ID = clash
				s.reserve(sess)
				s.add(sess)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, v := range s.Sessions() {
		if seen[v.ID] {
			t.Fatalf("two live sessions under %s", v.ID)
		}
		seen[v.ID] = true
	}
	if len(seen) != workers*each || !seen[clash] {
		t.Fatalf("%d live sessions (one under %s: %v), want %d", len(seen), clash, seen[clash], workers*each)
	}
}
