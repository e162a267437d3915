// Package cgroups is the small part of cgroup v2 that Airlock needs: finding
// the v2 hierarchy, naming cgroups by the id the kernel reports to BPF, and
// creating, filling and removing cgroups for launched processes and tests.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount returns the mount point of the cgroup v2 hierarchy. It looks the
// filesystem type up in /proc/self/mountinfo because the place differs:
// /sys/fs/cgroup on unified systems, /sys/fs/cgroup/unified on hybrid ones.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Fields: id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: read mountinfo: %w", err)
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 filesystem is mounted")
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) the kernel
// uses for mount points in mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ID returns the id the kernel reports for the cgroup at path
// (bpf_get_current_cgroup_id, link info): the inode number of its directory
// in the cgroup2 filesystem.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup id of %s: not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
}

// Create makes the cgroup at path (and missing parents). An existing cgroup
// is not an error: callers re-run after crashes.
func Create(path string) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", path, err)
	}
	return nil
}

// MovePID moves a process (all its threads) into the cgroup at path.
func MovePID(path string, pid int) error {
	err := os.WriteFile(filepath.Join(path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	if err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, path, err)
	}
	return nil
}

// PIDs lists the processes directly in the cgroup at path.
func PIDs(path string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", path, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("list processes of cgroup %s: bad pid %q", path, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// OpenFD opens the cgroup directory for SysProcAttr.UseCgroupFD, which
// starts a child directly inside the cgroup (clone3 CLONE_INTO_CGROUP), with
// no window in which it runs elsewhere. The caller closes the file.
func OpenFD(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", path, err)
	}
	return f, nil
}

// Remove deletes the cgroup at path and its child cgroups. A cgroup with
// processes cannot be removed, so they are killed (cgroup.kill where the
// kernel has it, SIGKILL each otherwise), within a bounded wait.
func Remove(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := Remove(filepath.Join(path, e.Name())); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; ; attempt++ {
		err := unix.Rmdir(path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", path, err)
		}
		if attempt == 0 {
			killAll(path)
		}
		time.Sleep(20 * time.Millisecond)
		if attempt%25 == 24 {
			killAll(path)
		}
	}
}

func killAll(path string) {
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err == nil {
		return
	}
	pids, _ := PIDs(path)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Drain moves every process in the cgroup at path and its descendants into
// the cgroup at to, so that path can be removed without killing them. A
// missing path is not an error.
func Drain(path, to string) error {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("drain cgroup %s: %w", path, err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, Drain(filepath.Join(path, e.Name()), to))
		}
	}
	pids, err := PIDs(path)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, pid := range pids {
		if err := MovePID(to, pid); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
