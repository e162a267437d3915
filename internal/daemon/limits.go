package daemon

import "golang.org/x/sys/unix"

// raiseFileLimit lifts the soft limit on open files to the hard one: every
// session holds two descriptors (client and upstream), and running out
// stalls the front door. The limit is logged against the session caps so an
// admin can see when they do not fit.
func (d *Daemon) raiseFileLimit() {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		d.log.Warn("read open files limit", "err", err)
		return
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err != nil {
			d.log.Warn("raise open files limit", "from", lim.Cur, "to", lim.Max, "err", err)
		} else {
			lim = raised
		}
	}
	d.fileLimit = lim.Cur
	if need := uint64(2*d.cfg.Proxy.MaxSessions) + 256; lim.Cur < need {
		d.log.Warn("open files limit is below what proxy.max_sessions needs; sessions may stall until others end",
			"limit", lim.Cur, "max_sessions", d.cfg.Proxy.MaxSessions, "needed", need,
			"hint", "raise LimitNOFILE in the unit, or lower proxy.max_sessions")
	} else {
		d.log.Info("open files limit", "limit", lim.Cur)
	}
}
