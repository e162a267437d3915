package intercept

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// execApps makes stand-ins for "the app": copies of the test binary (which
// runs as the dialling helper) under names unique to this test process.
type execApps struct {
	self     string // the test binary: matches nothing
	name     string // configured base name
	app      string // <dir>/<name>
	pathOnly string // configured by absolute path only
	sameBase string // <other dir>/<base of pathOnly>: same name, other path
	link     string // symlink with an unconfigured name, to app
	script   string // shell script named <name>-sh (configured), exec'ing self
}

func newExecApps(t *testing.T) execApps {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), seq.Add(1))
	dir, other := t.TempDir(), t.TempDir()
	a := execApps{
		self:     self,
		name:     "airlock-exec-" + id,
		pathOnly: filepath.Join(dir, "airlock-path-"+id),
	}
	a.app = filepath.Join(dir, a.name)
	a.sameBase = filepath.Join(other, filepath.Base(a.pathOnly))
	a.link = filepath.Join(other, "airlock-link-"+id)
	a.script = filepath.Join(other, a.name+"-sh")
	for _, p := range []string{a.app, a.pathOnly, a.sameBase} {
		copyFile(t, self, p)
	}
	if err := os.Symlink(a.app, a.link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.script, []byte("#!/bin/sh\nexec "+self+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a execApps) match() []string {
	return []string{"no-such-app", a.name, a.pathOnly, filepath.Base(a.script), "/no/such/path"}
}

// TestExecMatchInKernel: with nothing in user space watching (no WatchExec,
// no Track, no SeedTree), a process exec'ing a configured executable after
// Open is tracked by the kernel at exec, so even its very first connect is
// redirected, and so are its children's.
func TestExecMatchInKernel(t *testing.T) {
	a := newExecApps(t)
	e := newEnvWith(t, ModeTree, func(o *Options) { o.Executables = a.match() })
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	got, err := e.ic.ExecMatch()
	if err != nil {
		t.Fatal(err)
	}
	want := a.match()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ExecMatch = %q, want %q", got, want)
	}

	redirected := func(t *testing.T, s helperSpec) dialResult {
		t.Helper()
		res := dial(t, s)
		if res.Err != "" || res.Line != "proxy" {
			t.Fatalf("want redirect to proxy, got %+v", res)
		}
		if a := e.proxy.next(t); a.err != nil || int(a.rec.TGID) != res.PID || a.rec.Orig != target {
			t.Fatalf("record %+v for %+v", a, res)
		}
		return res
	}
	direct := func(t *testing.T, s helperSpec) {
		t.Helper()
		if res := dial(t, s); res.Err != "" || res.Line != "remote" {
			t.Fatalf("want direct connection, got %+v", res)
		}
	}

	t.Run("base name, first connect", func(t *testing.T) {
		redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.app})
	})
	t.Run("child of another executable", func(t *testing.T) {
		res := redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.app, Depth: 2, ChildExe: a.self})
		if tracked, _ := e.ic.Tracked(); slices.Contains(tracked, uint32(res.PID)) {
			t.Errorf("exited grandchild %d still tracked", res.PID)
		}
	})
	t.Run("not matching", func(t *testing.T) {
		direct(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.self})
		direct(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.self, Depth: 1, ChildExe: a.self})
	})
	t.Run("full path", func(t *testing.T) {
		redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.pathOnly})
	})
	t.Run("same base name, other path", func(t *testing.T) {
		direct(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.sameBase})
	})
	t.Run("symlink to a configured name", func(t *testing.T) {
		// The kernel sees the link's path; the name of the file run matches.
		redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.link})
	})
	t.Run("script", func(t *testing.T) {
		// The script's name matches; the test binary it execs stays tracked.
		redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.script})
	})

	t.Run("SetExecMatch replaces the list", func(t *testing.T) {
		if err := e.ic.SetExecMatch([]string{a.pathOnly}); err != nil {
			t.Fatal(err)
		}
		if got, _ := e.ic.ExecMatch(); !slices.Equal(got, []string{a.pathOnly}) {
			t.Fatalf("ExecMatch = %q", got)
		}
		direct(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.app})
		redirected(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.pathOnly})
	})

	t.Run("other modes ignore the list", func(t *testing.T) {
		e.ic.Close()
		e.opts.Mode = ModeCgroup
		e.opts.Executables = a.match()
		e.open(t)
		direct(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.app})
	})
}

// TestExecMatchFailClosed: tree mode with the daemon down (handles closed,
// pins kept, nothing listening). An app started meanwhile is tracked by the
// kernel alone, so its connects are refused, never direct; after a restart
// they reach the proxy.
func TestExecMatchFailClosed(t *testing.T) {
	a := newExecApps(t)
	e := newEnvWith(t, ModeTree, func(o *Options) { o.Executables = a.match() })
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	if err := e.ic.Close(); err != nil {
		t.Fatal(err)
	}
	e.proxy.close()

	accepts := r.accepts.Load()
	for _, exe := range []string{a.app, a.pathOnly} {
		res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: exe})
		if res.Err != "ECONNREFUSED" {
			t.Fatalf("%s started with the daemon down: %+v, want ECONNREFUSED", filepath.Base(exe), res)
		}
		res = dial(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: exe, Depth: 1, ChildExe: a.self})
		if res.Err != "ECONNREFUSED" {
			t.Fatalf("child of %s started with the daemon down: %+v, want ECONNREFUSED", filepath.Base(exe), res)
		}
	}
	if r.accepts.Load() != accepts {
		t.Fatal("a connection went around the stopped proxy")
	}
	// Unselected processes are not affected.
	if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target, Exe: a.self}); res.Line != "remote" {
		t.Fatalf("non-matching process with the daemon down: %+v", res)
	}

	// An app started while the daemon was down and still running when it
	// comes back is intercepted without any user-space help.
	h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, WaitAt: 0, Exe: a.app})
	e.proxy.relisten(t)
	e.open(t)
	h.release(t)
	if res := h.result(t); res.Line != "proxy" {
		t.Fatalf("app started while down, after restart: %+v", res)
	}
	if got := e.proxy.next(t); got.err != nil {
		t.Fatal(got.err)
	}
}

func TestExecMatchValidates(t *testing.T) {
	long := "/opt/" + strings.Repeat("x", MaxExecutableLen)
	_, err := Open(context.Background(), Options{
		PinDir: "/sys/fs/bpf/x", CgroupPath: "/sys/fs/cgroup", ProxyPort: 1, Mode: ModeTree,
		Executables: []string{"cursor", long},
	})
	if err == nil || !strings.Contains(err.Error(), long) {
		t.Fatalf("Open with a too long executable: %v", err)
	}
	if _, err := execNameKey(strings.Repeat("y", MaxExecutableLen)); err != nil {
		t.Errorf("longest name rejected: %v", err)
	}
	if _, err := execNameKey("a\x00b"); err == nil {
		t.Error("name with NUL accepted")
	}
	keys, err := execMatchKeys([]string{" cursor ", "", "/opt//cursor/./cursor", "cursor"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range keys {
		names = append(names, execNameString(k))
	}
	slices.Sort(names)
	if want := []string{"/opt/cursor/cursor", "cursor"}; !slices.Equal(names, want) {
		t.Errorf("normalized %q, want %q", names, want)
	}
	// The Go key matches the kernel's.
	spec, err := loadAirlock()
	if err != nil {
		t.Fatal(err)
	}
	if ks := spec.Maps["airlock_match"].KeySize; int(ks) != MaxExecutableLen+2 {
		t.Errorf("airlock_match key size %d, Go expects %d", ks, MaxExecutableLen+2)
	}
}
