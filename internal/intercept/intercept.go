// Package intercept loads, attaches and drives Airlock's eBPF programs: TCP
// connects of selected processes to registered targets are rewritten in the
// kernel to the local proxy, and the kernel remembers for the proxy where each
// connection was going and who made it.
//
// Everything is pinned under a versioned bpffs folder so that a restarted
// daemon takes the state over without a gap, and so that while no daemon runs
// redirected connects hit a closed port and are refused (fail closed).
package intercept

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
)

// LayoutVersion is the version of the pinned map layouts (bpf/airlock.c).
// It is part of DefaultPinDir: a daemon must never take over maps written
// with another layout.
const LayoutVersion = 2

// DefaultPinDir is where the daemon pins its maps and links.
const DefaultPinDir = "/sys/fs/bpf/airlock/v2"

const bpffsRoot = "/sys/fs/bpf"

// Mode selects which processes in the attach cgroup are intercepted.
type Mode uint32

// Values must match MODE_* in bpf/airlock.c.
const (
	// ModeAll intercepts every process in the attach cgroup.
	ModeAll Mode = 0
	// ModeTree intercepts tracked process trees (Track, SeedTree, WatchExec).
	ModeTree Mode = 1
	// ModeCgroup intercepts processes in selected cgroups or their descendants.
	ModeCgroup Mode = 2
	// ModeUser intercepts every process of the selected uids (SetUsers),
	// wherever it was started.
	ModeUser Mode = 3
)

func (m Mode) String() string {
	switch m {
	case ModeAll:
		return "all"
	case ModeTree:
		return "tree"
	case ModeCgroup:
		return "cgroup"
	case ModeUser:
		return "user"
	}
	return fmt.Sprintf("Mode(%d)", uint32(m))
}

// ParseMode parses "all", "tree", "cgroup" or "user".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "all":
		return ModeAll, nil
	case "tree":
		return ModeTree, nil
	case "cgroup":
		return ModeCgroup, nil
	case "user":
		return ModeUser, nil
	}
	return 0, fmt.Errorf("unknown interception mode %q (want all, tree, cgroup or user)", s)
}

// Options configure Open.
type Options struct {
	// PinDir is the versioned bpffs folder, e.g. DefaultPinDir. bpffs is
	// mounted at /sys/fs/bpf if PinDir is under it and nothing is mounted.
	PinDir string
	// CgroupPath is the absolute path of the v2 cgroup the programs attach
	// to; they see sockets of every process in it and below.
	CgroupPath string
	// ProxyPort is where the proxy listens, on 127.0.0.1 and [::1].
	ProxyPort uint16
	Mode      Mode
	// Mark is the SO_MARK of the daemon's own sockets, which are never
	// redirected; 0 disables the check (every socket has mark 0 by
	// default). There is no exemption by pid: a pid outlives nothing.
	Mark uint32
	// NetnsAddrs are where a selected process in another network namespace
	// (a container, a pod) reaches the proxy, at most one per family; the
	// proxy must listen there too. A family without one is refused there.
	NetnsAddrs []netip.Addr
	// Users are the uids intercepted in ModeUser (see SetUsers).
	Users []uint32
	// Executables are matched by the kernel at exec in ModeTree (base names,
	// or paths with a slash; see SetExecMatch). Open replaces the pinned list
	// with them, so the kernel keeps matching while no daemon runs. An entry
	// longer than MaxExecutableLen bytes is an error.
	Executables []string
	// ClientLegRedirect carries the client leg through a sockhash instead
	// of loopback TCP where the kernel can (bpf/sockmap.c); where it
	// cannot, Open logs it once and the leg stays on TCP.
	ClientLegRedirect bool
	Logger            *slog.Logger
}

// Interceptor is an open handle on the pinned state. Its methods are safe
// for concurrent use.
type Interceptor struct {
	opts     Options
	log      *slog.Logger
	cgroupID uint64
	linkDir  string

	mu     sync.Mutex
	objs   airlockObjects
	links  map[string]link.Link
	closed bool

	// leg is the client-leg redirect, nil while the leg is on TCP; legOff
	// says why it is.
	leg    atomic.Pointer[clientLeg]
	legOff string
}

// attachment describes one program and where it is attached. The pin file
// name is the stable identity used to find a previous daemon's link.
type attachment struct {
	name   string
	cgroup bool
	attach ebpf.AttachType
	prog   func(*airlockObjects) *ebpf.Program
}

