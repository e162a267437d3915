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
	s.SetResolved("db", 5432, nil)
	if _, ok := s.Match(netip.MustParseAddrPort("192.0.2.9:5432")); ok {
		t.Error("address kept after the hostname stopped resolving to it")
	}
}
