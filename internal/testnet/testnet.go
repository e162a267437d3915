// Package testnet builds throwaway "remote" hosts for privileged tests: a
// network namespace joined to the test's namespace by a veth pair, so traffic
// to it is real TCP that never leaves the machine.
package testnet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RequireRoot skips t when it cannot run privileged tests, except under
// CI=true, where a skip would hide a broken build: there it fails.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test: CI=true but not running as root")
	}
	t.Skip("privileged test: needs root (eBPF, cgroups, network namespaces); run `sudo make test` or `sudo go test ./...`")
}

// Host is a remote host in its own network namespace.
type Host struct {
	NS      string     // namespace name, for `ip netns exec`
	HostIf  string     // veth end in the test's namespace
	V4      netip.Addr // the remote host's IPv4 address
	V6      netip.Addr // the remote host's IPv6 address
	LocalV4 netip.Addr // our end's IPv4 address
	LocalV6 netip.Addr // our end's IPv6 address
}

var seq atomic.Uint32

// NewHost creates a namespace with a veth pair and removes it when t ends.
// Addresses are drawn at random from 10.64-250.x.0/30 and fd00:a1::/32 so that
// concurrent test binaries do not clash.
func NewHost(t testing.TB) *Host {
	t.Helper()
	RequireRoot(t)
	n := seq.Add(1)
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, n)
	h := &Host{NS: "airlk" + id, HostIf: "alh" + id}
	peer := "alp" + id
	a, b := 64+rand.IntN(186), rand.IntN(63)*4
	h.LocalV4 = netip.AddrFrom4([4]byte{10, byte(a), byte(b), 1})
	h.V4 = netip.AddrFrom4([4]byte{10, byte(a), byte(b), 2})
	h.LocalV6 = netip.MustParseAddr(fmt.Sprintf("fd00:a1:%x:%x::1", a, b))
	h.V6 = netip.MustParseAddr(fmt.Sprintf("fd00:a1:%x:%x::2", a, b))

	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", h.NS).Run()
		_ = exec.Command("ip", "link", "del", h.HostIf).Run()
	})
	steps := [][]string{
		{"netns", "add", h.NS},
		{"link", "add", h.HostIf, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", h.NS},
		{"addr", "add", h.LocalV4.String() + "/30", "dev", h.HostIf},
		{"addr", "add", h.LocalV6.String() + "/64", "dev", h.HostIf, "nodad"},
		{"link", "set", h.HostIf, "up"},
		{"-n", h.NS, "addr", "add", h.V4.String() + "/30", "dev", peer},
		{"-n", h.NS, "addr", "add", h.V6.String() + "/64", "dev", peer, "nodad"},
		{"-n", h.NS, "link", "set", peer, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			t.Fatalf("testnet: ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return h
}

// Command returns cmd prepared to run inside the host's namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Serve starts a long-running command inside the namespace and stops it when
// t ends (SIGTERM, then SIGKILL after a grace period).
func (h *Host) Serve(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := h.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("testnet: start %s in %s: %v", name, h.NS, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return cmd
}