var attachments = []attachment{
	// Fork tracking first: processes forked while the rest attaches are caught.
	{name: "sched_process_fork", attach: ebpf.AttachTraceRawTp, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockFork }},
	{name: "sched_process_exec", attach: ebpf.AttachTraceRawTp, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockExec }},
	{name: "sched_process_exit", attach: ebpf.AttachTraceRawTp, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockExit }},
	// sockops and getpeername before connect: a redirected socket must never
	// miss its record move or show 127.0.0.1 as its peer.
	{name: "sockops", cgroup: true, attach: ebpf.AttachCGroupSockOps, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockSockops }},
	{name: "getpeername4", cgroup: true, attach: ebpf.AttachCgroupInet4GetPeername, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockGetpeername4 }},
	{name: "getpeername6", cgroup: true, attach: ebpf.AttachCgroupInet6GetPeername, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockGetpeername6 }},
	{name: "connect4", cgroup: true, attach: ebpf.AttachCGroupInet4Connect, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockConnect4 }},
	{name: "connect6", cgroup: true, attach: ebpf.AttachCGroupInet6Connect, prog: func(o *airlockObjects) *ebpf.Program { return o.AirlockConnect6 }},
}

// Open loads the programs and attaches them to opts.CgroupPath, or takes over
// the state a previous daemon pinned at opts.PinDir: pinned maps are reused
// (targets, tracked processes and pending records survive), the config is
// rewritten, and pinned cgroup links are switched to the new programs
// atomically, so interception never stops.
func Open(ctx context.Context, opts Options) (*Interceptor, error) {
	if opts.PinDir == "" {
		return nil, errors.New("open interceptor: no pin dir")
	}
	if opts.CgroupPath == "" || !filepath.IsAbs(opts.CgroupPath) {
		return nil, fmt.Errorf("open interceptor: cgroup path %q is not absolute", opts.CgroupPath)
	}
	if opts.ProxyPort == 0 {
		return nil, errors.New("open interceptor: no proxy port")
	}
	if opts.Mode > ModeUser {
		return nil, fmt.Errorf("open interceptor: invalid mode %d", opts.Mode)
	}
	if _, _, err := netnsAddrs(opts.NetnsAddrs); err != nil {
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	if _, err := execMatchKeys(opts.Executables); err != nil {
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "intercept")
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	cgID, err := cgroups.ID(opts.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	linkDir := filepath.Join(opts.PinDir, "links")
	if err := os.MkdirAll(linkDir, 0o700); err != nil {
		return nil, fmt.Errorf("open interceptor: create pin dir: %w", err)
	}

	spec, err := loadAirlock()
	if err != nil {
		return nil, fmt.Errorf("open interceptor: parse embedded BPF object: %w", err)
	}
	i := &Interceptor{opts: opts, log: log, cgroupID: cgID, linkDir: linkDir, links: map[string]link.Link{}}
	err = spec.LoadAndAssign(&i.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: opts.PinDir},
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("open interceptor: maps pinned at %s have another layout (uninstall, or bump the layout version): %w", opts.PinDir, err)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("open interceptor: load BPF programs: %+v", verr)
		}
		return nil, fmt.Errorf("open interceptor: load BPF programs: %w", err)
	}

	// The exec match list and the users before the config (which may
	// switch to their mode) and before the programs are attached.
	if err := i.SetExecMatch(opts.Executables); err != nil {
		i.objs.Close()
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	if err := i.SetUsers(opts.Users); err != nil {
		i.objs.Close()
		return nil, fmt.Errorf("open interceptor: %w", err)
	}
	// What an older layout's daemon selected carries over before anything
	// of ours is attached, so the new programs see the same trees.
	older := olderPinDirs(opts.PinDir)
	for _, dir := range older {
		i.adopt(dir)
	}
	// Config before links: programs already attached by a previous daemon
	// must see the new proxy port as early as possible.
	if err := i.writeConfig(); err != nil {
		i.objs.Close()
		return nil, err
	}
	for _, a := range attachments {
		if err := i.attach(a); err != nil {
			i.closeFDs()
			return nil, err
		}
	}
	i.setupClientLeg()
	// Both layouts' programs are attached now: a connect redirected by the
	// old ones lands on our proxy without a record and is refused, never
	// sent direct. Adopt again (forks tracked by the old programs only,
	// meanwhile), then detach and unpin the old layout.
	for _, dir := range older {
		i.adopt(dir)
		if err := Uninstall(dir); err != nil {
			log.Warn("remove an older layout's pins", "pin_dir", dir, "err", err)
		} else {
			log.Info("took over from an older layout", "pin_dir", dir)
		}
	}
	log.Info("interception attached", "cgroup", opts.CgroupPath, "cgroup_id", cgID,
		"pin_dir", opts.PinDir, "proxy_port", opts.ProxyPort, "mode", opts.Mode.String(), "executables", normalizeExecutables(opts.Executables))
	return i, nil
}

// setupClientLeg turns the client-leg redirect on, or explains why not.
func (i *Interceptor) setupClientLeg() {
	if !i.opts.ClientLegRedirect {
		i.legOff = "disabled"
		i.dropClientLeg()
		return
	}
	leg, err := i.openClientLeg()
	if err != nil {
		i.legOff = "unavailable: " + err.Error()
		i.dropClientLeg()
		i.log.Warn("client leg stays on loopback TCP: this kernel cannot redirect it through a sockhash", "err", err)
		return
	}
	i.leg.Store(leg)
	i.log.Info("client leg redirected through a sockhash")
}

func (i *Interceptor) writeConfig() error {
	cookie, err := netnsCookie()
	if err != nil {
		// Without the cookie the namespace check is off; the other loop
		// guards (tgid, mark) still hold.
		i.log.Warn("network namespace check disabled", "err", err)
	}
	a4, a6, err := netnsAddrs(i.opts.NetnsAddrs)
	if err != nil {
		return fmt.Errorf("write interception config: %w", err)
	}
	cfg := airlockConfig{
		ProxyPort:     uint32(i.opts.ProxyPort),
		Mode:          uint32(i.opts.Mode),
		Mark:          i.opts.Mark,
		NetnsAddr4:    a4,
		NetnsAddr6:    a6,
		NetnsCookie:   cookie,
		LayoutVersion: LayoutVersion,
	}
	if err := i.objs.AirlockConfig.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("write interception config: %w", err)
	}
	return nil
}

