package intercept

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/procinfo"
)

// Containment keeps tree mode's process trees in cgroups Airlock owns,
// <attach>/airlock.tree/<root tgid>-<n>, selected like `airlock run`'s.
//
// Why: a cgroup is inherited by every child and an unprivileged process
// cannot leave it (moving needs write access to the common ancestor, which
// is root's). That holds whatever happens to pids: threads that exec, a
// leader that exits, reparenting, a tracked entry lost to a full map. The
// kernel's tracked map only bridges the moment between the exec that starts
// a tree and the move, and the children forked in that moment: every
// tracked process not yet contained is moved at the next sweep. Entries of
// contained processes stay in the map (they go at group death): deleting
// one could race a fork whose child is created before the move but reported
// after the delete, and that child would be neither tracked nor contained.
type Containment struct {
	ic      *Interceptor
	root    string // absolute path of airlock.tree
	rootRel string // the same as /proc/PID/cgroup shows it ("/x/airlock.tree")
	seq     uint64
}

// NewContainment creates (or adopts) the containment cgroup root under the
// attach cgroup and selects it. mount is the cgroup v2 mount point.
func NewContainment(ic *Interceptor, root, mount string) (*Containment, error) {
	rel, err := filepath.Rel(mount, root)
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("containment cgroup %s is not under the cgroup mount %s", root, mount)
	}
	if err := cgroups.Create(root); err != nil {
		return nil, fmt.Errorf("create containment cgroup: %w", err)
	}
	id, err := cgroups.ID(root)
	if err != nil {
		return nil, err
	}
	if err := ic.SelectCgroup(id); err != nil {
		return nil, fmt.Errorf("select containment cgroup %s: %w", root, err)
	}
	return &Containment{ic: ic, root: root, rootRel: filepath.Clean("/" + rel)}, nil
}

// Root is the containment cgroup's absolute path.
func (c *Containment) Root() string { return c.root }

func (c *Containment) contains(cgPath string) (tree string, ok bool) {
	if !strings.HasPrefix(cgPath, c.rootRel+"/") {
		return "", false
	}
	rest := strings.TrimPrefix(cgPath, c.rootRel+"/")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	return rest, rest != ""
}

// Sweep moves every tracked process that is not yet contained into its
// tree's cgroup: the one of its closest contained ancestor, or a new one
// when it starts a tree. It returns how many processes it moved.
func (c *Containment) Sweep() (int, error) {
	// Live processes looked up in the map, not the map listed: the cost
	// follows the processes, however full the map is.
	tracked, err := c.ic.TrackedLive(1 << 22)
	if err != nil {
		return 0, fmt.Errorf("contain trees: %w", err)
	}
	self := cgroupNS(os.Getpid())
	var loose []uint32
	for _, tgid := range tracked {
		cg, err := procinfo.CgroupPath(tgid)
		if err != nil {
			continue // gone, or not a process (a leftover entry)
		}
		if _, ok := c.contains(cg); ok {
			continue
		}
		// A process in a cgroup namespace of its own belongs to a
		// container runtime: moving it would take it out of its
		// container's limits. It stays selected by the tracked map.
		if ns := cgroupNS(int(tgid)); ns == 0 || ns != self {
			continue
		}
		loose = append(loose, tgid)
	}
	if len(loose) == 0 {
		return 0, nil
	}
	parents, err := procParents()
	if err != nil {
		return 0, fmt.Errorf("contain trees: %w", err)
	}
	// Ancestors first, so that a child forked before its parent's move
	// joins the parent's tree instead of starting one of its own.
	depth := func(pid int) int {
		n := 0
		for ; n < 4096; n++ {
			ppid, ok := parents[pid]
			if !ok || ppid <= 1 {
				break
			}
			pid = ppid
		}
		return n
	}
	sort.Slice(loose, func(a, b int) bool { return depth(int(loose[a])) < depth(int(loose[b])) })
	moved := 0
	var errs []error
	for _, tgid := range loose {
		cg, _ := procinfo.CgroupPath(tgid)
		dir := c.treeOf(int(tgid), parents)
		if dir == "" {
			c.seq++
			dir = filepath.Join(c.root, fmt.Sprintf("%d-%d", tgid, time.Now().UnixNano()+int64(c.seq)))
			if err := cgroups.Create(dir); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := cgroups.MovePID(dir, int(tgid)); err != nil {
			if !errors.Is(err, unix.ESRCH) {
				errs = append(errs, err)
			}
			continue
		}
		moved++
		c.ic.log.Debug("contained tracked process", "tgid", tgid, "from", cg, "cgroup", dir)
	}
	return moved, errors.Join(errs...)
}

// treeOf returns the cgroup of pid's closest contained ancestor, or "".
func (c *Containment) treeOf(pid int, parents map[int]int) string {
	for depth := 0; depth < 4096; depth++ {
		ppid, ok := parents[pid]
		if !ok || ppid <= 1 {
			return ""
		}
		if cg, err := procinfo.CgroupPath(uint32(ppid)); err == nil {
			if tree, ok := c.contains(cg); ok {
				dir := filepath.Join(c.root, tree)
				if _, err := os.Stat(dir); err == nil {
					return dir
				}
			}
		}
		pid = ppid
	}
	return ""
}

// Run sweeps whenever kick delivers a new tree's root and every interval
// (the ring buffer may drop notices), and removes tree cgroups whose
// processes are all gone, until ctx is done.
func (c *Containment) Run(ctx context.Context, kick <-chan uint32, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-t.C:
			c.reap()
		}
		_, err := c.Sweep()
		if err != nil && !failing {
			c.ic.log.Warn("cannot contain some tracked processes (they stay intercepted through the tracked map)", "err", err)
		}
		failing = err != nil
	}
}

// reap removes empty tree cgroups.
func (c *Containment) reap() {
	entries, _ := os.ReadDir(c.root)
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(c.root, e.Name())
		if pids, err := cgroups.PIDs(p); err == nil && len(pids) == 0 {
			if sub, _ := os.ReadDir(p); !hasDir(sub) {
				_ = unix.Rmdir(p)
			}
		}
	}
}

func hasDir(es []os.DirEntry) bool {
	for _, e := range es {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// TreeCgroupName is the containment root's name under the attach cgroup.
const TreeCgroupName = "airlock.tree"

// cgroupNS returns the inode of pid's cgroup namespace, 0 if unknown.
func cgroupNS(pid int) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/cgroup", pid), &st); err != nil {
		return 0
	}
	return st.Ino
}
