// Command airlock is the user's side of Airlock.
//
//	airlock status [--json]        what the daemon intercepts, and live sessions
//	airlock run -- CMD [ARGS...]   run CMD (and its children) intercepted
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/airlockhq/airlock/internal/control"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "airlock:", err)
		os.Exit(1)
	}
}

func usage() error {
	return errors.New("usage: airlock status [--json] | airlock run -- CMD [ARGS...]")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("airlock "+cmd, flag.ContinueOnError)
	socket := fs.String("socket", envOr("AIRLOCK_SOCKET", control.DefaultSocket), "airlockd control socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	switch cmd {
	case "status":
		rep, err := control.Call(ctx, *socket, control.Request{Op: "status"})
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rep.Status)
		}
		printStatus(rep.Status)
		return nil
	case "run":
		argv := fs.Args()
		if len(argv) == 0 {
			return usage()
		}
		path, err := exec.LookPath(argv[0])
		if err != nil {
			return err
		}
		// The daemon moves this very process (it learns the pid from the
		// kernel, not from us) into an intercepted cgroup; exec keeps the
		// pid, so the command and all it starts stay there.
		if _, err := control.Call(ctx, *socket, control.Request{Op: "run"}); err != nil {
			return err
		}
		return syscall.Exec(path, argv, os.Environ())
	default:
		return usage()
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
