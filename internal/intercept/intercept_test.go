package intercept

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/cgroups"
)

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeAll, ModeTree, ModeCgroup, ModeUser} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMode("some"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
}

func TestTargetKeyRoundTrip(t *testing.T) {
	for _, tg := range []Target{
		{netip.MustParsePrefix("10.1.2.3/32"), 5432},
		{netip.MustParsePrefix("10.1.0.0/16"), 0},
		{netip.MustParsePrefix("fd00::/64"), 443},
		{netip.MustParsePrefix("2001:db8::1/128"), 5432},
	} {
		k, err := targetKey(tg)
		if err != nil {
			t.Fatal(err)
		}
		if got := keyTarget(k); got != tg {
			t.Errorf("round trip %v = %v", tg, got)
		}
	}
	if _, err := targetKey(Target{}); err == nil {
		t.Error("invalid prefix accepted")
	}
}

func TestProbeFeatures(t *testing.T) {
	requireRoot(t)
	f, err := ProbeFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if m := f.Missing(); len(m) > 0 {
		t.Fatalf("features missing on the test machine: %q", m)
	}
	t.Logf("features: %+v", f)
	if f.Cgroup2Mount == "" || !f.BTF || f.KernelVersion[0] == 0 {
		t.Errorf("incomplete features: %+v", f)
	}
}

func TestRedirect(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	mapped := netip.AddrFrom16(r.v4.As16())
	if err := e.ic.SetTargets([]Target{
		e.target(r.v4, r.ports[0]),
		e.target(r.v6, r.ports[0]),
	}); err != nil {
		t.Fatal(err)
	}
	helperExe, _ := os.Executable()
	wantComm := filepath.Base(helperExe)
	if len(wantComm) > 15 {
		wantComm = wantComm[:15]
	}

	tests := []struct {
		name     string
		addr     netip.AddrPort
		family   int
		proto    string
		redirect bool
	}{
		{"v4", netip.AddrPortFrom(r.v4, r.ports[0]), 4, "", true},
		{"v6", netip.AddrPortFrom(r.v6, r.ports[0]), 6, "", true},
		{"v4-mapped on AF_INET6", netip.AddrPortFrom(mapped, r.ports[0]), 6, "", true},
		{"v4 other port", netip.AddrPortFrom(r.v4, r.ports[1]), 4, "", false},
		{"v6 other port", netip.AddrPortFrom(r.v6, r.ports[1]), 6, "", false},
		{"v4-mapped other port", netip.AddrPortFrom(mapped, r.ports[1]), 6, "", false},
		{"v4 non-target address", netip.AddrPortFrom(r.hostV4, r.ports[0]), 4, "", false},
		{"udp to target", netip.AddrPortFrom(r.v4, r.ports[0]), 4, "udp", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := r.accepts.Load()
			res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: tc.addr, Family: tc.family, Proto: tc.proto})
			if tc.proto == "udp" {
				if res.Err != "" || res.Peer != tc.addr.String() {
					t.Fatalf("udp connect changed: %+v", res)
				}
				return
			}
			if !tc.redirect {
				if tc.addr.Addr() == r.hostV4 {
					// Our own veth address: nothing listens, so refused
					// directly by the host, never reaching the proxy.
					if res.Err != "ECONNREFUSED" {
						t.Fatalf("dial to non-target host address: %+v", res)
					}
					return
				}
				if res.Err != "" || res.Line != "remote" {
					t.Fatalf("want direct connection to remote, got %+v", res)
				}
				if r.accepts.Load() == before {
					t.Fatal("remote saw no connection")
				}
				return
			}
			if res.Err != "" || res.Line != "proxy" {
				t.Fatalf("want redirect to proxy, got %+v", res)
			}
			if res.Peer != tc.addr.String() {
				t.Errorf("getpeername = %s, want original %s", res.Peer, tc.addr)
			}
			a := e.proxy.next(t)
			if a.err != nil {
				t.Fatalf("lookup %v: %v", a.client, a.err)
			}
			want := netip.AddrPortFrom(tc.addr.Addr().Unmap(), tc.addr.Port())
			if a.rec.Orig != want {
				t.Errorf("record orig = %v, want %v", a.rec.Orig, want)
			}
			if int(a.rec.TGID) != res.PID || a.rec.PID == 0 {
				t.Errorf("record pid/tgid = %d/%d, want tgid %d", a.rec.PID, a.rec.TGID, res.PID)
			}
			if int(a.rec.UID) != res.UID || a.rec.GID != uint32(os.Getgid()) {
				t.Errorf("record uid/gid = %d/%d", a.rec.UID, a.rec.GID)
			}
			if a.rec.Comm != wantComm {
				t.Errorf("record comm = %q, want %q", a.rec.Comm, wantComm)
			}
			cgID, _ := cgroups.ID(e.cgroup)
			if a.rec.CgroupID != cgID {
				t.Errorf("record cgroup = %d, want %d", a.rec.CgroupID, cgID)
			}
			if d := time.Since(a.rec.At); d < 0 || d > 10*time.Second {
				t.Errorf("record time %v is %v from now", a.rec.At, d)
			}
			if local, err := netip.ParseAddrPort(res.Local); err != nil ||
				netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) != a.client {
				t.Errorf("proxy saw client %v, helper's local address %s", a.client, res.Local)
			}
			if _, err := e.ic.Lookup(a.client); !errors.Is(err, ErrNoRecord) {
				t.Errorf("second lookup: %v, want ErrNoRecord", err)
			}
		})
	}

	st := e.ic.Status()
	if len(st.Programs) != len(attachments) || len(st.Errors) > 0 {
		t.Errorf("status: %+v", st)
	}
	for _, p := range st.Programs {
		if !p.Pinned || p.LinkID == 0 {
			t.Errorf("program status %+v", p)
		}
	}
	if st.Counters["redirected"] < 3 || st.MapEntries["targets"] != 2 {
		t.Errorf("counters %v entries %v", st.Counters, st.MapEntries)
	}
}

