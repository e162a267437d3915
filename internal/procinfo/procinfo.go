// Package procinfo describes processes from /proc, to say where a session came
// from: which program, run by whom, started by which parent.
//
// Everything here races with the processes it describes: a process may exit,
// or its PID be reused, between two reads. Read guards against PID reuse by
// reading through one handle of the process's directory; callers that keep a Proc
// should compare (PID, StartTime), never PID alone.
package procinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// procRoot is where procfs is mounted; tests may point it elsewhere.
var procRoot = "/proc"

// Proc describes one process.
type Proc struct {
	PID       uint32
	PPID      uint32
	UID       uint32   // real UID
	Exe       string   // target of /proc/PID/exe; "" when unreadable (kernel threads, other users' processes without privilege)
	Cmdline   []string // argv as the process presents it; empty for kernel threads and zombies
	Comm      string   // kernel command name (at most 15 bytes), from stat
	StartTime uint64   // stat field 22, clock ticks since boot: (PID, StartTime) identifies a process across PID reuse
}

// statInfo is the part of /proc/PID/stat this package uses.
type statInfo struct {
	PID       uint32
	Comm      string
	State     byte
	PPID      uint32
	StartTime uint64
}

// parseStat parses the contents of /proc/PID/stat. The comm field is in
// parentheses and may itself contain spaces, parentheses and ") (", so it is
// taken as everything between the first '(' and the last ')'.
func parseStat(b []byte) (statInfo, error) {
	var s statInfo
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return s, errors.New("stat: no (comm)")
	}
	pid, err := strconv.ParseUint(string(bytes.TrimSpace(b[:open])), 10, 32)
	if err != nil {
		return s, fmt.Errorf("stat: pid: %w", err)
	}
	s.PID = uint32(pid)
	s.Comm = string(b[open+1 : closing])
	// Fields after comm, starting with field 3 (state).
	rest := strings.Fields(string(b[closing+1:]))
	const (
		fState     = 3 - 3
		fPPID      = 4 - 3
		fStartTime = 22 - 3
	)
	if len(rest) <= fStartTime {
		return s, fmt.Errorf("stat: %d fields after comm, want at least %d", len(rest), fStartTime+1)
	}
	if len(rest[fState]) != 1 {
		return s, fmt.Errorf("stat: bad state %q", rest[fState])
	}
	s.State = rest[fState][0]
	ppid, err := strconv.ParseUint(rest[fPPID], 10, 32)
	if err != nil {
		return s, fmt.Errorf("stat: ppid: %w", err)
	}
	s.PPID = uint32(ppid)
	if s.StartTime, err = strconv.ParseUint(rest[fStartTime], 10, 64); err != nil {
		return s, fmt.Errorf("stat: starttime: %w", err)
	}
	return s, nil
}

// status holds the fields of /proc/PID/status this package uses.
type status struct {
	UID  uint32
	PPID uint32
}

func parseStatus(b []byte) (status, error) {
	var st status
	var haveUID, havePPID bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch key {
		case "Uid": // real, effective, saved, filesystem
			f := strings.Fields(val)
			if len(f) == 0 {
				return st, errors.New("status: empty Uid")
			}
			u, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				return st, fmt.Errorf("status: Uid: %w", err)
			}
			st.UID, haveUID = uint32(u), true
		case "PPid":
			p, err := strconv.ParseUint(strings.TrimSpace(val), 10, 32)
			if err != nil {
				return st, fmt.Errorf("status: PPid: %w", err)
			}
			st.PPID, havePPID = uint32(p), true
		}
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	if !haveUID || !havePPID {
		return st, errors.New("status: missing Uid or PPid")
	}
	return st, nil
}

// splitCmdline splits /proc/PID/cmdline on NULs. A process may overwrite its
// argv area (setproctitle), so the result is what it presents, not
// necessarily what it was started with.
func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

func pidDir(pid uint32) string {
	return filepath.Join(procRoot, strconv.FormatUint(uint64(pid), 10))
}

// Read describes process pid. An unreadable exe link leaves Exe empty and is
// not an error; a process that does not exist (or exits while being read)
// gives an error wrapping os.ErrNotExist.
//
// Everything is read through one descriptor of the process's /proc
// directory, which stays bound to the process it was opened for: once that
// process is gone, reads through it fail even if its PID names another
// process by now, so what Read returns never mixes two processes. (It used
// to read stat once more at the end and compare the start times, a fifth
// more /proc work for every process of a new session's ancestry.)
func Read(pid uint32) (Proc, error) {
	dir := pidDir(pid)
	d, err := openDir(dir)
	if err != nil {
		return Proc{}, fmt.Errorf("procinfo: %w", err)
	}
	defer syscall.Close(d)
	st, err := readStat(d, dir)
	if err != nil {
		return Proc{}, err
	}
	p := Proc{PID: pid, PPID: st.PPID, Comm: st.Comm, StartTime: st.StartTime}

	b, err := readFileAt(d, dir, "status")
	if err != nil {
		return Proc{}, fmt.Errorf("procinfo: pid %d: %w", pid, err)
	}
	status, err := parseStatus(b)
	if err != nil {
		return Proc{}, fmt.Errorf("procinfo: pid %d: %w", pid, err)
	}
	p.UID, p.PPID = status.UID, status.PPID

	if exe, err := readlinkAt(d, "exe"); err == nil {
		p.Exe = exe
	}
	if b, err := readFileAt(d, dir, "cmdline"); err == nil {
		p.Cmdline = splitCmdline(b)
	} else if !errors.Is(err, os.ErrPermission) {
		return Proc{}, fmt.Errorf("procinfo: pid %d: %w", pid, err)
	}
	return p, nil
}

