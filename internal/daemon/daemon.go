// Package daemon is airlockd: it wires the kernel interception, the target
// set, the front door, the protocol proxies and the control socket together
// and owns every goroutine they need.
package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/approval/team"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/frontdoor"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/resolve"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/targets"
	"github.com/airlockhq/airlock/internal/upstream"
)

// Version is set at build time.
var Version = "dev"

// PinDir is where a configuration's kernel state is pinned. The folder is
// versioned: a daemon whose map layout differs must not adopt old pins.
func PinDir(cfg *config.Config) string {
	return filepath.Join(cfg.Intercept.BPFFS, "airlock", fmt.Sprintf("v%d", intercept.LayoutVersion))
}

// SocketPath is the control socket of a configuration.
func SocketPath(cfg *config.Config) string {
	return filepath.Join(cfg.RuntimeDir, "airlock.sock")
}

// Daemon is one running airlockd.
type Daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	started  time.Time
	features intercept.Features

	ic        *intercept.Interceptor
	set       *targets.Set
	res       *resolve.Resolver
	fd        *frontdoor.Server
	ctl       *control.Server
	routes    *router
	audit     *audit.Writer
	closers   []func()
	cgRoot    string // cgroup v2 mount
	runGroup  string // parent of `airlock run` cgroups
	fileLimit uint64 // RLIMIT_NOFILE after raising it
	runs      *runGroups

	contain *intercept.Containment // tree mode's containment cgroups; nil when off
	ident   *identity.Service      // nil without an identity section

	approvals    *approval.Broker // nil without an approvals section
	team         *team.Store      // approvals shared through the team store; nil without one
	holdPatterns []*regexp.Regexp

	mu sync.Mutex
}

// Run starts the daemon and blocks until ctx is done, then shuts down:
// sessions are told and closed, credentials revoked, and the kernel programs
// stay pinned so that intercepted connects are refused while it is down.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	d := &Daemon{cfg: cfg, log: log, started: time.Now()}
	defer d.close()
	if err := d.start(ctx); err != nil {
		return err
	}
	return d.serve(ctx)
}

