package cgroups

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMountinfo(t *testing.T) {
	const info = `24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/my\040unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
`
	got, err := parseMountinfo(strings.NewReader(info))
	if err != nil || got != "/sys/fs/cgroup/my unified" {
		t.Fatalf("parseMountinfo = %q, %v", got, err)
	}
	if _, err := parseMountinfo(strings.NewReader("24 30 0:22 / /sys rw - sysfs sysfs rw\n")); err == nil {
		t.Fatal("no cgroup2 mount, but no error")
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("cgroup tests need root; CI=true so not skipping")
	}
	t.Skip("cgroup tests need root; run with sudo")
}

func TestLifecycle(t *testing.T) {
	requireRoot(t)
	mnt, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mnt, &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("Mount() = %s is not cgroup2: %v", mnt, err)
	}
	p := filepath.Join(mnt, fmt.Sprintf("airlock-cgtest-%d", os.Getpid()))
	child := filepath.Join(p, "child")
	if err := Create(child); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(p) })
	if err := Create(child); err != nil {
		t.Fatalf("Create on an existing cgroup: %v", err)
	}
	id, err := ID(child)
	if err != nil || id == 0 {
		t.Fatalf("ID = %d, %v", id, err)
	}
	if _, err := ID("/proc"); err == nil {
		t.Error("ID of a non-cgroup path succeeded")
	}

	// A process started straight into the cgroup, and one moved there.
	f, err := OpenFD(child)
	if err != nil {
		t.Fatal(err)
	}
	started := exec.Command("sleep", "60")
	started.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := started.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer started.Wait()
	moved := exec.Command("sleep", "60")
	if err := moved.Start(); err != nil {
		t.Fatal(err)
	}
	defer moved.Wait()
	if err := MovePID(child, moved.Process.Pid); err != nil {
		t.Fatal(err)
	}
	pids, err := PIDs(child)
	if err != nil || !slices.Contains(pids, started.Process.Pid) || !slices.Contains(pids, moved.Process.Pid) {
		t.Fatalf("PIDs = %v, %v; want %d and %d", pids, err, started.Process.Pid, moved.Process.Pid)
	}
	self, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", started.Process.Pid))
	if !strings.Contains(string(self), strings.TrimPrefix(child, mnt)) {
		t.Errorf("/proc/PID/cgroup = %q", self)
	}

	// Remove kills what is inside and removes the whole subtree.
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("cgroup still exists: %v", err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("Remove of a missing cgroup: %v", err)
	}
}
