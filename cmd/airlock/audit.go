package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/control"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Export and verify the audit record (root and auditors)",
	}
	cmd.AddCommand(newAuditExportCmd(), newAuditVerifyCmd(), newAuditKeysCmd(), newAuditRotateKeyCmd(),
		newAuditRevealCmd(), newAuditComplianceKeyCmd())
	return cmd
}

func newAuditExportCmd() *cobra.Command {
	var format, output string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write every record as JSON lines (schema airlock.audit/1, docs/AUDIT.md)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "jsonl" {
				return fmt.Errorf("--format %q: only jsonl is supported", format)
			}
			var out io.Writer = os.Stdout
			if output != "" && output != "-" {
				f, err := os.OpenFile(output, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					return fmt.Errorf("create %s: %w", output, err)
				}
				defer f.Close()
				out = f
			}
			bw := bufio.NewWriterSize(out, 1<<20)
			enc := json.NewEncoder(bw)
			q := &control.AuditQuery{Limit: 5000}
			n := 0
			for {
				rep, err := auditCall(cmd, "audit.export", q, 5*time.Minute)
				if err != nil {
					return err
				}
				for _, r := range rep.Records {
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
				n += len(rep.Records)
				if len(rep.Records) < q.Limit {
					break
				}
				last := rep.Records[len(rep.Records)-1]
				q.AfterDaemon, q.AfterSeq = last.Daemon, last.Seq
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			if output != "" && output != "-" {
				fmt.Fprintf(os.Stderr, "airlock: %d records written to %s\n", n, output)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "jsonl", "output format (jsonl)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this new file instead of stdout")
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check every chain and signed checkpoint; name the first break",
		Long: `Check that no record was edited, deleted, reordered or cut from the end: each
record's hash, its link to the one before, the signing keys and their
rotations, and every signed checkpoint. Exits 1 and names the first break
when the record was tampered with. Nothing is ever repaired.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := auditCall(cmd, "audit.verify", nil, 10*time.Minute)
			if err != nil {
				return err
			}
			v := rep.Verify
			if wantJSON(cmd) {
				if err := printJSON(v); err != nil {
					return err
				}
			} else {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "DAEMON\tRECORDS\tSEQ\tCHECKPOINTS\tSIGNED THROUGH\tKEYS\tSTATE")
				for _, c := range v.Chains {
					state := "ok"
					if len(c.Breaks) > 0 {
						state = fmt.Sprintf("BROKEN (%d problems)", len(c.Breaks))
					}
					fmt.Fprintf(w, "%s\t%d\t%d-%d\t%d\t%d\t%d\t%s\n", c.Daemon, c.Records, c.First, c.Last, c.Checkpoints, c.SealedTo, len(c.Keys), state)
				}
				w.Flush()
				for _, c := range v.Chains {
					for _, b := range c.Breaks {
						fmt.Printf("%s seq %d: %s: %s\n", c.Daemon, b.Seq, b.Kind, b.Message)
					}
				}
			}
			if !v.OK {
				return fmt.Errorf("the audit record was tampered with: first break: %s seq %d: %s", v.First.Daemon, v.First.Seq, v.First.Message)
			}
			if !wantJSON(cmd) {
				fmt.Println("audit record verified: every chain intact")
			}
			return nil
		},
	}
}

func newAuditKeysCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keys",
		Short: "Print the daemons' public signing keys (to pin, or to check a copy)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := auditCall(cmd, "audit.keys", nil, 30*time.Second)
			if err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(rep.Keys)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "DAEMON\tKEY\tSINCE\tREPLACES\tPUBLIC KEY (ed25519, base64)")
			for _, k := range rep.Keys {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", k.Daemon, k.KeyID, k.Time.Local().Format(time.RFC3339), dash(k.PreviousKey), k.PublicKey)
			}
			return w.Flush()
		},
	}
}

func newAuditRotateKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace the daemon's signing key (root); the rotation is signed by the old key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := auditCall(cmd, "audit.rotate-key", nil, 30*time.Second)
			if err != nil {
				return err
			}
			if rep.KeyID == "" {
				return errors.New("airlockd did not say which key it now uses")
			}
			fmt.Println("new signing key", rep.KeyID)
			return nil
		},
	}
}

// printAuditStatus is the audit line of `airlock status`.
func printAuditStatus(w io.Writer, a *audit.Status) {
	if a == nil {
		return
	}
	fmt.Fprintf(w, "audit\t%s: %d records stored, checkpoint at seq %d\n", a.Store, a.Stored, a.CheckpointSeq)
	if !a.Reachable {
		fmt.Fprintf(w, "  STORE UNREACHABLE\tsince %s: %s\n", a.DownSince.Local().Format(time.RFC3339), a.Error)
	}
	if a.Spooled > 0 || !a.Reachable {
		fmt.Fprintf(w, "  spooled\t%d records (%d of %d MiB) waiting in the local journal, shipped in order when the store is back\n",
			a.Spooled, a.SpoolBytes>>20, a.SpoolMax>>20)
	}
	if a.RingFull > 0 {
		fmt.Fprintf(w, "  ring full\t%d records waited for a journal write on the data path (the shipper fell behind)\n", a.RingFull)
	}
	if a.Problem != "" {
		fmt.Fprintf(w, "  PROBLEM\t%s\n", a.Problem)
	}
}