func (d *Daemon) start(ctx context.Context) error {
	d.raiseFileLimit()
	feats, err := intercept.ProbeFeatures()
	if err != nil {
		return fmt.Errorf("probe kernel features: %w", err)
	}
	d.features = feats
	if missing := feats.Missing(); len(missing) > 0 {
		return fmt.Errorf("this kernel cannot run Airlock:\n  - %s", strings.Join(missing, "\n  - "))
	}
	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir %s: %w", d.cfg.StateDir, err)
	}
	root, err := cgroups.Mount()
	if err != nil {
		return fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	d.cgRoot = root
	attach := filepath.Join(root, d.cfg.Intercept.AttachCgroup)
	mode, err := intercept.ParseMode(d.cfg.Intercept.Mode)
	if err != nil {
		return err
	}

	// Static targets first, so the programs never run with an empty or
	// stale destination map after a takeover.
	var static []targets.Entry
	var hosts []resolve.Spec
	for _, t := range d.cfg.Targets {
		if t.Host != "" {
			hosts = append(hosts, resolve.Spec{Name: t.Name, Host: t.Host, Port: t.Port})
			continue
		}
		static = append(static, targets.Entry{Name: t.Name, Prefix: t.Prefix, Port: t.Port})
	}
	d.set = targets.NewSet(static)

	d.ic, err = intercept.Open(ctx, intercept.Options{
		PinDir:     PinDir(d.cfg),
		CgroupPath: attach,
		ProxyPort:  d.cfg.Proxy.Port,
		Mode:       mode,
		// The daemon's own sockets are told apart by this mark alone: a
		// pid exemption would outlive the daemon and pass a recycled pid.
		Mark:       d.cfg.Intercept.Mark,
		NetnsAddrs: d.cfg.Intercept.NetnsAddrs,
		Users:      d.cfg.Intercept.UIDs,
		// Matched by the kernel at exec (tree mode), daemon running or not.
		Executables:       d.cfg.Intercept.Executables,
		ClientLegRedirect: d.cfg.Intercept.RedirectClientLeg(),
		Logger:            d.log,
	})
	if err != nil {
		return fmt.Errorf("set up kernel interception: %w", err)
	}

	d.res, err = resolve.New(resolve.Options{
		Servers: d.cfg.DNS.Servers,
		MinTTL:  d.cfg.DNS.MinTTL.D(),
		MaxTTL:  d.cfg.DNS.MaxTTL.D(),
		Linger:  d.cfg.DNS.Linger.D(),
		Hosts:   d.cfg.DNS.Hosts,
		Logger:  d.log,

		// A DNS server can be a target too: its TCP queries must not loop.
		Mark: d.cfg.Intercept.Mark,
	})
	if err != nil {
		return fmt.Errorf("set up DNS resolution of targets: %w", err)
	}
	// Until a hostname target resolves, its port is intercepted at every
	// address and refused: fail closed, never let a connection to it
	// through because its address is not known yet.
	for _, h := range hosts {
		d.set.SetUnresolved(h.Name, h.Port)
	}
	if err := d.syncTargets(); err != nil {
		return err
	}
	// The watcher resolves every hostname at once; wait (bounded) for that
	// first round so sessions start with real addresses where DNS answers.
	firstRound := make(chan struct{})
	var once sync.Once
	d.closers = append(d.closers, d.watch(ctx, func(ctx context.Context) {
		if len(hosts) == 0 {
			once.Do(func() { close(firstRound) })
			return
		}
		d.res.Watch(ctx, hosts, func(rs []resolve.Result) {
			for _, r := range rs {
				// Current and lingering addresses alike: a client may
				// still hold an address DNS has just dropped.
				d.set.SetResolved(r.Name, r.Port, r.Intercept())
				if len(r.Addrs) == 0 && len(r.Lingering) == 0 {
					d.log.Warn("target hostname has not resolved; its port is intercepted at every address and refused until it does",
						"target", r.Name, "host", r.Host, "port", r.Port, "err", r.Err)
				}
			}
			if err := d.syncTargets(); err != nil {
				d.log.Error("update destination map", "err", err)
			}
			once.Do(func() { close(firstRound) })
		})
	}))
	select {
	case <-firstRound:
	case <-time.After(10 * time.Second):
		d.log.Warn("hostname targets not resolved within 10s; refusing their connections until they do")
	case <-ctx.Done():
		return ctx.Err()
	}

	if err := d.selectProcesses(ctx, mode); err != nil {
		return err
	}

	// The audit record is the record: each event reaches its journal
	// before the client sees what it describes. Session-level events (no
	// statement text, no parameters) also go to the log, off the data path.
	if err := d.openAudit(ctx); err != nil {
		return err
	}
	ew := &flushWriter{w: bufio.NewWriterSize(os.Stderr, 64<<10)}
	q := session.NewQueue(session.LogSink{Logger: slog.New(slog.NewTextHandler(ew, &slog.HandlerOptions{Level: slog.LevelInfo}))}, 4096, ew.Flush)
	d.closers = append(d.closers, d.watch(context.WithoutCancel(ctx), q.Run))
	sink := session.Fanout{d.audit, q}
	warnBenchOff(d.log)
	if !benchRecords() {
		sink = session.Fanout{q}
	}
	stopProfile, err := serveBenchProfile(ctx, d.log)
	if err != nil {
		return err
	}
	d.closers = append(d.closers, stopProfile)
	if err := d.startApprovals(ctx, sink); err != nil {
		return fmt.Errorf("set up approvals: %w", err)
	}
	dialer := upstream.Dialer{Mark: d.cfg.Intercept.Mark, Timeout: 10 * time.Second}
	d.routes, err = newRouter(ctx, d.cfg, d.set, dialer, d.lookup, d.log, d)
	if err != nil {
		return err
	}
	d.closers = append(d.closers, d.routes.close)
	if d.approvals != nil {
		// The policy's holds wait for the approvers.
		d.routes.setApprover(brokerApprover{d.approvals})
	}
	people, err := d.people(sink)
	if err != nil {
		return fmt.Errorf("set up identities: %w", err)
	}
	d.fd, err = frontdoor.Listen(frontdoor.Options{
		Port:    d.cfg.Proxy.Port,
		Records: d.ic,
		Router:  d.routes,
		People:  people,
		Sink:    sink,
		Logger:  d.log,
		IsRoot:  d.isTrackedRoot,
		Class:   d.processClass,

		MaxSessions:       d.cfg.Proxy.MaxSessions,
		MaxSessionsPerUID: d.cfg.Proxy.MaxSessionsPerUID,
		// Selected processes in other network namespaces are sent here.
		ExtraAddrs: d.cfg.Intercept.NetnsAddrs,
		Join:       d.ic.JoinClientLeg,
	})
	if err != nil {
		return err
	}
	d.ctl, err = control.Listen(SocketPath(d.cfg), d, d.log)
	if err != nil {
		return err
	}
	d.log.Info("airlockd ready", "version", Version, "mode", d.cfg.Intercept.Mode, "proxy_port", d.cfg.Proxy.Port,
		"attach_cgroup", attach, "pins", PinDir(d.cfg), "targets", len(d.cfg.Targets))
	return nil
}

