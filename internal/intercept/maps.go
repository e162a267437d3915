package intercept

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNoRecord means the kernel has no record for an accepted connection: it
// was not redirected by us, or its record was evicted. The caller must refuse
// the connection rather than guess where it was going.
var ErrNoRecord = errors.New("no interception record for connection")

// Record is what the kernel saw when it redirected a connection.
type Record struct {
	Orig                netip.AddrPort // original destination; IPv4 unmapped
	PID, TGID, UID, GID uint32
	CgroupID            uint64
	Comm                string // thread name at connect time, not authoritative
	At                  time.Time
}

// Target is a destination to intercept. An exact address is a /32 or /128
// prefix. Port 0 means every port of the prefix.
type Target struct {
	Prefix netip.Prefix
	Port   uint16
}

func (t Target) String() string {
	if t.Port == 0 {
		return t.Prefix.String() + ":*"
	}
	return fmt.Sprintf("%s:%d", t.Prefix, t.Port)
}

// targetKey encodes t as the LPM key of bpf/airlock.c: the port (network
// order) leads the matched data, so prefixlen covers 16 port bits, then the
// address bits with IPv4 as ::ffff:a.b.c.d.
func targetKey(t Target) (airlockTargetKey, error) {
	if !t.Prefix.IsValid() {
		return airlockTargetKey{}, fmt.Errorf("invalid target prefix %v", t.Prefix)
	}
	p := t.Prefix.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], t.Port)
	return airlockTargetKey{
		Prefixlen: uint32(16 + bits),
		Port:      binary.NativeEndian.Uint16(port[:]),
		Addr:      p.Addr().As16(),
	}, nil
}

func keyTarget(k airlockTargetKey) Target {
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], k.Port)
	addr := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen) - 16
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return Target{Prefix: netip.PrefixFrom(addr, bits), Port: binary.BigEndian.Uint16(port[:])}
}

// SetTargets makes the set of intercepted destinations equal to ts. New
// entries are added before stale ones are removed, so a target present in
// both the old and new set is never briefly missing.
func (i *Interceptor) SetTargets(ts []Target) error {
	want := make(map[airlockTargetKey]bool, len(ts))
	for _, t := range ts {
		k, err := targetKey(t)
		if err != nil {
			return fmt.Errorf("set targets: %w", err)
		}
		want[k] = true
	}
	removed, err := syncSet(i.objs.AirlockTargets, want, func(k airlockTargetKey) string { return fmt.Sprint(keyTarget(k)) })
	if err != nil {
		return fmt.Errorf("set targets: %w", err)
	}
	i.log.Debug("targets set", "count", len(want), "removed", removed)
	return nil
}

// Targets returns the destinations currently intercepted.
func (i *Interceptor) Targets() ([]Target, error) {
	var out []Target
	var k airlockTargetKey
	var v uint32
	it := i.objs.AirlockTargets.Iterate()
	for it.Next(&k, &v) {
		out = append(out, keyTarget(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list targets: %w", err)
	}
	return out, nil
}

// Track adds a process (by tgid) to the tracked set of ModeTree; the kernel
// then tracks its future children itself.
func (i *Interceptor) Track(tgid uint32) error {
	reason := uint32(1)
	if err := i.objs.AirlockTracked.Put(tgid, reason); err != nil {
		return fmt.Errorf("track %d: %w", tgid, err)
	}
	return nil
}

// IsTracked reports whether tgid is in the tracked set.
func (i *Interceptor) IsTracked(tgid uint32) bool {
	var v uint32
	return i.objs.AirlockTracked.Lookup(tgid, &v) == nil
}

// TrackedLive lists the tracked tgids of processes that exist, at most max
// of them, by looking every process in /proc up in the map: its cost
// follows the number of processes, not the size of the map.
func (i *Interceptor) TrackedLive(max int) ([]uint32, error) {
	pids, err := procPIDs()
	if err != nil {
		return nil, fmt.Errorf("list tracked processes: %w", err)
	}
	var out []uint32
	for _, pid := range pids {
		if len(out) >= max {
			break
		}
		if i.IsTracked(uint32(pid)) {
			out = append(out, uint32(pid))
		}
	}
	return out, nil
}

// Untrack removes a process from the tracked set (its children stay).
func (i *Interceptor) Untrack(tgid uint32) error {
	if err := i.objs.AirlockTracked.Delete(tgid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrack %d: %w", tgid, err)
	}
	return nil
}

// Tracked lists the tracked tgids.
func (i *Interceptor) Tracked() ([]uint32, error) {
	var out []uint32
	var k, v uint32
	it := i.objs.AirlockTracked.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list tracked processes: %w", err)
	}
	return out, nil
}

// SelectCgroup makes processes in the cgroup with this id (see cgroups.ID)
// and in its descendants intercepted in ModeCgroup.
func (i *Interceptor) SelectCgroup(id uint64) error {
	if err := i.objs.AirlockCgroups.Put(id, uint32(1)); err != nil {
		return fmt.Errorf("select cgroup %d: %w", id, err)
	}
	return nil
}

// UnselectCgroup reverses SelectCgroup.
func (i *Interceptor) UnselectCgroup(id uint64) error {
	if err := i.objs.AirlockCgroups.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unselect cgroup %d: %w", id, err)
	}
	return nil
}

