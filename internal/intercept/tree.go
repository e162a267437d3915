package intercept

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/ringbuf"
)

// matcher decides whether an executable is one the user asked to intercept.
// Entries with a slash are absolute paths, others are base names. Matching
// uses /proc/PID/exe, never comm: programs rename their threads (Electron).
type matcher struct {
	paths map[string]bool
	names map[string]bool
}

func newMatcher(match []string) matcher {
	m := matcher{paths: map[string]bool{}, names: map[string]bool{}}
	for _, s := range normalizeExecutables(match) {
		if strings.Contains(s, "/") {
			m.paths[s] = true
		} else {
			m.names[s] = true
		}
	}
	return m
}

// normalizeExecutables drops blank entries and cleans paths, identically for
// the user-space matcher and the kernel's match map.
func normalizeExecutables(match []string) []string {
	var out []string
	for _, s := range match {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
		case strings.Contains(s, "/"):
			out = append(out, filepath.Clean(s))
		default:
			out = append(out, s)
		}
	}
	return out
}

// MaxExecutableLen is the longest executable name or path (in bytes) the
// kernel matches at exec: EXEC_NAME_SIZE-2 in bpf/airlock.c.
const MaxExecutableLen = len(airlockExecName{}.Name) - 2

func execNameKey(s string) (airlockExecName, error) {
	var k airlockExecName
	if len(s) > MaxExecutableLen {
		return k, fmt.Errorf("executable %q is %d bytes long, more than the %d the kernel matches", s, len(s), MaxExecutableLen)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return k, fmt.Errorf("executable %q contains a NUL byte", s)
	}
	for j := 0; j < len(s); j++ {
		k.Name[j] = int8(s[j])
	}
	return k, nil
}

func execNameString(k airlockExecName) string {
	return cString(k.Name[:])
}

// execMatchKeys validates and encodes a list of executables for the kernel.
func execMatchKeys(match []string) (map[airlockExecName]bool, error) {
	want := map[airlockExecName]bool{}
	for _, s := range normalizeExecutables(match) {
		k, err := execNameKey(s)
		if err != nil {
			return nil, err
		}
		want[k] = true
	}
	return want, nil
}

// SetExecMatch makes the kernel's list of executables equal to match (base
// names, or paths with a slash). In ModeTree a process that execs one of them
// is tracked by the kernel at exec time, before it runs, whether or not a
// daemon is running: its first connect is intercepted, and while no daemon
// runs it is refused instead of going direct. The kernel sees the path given
// to execve and the name of the file run, not a fully resolved path: a path
// entry reached through a symlinked directory is matched only by WatchExec
// (/proc/PID/exe), while the daemon runs. Open sets Options.Executables.
func (i *Interceptor) SetExecMatch(match []string) error {
	want, err := execMatchKeys(match)
	if err != nil {
		return fmt.Errorf("set executables: %w", err)
	}
	if _, err := syncSet(i.objs.AirlockMatch, want, func(k airlockExecName) string { return strconv.Quote(execNameString(k)) }); err != nil {
		return fmt.Errorf("set executables: %w", err)
	}
	return nil
}