// watch runs fn in a goroutine owned by the daemon; the returned func stops
// it and waits.
func (d *Daemon) watch(ctx context.Context, fn func(context.Context)) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); fn(ctx) }()
	return func() { cancel(); <-done }
}

func (d *Daemon) syncTargets() error {
	var ts []intercept.Target
	for _, e := range d.set.All() {
		ts = append(ts, intercept.Target{Prefix: e.Prefix, Port: e.Port})
	}
	if err := d.ic.SetTargets(ts); err != nil {
		return fmt.Errorf("write %d destinations to the kernel: %w", len(ts), err)
	}
	return nil
}

func (d *Daemon) selectProcesses(ctx context.Context, mode intercept.Mode) error {
	// `airlock run` places processes under this cgroup; it is selected in
	// every mode so that the command works whatever the configuration.
	d.runGroup = filepath.Join(d.cgRoot, strings.TrimSuffix(d.cfg.Intercept.AttachCgroup, "/"), "airlock.run")
	if err := cgroups.Create(d.runGroup); err != nil {
		return fmt.Errorf("create cgroup for `airlock run`: %w", err)
	}
	id, err := cgroups.ID(d.runGroup)
	if err != nil {
		return err
	}
	if err := d.ic.SelectCgroup(id); err != nil {
		return fmt.Errorf("select cgroup %s: %w", d.runGroup, err)
	}
	for _, p := range d.cfg.Intercept.Cgroups {
		full := filepath.Join(d.cgRoot, p)
		id, err := cgroups.ID(full)
		if err != nil {
			return fmt.Errorf("configured cgroup %s: %w", p, err)
		}
		if err := d.ic.SelectCgroup(id); err != nil {
			return fmt.Errorf("select cgroup %s: %w", p, err)
		}
	}
	d.runs = newRunGroups(d.runGroup, d.ic, d.log)
	d.closers = append(d.closers, d.watch(ctx, d.reapRunGroups))
	if mode == intercept.ModeTree {
		exes := d.cfg.Intercept.Executables
		if err := d.ic.SeedTree(ctx, exes); err != nil {
			return fmt.Errorf("seed process tree from /proc: %w", err)
		}
		// New trees are moved into cgroups of their own as soon as the
		// kernel reports them; the sweep also runs every second, for
		// children forked before the move and for dropped notices.
		kick := make(chan uint32, 64)
		onTracked := func(tgid uint32) {
			select {
			case kick <- tgid:
			default: // a sweep is pending anyway
			}
		}
		if d.cfg.Intercept.ContainTrees() {
			d.contain, err = intercept.NewContainment(d.ic, filepath.Join(d.cgRoot, strings.TrimSuffix(d.cfg.Intercept.AttachCgroup, "/"), intercept.TreeCgroupName), d.cgRoot)
			if err != nil {
				return err
			}
			if _, err := d.contain.Sweep(); err != nil {
				d.log.Warn("contain the seeded process trees", "err", err)
			}
			d.closers = append(d.closers, d.watch(ctx, func(ctx context.Context) { d.contain.Run(ctx, kick, time.Second) }))
		}
		d.closers = append(d.closers, d.watch(ctx, func(ctx context.Context) {
			if err := d.ic.WatchExec(ctx, exes, onTracked); err != nil && ctx.Err() == nil {
				d.log.Error("watch exec events", "err", err)
			}
		}))
		d.closers = append(d.closers, d.watch(ctx, d.rebuildTracking))
	}
	return nil
}

