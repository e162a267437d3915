package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/control"
)

// auditCall sends one audit request to the root's --socket, with a wait
// sized for the op (verifying a large store takes a while).
func auditCall(cmd *cobra.Command, op string, q *control.AuditQuery, timeout time.Duration) (*control.AuditReply, error) {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	rep, err := control.Call(ctx, g.socket, control.Request{Op: op, Audit: q})
	if err != nil {
		return nil, err
	}
	if rep.Audit == nil {
		return nil, fmt.Errorf("airlockd sent no answer to %s (is it older than this airlock?)", op)
	}
	return rep.Audit, nil
}

func wantJSON(*cobra.Command) bool { return g.json }

// parseWhen reads an absolute time (RFC 3339 or YYYY-MM-DD) or an age
// ("90m", "36h", "7d") meaning that long ago.
func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil && d >= 0 {
			return time.Now().Add(-time.Duration(d) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (write 2026-01-31, 2026-01-31T09:00:00Z, or an age such as 90m, 36h, 7d)", s)
}

func newSessionsCmd() *cobra.Command {
	var f audit.Filter
	var since, until string
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List recorded sessions (yours; every one for root and auditors)",
		Long: `List sessions from the audit record, newest first.

Root and members of audit.auditor_group see every session; everyone else
sees the sessions of their own uid.`,
		Example: `  airlock sessions --since 24h
  airlock sessions --person alice --connection appdb
  airlock sessions --process python3
  airlock sessions show 3k2j4h5g6f7d8s9a`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if f.Since, err = parseWhen(since); err != nil {
				return fmt.Errorf("--since: %w", err)
			}
			if f.Until, err = parseWhen(until); err != nil {
				return fmt.Errorf("--until: %w", err)
			}
			rep, err := auditCall(cmd, "sessions", &control.AuditQuery{Filter: f}, 30*time.Second)
			if err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(rep.Sessions)
			}
			printSessions(rep.Sessions)
			return nil
		},
	}
	cmd.Flags().StringVar(&f.Person, "person", "", "only sessions of this person (name or email)")
	cmd.Flags().StringVar(&f.Connection, "connection", "", "only sessions of this connection")
	cmd.Flags().StringVar(&f.Process, "process", "", "only sessions opened by this pid, or an executable whose path contains this")
	cmd.Flags().StringVar(&since, "since", "", "only sessions started at or after (time or age: 2026-01-31, 36h, 7d)")
	cmd.Flags().StringVar(&until, "until", "", "only sessions started before")
	cmd.Flags().IntVar(&f.Limit, "limit", 200, "at most this many sessions")
	cmd.AddCommand(newSessionShowCmd())
	return cmd
}

func printSessions(ss []audit.SessionSummary) {
	if len(ss) == 0 {
		fmt.Println("no sessions recorded (that you may see)")
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "SESSION\tSTARTED\tDURATION\tPERSON\tPID\tPROCESS\tCONNECTION\tDATABASE\tSTATEMENTS\tEND")
	for _, s := range ss {
		dur, end := "live", "-"
		if s.End != nil {
			dur = (time.Duration(s.End.DurationMS) * time.Millisecond).String()
			end = s.End.Reason
		}
		db := "-"
		if s.End != nil && s.End.Database != "" {
			db = s.End.Database
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.Start.Started.Local().Format("2006-01-02 15:04:05"),
			dur, dash(s.Start.Person.Name), s.Start.Process.PID, dash(s.Start.Process.Exe), dash(s.Start.Connection), db, s.Statements, end)
	}
}

func newSessionShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one session: who, from which process, and its timeline",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := auditCall(cmd, "session", &control.AuditQuery{ID: args[0]}, 30*time.Second)
			if err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(rep.Session)
			}
			printSession(rep.Session)
			return nil
		},
	}
}

