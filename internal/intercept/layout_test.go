package intercept

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// A daemon with a new map layout takes over from an older layout's pins:
// the old daemon's tracked processes and selected cgroups carry over, its
// programs are detached and its pin folder is removed, and connects are
// redirected by the new programs.
func TestTakeoverFromOlderLayout(t *testing.T) {
	var oldDir string
	const oldTGID, oldCgroup = uint32(1<<23 + 7), uint64(424242)
	e := newEnvWith(t, ModeAll, func(o *Options) {
		oldDir = filepath.Join(filepath.Dir(o.PinDir), "v1")
		if err := os.MkdirAll(filepath.Join(oldDir, "links"), 0o700); err != nil {
			t.Fatal(err)
		}
		pinSet := func(name string, keySize uint32, key any) {
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: keySize, ValueSize: 4, MaxEntries: 16})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Put(key, uint32(1)); err != nil {
				t.Fatal(err)
			}
			if err := m.Pin(filepath.Join(oldDir, name)); err != nil {
				t.Fatal(err)
			}
		}
		pinSet("airlock_tracked", 4, oldTGID)
		pinSet("airlock_cgroups", 8, oldCgroup)
		// The old layout's connect4: one that refuses every connect, so
		// that it is plain to see whether it is still attached.
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect, License: "GPL",
			Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		l, err := link.AttachCgroup(link.CgroupOptions{Path: o.CgroupPath, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Pin(filepath.Join(oldDir, "links", "connect4")); err != nil {
			t.Fatal(err)
		}
		if res := dial(t, helperSpec{Cgroup: o.CgroupPath, Addr: netip.MustParseAddrPort("192.0.2.1:9")}); res.Err != "EPERM" {
			t.Fatalf("old layout's program not in force before the takeover: %+v", res)
		}
	})
	if _, err := os.Stat(oldDir); !os.IsNotExist(err) {
		t.Fatalf("older layout's pin folder still there after the takeover: %v", err)
	}
	tracked, err := e.ic.Tracked()
	if err != nil || !slices.Contains(tracked, oldTGID) {
		t.Fatalf("older layout's tracked process not adopted: %v %v", tracked, err)
	}
	var v uint32
	if err := e.ic.objs.AirlockCgroups.Lookup(oldCgroup, &v); err != nil {
		t.Fatalf("older layout's selected cgroup not adopted: %v", err)
	}
	r := e.remote
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(r.v4, r.ports[0])}); res.Line != "proxy" {
		t.Fatalf("after the takeover: %+v (the old program must be detached, the new one redirect)", res)
	}
	if a := e.proxy.next(t); a.err != nil {
		t.Fatal(a.err)
	}
}