func TestCIDRTargetAndSetTargets(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	// Any port of the /30 the remote sits in.
	cidr := Target{Prefix: netip.PrefixFrom(r.v4, 30).Masked()}
	if err := e.ic.SetTargets([]Target{cidr}); err != nil {
		t.Fatal(err)
	}
	res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(r.v4, r.ports[1])})
	if res.Line != "proxy" {
		t.Fatalf("CIDR target not redirected: %+v", res)
	}
	e.proxy.next(t)

	// Replacing the set removes stale entries.
	if err := e.ic.SetTargets([]Target{e.target(r.v6, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	ts, err := e.ic.Targets()
	if err != nil || len(ts) != 1 || ts[0] != e.target(r.v6, r.ports[0]) {
		t.Fatalf("targets after replace = %v, %v", ts, err)
	}
	res = dial(t, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(r.v4, r.ports[1])})
	if res.Line != "remote" {
		t.Fatalf("removed target still redirected: %+v", res)
	}
}

func TestOutsideCgroupNotRedirected(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	// A helper outside the attach cgroup (in the test's own cgroup).
	res := dial(t, helperSpec{Addr: netip.AddrPortFrom(r.v4, r.ports[0])})
	if res.Line != "remote" {
		t.Fatalf("process outside the attach cgroup was redirected: %+v", res)
	}
}

func TestLoopGuards(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}

	t.Run("marked socket", func(t *testing.T) {
		res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target, Mark: e.opts.Mark})
		if res.Line != "remote" {
			t.Fatalf("socket with the daemon's mark was redirected: %+v", res)
		}
		res = dial(t, helperSpec{Cgroup: e.cgroup, Addr: target, Mark: e.opts.Mark + 1})
		if res.Line != "proxy" {
			t.Fatalf("socket with another mark was not redirected: %+v", res)
		}
		e.proxy.next(t)
	})

	t.Run("loopback", func(t *testing.T) {
		// A loopback target entry must not cause a loop: loopback is never redirected.
		lo := netip.MustParseAddr("127.0.0.1")
		if err := e.ic.SetTargets([]Target{e.target(lo, e.proxy.port), e.target(r.v4, r.ports[0])}); err != nil {
			t.Fatal(err)
		}
		res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(lo, e.proxy.port)})
		if res.Line != "proxy" || res.Peer != netip.AddrPortFrom(lo, e.proxy.port).String() {
			t.Fatalf("loopback dial: %+v", res)
		}
		a := e.proxy.next(t)
		if !errors.Is(a.err, ErrNoRecord) {
			t.Fatalf("direct loopback connection has a record: %+v", a)
		}
	})
}