// Lookup returns and forgets the record of a connection the proxy accepted,
// by the connection's remote address (the client's local address).
func (i *Interceptor) Lookup(client netip.AddrPort) (Record, error) {
	k := airlockClientKey{Addr: client.Addr().As16(), Port: client.Port()}
	var r airlockRecord
	err := i.objs.AirlockRecords.LookupAndDelete(&k, &r)
	if errors.Is(err, ebpf.ErrNotSupported) {
		err = i.objs.AirlockRecords.Lookup(&k, &r)
		if err == nil {
			_ = i.objs.AirlockRecords.Delete(&k)
		}
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Record{}, fmt.Errorf("look up %v: %w", client, ErrNoRecord)
	}
	if err != nil {
		return Record{}, fmt.Errorf("look up %v: %w", client, err)
	}
	return Record{
		Orig:     netip.AddrPortFrom(netip.AddrFrom16(r.Addr).Unmap(), r.Port),
		PID:      r.Pid,
		TGID:     r.Tgid,
		UID:      r.Uid,
		GID:      r.Gid,
		CgroupID: r.CgroupId,
		Comm:     commString(r.Comm),
		At:       ktimeToTime(r.KtimeNs),
	}, nil
}

func commString(c [16]int8) string { return cString(c[:]) }

// cString converts a NUL-terminated C char array.
func cString(c []int8) string {
	b := make([]byte, 0, len(c))
	for _, ch := range c {
		if ch == 0 {
			break
		}
		b = append(b, byte(ch))
	}
	return string(b)
}

// ktimeToTime converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall time.
func ktimeToTime(ns uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano() - int64(ns)))
}

// syncSet makes the keys of the set-like map m (every value 1) equal to
// want: new keys are added before stale ones go, so a key present in both
// the old and new set is never missing, even for an instant.
func syncSet[K comparable](m *ebpf.Map, want map[K]bool, show func(K) string) (int, error) {
	one := uint32(1)
	for k := range want {
		if err := m.Put(&k, &one); err != nil {
			return 0, fmt.Errorf("add %s: %w", show(k), err)
		}
	}
	var stale []K
	var k K
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list current: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("remove %s: %w", show(k), err)
		}
	}
	return len(stale), nil
}

// SetUsers makes the uids intercepted in ModeUser equal to uids: every
// process running as one of them, wherever it was started.
func (i *Interceptor) SetUsers(uids []uint32) error {
	want := make(map[uint32]bool, len(uids))
	for _, u := range uids {
		want[u] = true
	}
	if _, err := syncSet(i.objs.AirlockUsers, want, func(u uint32) string { return strconv.FormatUint(uint64(u), 10) }); err != nil {
		return fmt.Errorf("set users: %w", err)
	}
	return nil
}

// Users lists the uids intercepted in ModeUser.
func (i *Interceptor) Users() ([]uint32, error) {
	var out []uint32
	var k, v uint32
	it := i.objs.AirlockUsers.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// Slots of airlock_state (STATE_* in bpf/airlock.c).
const (
	stateTrackLost    uint32 = 0
	stateTrackRebuilt uint32 = 1
)

// TrackingLost reports how many processes the kernel failed to track (the
// tracked map was full) and how many of those a rebuild has covered. While
// they differ, tree mode refuses target connects of untracked processes.
func (i *Interceptor) TrackingLost() (lost, rebuilt uint64, err error) {
	if err := i.objs.AirlockState.Lookup(stateTrackLost, &lost); err != nil {
		return 0, 0, fmt.Errorf("read tracking state: %w", err)
	}
	if err := i.objs.AirlockState.Lookup(stateTrackRebuilt, &rebuilt); err != nil {
		return 0, 0, fmt.Errorf("read tracking state: %w", err)
	}
	return lost, rebuilt, nil
}

func (i *Interceptor) markRebuilt(lost uint64) error {
	if err := i.objs.AirlockState.Put(stateTrackRebuilt, lost); err != nil {
		return fmt.Errorf("write tracking state: %w", err)
	}
	return nil
}
