package intercept

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
)

// ProgramStatus describes one attached program.
type ProgramStatus struct {
	Name        string // e.g. "connect4"
	Type        string // program type, e.g. "CGroupSockAddr"
	AttachPoint string // attach type and target, e.g. "CGroupInet4Connect on /sys/fs/cgroup/x"
	LinkID      uint32
	ProgramID   uint32
	Pinned      bool
}

// Status is a snapshot for `airlock status` and metrics.
type Status struct {
	PinDir     string
	CgroupPath string
	CgroupID   uint64
	Mode       Mode
	ProxyPort  uint16
	Programs   []ProgramStatus
	// MapEntries counts entries per map (name without the airlock_ prefix).
	MapEntries map[string]int
	// Counters are the kernel-side counters (redirected, skip_*, ...).
	Counters map[string]uint64
	// TrackLost counts processes the kernel could not track because the
	// tracked map was full; TrackRebuilt how many of those a rebuild from
	// /proc has covered. While they differ, tree mode refuses target
	// connects of every untracked process (fail closed).
	TrackLost, TrackRebuilt uint64
	// Errors lists what could not be read; the rest is still valid.
	Errors []string
}

// statNames follow enum stat_idx in bpf/airlock.c.
var statNames = []string{
	"redirected", "skip_loopback", "skip_mark", "skip_selection",
	"record_moved", "record_missing", "exec_dropped", "tracked_fork",
	"redirected_netns", "refused_netns", "refused_overflow", "track_failed",
}

// Status reports what is attached and how full the maps are.
func (i *Interceptor) Status() Status {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := Status{
		PinDir:     i.opts.PinDir,
		CgroupPath: i.opts.CgroupPath,
		CgroupID:   i.cgroupID,
		Mode:       i.opts.Mode,
		ProxyPort:  i.opts.ProxyPort,
		MapEntries: map[string]int{},
		Counters:   map[string]uint64{},
	}
	if i.closed {
		s.Errors = append(s.Errors, "interceptor closed")
		return s
	}
	for _, a := range attachments {
		l, ok := i.links[a.name]
		if !ok {
			s.Errors = append(s.Errors, fmt.Sprintf("%s: not attached", a.name))
			continue
		}
		ps := ProgramStatus{Name: a.name, AttachPoint: a.attach.String()}
		if a.cgroup {
			ps.AttachPoint += " on " + i.opts.CgroupPath
		}
		if prog := a.prog(&i.objs); prog != nil {
			ps.Type = prog.Type().String()
		}
		if info, err := l.Info(); err == nil {
			ps.LinkID = uint32(info.ID)
			ps.ProgramID = uint32(info.Program)
		} else {
			s.Errors = append(s.Errors, fmt.Sprintf("%s: link info: %v", a.name, err))
		}
		_, err := os.Stat(filepath.Join(i.linkDir, a.name))
		ps.Pinned = err == nil
		s.Programs = append(s.Programs, ps)
	}

	maps := map[string]*ebpf.Map{
		"targets": i.objs.AirlockTargets, "tracked": i.objs.AirlockTracked,
		"cgroups": i.objs.AirlockCgroups, "pending": i.objs.AirlockPending,
		"records": i.objs.AirlockRecords, "peers": i.objs.AirlockPeers,
		"match": i.objs.AirlockMatch, "users": i.objs.AirlockUsers,
	}
	names := make([]string, 0, len(maps))
	for n := range maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		count, err := countKeys(maps[n])
		if err != nil {
			s.Errors = append(s.Errors, fmt.Sprintf("count %s: %v", n, err))
			continue
		}
		s.MapEntries[n] = count
	}

	if lost, rebuilt, err := i.TrackingLost(); err == nil {
		s.TrackLost, s.TrackRebuilt = lost, rebuilt
	} else {
		s.Errors = append(s.Errors, err.Error())
	}
	for idx, name := range statNames {
		sum, err := sumPerCPU(i.objs.AirlockStats, uint32(idx))
		if err != nil {
			s.Errors = append(s.Errors, fmt.Sprintf("counter %s: %v", name, err))
			continue
		}
		s.Counters[name] = sum
	}
	return s
}

// sumPerCPU reads one counter of a per-CPU array, summed over the CPUs.
func sumPerCPU(m *ebpf.Map, idx uint32) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(idx, &perCPU); err != nil {
		return 0, err
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}

func countKeys(m *ebpf.Map) (int, error) {
	keyBuf := make([]byte, m.KeySize())
	n := 0
	var next []byte
	for {
		var err error
		if n == 0 {
			next, err = m.NextKeyBytes(nil)
		} else {
			next, err = m.NextKeyBytes(keyBuf)
		}
		if err != nil {
			return n, err
		}
		if next == nil {
			return n, nil
		}
		copy(keyBuf, next)
		n++
		if n > int(m.MaxEntries())*2 {
			// Concurrent deletes can restart hash iteration; don't spin.
			return n, nil
		}
	}
}