func TestTreeMode(t *testing.T) {
	e := newEnv(t, ModeTree)
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}

	t.Run("untracked", func(t *testing.T) {
		if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target}); res.Line != "remote" {
			t.Fatalf("untracked process redirected: %+v", res)
		}
	})

	t.Run("grandchild forked after tracking", func(t *testing.T) {
		h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, Depth: 2, WaitAt: 0})
		if err := e.ic.Track(uint32(h.ReadyP)); err != nil {
			t.Fatal(err)
		}
		h.release(t)
		res := h.result(t)
		if res.Line != "proxy" || res.PID == h.ReadyP {
			t.Fatalf("grandchild of tracked process: %+v (top %d)", res, h.ReadyP)
		}
		if a := e.proxy.next(t); a.err != nil || int(a.rec.TGID) != res.PID {
			t.Fatalf("record %+v", a)
		}
		// The exit tracepoint forgets processes that are gone.
		tracked, _ := e.ic.Tracked()
		if slices.Contains(tracked, uint32(res.PID)) || slices.Contains(tracked, uint32(h.ReadyP)) {
			t.Errorf("exited processes still tracked: %v", tracked)
		}
	})

	t.Run("Untrack", func(t *testing.T) {
		h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, WaitAt: 0})
		e.ic.Track(uint32(h.ReadyP))
		if err := e.ic.Untrack(uint32(h.ReadyP)); err != nil {
			t.Fatal(err)
		}
		h.release(t)
		if res := h.result(t); res.Line != "remote" {
			t.Fatalf("untracked process redirected: %+v", res)
		}
	})

	// A copy of the test binary with a unique name stands for "the app".
	self, _ := os.Executable()
	appName := "airlock-app-" + strings.ReplaceAll(filepath.Base(e.cgroup), "airlock-test-", "")
	app := filepath.Join(t.TempDir(), appName)
	copyFile(t, self, app)

	t.Run("SeedTree already running", func(t *testing.T) {
		// The app runs, and has a child (another executable) before the seed.
		h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, Depth: 1, WaitAt: 1, Exe: app, ChildExe: self})
		if err := e.ic.SeedTree(context.Background(), []string{"no-such-app", appName}); err != nil {
			t.Fatal(err)
		}
		tracked, _ := e.ic.Tracked()
		if !slices.Contains(tracked, uint32(h.ReadyP)) {
			t.Fatalf("descendant %d of the app not tracked: %v", h.ReadyP, tracked)
		}
		h.release(t)
		if res := h.result(t); res.Line != "proxy" {
			t.Fatalf("child of seeded app not redirected: %+v", res)
		}
		e.proxy.next(t)
	})

	t.Run("SeedTree by absolute path", func(t *testing.T) {
		h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, WaitAt: 0, Exe: app})
		if err := e.ic.SeedTree(context.Background(), []string{app}); err != nil {
			t.Fatal(err)
		}
		h.release(t)
		if res := h.result(t); res.Line != "proxy" {
			t.Fatalf("seeded app not redirected: %+v", res)
		}
		e.proxy.next(t)
	})

	t.Run("WatchExec", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.ic.WatchExec(ctx, []string{appName}, nil) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("WatchExec: %v", err)
			}
		}()
		h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, WaitAt: 0, Exe: app})
		deadline := time.Now().Add(5 * time.Second)
		for {
			tracked, _ := e.ic.Tracked()
			if slices.Contains(tracked, uint32(h.ReadyP)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("exec of %s (pid %d) not tracked: %v", appName, h.ReadyP, tracked)
			}
			time.Sleep(10 * time.Millisecond)
		}
		h.release(t)
		if res := h.result(t); res.Line != "proxy" {
			t.Fatalf("exec'd app not redirected: %+v", res)
		}
		e.proxy.next(t)
		// Other executables are not picked up.
		if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target}); res.Line != "remote" {
			t.Fatalf("non-matching exec redirected: %+v", res)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCgroupMode(t *testing.T) {
	e := newEnv(t, ModeCgroup)
	r := e.remote
	target := netip.AddrPortFrom(r.v6, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v6, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	selected := filepath.Join(e.cgroup, "selected")
	nested := filepath.Join(selected, "nested")
	other := filepath.Join(e.cgroup, "other")
	for _, p := range []string{selected, nested, other} {
		if err := cgroups.Create(p); err != nil {
			t.Fatal(err)
		}
	}
	id, err := cgroups.ID(selected)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ic.SelectCgroup(id); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cgroup string
		want   string
	}{
		{selected, "proxy"},
		{nested, "proxy"},
		{other, "remote"},
		{e.cgroup, "remote"}, // the attach cgroup itself is not selected
	} {
		t.Run(strings.TrimPrefix(tc.cgroup, e.cgroup+"/"), func(t *testing.T) {
			res := dial(t, helperSpec{Cgroup: tc.cgroup, Addr: target})
			if res.Line != tc.want {
				t.Fatalf("got %+v, want %s", res, tc.want)
			}
			if tc.want == "proxy" {
				if a := e.proxy.next(t); a.err != nil {
					t.Fatal(a.err)
				}
			}
		})
	}
	if err := e.ic.UnselectCgroup(id); err != nil {
		t.Fatal(err)
	}
	if res := dial(t, helperSpec{Cgroup: selected, Addr: target}); res.Line != "remote" {
		t.Fatalf("unselected cgroup still redirected: %+v", res)
	}
}

func TestTakeoverAndFailClosed(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	before := e.ic.Status()

	// Daemon goes away: handles closed, proxy gone.
	if err := e.ic.Close(); err != nil {
		t.Fatal(err)
	}
	e.proxy.close()
	accepts := r.accepts.Load()
	res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target})
	if res.Err != "ECONNREFUSED" {
		t.Fatalf("with the daemon down: %+v, want ECONNREFUSED", res)
	}
	if r.accepts.Load() != accepts {
		t.Fatal("connection went around the stopped proxy")
	}

	// Restarted daemon takes over: targets survive, links are kept.
	e.proxy.relisten(t)
	e.open(t)
	after := e.ic.Status()
	for k, p := range after.Programs {
		if p.LinkID != before.Programs[k].LinkID && before.Programs[k].Type != "Tracing" {
			t.Errorf("cgroup link %s replaced (%d -> %d), want updated in place", p.Name, before.Programs[k].LinkID, p.LinkID)
		}
	}
	res = dial(t, helperSpec{Cgroup: e.cgroup, Addr: target})
	if res.Line != "proxy" {
		t.Fatalf("after takeover: %+v", res)
	}
	if a := e.proxy.next(t); a.err != nil || a.rec.Orig != target {
		t.Fatalf("after takeover record %+v", a)
	}

	// Another proxy port in the new config is used at once.
	e.ic.Close()
	p2 := newProxy(t)
	e.opts.ProxyPort = p2.port
	e.proxy = p2
	e.open(t)
	if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target}); res.Line != "proxy" {
		t.Fatalf("after port change: %+v", res)
	}
	if a := p2.next(t); a.err != nil {
		t.Fatal(a.err)
	}
}