// rebuildTracking watches for processes the kernel failed to track (a full
// map). Until they are rebuilt from /proc, the kernel refuses target
// connects of every untracked process; this lifts that as soon as the set
// is whole again.
func (d *Daemon) rebuildTracking(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := d.ic.Rebuild(ctx, d.cfg.Intercept.Executables)
		if err != nil && !failing && ctx.Err() == nil {
			d.log.Error("tracked processes were lost and cannot be rebuilt yet; untracked processes' target connects are refused", "err", err)
		}
		failing = err != nil
	}
}

// reapRunGroups removes `airlock run` cgroups whose processes have all
// exited, so they do not pile up.
func (d *Daemon) reapRunGroups(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.runs.reap()
	}
}

func (d *Daemon) lookup(ctx context.Context, host string) ([]string, error) {
	addrs, _, err := d.res.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out, nil
}

// isTrackedRoot is one map lookup, not a listing: it runs for every
// ancestor of every session's client.
func (d *Daemon) isTrackedRoot(pid uint32) bool { return d.ic.IsTracked(pid) }

func (d *Daemon) serve(ctx context.Context) error {
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); errc <- d.fd.Serve(ctx) }()
	go func() { defer wg.Done(); errc <- d.ctl.Serve(ctx) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	wg.Wait()
	d.log.Info("airlockd stopped; kernel programs stay pinned, intercepted connects are refused until it returns")
	return err
}

func (d *Daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	if d.ic != nil {
		if err := d.ic.Close(); err != nil {
			d.log.Warn("close interceptor", "err", err)
		}
	}
}

// flushWriter is a buffered writer that Flush and Write may share.
type flushWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (f *flushWriter) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(b)
}

func (f *flushWriter) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.w.Flush()
}

// Uninstall detaches and unpins everything a configuration installed.
func Uninstall(cfg *config.Config) error {
	err := intercept.Uninstall(PinDir(cfg))
	// Pins an older release left (normally adopted and removed at start).
	for v := 1; v < intercept.LayoutVersion; v++ {
		err = errors.Join(err, intercept.Uninstall(filepath.Join(cfg.Intercept.BPFFS, "airlock", fmt.Sprintf("v%d", v))))
	}
	if root, rerr := cgroups.Mount(); rerr == nil {
		attach := filepath.Join(root, cfg.Intercept.AttachCgroup)
		// Contained trees (Cursor itself) are moved back, never killed.
		if rerr := cgroups.Drain(filepath.Join(attach, intercept.TreeCgroupName), attach); rerr != nil {
			err = errors.Join(err, rerr)
		}
		// Removing a cgroup kills what is left in it.
		for _, name := range []string{"airlock.run", intercept.TreeCgroupName} {
			if rerr := cgroups.Remove(filepath.Join(attach, name)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
	}
	return err
}