// openDir opens a process's /proc directory as a handle for readFileAt.
func openDir(dir string) (int, error) {
	for range 100 { // signals are SA_RESTART: EINTR is rare, not endless
		d, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC|unix.O_PATH, 0)
		if err != syscall.EINTR {
			if err != nil {
				return -1, &os.PathError{Op: "open", Path: dir, Err: err}
			}
			return d, nil
		}
	}
	return -1, &os.PathError{Op: "open", Path: dir, Err: syscall.EINTR}
}

// readlinkAt is os.Readlink of a name in directory d.
func readlinkAt(d int, name string) (string, error) {
	for n := 256; n <= 1<<16; n *= 2 {
		b := make([]byte, n)
		l, err := unix.Readlinkat(d, name, b)
		if err != nil {
			return "", err
		}
		if l < n {
			return string(b[:l]), nil
		}
	}
	return "", syscall.ENAMETOOLONG
}

// readFile reads a /proc file as os.ReadFile does, in fewer system calls:
// os.ReadFile also sets the descriptor non-blocking and back, tries to add
// it to the poller (which procfs refuses) and stats it (procfs says size
// 0), about ten calls a file where open, read, read and close do. A new
// session reads four files of the client and of every ancestor; on a
// small VM those calls were a fifth of the connection's CPU. Errors are
// *os.PathError, as os.ReadFile's.
func readFile(path string) ([]byte, error) {
	return readAt(unix.AT_FDCWD, path, path)
}

// readFileAt is readFile of name in directory d, which dir names.
func readFileAt(d int, dir, name string) ([]byte, error) {
	return readAt(d, name, filepath.Join(dir, name))
}

// readAt reads name, relative to d, naming it path in errors.
func readAt(d int, name, path string) ([]byte, error) {
	var fd int
	var err error
	for range 100 { // signals are SA_RESTART: EINTR is rare, not endless
		if fd, err = unix.Openat(d, name, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	// Enough for stat, status and most command lines in one read;
	// procfs may return less than asked before the end, so read on until
	// a read returns nothing.
	b := make([]byte, 0, 2048)
	for eintr := 0; ; {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := syscall.Read(fd, b[len(b):cap(b)])
		if err == syscall.EINTR && eintr < 100 {
			eintr++
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

func readStat(d int, dir string) (statInfo, error) {
	b, err := readFileAt(d, dir, "stat")
	if err != nil {
		return statInfo{}, fmt.Errorf("procinfo: %w", err)
	}
	st, err := parseStat(b)
	if err != nil {
		return statInfo{}, fmt.Errorf("procinfo: %s: %w", dir, err)
	}
	return st, nil
}

// Ancestry returns the parent chain of pid, nearest first, starting at its
// parent. It stops after the first ancestor for which stop returns true
// (stop may be nil), after PID 1, at a PID whose parent is 0 (the top of a
// PID namespace or a kernel thread), or after max entries (max <= 0: no
// limit beyond loop protection). If an ancestor cannot be read (it exited),
// the chain so far is returned together with the error.
func Ancestry(pid uint32, stop func(Proc) bool, max int) ([]Proc, error) {
	p, err := Read(pid)
	if err != nil {
		return nil, err
	}
	return AncestryOf(p, stop, max)
}

// AncestryOf is Ancestry of a process the caller has just read, which it
// does not read again: a new session's origin reads the client first, and
// each read is five /proc files.
func AncestryOf(p Proc, stop func(Proc) bool, max int) ([]Proc, error) {
	pid := p.PID
	var chain []Proc
	seen := map[uint32]bool{pid: true}
	for next := p.PPID; next != 0; {
		if max > 0 && len(chain) >= max {
			break
		}
		if seen[next] {
			return chain, fmt.Errorf("procinfo: ancestry of %d: loop at pid %d", pid, next)
		}
		seen[next] = true
		a, err := Read(next)
		if err != nil {
			return chain, err
		}
		chain = append(chain, a)
		if a.PID == 1 || (stop != nil && stop(a)) {
			break
		}
		next = a.PPID
	}
	return chain, nil
}

// CgroupPath returns pid's cgroup v2 path, the path of the "0::" line of
// /proc/PID/cgroup, e.g. "/user.slice/user-1000.slice/session-2.scope".
func CgroupPath(pid uint32) (string, error) {
	b, err := readFile(filepath.Join(pidDir(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("procinfo: %w", err)
	}
	path, ok := parseCgroup(b)
	if !ok {
		return "", fmt.Errorf("procinfo: pid %d: no cgroup v2 entry", pid)
	}
	return path, nil
}

// parseCgroup finds the cgroup v2 ("0::") path in the contents of
// /proc/PID/cgroup.
func parseCgroup(b []byte) (string, bool) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return path, true
		}
	}
	return "", false
}

// List returns the PIDs of all processes in /proc, ascending.
func List() ([]uint32, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("procinfo: %w", err)
	}
	pids := make([]uint32, 0, len(ents))
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		n, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		pids = append(pids, uint32(n))
	}
	slices.Sort(pids)
	return pids, nil
}
