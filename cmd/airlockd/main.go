// Command airlockd is the privileged Airlock daemon.
//
//	airlockd [--config FILE]             run
//	airlockd uninstall [--config FILE]   detach and unpin everything
//	airlockd check [--config FILE]       validate the configuration
//	airlockd version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/daemon"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "airlockd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("airlockd "+cmd, flag.ContinueOnError)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cmd == "version" {
		fmt.Println("airlockd", daemon.Version)
		return nil
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	switch cmd {
	case "check":
		fmt.Printf("%s: ok (%d targets, %d connections, mode %s)\n", *cfgPath, len(cfg.Targets), len(cfg.Connections), cfg.Intercept.Mode)
		return nil
	case "uninstall":
		if err := daemon.Uninstall(cfg); err != nil {
			return err
		}
		fmt.Println("airlockd: programs detached, pins removed from", daemon.PinDir(cfg))
		return nil
	case "run":
	default:
		return fmt.Errorf("unknown command %q (run, check, uninstall, version)", cmd)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it loads eBPF programs and manages cgroups)")
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, cfg, log)
}
