package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/control"
)

func newStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show what airlockd intercepts, and live sessions",
		Long: `airlock status shows the running daemon: its version, configuration and
mode, the kernel features it found, its eBPF programs, the targets it
intercepts and their resolved addresses, the processes it tracks and the
live sessions (target, person, process, destination, age, parent chain).

Root sees every session; other users see their own.

  airlock status
  airlock status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := call(control.Request{Op: "status"})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(rep.Status)
			}
			printStatus(rep.Status)
			return nil
		},
	}
}

func printStatus(s *control.Status) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	d := s.Daemon
	fmt.Fprintf(w, "airlockd %s\tpid %d, up %s\n", d.Version, d.PID, time.Since(d.Started).Round(time.Second))
	fmt.Fprintf(w, "config\t%s\n", d.Config)
	fmt.Fprintf(w, "mode\t%s (attach cgroup %s, proxy port %d, pins %s)\n", d.Mode, d.Cgroup, d.ProxyPort, d.PinDir)
	if d.ClientLeg != "" {
		fmt.Fprintf(w, "client leg\t%s\n", d.ClientLeg)
	}
	for _, p := range d.Off {
		fmt.Fprintf(w, "  OFF\t%s (AIRLOCK_BENCH_OFF: a benchmark setting, not for use)\n", p)
	}
	printAuditStatus(w, s.Audit)
	fmt.Fprintf(w, "kernel\t%s\n", s.Kernel.Release)
	for _, f := range s.Kernel.Found {
		fmt.Fprintf(w, "  found\t%s\n", f)
	}
	for _, m := range s.Kernel.Missing {
		fmt.Fprintf(w, "  MISSING\t%s\n", m)
	}
	if sel := s.Selection; sel != nil {
		if len(sel.Users) > 0 {
			fmt.Fprintf(w, "users\t%s\n", strings.Join(sel.Users, ", "))
		}
		if len(sel.Executables) > 0 {
			fmt.Fprintf(w, "executables\t%s\n", strings.Join(sel.Executables, ", "))
		}
		if sel.Containment != "" {
			fmt.Fprintf(w, "trees contained in\t%s/<tree> (a cgroup no unprivileged process can leave)\n", sel.Containment)
		}
		if len(sel.NetnsAddresses) > 0 {
			fmt.Fprintf(w, "other namespaces\tsent to the proxy at %s\n", strings.Join(sel.NetnsAddresses, ", "))
		} else {
			fmt.Fprintf(w, "other namespaces\ttarget connects refused (no intercept.netns_addresses)\n")
		}
		if sel.TrackingIncomplete {
			fmt.Fprintf(w, "TRACKING INCOMPLETE\t%d processes could not be tracked (map full): target connects of untracked processes are refused until the set is rebuilt\n", sel.TrackingLost)
		}
		fmt.Fprintf(w, "left open by mode %s\t\n", sel.Mode)
		for _, e := range sel.OpenEscapes {
			fmt.Fprintf(w, "  - %s\n", e)
		}
	}
	fmt.Fprintln(w, "\nPROGRAM\tTYPE\tATTACHED TO\tLINK\tPINNED")
	for _, p := range s.Programs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%v\n", p.Name, p.Type, p.Attach, p.LinkID, p.Pinned)
	}
	fmt.Fprintln(w, "\nTARGET\tADDRESS\tCONNECTION\tPROTOCOL\tRESOLVED\tTTL")
	for _, t := range s.Targets {
		res := strings.Join(t.Resolved, ", ")
		if t.Unresolved {
			res = "UNRESOLVED: port intercepted at every address, connections refused"
		}
		if t.Error != "" {
			res += " (error: " + t.Error + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Address, dash(t.Connection), t.Protocol, dash(res), dash(t.TTL))
		for _, a := range t.Addresses {
			switch a.State {
			case "lingering":
				fmt.Fprintf(w, "  %s\tlingering (dropped by DNS)\tlast seen %s ago\texpires in %s\t\t\n", a.Address,
					since(a.LastSeen), time.Until(a.Expires).Round(time.Second))
			default:
				fmt.Fprintf(w, "  %s\t%s\tlast seen %s ago\t\t\t\n", a.Address, a.State, since(a.LastSeen))
			}
		}
	}
	if p := s.Proxy; p != nil {
		fmt.Fprintf(w, "\nSESSIONS\t%d open (max %d, max %d per uid; open files limit %d)\n", p.Active, p.MaxSessions, p.MaxSessionsPerUID, p.OpenFilesLimit)
		for _, uid := range sortedKeys(p.PerUID) {
			fmt.Fprintf(w, "  uid %s\t%d\n", uid, p.PerUID[uid])
		}
		for _, r := range sortedKeys(p.Refused) {
			fmt.Fprintf(w, "  refused (%s)\t%d\n", r, p.Refused[r])
		}
		if p.AcceptErrors > 0 {
			fmt.Fprintf(w, "  accept errors\t%d, last %s ago: %s\n", p.AcceptErrors, since(p.LastAcceptErrorAt), p.LastAcceptError)
		}
	}
	fmt.Fprintf(w, "\nTRACKED PROCESSES\t%d\n", len(s.Tracked))
	for _, p := range s.Tracked {
		fmt.Fprintf(w, "  %d\t%s\n", p.PID, p.Exe)
	}
	fmt.Fprintln(w, "\nSESSION\tTARGET\tPERSON\tPID\tEXE\tDEST\tAGE\tROLE\tSTMTS\tBYTES IN/OUT\tPARENTS")
	for _, ss := range s.Sessions {
		var parents []string
		for _, p := range ss.Origin.Parents {
			parents = append(parents, fmt.Sprintf("%d:%s", p.PID, p.Exe))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d/%d\t%s\n", ss.ID, ss.Target, dash(ss.Person), ss.Origin.PID,
			dash(ss.Origin.Exe), ss.Dest, time.Since(ss.Started).Round(time.Second), dash(ss.Role), ss.Counters.Statements,
			ss.Counters.BytesIn, ss.Counters.BytesOut, dash(strings.Join(parents, " < ")))
	}
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
