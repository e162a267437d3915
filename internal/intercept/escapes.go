package intercept

// OpenEscapes says, in plain words, which ways around interception a mode
// leaves open: what `airlock status` shows, and what README's "Threat model
// and limits" section lists. Escapes the kernel closes (threads,
// exec, reparenting, other network namespaces, a full tracked map) are not
// listed.
func OpenEscapes(m Mode) []string {
	common := []string{
		"connections to addresses that are not registered targets go direct (an address the agent learnt elsewhere, a jump host, a proxy it can reach)",
		"sockets connected before airlockd first attached are never redirected",
		"a process that becomes root (sudo, a setuid program) can detach the programs or set the daemon's socket mark",
	}
	var open []string
	switch m {
	case ModeTree:
		open = []string{
			"a process outside the tree that acts for one inside it: an already-running tmux or screen server (tmux send-keys), systemd-run --user, ssh localhost, at or cron, a D-Bus-activated terminal, a forwarder (ssh -L, a SOCKS proxy) started outside the tree; mode: user closes these",
			"programs started outside the tree that are not a configured executable (a second editor, a shell the user opened)",
		}
	case ModeUser:
		open = []string{
			"a process of another uid that acts for the agent (a system service or another user's daemon it can ask to connect)",
			"a program that switches its real uid (sudo, su) leaves the selection",
		}
	case ModeCgroup:
		open = []string{
			"everything not started with `airlock run` or in a configured cgroup, and so every escape of tree mode",
		}
	case ModeAll:
		open = []string{
			"processes outside the attach cgroup",
		}
	}
	return append(open, common...)
}
