package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/control"
)

func newApprovalsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "approvals",
		Short: "List requests waiting for an approver",
		Long: `airlock approvals lists the requests waiting for a decision: statements
held inside live sessions and just-in-time access requests.

Approvers (members of the configured approvers group, proven by their own
"airlock login") see every pending request; anyone else sees their own,
pending or recently decided. With a team store (audit.store: postgres://…)
the list also has the requests held on the team's other machines (WHERE
names the host), and "airlock approve ID" decides them from here; a request
marked "local only" could not reach the team store, and only approvers on
its own machine can decide it.

  airlock approvals
  airlock approvals --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := call(control.Request{Op: "approvals"})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(rep.Approvals)
			}
			printApprovals(rep.Approvals)
			return nil
		},
	}
}

func printApprovals(rs []approval.Request) {
	if len(rs) == 0 {
		fmt.Println("no requests")
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "ID\tKIND\tSTATE\tPERSON\tCONNECTION\tWHERE\tEXPIRES\tWHAT")
	for _, r := range rs {
		what := r.Statement
		if r.Kind == approval.KindAccess {
			what = fmt.Sprintf("access for %s: %s", r.For, r.Reason)
		} else if r.Rule != "" {
			what = fmt.Sprintf("%s  [%s]", oneLine(what), strings.TrimSpace(r.Rule+" "+r.Reason))
		}
		state := r.State
		if r.By != "" {
			state += " by " + r.By
		}
		if r.Why != "" && r.State != approval.StatePending {
			state += ": " + r.Why
		}
		// Where the request is held; local-only ones are not in the team
		// store (it could not be reached): only this machine's approvers
		// can decide them.
		where := "here"
		if r.Remote {
			where = oneLine(r.Host)
		}
		if r.Team == approval.TeamLocalOnly && r.State == approval.StatePending {
			where += " (local only)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Kind, state, r.Person.Name, r.Connection, where,
			time.Until(r.Expires).Round(time.Second), oneLine(what))
	}
}

// oneLine shows a requester's text on one line, whole (an approver must
// see all of what they approve) and with control characters escaped: the
// text comes from the process under watch, which could otherwise move the
// approver's cursor or hide part of the statement with terminal escapes.
func oneLine(s string) string {
	var b strings.Builder
	for _, r := range strings.Join(strings.Fields(s), " ") {
		if unicode.IsPrint(r) || r == ' ' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "\\u%04x", r)
		}
	}
	return b.String()
}

func newApproveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "approve ID",
		Short: "Approve a held statement or an access request",
		Long: `airlock approve ID lets a held statement run, or grants the access asked
for. Only members of the approvers group may, and never for their own
request. See "airlock approvals" for the IDs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return decide("approve", args[0], "")
		},
	}
}

func newDenyCmd() *cobra.Command {
	var reason string
	c := &cobra.Command{
		Use:   "deny ID --reason TEXT",
		Short: "Deny a held statement or an access request",
		Long: `airlock deny ID refuses a held statement (its client gets SQLSTATE 42501
naming you and your reason) or an access request.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return decide("deny", args[0], reason)
		},
	}
	c.Flags().StringVar(&reason, "reason", "", "why, for the requester and the audit log")
	return c
}

func decide(op, id, reason string) error {
	rep, err := call(control.Request{Op: op, Approval: &control.ApprovalCall{ID: id, Reason: reason}})
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(rep.Approval)
	}
	r := rep.Approval
	switch {
	case r.Kind == approval.KindAccess && r.State == approval.StateApproved:
		fmt.Printf("%s: granted %s access to %s until %s\n", r.ID, r.Person.Name, r.Connection, r.GrantEnd.Local().Format(time.RFC3339))
	default:
		fmt.Printf("%s: %s\n", r.ID, r.State)
	}
	if r.Remote {
		fmt.Printf("(held on %s; its daemon checked the decision again)\n", oneLine(r.Host))
	}
	return nil
}

func newRequestCmd() *cobra.Command {
	var dur time.Duration
	var reason string
	c := &cobra.Command{
		Use:   "request CONNECTION --for DURATION --reason TEXT",
		Short: "Ask for just-in-time access to a connection",
		Long: `airlock request asks the approvers for access to a connection that
requires a grant. Once one approves, your sessions on it are allowed until
the grant expires; live sessions end then. A request nobody decides expires
on its own.

  airlock request appdb --for 1h --reason "incident 4711: fix stuck jobs"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := call(control.Request{Op: "request", Approval: &control.ApprovalCall{Connection: args[0], For: dur.String(), Reason: reason}})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(rep.Approval)
			}
			r := rep.Approval
			fmt.Printf("%s: access to %s for %s requested; an approver runs `airlock approve %s` (the request expires at %s)\n",
				r.ID, r.Connection, r.For, r.ID, r.Expires.Local().Format(time.RFC3339))
			return nil
		},
	}
	c.Flags().DurationVar(&dur, "for", time.Hour, "how long the access is needed")
	c.Flags().StringVar(&reason, "reason", "", "why (required)")
	return c
}
