package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/control"
)

// revealed is one statement's decrypted compliance copy, for --json.
type revealed struct {
	Statement int64           `json:"statement"`
	SQL       string          `json:"sql"`
	Entries   []revealedValue `json:"entries"`
	Truncated bool            `json:"truncated,omitempty"`
}

type revealedValue struct {
	compliance.Entry
	Name string `json:"name,omitempty"` // the column's name, from the statement's result sample
}

func newAuditRevealCmd() *cobra.Command {
	var identity string
	var statements []int64
	cmd := &cobra.Command{
		Use:   "reveal SESSION [--statement N]... --identity KEYFILE",
		Short: "Decrypt the compliance copy of a session's masked values with the compliance private key (recorded)",
		Long: `reveal fetches a session's compliance copies (the original values masking replaced,
encrypted to masking.compliance.recipient) through airlockd, which first records who fetched
them (an audit.reveal record), and decrypts them here with KEYFILE, an age identity file.
The private key never leaves this machine; airlockd never has it. Root and members of
audit.auditor_group only.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if identity == "" {
				return errors.New("reveal needs --identity KEYFILE: the compliance private key (an age identity file, AGE-SECRET-KEY-1…) whose public key is masking.compliance.recipient")
			}
			ids, err := compliance.LoadIdentities(identity)
			if err != nil {
				return err
			}
			rep, err := auditCall(cmd, "audit.reveal", &control.AuditQuery{ID: args[0], Statements: statements}, time.Minute)
			if err != nil {
				return err
			}
			c := rep.Copies
			if c == nil {
				return errors.New("airlockd sent no compliance copies (is it older than this airlock?)")
			}
			sqlOf := map[int64]audit.Statement{}
			for _, st := range c.Statements {
				sqlOf[st.Number] = st
			}
			var out []revealed
			for _, cp := range c.Copies {
				st := sqlOf[cp.Statement]
				r := revealed{Statement: cp.Statement, SQL: st.SQL, Truncated: cp.Truncated}
				if len(cp.Ciphertext) == 0 {
					fmt.Fprintf(os.Stderr, "statement #%d: its compliance copy could not be sealed when it ran (see airlockd's log)\n", cp.Statement)
					continue
				}
				plain, err := compliance.Open(cp.Ciphertext, ids)
				if errors.Is(err, compliance.ErrWrongKey) {
					return fmt.Errorf("%s does not open this session's compliance copies: they are encrypted to %s (masking.compliance.recipient); use that key's identity file",
						identity, strings.Join(cp.Recipients, ", "))
				}
				if err != nil {
					return fmt.Errorf("statement #%d: %w", cp.Statement, err)
				}
				r.Truncated = r.Truncated || plain.Truncated
				for _, e := range plain.Entries {
					v := revealedValue{Entry: e}
					if sm := st.Sample; sm != nil && e.Column >= 0 && e.Column < len(sm.Columns) {
						v.Name = sm.Columns[e.Column]
					}
					r.Entries = append(r.Entries, v)
				}
				out = append(out, r)
			}
			if wantJSON(cmd) {
				return printJSON(out)
			}
			fmt.Printf("session %s: %s, pid %d %s → %s\n", c.Session, c.Start.Person.Name, c.Start.Process.PID,
				dash(c.Start.Process.Exe), c.Start.Connection)
			if len(out) == 0 {
				fmt.Println("no compliance copies: nothing was masked, or masking.compliance was not configured when it ran")
				return nil
			}
			for _, r := range out {
				fmt.Printf("statement #%d: %s\n", r.Statement, r.SQL)
				tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "  ROW\tCOLUMN\tRULE\tCLIENT SAW\tORIGINAL")
				for _, v := range r.Entries {
					name := v.Name
					switch {
					case v.Column < 0:
						name = "(COPY line)"
					case name == "":
						name = "#" + strconv.Itoa(v.Column+1)
					}
					saw := "NULL"
					if v.Masked != nil {
						saw = *v.Masked
					}
					fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", v.Row+1, name, v.Rule, saw, v.Original)
				}
				_ = tw.Flush()
				if r.Truncated {
					fmt.Println("  … more values were masked than the copy keeps (masking.compliance.max_bytes)")
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&identity, "identity", "", "age identity file holding the compliance private key")
	cmd.Flags().Int64SliceVar(&statements, "statement", nil, "only this statement (its number in the session, as replay shows it); repeatable")
	return cmd
}

func newAuditComplianceKeyCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "compliance-key --output KEYFILE",
		Short: "Make a compliance key pair here: the private key goes to KEYFILE, the public key (for masking.compliance.recipient) is printed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output == "" {
				return errors.New("compliance-key needs --output KEYFILE (created with mode 600; keep it off the machines airlockd runs on)")
			}
			file, pub, err := compliance.NewIdentity()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(output, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("create %s: %w", output, err)
			}
			if _, err := f.WriteString(file); err != nil {
				_ = f.Close()
				return fmt.Errorf("write %s: %w", output, err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("write %s: %w", output, err)
			}
			fmt.Println(pub)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "where to write the private key (must not exist)")
	return cmd
}
