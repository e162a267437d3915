package main

import (
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/internal/control"
)

func newRunCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run -- CMD [ARGS...]",
		Short: "Run CMD (and everything it starts) intercepted",
		Long: `airlock run asks airlockd to move this very process into a cgroup it
intercepts, then replaces itself with CMD (exec keeps the pid), so CMD and
every process it starts are intercepted, whatever intercept.mode says.

The daemon learns the pid from the kernel (SO_PEERCRED), not from the CLI.
Put -- before CMD so that CMD's own flags are not read as airlock's.

  airlock run -- psql "host=db.internal dbname=app"
  airlock run -- ./migrate.sh --dry-run`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			path, err := exec.LookPath(argv[0])
			if err != nil {
				return err
			}
			if _, err := call(control.Request{Op: "run"}); err != nil {
				return err
			}
			return syscall.Exec(path, argv, os.Environ())
		},
	}
	// Everything after CMD belongs to CMD.
	cmd.Flags().SetInterspersed(false)
	return cmd
}
