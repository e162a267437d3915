// Package targets keeps the set of destinations Airlock intercepts: IP and
// CIDR targets from the configuration plus the current addresses of hostname
// targets, and answers which target an original destination belongs to.
package targets

import (
	"net/netip"
	"sort"
	"sync"
)

// Entry is one destination range of a named target.
type Entry struct {
	Name   string
	Prefix netip.Prefix // single addresses are /32 or /128
	Port   uint16
}

// Set is safe for concurrent use; readers never block each other.
type Set struct {
	mu      sync.RWMutex
	static  []Entry
	dynamic map[string][]Entry // by target name, from DNS
}

// NewSet starts with the configured IP and CIDR targets.
func NewSet(static []Entry) *Set {
	return &Set{static: normalize(static), dynamic: map[string][]Entry{}}
}

// SetResolved replaces the addresses of one hostname target.
func (s *Set) SetResolved(name string, port uint16, addrs []netip.Addr) {
	es := make([]Entry, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		es = append(es, Entry{Name: name, Prefix: netip.PrefixFrom(a, a.BitLen()), Port: port})
	}
	s.mu.Lock()
	s.dynamic[name] = es
	s.mu.Unlock()
}

// All returns every entry, static first, in a stable order.
func (s *Set) All() []Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := append([]Entry(nil), s.static...)
	names := make([]string, 0, len(s.dynamic))
	for n := range s.dynamic {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, s.dynamic[n]...)
	}
	return out
}

// Match returns the target that dest belongs to, preferring the most
// specific prefix, as the kernel's LPM trie does.
func (s *Set) Match(dest netip.AddrPort) (string, bool) {
	a := dest.Addr().Unmap()
	best, bits := "", -1
	for _, e := range s.All() {
		if e.Port == dest.Port() && e.Prefix.Contains(a) && e.Prefix.Bits() > bits {
			best, bits = e.Name, e.Prefix.Bits()
		}
	}
	return best, bits >= 0
}

func normalize(es []Entry) []Entry {
	out := make([]Entry, 0, len(es))
	for _, e := range es {
		p := e.Prefix
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				bits = 0
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		e.Prefix = p.Masked()
		out = append(out, e)
	}
	return out
}