func TestUninstall(t *testing.T) {
	e := newEnv(t, ModeAll)
	r := e.remote
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	// Uninstall must work while a daemon still holds the links open.
	if err := Uninstall(e.pinDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir still there: %v", err)
	}
	if res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target}); res.Line != "remote" {
		t.Fatalf("still redirected after uninstall: %+v", res)
	}
	if err := Uninstall(e.pinDir); err != nil {
		t.Fatalf("second uninstall: %v", err)
	}
}

func TestOpenValidates(t *testing.T) {
	for _, o := range []Options{
		{CgroupPath: "/sys/fs/cgroup", ProxyPort: 1},
		{PinDir: "/sys/fs/bpf/x", CgroupPath: "relative", ProxyPort: 1},
		{PinDir: "/sys/fs/bpf/x", CgroupPath: "/sys/fs/cgroup"},
		{PinDir: "/sys/fs/bpf/x", CgroupPath: "/sys/fs/cgroup", ProxyPort: 1, Mode: 7},
	} {
		if _, err := Open(context.Background(), o); err == nil {
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
}

// BenchmarkConnectLatency compares connect+close to a local listener
// directly (helper outside the attach cgroup, no programs run) with the
// same listener reached through a redirect (target address in the map).
func BenchmarkConnectLatency(b *testing.B) {
	requireRoot(b)
	if testRemote == nil {
		b.Fatal("remote network namespace was not set up")
	}
	cg := newCgroup(b)
	p := newProxy(b)
	p.sink = true
	ic, err := Open(context.Background(), Options{
		PinDir: newPinDir(b), CgroupPath: cg, ProxyPort: p.port, Mode: ModeAll,
		Logger: discardLogger(),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ic.Close()
	p.ic.Store(ic)
	tgt := netip.AddrPortFrom(testRemote.v4, testRemote.ports[0])
	if err := ic.SetTargets([]Target{{Prefix: netip.PrefixFrom(tgt.Addr(), 32), Port: tgt.Port()}}); err != nil {
		b.Fatal(err)
	}
	direct := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.port)
	var nsDirect, nsIntercepted float64
	for _, c := range []struct {
		name   string
		cgroup string
		addr   netip.AddrPort
		out    *float64
	}{
		{"direct", "", direct, &nsDirect},
		// Programs run but pass the connect through (loopback).
		{"attached-passthrough", cg, direct, new(float64)},
		{"intercepted", cg, tgt, &nsIntercepted},
	} {
		b.Run(c.name, func(b *testing.B) {
			res := dial(b, helperSpec{Cgroup: c.cgroup, Addr: c.addr, Bench: b.N})
			if res.Err != "" {
				b.Fatalf("bench helper: %+v", res)
			}
			*c.out = float64(res.NsOp)
			b.ReportMetric(float64(res.NsOp), "ns/op")
			if c.out == &nsIntercepted && nsDirect > 0 {
				b.ReportMetric((nsIntercepted-nsDirect)/1000, "added-µs")
			}
		})
	}
}