func printSession(d *audit.SessionDetail) {
	s := d.Start
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "session\t%s (daemon %s)\n", d.ID, d.Daemon)
	p := s.Person
	who := p.Name
	if p.Email != "" {
		who += " <" + p.Email + ">"
	}
	fmt.Fprintf(w, "person\t%s, uid %d\n", who, p.UID)
	if p.Issuer != "" {
		fmt.Fprintf(w, "  identity\t%s subject %s\n", p.Issuer, p.Subject)
	}
	if len(p.Groups) > 0 {
		fmt.Fprintf(w, "  groups\t%s\n", strings.Join(p.Groups, ", "))
	}
	pr := s.Process
	fmt.Fprintf(w, "process\tpid %d (thread %d), uid %d, %s\n", pr.PID, pr.TID, pr.UID, dash(pr.Exe))
	if len(pr.Cmdline) > 0 {
		fmt.Fprintf(w, "  cmdline\t%s\n", strings.Join(pr.Cmdline, " "))
	}
	if pr.Cgroup != "" {
		fmt.Fprintf(w, "  cgroup\t%s\n", pr.Cgroup)
	}
	for _, a := range s.Ancestry {
		fmt.Fprintf(w, "  parent\t%d %s %s\n", a.PID, dash(a.Exe), strings.Join(a.Cmdline, " "))
	}
	fmt.Fprintf(w, "connection\t%s (target %s, %s), dialled %s\n", s.Connection, s.Target, s.Protocol, s.Dest)
	fmt.Fprintf(w, "started\t%s\n", s.Started.Local().Format(time.RFC3339Nano))
	if e := d.End; e != nil {
		fmt.Fprintf(w, "upstream\tdatabase %s as role %s\n", dash(e.Database), dash(e.UpstreamRole))
		why := e.Reason
		if e.Detail != "" {
			why += ": " + e.Detail
		}
		fmt.Fprintf(w, "ended\t%s after %s (%s); %d bytes in, %d out\n", d.EndTime.Local().Format(time.RFC3339Nano),
			time.Duration(e.DurationMS)*time.Millisecond, why, e.BytesIn, e.BytesOut)
	} else {
		fmt.Fprintf(w, "ended\tnot yet (live)\n")
	}
	fmt.Fprintf(w, "statements\t%d\n", d.Statements)
	w.Flush()
	fmt.Println("\nTIMELINE")
	w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, r := range d.Records {
		fmt.Fprintf(w, "  +%s\t#%d\t%s\t%s\n", r.Time.Sub(s.Started).Round(time.Microsecond), r.Seq, r.Kind, summarize(r))
	}
	w.Flush()
}

// summarize is one line about a record.
func summarize(r audit.Record) string {
	switch r.Kind {
	case "statement":
		var st audit.Statement
		if json.Unmarshal(r.Data, &st) == nil {
			return oneLineMax(st.SQL, 100) + " → " + outcome(st)
		}
	case "session.end":
		var e audit.SessionEnd
		if json.Unmarshal(r.Data, &e) == nil {
			return e.Reason + " " + oneLineMax(e.Detail, 100)
		}
	case "credential.create", "credential.revoke", "credential.sweep":
		var c audit.Credential
		if json.Unmarshal(r.Data, &c) == nil {
			return fmt.Sprintf("%s role %s %s %s", c.Mode, c.Role, c.Outcome, c.Error)
		}
	case "session.refused":
		var f audit.Refusal
		if json.Unmarshal(r.Data, &f) == nil {
			return f.SQLState + " " + f.Reason
		}
	case "session.start":
		var s audit.SessionStart
		if json.Unmarshal(r.Data, &s) == nil {
			return fmt.Sprintf("%s pid %d %s → %s", s.Person.Name, s.Process.PID, s.Process.Exe, s.Dest)
		}
	case audit.KindMaskOriginals:
		var c audit.MaskOriginals
		if json.Unmarshal(r.Data, &c) == nil {
			return fmt.Sprintf("statement #%d: %d masked values, encrypted to %s", c.Statement, c.Values, strings.Join(c.Recipients, ", "))
		}
	case audit.KindAuditReveal:
		var v audit.RevealData
		if json.Unmarshal(r.Data, &v) == nil {
			return fmt.Sprintf("%s (uid %d) fetched %d compliance copies to decrypt", v.Person, v.UID, v.Copies)
		}
	}
	return oneLineMax(string(r.Data), 100)
}

