package intercept

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// clientLeg is the sockhash that carries the client leg past the loopback
// TCP stack (bpf/sockmap.c). Map and join link are pinned with the core's
// state (see the note on pinning in bpf/sockmap.c).
type clientLeg struct {
	// mu orders joins and status reads (read lock) before the close (write
	// lock): the front door may still be accepting while the daemon stops.
	mu     sync.RWMutex
	closed bool
	objs   sockmapObjects
	// joinFailed counts proxy sockets that could not join (they use TCP).
	joinFailed atomic.Uint64
}

// ClientLegState says how the client leg is carried, for `airlock status`.
type ClientLegState struct {
	// Mode is "sockhash" (redirected in the kernel), "tcp (disabled)" or
	// "tcp (unavailable: ...)".
	Mode string
	// Sockets joined now: agents' and proxy's ends.
	Sockets, ProxySockets int
	// Counters: joined, join_failed (client sockets, by sockops),
	// proxy_join_failed, redirected and passed (sends).
	Counters map[string]uint64
}

// sockmapStatNames follow enum sockmap_stat in bpf/sockmap.c.
var sockmapStatNames = []string{"joined", "join_failed", "redirected", "passed"}

// openClientLeg loads and attaches the redirect. An error leaves nothing
// loaded: the caller falls back to TCP.
func (i *Interceptor) openClientLeg() (*clientLeg, error) {
	spec, err := loadSockmap()
	if err != nil {
		return nil, fmt.Errorf("parse embedded sockmap object: %w", err)
	}
	leg := &clientLeg{}
	opts := &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: i.opts.PinDir},
		// Which sockets were redirected to the proxy is the core's to say.
		MapReplacements: map[string]*ebpf.Map{"airlock_peers": i.objs.AirlockPeers},
	}
	err = spec.LoadAndAssign(&leg.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Another build's maps: they hold only live sockets, which keep
		// their redirect until they close, so start new ones beside them.
		i.log.Info("replacing another build's sockhash pins", "err", err)
		i.unpinClientLegMaps()
		err = spec.LoadAndAssign(&leg.objs, opts)
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load sockmap programs: %+v", verr)
		}
		return nil, fmt.Errorf("load sockmap programs: %w", err)
	}
	// The sk_msg program first: a socket joined before it is attached would
	// get no verdict program and never redirect. On a pinned map this
	// replaces the previous daemon's program (sockets joined earlier keep
	// theirs, which does the same).
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  leg.objs.AirlockSocks.FD(),
		Program: leg.objs.AirlockRedirect,
		Attach:  ebpf.AttachSkMsgVerdict,
	}); err != nil {
		leg.objs.Close()
		return nil, fmt.Errorf("attach sk_msg program to the sockhash: %w", err)
	}
	if err := i.attachProgram(joinAttachment, leg.objs.AirlockSockopsJoin); err != nil {
		leg.objs.Close()
		return nil, err
	}
	return leg, nil
}

// close releases the leg's handles once no join or status read uses them.
// The pinned maps and program stay (see bpf/sockmap.c).
func (l *clientLeg) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return l.objs.Close()
}

// joinAttachment is the sockops program that joins the agents' sockets; a
// second sockops program in the attach cgroup, beside the core's.
var joinAttachment = attachment{name: "sockops_join", cgroup: true, attach: ebpf.AttachCGroupSockOps}

// dropClientLeg detaches and unpins a join program and sockhash a previous
// daemon left (the redirect is now off or unavailable here). Connections it
// joined keep working: their sockets keep the redirect until they close.
func (i *Interceptor) dropClientLeg() {
	pin := filepath.Join(i.linkDir, joinAttachment.name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		_ = l.Detach()
		_ = l.Unpin()
		l.Close()
	}
	i.unpinClientLegMaps()
}

func (i *Interceptor) unpinClientLegMaps() {
	for _, name := range []string{"airlock_socks", "airlock_proxy_socks", "airlock_sockmap_stats"} {
		_ = os.Remove(filepath.Join(i.opts.PinDir, name))
	}
}

// sockKey is one end of a connection as that end sees it (struct sock_key).
func sockKey(local, remote netip.AddrPort) sockmapSockKey {
	return sockmapSockKey{
		Local: local.Addr().As16(), Remote: remote.Addr().As16(),
		LocalPort: uint32(local.Port()), RemotePort: uint32(remote.Port()),
	}
}

// JoinClientLeg puts the proxy's end of an accepted connection into the
// sockhash, so that the client's sends reach it without the loopback TCP
// stack (its own sends stay on TCP). Call it right after accept, before
// anything is read or written (see the ordering note in bpf/sockmap.c), and
// only for handlers that read with read(2): splice reads the TCP queue
// alone and would miss redirected bytes. It does
// nothing when the redirect is off or the connection is not on loopback; a
// failure leaves the connection on TCP, which is always correct.
func (i *Interceptor) JoinClientLeg(conn net.Conn) {
	leg := i.leg.Load()
	if leg == nil {
		return
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	local, remote := addrPortOf(tc.LocalAddr()), addrPortOf(tc.RemoteAddr())
	// The kernel joins only clients of the loopback proxy: elsewhere
	// (another network namespace) there is no peer to find.
	if !local.Addr().Unmap().IsLoopback() {
		return
	}
	key := sockKey(local, remote)
	leg.mu.RLock()
	defer leg.mu.RUnlock()
	if leg.closed {
		return
	}
	if err := updateSock(leg.objs.AirlockProxySocks, key, tc); err != nil {
		if leg.joinFailed.Add(1) == 1 {
			i.log.Warn("a proxy socket could not join the sockhash; its connection uses loopback TCP (logged once)", "client", remote.String(), "err", err)
		}
	}
}

func updateSock(m *ebpf.Map, key sockmapSockKey, c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		uerr = m.Update(&key, uint64(fd), ebpf.UpdateNoExist)
	}); err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	if uerr != nil {
		return fmt.Errorf("add socket to sockhash: %w", uerr)
	}
	return nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// ClientLeg reports how the client leg is carried.
func (i *Interceptor) ClientLeg() ClientLegState {
	leg := i.leg.Load()
	if leg == nil {
		return ClientLegState{Mode: "tcp (" + i.legOff + ")"}
	}
	leg.mu.RLock()
	defer leg.mu.RUnlock()
	if leg.closed {
		return ClientLegState{Mode: "tcp (closed)"}
	}
	st := ClientLegState{Mode: "sockhash", Counters: map[string]uint64{"proxy_join_failed": leg.joinFailed.Load()}}
	st.Sockets, _ = countKeys(leg.objs.AirlockSocks)
	st.ProxySockets, _ = countKeys(leg.objs.AirlockProxySocks)
	for idx, name := range sockmapStatNames {
		if sum, err := sumPerCPU(leg.objs.AirlockSockmapStats, uint32(idx)); err == nil {
			st.Counters[name] = sum
		}
	}
	return st
}
