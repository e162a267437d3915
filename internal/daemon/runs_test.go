package daemon

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/testnet"
)

// selection records what would be written to the kernel's cgroup map.
type selection struct {
	mu sync.Mutex
	m  map[uint64]bool
}

func (s *selection) SelectCgroup(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[id] = true
	return nil
}

func (s *selection) UnselectCgroup(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
	return nil
}

func (s *selection) has(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *selection) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// runWorld is a run group in a cgroup of the test's own and a process to
// place.
func runWorld(t *testing.T) (*runGroups, *selection, string) {
	t.Helper()
	testnet.RequireRoot(t)
	root, err := cgroups.Mount()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(root, fmt.Sprintf("airlock-runs-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	dir := filepath.Join(base, "airlock.run")
	if err := cgroups.Create(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroups.Remove(base); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	sel := &selection{m: map[uint64]bool{}}
	return newRunGroups(dir, sel, slog.New(slog.DiscardHandler)), sel, dir
}

func startSleeper(t *testing.T) (*exec.Cmd, *os.File) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	t.Cleanup(func() { f.Close() })
	return cmd, f
}

// The reaper runs between the cgroup's creation and the caller's move (the
// hook makes that moment certain): it must leave the cgroup alone, so the
// caller lands in a cgroup that exists and is selected.
func TestRunPlacementSurvivesReaper(t *testing.T) {
	g, sel, _ := runWorld(t)
	cmd, pidfd := startSleeper(t)
	reaped := 0
	g.beforeMove = func(string) { g.reap(); reaped++ }

	dir, err := g.place(cmd.Process.Pid, pidfd)
	if err != nil {
		t.Fatalf("place: %v", err)
	}
	if reaped != 1 {
		t.Fatal("the reaper did not run during placement: the test proves nothing")
	}
	id, err := cgroups.ID(dir)
	if err != nil {
		t.Fatalf("the run cgroup is gone: %v", err)
	}
	if !sel.has(id) {
		t.Fatal("the run cgroup was unselected: its processes would not be intercepted")
	}
	pids, _ := cgroups.PIDs(dir)
	if len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("processes in %s: %v, want %d", dir, pids, cmd.Process.Pid)
	}

	// Populated, a later reap keeps it; once the process exits, the
	// cgroup goes and is unselected.
	g.beforeMove = nil
	g.reap()
	if !sel.has(id) {
		t.Fatal("a populated run cgroup was unselected")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	g.reap()
	if _, err := os.Stat(dir); !os.IsNotExist(err) || sel.has(id) {
		t.Fatalf("empty run cgroup not reaped (stat %v, selected %v)", err, sel.has(id))
	}
}

// A caller that exited before it was placed (its pid free for another
// process to take) is never moved: nothing is created or selected.
func TestRunPlacementRefusesExitedCaller(t *testing.T) {
	g, sel, dir := runWorld(t)
	cmd, pidfd := startSleeper(t)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if _, err := g.place(cmd.Process.Pid, pidfd); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("place of an exited caller: %v, want an error", err)
	}
	entries, _ := os.ReadDir(dir)
	left := 0
	for _, e := range entries {
		if e.IsDir() {
			left++
		}
	}
	if left != 0 || sel.len() != 0 {
		t.Fatalf("left behind: %d cgroups, %d selected", left, sel.len())
	}
	// Without a pidfd there is no placement by pid alone.
	live, _ := startSleeper(t)
	if _, err := g.place(live.Process.Pid, nil); err == nil {
		t.Fatal("placed a caller named only by its pid")
	}
}

// The caller dies between select and move: the call fails, and whatever
// the pid named is not reported as the caller.
func TestRunPlacementCallerDiesDuringMove(t *testing.T) {
	g, _, _ := runWorld(t)
	cmd, pidfd := startSleeper(t)
	g.beforeMove = func(string) { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	if _, err := g.place(cmd.Process.Pid, pidfd); err == nil {
		t.Fatal("placement of a caller that died during it succeeded")
	}
}
