package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
)

// cgroupSelector marks cgroups whose processes are intercepted; the
// interceptor's kernel map in the daemon.
type cgroupSelector interface {
	SelectCgroup(id uint64) error
	UnselectCgroup(id uint64) error
}

// runGroups owns the `airlock run` cgroups: one per call, selected for
// interception, the caller moved in; reaped when its processes are gone.
//
// Placing and reaping race: a fresh cgroup is empty until the caller is
// moved in, and an empty cgroup is what the reaper removes. Cgroups being
// set up are therefore registered before they exist and skipped by the
// reaper, and the reaper removes a cgroup (rmdir, which the kernel refuses
// while it has processes) before it unselects it, never the other way
// round: a cgroup with processes is never left unselected.
type runGroups struct {
	dir string
	sel cgroupSelector
	log *slog.Logger

	mu       sync.Mutex
	settling map[string]bool // cgroups between creation and the caller's move

	beforeMove func(dir string) // tests: runs between select and move
}

func newRunGroups(dir string, sel cgroupSelector, log *slog.Logger) *runGroups {
	return &runGroups{dir: dir, sel: sel, log: log, settling: map[string]bool{}}
}

// place moves the process pidfd names (pid is its number when the call was
// made) into a fresh intercepted cgroup and returns the cgroup's path. It
// fails rather than move another process that took over a recycled pid.
func (g *runGroups) place(pid int, pidfd *os.File) (string, error) {
	if pidfd == nil {
		return "", errors.New("the caller's process could not be named by a pidfd; refusing to move it by pid alone")
	}
	if err := pidfdAlive(pidfd); err != nil {
		return "", fmt.Errorf("caller (pid %d) exited before it could be placed: %w", pid, err)
	}
	dir := filepath.Join(g.dir, fmt.Sprintf("run-%d-%d", pid, time.Now().UnixNano()))
	g.mu.Lock()
	g.settling[dir] = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.settling, dir)
		g.mu.Unlock()
	}()

	if err := cgroups.Create(dir); err != nil {
		return "", fmt.Errorf("create cgroup: %w", err)
	}
	id, err := cgroups.ID(dir)
	if err != nil {
		_ = unix.Rmdir(dir)
		return "", err
	}
	if err := g.sel.SelectCgroup(id); err != nil {
		_ = unix.Rmdir(dir)
		return "", fmt.Errorf("select cgroup: %w", err)
	}
	if g.beforeMove != nil {
		g.beforeMove(dir)
	}
	if err := cgroups.MovePID(dir, pid); err != nil {
		if unix.Rmdir(dir) == nil {
			_ = g.sel.UnselectCgroup(id)
		}
		return "", fmt.Errorf("move pid %d into %s: %w", pid, dir, err)
	}
	// Alive after the move means alive during it: the pid written was
	// still the caller's. If it died meanwhile, whatever was moved stays
	// intercepted (the reaper removes the cgroup once empty), and the call
	// fails.
	if err := pidfdAlive(pidfd); err != nil {
		return "", fmt.Errorf("caller (pid %d) exited while being placed: %w", pid, err)
	}
	if cg, err := procCgroup(pid); err != nil || !strings.HasSuffix(dir, cg) {
		return "", fmt.Errorf("pid %d is in cgroup %q after the move, not %s (%v)", pid, cg, dir, err)
	}
	return dir, nil
}

// reap removes the run cgroups with no process left, except those being
// set up, and unselects them once removed.
func (g *runGroups) reap() {
	entries, _ := os.ReadDir(g.dir)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(g.dir, e.Name())
		g.mu.Lock()
		settling := g.settling[p]
		g.mu.Unlock()
		if settling {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil || len(strings.TrimSpace(string(b))) > 0 {
			continue
		}
		id, err := cgroups.ID(p)
		if err != nil {
			continue
		}
		// The kernel refuses to remove a cgroup that has processes
		// (EBUSY), so one that gained some since the check stays, and
		// stays selected.
		if err := unix.Rmdir(p); err != nil {
			continue
		}
		if err := g.sel.UnselectCgroup(id); err != nil {
			g.log.Warn("unselect removed `airlock run` cgroup", "cgroup", p, "err", err)
		}
	}
}

// pidfdAlive reports whether the process a pidfd names still runs.
func pidfdAlive(pidfd *os.File) error {
	return unix.PidfdSendSignal(int(pidfd.Fd()), 0, nil, 0)
}

// procCgroup is the cgroup v2 path of pid, relative to the mount.
func procCgroup(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}
