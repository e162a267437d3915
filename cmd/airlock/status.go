package main

import (
	"fmt"
	"os"
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
	fmt.Fprintf(w, "kernel\t%s\n", s.Kernel.Release)
	for _, f := range s.Kernel.Found {
		fmt.Fprintf(w, "  found\t%s\n", f)
	}
	for _, m := range s.Kernel.Missing {
		fmt.Fprintf(w, "  MISSING\t%s\n", m)
	}
	fmt.Fprintln(w, "\nPROGRAM\tTYPE\tATTACHED TO\tLINK\tPINNED")
	for _, p := range s.Programs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%v\n", p.Name, p.Type, p.Attach, p.LinkID, p.Pinned)
	}
	fmt.Fprintln(w, "\nTARGET\tADDRESS\tCONNECTION\tPROTOCOL\tRESOLVED\tTTL")
	for _, t := range s.Targets {
		res := strings.Join(t.Resolved, ", ")
		if t.Error != "" {
			res += " (error: " + t.Error + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Address, dash(t.Connection), t.Protocol, dash(res), dash(t.TTL))
	}
	fmt.Fprintf(w, "\nTRACKED PROCESSES\t%d\n", len(s.Tracked))
	for _, p := range s.Tracked {
		fmt.Fprintf(w, "  %d\t%s\n", p.PID, p.Exe)
	}
	fmt.Fprintln(w, "\nSESSION\tTARGET\tPERSON\tPID\tEXE\tDEST\tAGE\tPARENTS")
	for _, ss := range s.Sessions {
		var parents []string
		for _, p := range ss.Origin.Parents {
			parents = append(parents, fmt.Sprintf("%d:%s", p.PID, p.Exe))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", ss.ID, ss.Target, dash(ss.Person), ss.Origin.PID,
			dash(ss.Origin.Exe), ss.Dest, time.Since(ss.Started).Round(time.Second), dash(strings.Join(parents, " < ")))
	}
}
