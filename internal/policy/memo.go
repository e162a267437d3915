package policy

import "github.com/airlockhq/airlock/internal/sqlclass"

// Memo remembers one session's decisions per classification. A session's
// Who does not change and the classifier returns the same *Result for a
// text it has cached, so a repeated statement is decided by one map
// lookup instead of every rule again. A Memo belongs to one goroutine.
type Memo struct {
	p    *Policy
	who  Who
	seen map[*sqlclass.Result]Decision
}

// memoMax bounds a session's memo; past it the memo starts over.
const memoMax = 4096

// Memo returns a memo of p's decisions for w.
func (p *Policy) Memo(w Who) *Memo {
	return &Memo{p: p, who: w, seen: map[*sqlclass.Result]Decision{}}
}

// Policy is the policy the memo decides with.
func (m *Memo) Policy() *Policy { return m.p }

// Who is the session the memo decides for.
func (m *Memo) Who() Who { return m.who }

// Decide is m.Policy().Decide for the memo's session.
func (m *Memo) Decide(res *sqlclass.Result, err error) Decision {
	if err != nil || res == nil {
		return m.p.Decide(res, err, m.who)
	}
	if d, ok := m.seen[res]; ok {
		return d
	}
	d := m.p.Decide(res, nil, m.who)
	if res.Transient() {
		return d // never seen again: keeping it would only evict the others
	}
	if len(m.seen) >= memoMax {
		clear(m.seen)
	}
	m.seen[res] = d
	return d
}
