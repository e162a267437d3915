package frontdoor

import (
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/airlockhq/airlock/internal/session"
)

// origin builds an origin with freshly allocated strings, as each read of
// /proc gives.
func origin(pid uint32, exe string, cmdline ...string) session.Origin {
	fresh := func(s string) string { return strings.Clone(s) }
	o := session.Origin{PID: pid, Exe: fresh(exe), CgroupPath: fresh("/agents/a")}
	for _, a := range cmdline {
		o.Cmdline = append(o.Cmdline, fresh(a))
	}
	o.Parents = []session.Proc{{PID: 1, Exe: fresh("/bin/sh"), Cmdline: []string{fresh("sh"), fresh("-c"), fresh("x")}}}
	return o
}

func sameMemory(a, b session.Origin) (exe, cmdline, parents bool) {
	exe = unsafe.StringData(a.Exe) == unsafe.StringData(b.Exe)
	cmdline = len(a.Cmdline) > 0 && len(b.Cmdline) > 0 && &a.Cmdline[0] == &b.Cmdline[0]
	parents = len(a.Parents) > 0 && len(b.Parents) > 0 && &a.Parents[0] == &b.Parents[0]
	return
}

func TestOriginCacheShares(t *testing.T) {
	tests := []struct {
		name                      string
		first, next               session.Origin
		wantExe, wantCmd, wantPar bool
	}{
		{"same process, same details", origin(10, "/usr/bin/agent", "agent", "--db"), origin(10, "/usr/bin/agent", "agent", "--db"), true, true, true},
		{"same pid, other command line", origin(10, "/usr/bin/agent", "agent", "--db"), origin(10, "/usr/bin/agent", "agent", "--other"), true, false, true},
		{"same pid, another program", origin(10, "/usr/bin/agent", "agent"), origin(10, "/usr/bin/psql", "psql"), false, false, true},
		{"other pid, same details", origin(10, "/usr/bin/agent", "agent"), origin(11, "/usr/bin/agent", "agent"), false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c originCache
			first, next := tc.first, tc.next
			c.share(&first)
			want := tc.next
			c.share(&next)
			if next.Exe != want.Exe || !slices.Equal(next.Cmdline, want.Cmdline) || next.CgroupPath != want.CgroupPath ||
				!slices.EqualFunc(next.Parents, want.Parents, sameProc) {
				t.Fatalf("sharing changed the origin: %+v, want %+v", next, want)
			}
			exe, cmd, par := sameMemory(first, next)
			if exe != tc.wantExe || cmd != tc.wantCmd || par != tc.wantPar {
				t.Fatalf("shared exe/cmdline/parents = %v/%v/%v, want %v/%v/%v", exe, cmd, par, tc.wantExe, tc.wantCmd, tc.wantPar)
			}
		})
	}
}

func TestOriginCacheBounded(t *testing.T) {
	var c originCache
	for pid := uint32(1); pid <= 3*originCacheSize; pid++ {
		o := origin(pid, "/bin/x", "x")
		c.share(&o)
		if len(c.byPID) > originCacheSize {
			t.Fatalf("after pid %d the cache holds %d processes, limit %d", pid, len(c.byPID), originCacheSize)
		}
	}
}
