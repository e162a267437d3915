// Command airlock is the user's side of Airlock. Each command group lives
// in its own file with a newXxxCmd constructor registered below.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/control"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "airlock:", err)
		os.Exit(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	socket string
	json   bool
}

var g globals

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "airlock",
		Short: "Talk to airlockd: status, intercepted runs, identity, the audit record",
		Long: `airlock is the command-line side of Airlock.

Airlock intercepts the database connections of AI coding agents (Cursor and
everything it starts), connects upstream with a credential made for that
session, and records what happens. Every session belongs to a person: the
one logged in with "airlock login" for the connecting uid (or, on machines
without an identity section in airlockd's configuration, the local account).

The CLI talks to airlockd over its control socket. The daemon identifies the
caller by the kernel's record of the socket peer (SO_PEERCRED), never by
anything the CLI says.

ENVIRONMENT
  AIRLOCK_SOCKET   control socket (default ` + control.DefaultSocket + `)`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", envOr("AIRLOCK_SOCKET", control.DefaultSocket), "airlockd control socket")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print JSON instead of text")
	root.AddCommand(newStatusCmd(), newRunCmd(), newLoginCmd(), newWhoamiCmd(), newLogoutCmd(),
		newSessionsCmd(), newReplayCmd(), newAuditCmd())
	root.AddCommand(newApprovalsCmd(), newApproveCmd(), newDenyCmd(), newRequestCmd())
	root.AddCommand(newPolicyCmd())
	return root
}

// call sends one request to airlockd with a bounded wait.
func call(req control.Request) (*control.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return control.Call(ctx, g.socket, req)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