// ExecMatch lists the executables the kernel matches at exec.
func (i *Interceptor) ExecMatch() ([]string, error) {
	var out []string
	var k airlockExecName
	var v uint32
	it := i.objs.AirlockMatch.Iterate()
	for it.Next(&k, &v) {
		out = append(out, execNameString(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list executables: %w", err)
	}
	return out, nil
}

func (m matcher) empty() bool { return len(m.paths) == 0 && len(m.names) == 0 }

// matchPID reports whether the process runs a matching executable. A
// vanished or kernel process simply does not match.
func (m matcher) matchPID(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	// The kernel appends this when the file was replaced, e.g. on upgrade.
	exe = strings.TrimSuffix(exe, " (deleted)")
	return m.paths[exe] || m.names[filepath.Base(exe)]
}

// procPIDs lists the visible tgids, ascending.
func procPIDs() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var out []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out, nil
}

// procParents maps every visible tgid to its parent's tgid.
func procParents() (map[int]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	parents := make(map[int]int, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// comm may contain spaces and parentheses: the fields after it start
		// after the last ')'. They are: state ppid ...
		end := bytes.LastIndexByte(stat, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(string(stat[end+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(fields[1])
		if err != nil {
			continue
		}
		parents[pid] = ppid
	}
	return parents, nil
}

// SeedTree tracks every running process whose executable matches (base
// name or absolute path) and all their descendants. The kernel follows
// forks only from the moment a parent is tracked, so the scan repeats until
// it finds nothing new, catching children forked while it ran.
func (i *Interceptor) SeedTree(ctx context.Context, match []string) error {
	m := newMatcher(match)
	if m.empty() {
		return nil
	}
	tracked := map[int]bool{}
	if cur, err := i.Tracked(); err == nil {
		for _, t := range cur {
			tracked[int(t)] = true
		}
	}
	added := 0
	for pass := 0; pass < 5; pass++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		parents, err := procParents()
		if err != nil {
			return fmt.Errorf("seed process tree: %w", err)
		}
		var isTracked func(pid, depth int) bool
		memo := map[int]bool{}
		isTracked = func(pid, depth int) bool {
			if pid <= 1 || depth > 4096 {
				return false
			}
			if v, ok := memo[pid]; ok {
				return v
			}
			v := tracked[pid] || m.matchPID(pid)
			if !v {
				if ppid, ok := parents[pid]; ok {
					v = isTracked(ppid, depth+1)
				}
			}
			memo[pid] = v
			return v
		}
		newThisPass := 0
		for pid := range parents {
			if tracked[pid] || !isTracked(pid, 0) {
				continue
			}
			if err := i.Track(uint32(pid)); err != nil {
				return fmt.Errorf("seed process tree: %w", err)
			}
			tracked[pid] = true
			newThisPass++
		}
		added += newThisPass
		if newThisPass == 0 {
			break
		}
	}
	i.log.Info("process trees seeded", "match", match, "added", added)
	return nil
}

// WatchExec reports execs the kernel tracked, and tracks processes that
// exec a matching executable while the daemon runs, as a backup to the
// kernel's own match at exec (SetExecMatch, Options.Executables): the kernel
// reports execs of untracked processes it did not match (in ModeTree); each
// is checked against /proc/PID/exe, which catches paths the kernel cannot
// see, e.g. a configured path reached through a symlink. onTracked (may be
// nil) gets the tgid of every process tracked at exec, by the kernel or
// here: the root of a new tree. It blocks until ctx is done and then returns
// nil; it returns an error only if the ring buffer cannot be read. Events
// queued while no daemon ran are processed too.
func (i *Interceptor) WatchExec(ctx context.Context, match []string, onTracked func(tgid uint32)) error {
	m := newMatcher(match)
	rd, err := ringbuf.NewReader(i.objs.AirlockExecs)
	if err != nil {
		return fmt.Errorf("watch execs: open ring buffer: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	defer rd.Close()

	var rec ringbuf.Record
	var ev airlockExecEvent
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("watch execs: %w", err)
		}
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &ev); err != nil {
			i.log.Warn("bad exec event", "len", len(rec.RawSample), "err", err)
			continue
		}
		if ev.Tracked != 0 {
			if onTracked != nil {
				onTracked(ev.Tgid)
			}
			continue
		}
		if m.empty() || !m.matchPID(int(ev.Tgid)) {
			continue
		}
		if err := i.Track(ev.Tgid); err != nil {
			i.log.Warn("cannot track exec'd process", "tgid", ev.Tgid, "err", err)
			continue
		}
		i.log.Info("tracking exec'd process", "tgid", ev.Tgid, "ppid", ev.Ppid, "comm", commString(ev.Comm))
		if onTracked != nil {
			onTracked(ev.Tgid)
		}
	}
}

// Rebuild makes the tracked set whole again after the kernel failed to
// track processes (TrackingLost): it seeds again from /proc, and only when
// that succeeded tells the kernel that the losses counted before the seed
// are covered. A loss during the seed keeps tree mode refusing until the
// next rebuild. It does nothing when nothing was lost.
func (i *Interceptor) Rebuild(ctx context.Context, match []string) (bool, error) {
	lost, rebuilt, err := i.TrackingLost()
	if err != nil || lost == rebuilt {
		return false, err
	}
	if err := i.SeedTree(ctx, match); err != nil {
		return false, fmt.Errorf("rebuild tracked processes after %d lost: %w", lost-rebuilt, err)
	}
	if err := i.markRebuilt(lost); err != nil {
		return false, err
	}
	i.log.Warn("tracked processes rebuilt from /proc after the tracked map overflowed", "lost", lost-rebuilt)
	return true, nil
}