// attach makes sure a's program is attached and pinned, replacing a link a
// previous daemon left behind without a moment in which neither is attached.
func (i *Interceptor) attach(a attachment) error {
	return i.attachProgram(a, a.prog(&i.objs))
}

func (i *Interceptor) attachProgram(a attachment, prog *ebpf.Program) error {
	pin := filepath.Join(i.linkDir, a.name)

	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrNotExist):
		old = nil
	default:
		return fmt.Errorf("load pinned link %s: %w", pin, err)
	}

	if old != nil && a.cgroup {
		// Same cgroup: swap the program in place (atomic in the kernel).
		if info, err := old.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == i.cgroupID {
			if err := old.Update(prog); err == nil {
				i.links[a.name] = old
				i.log.Debug("took over link", "name", a.name, "link_id", info.ID)
				return nil
			} else {
				i.log.Warn("cannot update pinned link, replacing it", "name", a.name, "err", err)
			}
		}
	}

	var l link.Link
	if a.cgroup {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: i.opts.CgroupPath, Attach: a.attach, Program: prog})
		if err != nil {
			closeLink(old)
			return fmt.Errorf("attach %s to %s: %w", a.name, i.opts.CgroupPath, err)
		}
	} else {
		l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: a.attach})
		if err != nil {
			closeLink(old)
			return fmt.Errorf("attach %s: %w", a.name, err)
		}
	}
	if old != nil {
		if err := old.Unpin(); err != nil {
			l.Close()
			old.Close()
			return fmt.Errorf("unpin replaced link %s: %w", pin, err)
		}
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		closeLink(old)
		return fmt.Errorf("pin %s link at %s (needs bpf_link support, Linux 5.7+): %w", a.name, pin, err)
	}
	// Our fd was the last reference to the unpinned old link: closing it detaches.
	closeLink(old)
	i.links[a.name] = l
	return nil
}

func closeLink(l link.Link) {
	if l != nil {
		l.Close()
	}
}

// Close releases this process's handles. Pins stay: programs keep
// redirecting into the (now closed) proxy port, so connects are refused
// instead of going around the proxy.
func (i *Interceptor) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		return nil
	}
	i.closed = true
	return i.closeFDs()
}

func (i *Interceptor) closeFDs() error {
	var errs []error
	for name, l := range i.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link %s: %w", name, err))
		}
	}
	i.links = map[string]link.Link{}
	if leg := i.leg.Swap(nil); leg != nil {
		if err := leg.close(); err != nil {
			errs = append(errs, fmt.Errorf("close sockmap objects: %w", err))
		}
	}
	if err := i.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close BPF objects: %w", err))
	}
	return errors.Join(errs...)
}

