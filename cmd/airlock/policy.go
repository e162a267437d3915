package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check a SQL policy file, or see what it decides for a statement",
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyTestCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Check a policy file; errors name the line and the key",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(map[string]any{"file": args[0], "ok": true, "rules": len(p.Rules())})
			}
			fmt.Printf("%s: ok, %d rules (and the built-in ones)\n", args[0], len(p.Rules()))
			return nil
		},
	}
}

type policyTestResult struct {
	Decision   string          `json:"decision"`
	Rule       string          `json:"rule,omitempty"`
	Reason     string          `json:"reason,omitempty"`
	Timeout    string          `json:"timeout,omitempty"`
	Error      string          `json:"error,omitempty"` // why the SQL did not parse
	Statements []statementInfo `json:"statements,omitempty"`
}

type statementInfo struct {
	Command string   `json:"command"`
	Kind    string   `json:"kind"`
	Flags   []string `json:"flags,omitempty"`
	SQL     string   `json:"sql"` // redacted
}

func newPolicyTestCmd() *cobra.Command {
	var who policy.Who
	var groups []string
	cmd := &cobra.Command{
		Use:   "test FILE SQL",
		Short: "Print what a policy file decides for a SQL string, and by which rule",
		Example: `  airlock policy test policy.yaml 'DELETE FROM orders' --class agent
  airlock policy test policy.yaml 'DROP TABLE t' --group dba --connection prod --json`,
		Args: cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			switch who.Class {
			case policy.ClassAgent, policy.ClassPerson:
			default:
				return fmt.Errorf("--class %q: write agent or person", who.Class)
			}
			who.Groups = groups
			res, cerr := sqlclass.New(sqlclass.Options{}).Classify(args[1])
			d := p.Decide(res, cerr, who)
			out := policyTestResult{Decision: d.Action.String(), Rule: d.Rule, Reason: d.Reason}
			if d.Action == policy.Hold {
				out.Timeout = d.Timeout.String()
				if d.Timeout <= 0 {
					out.Timeout = "approvals.timeout (airlockd's configuration)"
				}
			}
			if cerr != nil {
				out.Error = cerr.Error()
			} else {
				res.Walk(func(s *sqlclass.Statement) {
					out.Statements = append(out.Statements, statementInfo{Command: s.Command, Kind: string(s.Kind), Flags: s.Flags.Names(), SQL: s.Redacted})
				})
			}
			if g.json {
				return printJSON(out)
			}
			fmt.Printf("decision: %s\n", out.Decision)
			fmt.Printf("rule:     %s\n", dash(out.Rule))
			if out.Reason != "" {
				fmt.Printf("reason:   %s\n", out.Reason)
			}
			if out.Timeout != "" {
				fmt.Printf("timeout:  %s\n", out.Timeout)
			}
			if out.Error != "" {
				fmt.Printf("error:    %s\n", out.Error)
			}
			for _, s := range out.Statements {
				fmt.Printf("  %-8s %-20s %v\n", s.Kind, s.Command, s.Flags)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&who.Class, "class", policy.ClassPerson, "process class: agent or person")
	cmd.Flags().StringSliceVar(&groups, "group", nil, "the person's identity group (repeatable)")
	cmd.Flags().StringVar(&who.Connection, "connection", "", "connection name, for rules limited to connections")
	return cmd
}
