package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/procinfo"
	"github.com/airlockhq/airlock/internal/session"
)

// Status implements control.Handler. Root sees every session; other users
// see only their own.
func (d *Daemon) Status(_ context.Context, p control.Peer) (*control.Status, error) {
	st := &control.Status{
		Daemon: control.DaemonStatus{
			Version: Version, PID: os.Getpid(), Started: d.started, Config: d.cfg.File(),
			Mode: d.cfg.Intercept.Mode, Cgroup: d.cfg.Intercept.AttachCgroup,
			ProxyPort: d.cfg.Proxy.Port, PinDir: PinDir(d.cfg), Off: benchOffParts(),
		},
		Kernel: control.KernelStatus{Release: d.features.Kernel, Found: foundFeatures(d.features), Missing: d.features.Missing()},
	}
	ist := d.ic.Status()
	for _, prog := range ist.Programs {
		st.Programs = append(st.Programs, control.ProgramStatus{
			Name: prog.Name, Type: prog.Type, Attach: prog.AttachPoint, LinkID: prog.LinkID, Pinned: prog.Pinned,
		})
	}
	st.Counters, st.MapEntries = ist.Counters, ist.MapEntries
	leg := d.ic.ClientLeg()
	st.Daemon.ClientLeg = leg.Mode
	for name, v := range leg.Counters {
		st.Counters["client_leg_"+name] = v
	}
	if leg.Counters != nil {
		st.MapEntries["socks"], st.MapEntries["proxy_socks"] = leg.Sockets, leg.ProxySockets
	}
	st.Selection = d.selectionStatus(ist)
	if d.audit != nil {
		as := d.audit.Status()
		st.Audit = &as
	}
	resolved := map[string][]string{}
	unresolved := map[string]bool{}
	for _, e := range d.set.All() {
		if e.Unresolved {
			unresolved[e.Name] = true
			continue
		}
		resolved[e.Name] = append(resolved[e.Name], e.Prefix.String())
	}
	dns := map[string]control.TargetStatus{}
	for _, r := range d.res.Snapshot() {
		ts := control.TargetStatus{ResolvedAt: r.Resolved, Error: r.Err}
		if r.TTL > 0 {
			ts.TTL = r.TTL.String()
		}
		for _, a := range r.Addrs {
			ts.Addresses = append(ts.Addresses, control.AddressStatus{Address: a.String(), State: "current", LastSeen: r.Resolved})
		}
		for _, l := range r.Lingering {
			ts.Addresses = append(ts.Addresses, control.AddressStatus{Address: l.Addr.String(), State: "lingering",
				LastSeen: l.LastSeen, Expires: l.Expires})
		}
		dns[r.Name] = ts
	}
	for _, t := range d.cfg.Targets {
		ts := dns[t.Name]
		ts.Name, ts.Address, ts.Resolved = t.Name, t.Address, resolved[t.Name]
		ts.Unresolved = unresolved[t.Name]
		if ts.Unresolved && ts.Error == "" {
			ts.Error = "not resolved yet"
		}
		ts.Protocol = "tcp"
		if conn, ok := d.cfg.ConnectionFor(t.Name); ok {
			ts.Connection, ts.Protocol = conn.Name, conn.Protocol
		}
		st.Targets = append(st.Targets, ts)
	}
	// Live ones only, and a bounded list: map_entries has the count.
	if tracked, err := d.ic.TrackedLive(1000); err == nil {
		for _, pid := range tracked {
			tp := control.TrackedProcess{PID: pid}
			if pr, err := procinfo.Read(pid); err == nil {
				tp.Exe = pr.Exe
			}
			st.Tracked = append(st.Tracked, tp)
		}
	}
	for _, s := range d.fd.Sessions() {
		if p.UID != 0 && s.Origin.UID != p.UID {
			continue
		}
		st.Sessions = append(st.Sessions, sessionStatus(s))
	}
	fs := d.fd.Stats()
	st.Proxy = &control.ProxyStatus{MaxSessions: fs.MaxSessions, MaxSessionsPerUID: fs.MaxSessionsPerUID, Active: fs.Active,
		PerUID: map[string]int{}, Refused: fs.Refused, AcceptErrors: fs.AcceptErrors,
		LastAcceptError: fs.LastAcceptError, LastAcceptErrorAt: fs.LastAcceptErrorAt, OpenFilesLimit: d.fileLimit}
	for uid, n := range fs.PerUID {
		if p.UID == 0 || uid == p.UID {
			st.Proxy.PerUID[strconv.FormatUint(uint64(uid), 10)] = n
		}
	}
	return st, nil
}

func sessionStatus(s *session.Session) control.SessionStatus {
	return control.SessionStatus{
		ID: s.ID, Target: s.Target, Connection: s.Connection, Protocol: s.Protocol,
		Dest: s.Dest.String(), Person: s.Person.Name, Started: s.Started, Origin: s.Origin,
		Database: s.Database(), Role: s.UpstreamRole(), Counters: s.Stats.Snapshot(), Attrs: s.Attrs(),
	}
}

// Run implements control.Handler: the caller's own process (named by the
// kernel with a pidfd, never a pid it claims) moves into a fresh cgroup
// under the run group, then execs the command, which with every descendant
// is intercepted.
func (d *Daemon) Run(_ context.Context, p control.Peer) (*control.RunReply, error) {
	if p.PID == 0 {
		return nil, errors.New("caller has no pid")
	}
	dir, err := d.runs.place(int(p.PID), p.PIDFD)
	if err != nil {
		return nil, err
	}
	d.log.Info("airlock run: process placed in an intercepted cgroup", "pid", p.PID, "uid", p.UID, "cgroup", dir)
	rel, _ := filepath.Rel(d.cgRoot, dir)
	return &control.RunReply{Cgroup: "/" + rel}, nil
}

func foundFeatures(f intercept.Features) []string {
	var out []string
	if f.BTF {
		out = append(out, "BTF (/sys/kernel/btf/vmlinux)")
	}
	if f.Cgroup2Mount != "" {
		out = append(out, "cgroup v2 at "+f.Cgroup2Mount)
	}
	if f.BPFFS {
		out = append(out, "bpffs")
	}
	if len(f.Missing()) == 0 {
		out = append(out, "cgroup connect4/6, sockops, getpeername4/6, tp_btf sched tracepoints")
	}
	return out
}

func (d *Daemon) selectionStatus(ist intercept.Status) *control.SelectionStatus {
	ic := d.cfg.Intercept
	sel := &control.SelectionStatus{
		Mode:               ist.Mode.String(),
		TrackingLost:       ist.TrackLost,
		TrackingIncomplete: ist.TrackLost != ist.TrackRebuilt,
		OpenEscapes:        intercept.OpenEscapes(ist.Mode),
	}
	switch ist.Mode {
	case intercept.ModeTree:
		sel.Executables = ic.Executables
	case intercept.ModeUser:
		for k, name := range ic.Users {
			if k < len(ic.UIDs) && name != strconv.FormatUint(uint64(ic.UIDs[k]), 10) {
				name = fmt.Sprintf("%s (uid %d)", name, ic.UIDs[k])
			}
			sel.Users = append(sel.Users, name)
		}
	}
	if d.contain != nil {
		if rel, err := filepath.Rel(d.cgRoot, d.contain.Root()); err == nil {
			sel.Containment = "/" + rel
		}
	}
	for _, a := range ic.NetnsAddrs {
		sel.NetnsAddresses = append(sel.NetnsAddresses, a.String())
	}
	return sel
}
