package targets

import (
	"net/netip"
	"testing"
)

func TestMatch(t *testing.T) {
	s := NewSet([]Entry{
		{Name: "net", Prefix: netip.MustParsePrefix("10.1.0.0/16"), Port: 5432},
		{Name: "host", Prefix: netip.MustParsePrefix("10.1.2.3/32"), Port: 5432},
		{Name: "v6", Prefix: netip.MustParsePrefix("fd00::/64"), Port: 443},
	})
	s.SetResolved("db", 5432, []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")})
	tests := []struct {
		dest string
		want string
		ok   bool
	}{
		{"10.1.9.9:5432", "net", true},
		{"10.1.2.3:5432", "host", true},
		{"[::ffff:10.1.2.3]:5432", "host", true},
		{"10.1.2.3:5433", "", false},
		{"[fd00::1]:443", "v6", true},
		{"192.0.2.9:5432", "db", true},
		{"[2001:db8::9]:5432", "db", true},
		{"192.0.2.10:5432", "", false},
	}
	for _, tt := range tests {
		got, ok := s.Match(netip.MustParseAddrPort(tt.dest))
		if got != tt.want || ok != tt.ok {
			t.Errorf("Match(%s) = %q, %v; want %q, %v", tt.dest, got, ok, tt.want, tt.ok)
		}
	}
	s.SetResolved("db", 5432, []netip.Addr{netip.MustParseAddr("192.0.2.10")})
	if name, _ := s.Match(netip.MustParseAddrPort("192.0.2.9:5432")); name == "db" {
		t.Error("address kept after the hostname stopped resolving to it")
	}
}

// A hostname target without addresses stands in at every address of its
// port, so that connections to it are refused rather than let through;
// configured targets and resolved addresses still win where they match.
func TestUnresolved(t *testing.T) {
	s := NewSet([]Entry{{Name: "host", Prefix: netip.MustParsePrefix("10.1.2.3/32"), Port: 5432}})
	s.SetUnresolved("db", 5432)
	s.SetResolved("api", 443, nil) // no addresses: unresolved too
	s.SetResolved("web", 80, []netip.Addr{netip.MustParseAddr("192.0.2.80")})
	tests := []struct {
		dest       string
		want       string
		unresolved bool
		ok         bool
	}{
		{"192.0.2.9:5432", "db", true, true},
		{"[2001:db8::9]:5432", "db", true, true},
		{"[::ffff:192.0.2.9]:5432", "db", true, true},
		{"127.0.0.1:5432", "db", true, true},
		{"10.1.2.3:5432", "host", false, true},
		{"198.51.100.1:443", "api", true, true},
		{"192.0.2.80:80", "web", false, true},
		{"192.0.2.81:80", "", false, false},
		{"192.0.2.9:5433", "", false, false},
	}
	for _, tt := range tests {
		e, ok := s.Lookup(netip.MustParseAddrPort(tt.dest))
		if e.Name != tt.want || e.Unresolved != tt.unresolved || ok != tt.ok {
			t.Errorf("Lookup(%s) = %+v, %v; want %q unresolved=%v, %v", tt.dest, e, ok, tt.want, tt.unresolved, tt.ok)
		}
	}
	if got := s.Unresolved(5432); len(got) != 1 || got[0] != "db" {
		t.Errorf("Unresolved(5432) = %v", got)
	}
	// Every family is covered, so the kernel's LPM trie gets both.
	var fams []string
	for _, e := range s.All() {
		if e.Name == "db" {
			fams = append(fams, e.Prefix.String())
		}
	}
	if len(fams) != 2 || fams[0] != "0.0.0.0/0" || fams[1] != "::/0" {
		t.Errorf("unresolved entries %v, want 0.0.0.0/0 and ::/0", fams)
	}
	s.SetResolved("db", 5432, []netip.Addr{netip.MustParseAddr("192.0.2.9")})
	if e, ok := s.Lookup(netip.MustParseAddrPort("192.0.2.10:5432")); ok {
		t.Errorf("once resolved, other addresses still match: %+v", e)
	}
	if e, _ := s.Lookup(netip.MustParseAddrPort("192.0.2.9:5432")); e.Name != "db" || e.Unresolved {
		t.Errorf("resolved address: %+v", e)
	}
}