func outcome(st audit.Statement) string {
	out := st.Tag
	if st.SQLState != "" {
		out = "ERROR " + st.SQLState + " " + st.Error
	}
	if out == "" {
		out = "(suspended)"
	}
	out += fmt.Sprintf(" [%d rows, %d bytes, %s]", st.Rows, st.Bytes, time.Duration(st.DurationUS)*time.Microsecond)
	if st.Decision != "" {
		out += " policy " + st.Decision
		if st.Rule != "" {
			out += " (" + st.Rule + ")"
		}
	}
	return out
}

func oneLineMax(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > max {
		return string(r[:max]) + "…"
	}
	return s
}

func newReplayCmd() *cobra.Command {
	var speed float64
	cmd := &cobra.Command{
		Use:   "replay ID",
		Short: "Replay a session's statements in order, with their timing and results",
		Long: `Print a recorded session's statements in the order the server ran them, each
with its start offset, duration and outcome (command tag or SQLSTATE), and the
result sample the client saw where one was recorded.

--speed 1 replays in real time, 10 ten times faster; 0 (default) prints at once.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if speed < 0 {
				return errors.New("--speed must be 0 (no waiting) or positive")
			}
			rep, err := auditCall(cmd, "session", &control.AuditQuery{ID: args[0]}, 30*time.Second)
			if err != nil {
				return err
			}
			d := rep.Session
			var sts []audit.Statement
			var starts []time.Time
			for _, r := range d.Records {
				if r.Kind != "statement" {
					continue
				}
				var st audit.Statement
				if err := json.Unmarshal(r.Data, &st); err != nil {
					return fmt.Errorf("record %d: %w", r.Seq, err)
				}
				sts = append(sts, st)
				starts = append(starts, r.Time.Add(-time.Duration(st.DurationUS)*time.Microsecond))
			}
			if wantJSON(cmd) {
				return printJSON(sts)
			}
			fmt.Printf("session %s: %s, pid %d %s → %s (%d statements)\n", d.ID, d.Start.Person.Name, d.Start.Process.PID,
				dash(d.Start.Process.Exe), d.Start.Connection, len(sts))
			for i, st := range sts {
				if speed > 0 && i > 0 {
					if gap := starts[i].Sub(starts[i-1]); gap > 0 {
						select {
						case <-time.After(time.Duration(float64(gap) / speed)):
						case <-cmd.Context().Done():
							return cmd.Context().Err()
						}
					}
				}
				num := ""
				if st.Number > 0 {
					num = fmt.Sprintf("#%d ", st.Number) // what `audit reveal --statement` takes
				}
				fmt.Printf("[+%s] %s%s\n", starts[i].Sub(d.Start.Started).Round(time.Microsecond), num, st.SQL)
				if len(st.Params) > 0 {
					fmt.Printf("    params: %s\n", strings.Join(st.Params, ", "))
				} else if st.ParamCount > 0 {
					fmt.Printf("    params: %d (not recorded: audit.record_params is off)\n", st.ParamCount)
				}
				fmt.Printf("    → %s\n", outcome(st))
				if sm := st.Sample; sm != nil {
					fmt.Printf("    | %s\n", strings.Join(sm.Columns, " | "))
					// airlockd renders stored samples; one it could
					// not render comes as stored, and says why here.
					if err := sm.Render(); err != nil {
						fmt.Printf("    | (%v)\n", err)
					}
					for _, row := range sm.Rows {
						cells := make([]string, len(row))
						for i, v := range row {
							cells[i] = "NULL"
							if v != nil {
								cells[i] = *v
							}
						}
						fmt.Printf("    | %s\n", strings.Join(cells, " | "))
					}
					if sm.Truncated {
						fmt.Println("    | …")
					}
				}
			}
			if d.End != nil {
				fmt.Printf("session ended: %s\n", d.End.Reason)
			}
			return nil
		},
	}
	cmd.Flags().Float64Var(&speed, "speed", 0, "replay speed: 1 real time, 10 ten times faster, 0 no waiting")
	return cmd
}
