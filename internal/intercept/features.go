package intercept

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
)

// Features is what the running kernel and system offer for interception.
type Features struct {
	Kernel        string // uname release
	KernelVersion [3]int
	BTF           bool   // /sys/kernel/btf/vmlinux (CO-RE and tp_btf)
	Cgroup2Mount  string // "" when cgroup v2 is not mounted
	BPFFS         bool   // the kernel has the bpf filesystem
	BPFFSMounted  bool   // mounted at /sys/fs/bpf (Open mounts it otherwise)

	missing []string
}

// Missing returns one sentence per missing requirement; empty means
// interception can work here.
func (f Features) Missing() []string { return append([]string(nil), f.missing...) }

func kernelAtLeast(v [3]int, major, minor int) bool {
	return v[0] > major || (v[0] == major && v[1] >= minor)
}

// ProbeFeatures checks the kernel and system for everything Open needs, so
// the daemon can refuse to start with a clear reason instead of failing
// halfway through attaching. Probes load tiny programs: it needs the same
// privileges as Open.
func ProbeFeatures() (Features, error) {
	var f Features
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return f, fmt.Errorf("probe features: uname: %w", err)
	}
	f.Kernel = unix.ByteSliceToString(uts.Release[:])
	f.KernelVersion = parseKernelVersion(f.Kernel)
	miss := func(format string, args ...any) { f.missing = append(f.missing, fmt.Sprintf(format, args...)) }

	if !kernelAtLeast(f.KernelVersion, 5, 15) {
		miss("kernel %s is older than 5.15, the oldest Airlock supports", f.Kernel)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		f.BTF = true
	} else {
		miss("kernel has no BTF (/sys/kernel/btf/vmlinux; needs CONFIG_DEBUG_INFO_BTF=y) for the process-tracking tracepoints")
	}
	if mnt, err := cgroups.Mount(); err == nil {
		f.Cgroup2Mount = mnt
	} else {
		miss("no cgroup v2 hierarchy is mounted (%v)", err)
	}
	if b, err := os.ReadFile("/proc/filesystems"); err == nil && strings.Contains(string(b), "\tbpf\n") {
		f.BPFFS = true
	} else {
		miss("kernel has no bpf filesystem to pin programs in (CONFIG_BPF_SYSCALL)")
	}
	f.BPFFSMounted = isBPFFS(bpffsRoot)

	probeErr := func(err error) bool {
		// Only "not supported" is conclusive; permission problems are
		// reported as such rather than as a missing feature.
		if err == nil {
			return false
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return true
		}
		miss("cannot probe BPF features (%v); run as root or with CAP_BPF and CAP_NET_ADMIN", err)
		return false
	}

	progTypes := []struct {
		pt   ebpf.ProgramType
		what string
	}{
		{ebpf.CGroupSockAddr, "cgroup/connect4 and connect6 programs (needs 4.17+)"},
		{ebpf.SockOps, "sockops programs (needs 4.13+)"},
	}
	for _, p := range progTypes {
		if probeErr(features.HaveProgramType(p.pt)) {
			miss("kernel lacks %s", p.what)
		}
	}
	// features.HaveProgramType(Tracing) probes fentry, which some kernels
	// lack (no direct ftrace calls) while tp_btf works: probe what we use.
	if err := probeTPBTF(); err != nil {
		miss("kernel cannot load tp_btf/sched_process_fork programs, needed for process-tree tracking (needs 5.5+ with BTF): %v", err)
	}
	mapTypes := []struct {
		mt   ebpf.MapType
		what string
	}{
		{ebpf.LPMTrie, "LPM trie maps (needs 4.11+)"},
		{ebpf.LRUHash, "LRU hash maps (needs 4.10+)"},
		{ebpf.RingBuf, "ring buffer maps (needs 5.8+)"},
		{ebpf.PerCPUArray, "per-CPU array maps"},
	}
	for _, m := range mapTypes {
		if probeErr(features.HaveMapType(m.mt)) {
			miss("kernel lacks %s", m.what)
		}
	}
	helpers := []struct {
		pt   ebpf.ProgramType
		fn   asm.BuiltinFunc
		what string
	}{
		{ebpf.CGroupSockAddr, asm.FnGetSocketCookie, "bpf_get_socket_cookie in cgroup/connect (needs 5.0+)"},
		{ebpf.CGroupSockAddr, asm.FnGetNetnsCookie, "bpf_get_netns_cookie in cgroup/connect (needs 5.7+)"},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentPidTgid, "bpf_get_current_pid_tgid in cgroup/connect (needs 5.7+)"},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentUidGid, "bpf_get_current_uid_gid in cgroup/connect (needs 5.7+)"},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentComm, "bpf_get_current_comm in cgroup/connect (needs 5.7+)"},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentCgroupId, "bpf_get_current_cgroup_id in cgroup/connect (needs 5.7+)"},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentAncestorCgroupId, "bpf_get_current_ancestor_cgroup_id in cgroup/connect (needs 5.7+)"},
		{ebpf.SockOps, asm.FnGetSocketCookie, "bpf_get_socket_cookie in sockops (needs 5.0+)"},
		{ebpf.SockOps, asm.FnSockOpsCbFlagsSet, "bpf_sock_ops_cb_flags_set in sockops (needs 4.16+)"},
	}
	for _, h := range helpers {
		if probeErr(features.HaveProgramHelper(h.pt, h.fn)) {
			miss("kernel lacks %s", h.what)
		}
	}
	// Attach types cannot be probed without attaching; the kernel version
	// is the reliable indicator for these.
	if !kernelAtLeast(f.KernelVersion, 5, 8) {
		miss("kernel lacks cgroup/getpeername4 and getpeername6 (needs 5.8+)")
	}
	if !kernelAtLeast(f.KernelVersion, 5, 7) {
		miss("kernel lacks bpf_link for cgroups, needed to pin attachments (needs 5.7+)")
	}
	return f, nil
}

func parseKernelVersion(release string) [3]int {
	var v [3]int
	end := strings.IndexFunc(release, func(r rune) bool { return r != '.' && (r < '0' || r > '9') })
	if end >= 0 {
		release = release[:end]
	}
	for k, part := range strings.SplitN(release, ".", 3) {
		n, err := strconv.Atoi(part)
		if err != nil {
			break
		}
		v[k] = n
	}
	return v
}

func probeTPBTF() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "sched_process_fork",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadImm(asm.R0, 0, asm.DWord),
			asm.Return(),
		},
	})
	if err != nil {
		return err
	}
	return prog.Close()
}