// Uninstall detaches every program pinned under pinDir and removes the pins
// and the folder. It works without an open Interceptor (e.g. from the CLI
// after the daemon is gone).
func Uninstall(pinDir string) error {
	var errs []error
	linkDir := filepath.Join(pinDir, "links")
	entries, err := os.ReadDir(linkDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: list links: %w", err))
	}
	for _, e := range entries {
		p := filepath.Join(linkDir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			// Not a link (or unreadable): removing the pin is all we can do.
			if rerr := os.Remove(p); rerr != nil {
				errs = append(errs, fmt.Errorf("uninstall: remove %s: %w", p, rerr))
			}
			continue
		}
		// Detach explicitly: another process (a still-running daemon) may
		// hold the link open, and then dropping the pin would not detach it.
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.EOPNOTSUPP) {
			errs = append(errs, fmt.Errorf("uninstall: detach %s: %w", p, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("uninstall: unpin %s: %w", p, err))
		}
		l.Close()
	}
	if err := os.Remove(linkDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: %w", err))
	}
	entries, err = os.ReadDir(pinDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: list maps: %w", err))
	}
	for _, e := range entries {
		// Unlinking a map pin is unpinning it.
		if err := os.Remove(filepath.Join(pinDir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("uninstall: %w", err))
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: %w", err))
	}
	// The unversioned parent goes too when nothing else lives in it.
	if parent := filepath.Dir(filepath.Clean(pinDir)); parent != bpffsRoot && parent != "/" {
		_ = os.Remove(parent)
	}
	return errors.Join(errs...)
}

// ensureBPFFS makes sure dir can be created on a bpf filesystem, mounting
// one at /sys/fs/bpf when dir lives there and nothing is mounted (the case
// on systems that do not mount it at boot).
func ensureBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if isBPFFS(existing) {
		return nil
	}
	if existing != bpffsRoot || !strings.HasPrefix(dir, bpffsRoot+"/") {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount one: mount -t bpf bpf %s)", dir, existing)
	}
	// Serialise with other Airlock processes: two mounts racing would stack,
	// hiding the first one's pins.
	lock, err := os.OpenFile("/run/airlock-bpffs.lock", os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		defer lock.Close()
		_ = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
	}
	if isBPFFS(bpffsRoot) {
		return nil
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

func isBPFFS(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.BPF_FS_MAGIC
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), missing from x/sys/unix on
// amd64/arm64 where it has the generic value.
const soNetnsCookie = 71

// netnsCookie returns the cookie of the caller's network namespace, the
// value bpf_get_netns_cookie returns for sockets created in it.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return cookie, nil
}

// netnsAddrs encodes the proxy's addresses for other network namespaces as
// the config expects them: IPv4 in network order, IPv6 as 16 bytes.
func netnsAddrs(addrs []netip.Addr) (uint32, [16]uint8, error) {
	var a4 uint32
	var a6 [16]uint8
	var have4, have6 bool
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case !a.IsValid():
			return 0, a6, errors.New("invalid network namespace address")
		case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast():
			return 0, a6, fmt.Errorf("network namespace address %s must be an address other namespaces can reach (not loopback, unspecified or multicast)", a)
		case a.Is4():
			if have4 {
				return 0, a6, fmt.Errorf("more than one IPv4 network namespace address (%s)", a)
			}
			b := a.As4()
			a4, have4 = binary.NativeEndian.Uint32(b[:]), true
		default:
			if have6 {
				return 0, a6, fmt.Errorf("more than one IPv6 network namespace address (%s)", a)
			}
			a6, have6 = a.As16(), true
		}
	}
	return a4, a6, nil
}

// olderPinDirs lists the pin folders of older layouts beside pinDir
// (".../airlock/v1" next to ".../airlock/v2"), oldest first.
func olderPinDirs(pinDir string) []string {
	parent, base := filepath.Split(filepath.Clean(pinDir))
	cur, err := strconv.Atoi(strings.TrimPrefix(base, "v"))
	if !strings.HasPrefix(base, "v") || err != nil {
		return nil
	}
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var vs []int
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "v"))
		if e.IsDir() && strings.HasPrefix(e.Name(), "v") && err == nil && n < cur {
			vs = append(vs, n)
		}
	}
	sort.Ints(vs)
	out := make([]string, len(vs))
	for k, n := range vs {
		out[k] = filepath.Join(parent, "v"+strconv.Itoa(n))
	}
	return out
}

// adopt copies what an older layout's daemon selected, tracked trees and
// selected cgroups, whose map layouts have not changed, into ours. Best
// effort: a map that is missing or unlike ours is skipped (the seed from
// /proc still finds the trees).
func (i *Interceptor) adopt(dir string) {
	copySet := func(name string, dst *ebpf.Map, keySize uint32) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return
		}
		defer m.Close()
		if m.KeySize() != keySize || m.ValueSize() != 4 {
			i.log.Warn("older layout's map differs, not adopted", "map", name, "pin_dir", dir)
			return
		}
		key := make([]byte, keySize)
		var v uint32
		n := 0
		it := m.Iterate()
		for it.Next(&key, &v) {
			if err := dst.Put(key, v); err != nil {
				i.log.Warn("adopt older layout's entry", "map", name, "err", err)
				return
			}
			n++
		}
		i.log.Debug("adopted older layout's entries", "map", name, "count", n)
	}
	copySet("airlock_tracked", i.objs.AirlockTracked, 4)
	copySet("airlock_cgroups", i.objs.AirlockCgroups, 8)
}
