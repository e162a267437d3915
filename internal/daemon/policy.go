package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
)

// watchPolicy reloads the SQL policy on SIGHUP and when its file changes
// (checked every two seconds: editors replace files, which inotify on the
// file itself would miss). A file that does not load is logged and the
// policy in force stays.
func watchPolicy(ctx context.Context, store *policy.Store, path string, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	stamp := func() (time.Time, int64) {
		fi, err := os.Stat(path)
		if err != nil {
			return time.Time{}, -1
		}
		return fi.ModTime(), fi.Size()
	}
	lastMod, lastSize := stamp()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	reload := func(why string) {
		if err := store.Reload(); err != nil {
			log.Error("SQL policy not reloaded", "why", why, "err", err)
			return
		}
		log.Info("SQL policy reloaded", "why", why, "file", path, "rules", len(store.Policy().Rules()))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			lastMod, lastSize = stamp()
			reload("SIGHUP")
		case <-tick.C:
			if m, sz := stamp(); !m.Equal(lastMod) || sz != lastSize {
				lastMod, lastSize = m, sz
				reload("file changed")
			}
		}
	}
}

// processClass says who is at the keyboard of a session: an agent when the
// process is one Airlock selected as an agent's (tree mode: inside a
// contained tree cgroup, or tracked itself or through an ancestor; user
// mode: a listed uid) or runs one of the policy's agent_executables
// (itself or an ancestor); a person otherwise.
func (d *Daemon) processClass(o *session.Origin) string {
	switch d.cfg.Intercept.Mode {
	case "tree":
		if inTreeCgroup(o.CgroupPath) || d.ic.IsTracked(o.PID) {
			return session.ClassAgent
		}
		for _, p := range o.Parents {
			if d.ic.IsTracked(p.PID) {
				return session.ClassAgent
			}
		}
	case "user":
		for _, u := range d.cfg.Intercept.UIDs {
			if u == o.UID {
				return session.ClassAgent
			}
		}
	}
	if d.routes != nil {
		exes := d.routes.policies.Policy().AgentExecutables()
		if isAgentExe(exes, o.Exe) {
			return session.ClassAgent
		}
		for _, p := range o.Parents {
			if isAgentExe(exes, p.Exe) {
				return session.ClassAgent
			}
		}
	}
	return session.ClassPerson
}

func inTreeCgroup(path string) bool {
	return strings.Contains(path+"/", "/"+intercept.TreeCgroupName+"/")
}

// isAgentExe matches an executable against names (its base name) and
// absolute paths.
func isAgentExe(list []string, exe string) bool {
	if exe == "" {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	for _, e := range list {
		if e == exe || (!strings.Contains(e, "/") && e == filepath.Base(exe)) {
			return true
		}
	}
	return false
}
