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
	// Unresolved marks the stand-ins of a hostname target that has no
	// address yet: its port at every address (0.0.0.0/0 and ::/0), so that
	// nothing reaches it around Airlock while its addresses are unknown.
	// Connections that match one must be refused, never relayed.
	Unresolved bool
}

// anyAddr are the prefixes an unresolved hostname target stands in with.
var anyAddr = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

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

// SetUnresolved marks a hostname target as having no address yet: its port
// is matched at every address until SetResolved gives it some.
func (s *Set) SetUnresolved(name string, port uint16) {
	es := make([]Entry, 0, len(anyAddr))
	for _, p := range anyAddr {
		es = append(es, Entry{Name: name, Prefix: p, Port: port, Unresolved: true})
	}
	s.mu.Lock()
	s.dynamic[name] = es
	s.mu.Unlock()
}

// SetResolved replaces the addresses of one hostname target. With no
// addresses the target is unresolved (see SetUnresolved).
func (s *Set) SetResolved(name string, port uint16, addrs []netip.Addr) {
	if len(addrs) == 0 {
		s.SetUnresolved(name, port)
		return
	}
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
	e, ok := s.Lookup(dest)
	return e.Name, ok
}

// Lookup returns the entry dest falls in, preferring the most specific
// prefix, as the kernel's LPM trie does, and among equally specific ones a
// resolved entry over an unresolved stand-in.
func (s *Set) Lookup(dest netip.AddrPort) (Entry, bool) {
	a := dest.Addr().Unmap()
	var best Entry
	bits := -1
	for _, e := range s.All() {
		if e.Port != dest.Port() || !e.Prefix.Contains(a) {
			continue
		}
		if b := e.Prefix.Bits(); b > bits || b == bits && best.Unresolved && !e.Unresolved {
			best, bits = e, b
		}
	}
	return best, bits >= 0
}

// Unresolved returns the names of the hostname targets on port that have
// no address yet, sorted.
func (s *Set) Unresolved(port uint16) []string {
	var out []string
	for _, e := range s.All() {
		if e.Unresolved && e.Port == port && (len(out) == 0 || out[len(out)-1] != e.Name) {
			out = append(out, e.Name)
		}
	}
	return out
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
