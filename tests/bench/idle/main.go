// Command idle opens N PostgreSQL sessions, runs SELECT 1 on each, prints
// "ready N" and holds them, idle, until its standard input closes; then it
// runs SELECT 1 on each again and closes them. tests/bench/run.sh runs it in
// the intercepted cgroup to measure what an idle session costs airlockd.
//
//	idle -n 1000 -parallel 8 -dsn 'host=... user=agent dbname=bench'
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	n := flag.Int("n", 1000, "sessions to open")
	parallel := flag.Int("parallel", 8, "sessions opened at once")
	dsn := flag.String("dsn", "", "libpq-style connection string")
	timeout := flag.Duration("timeout", 5*time.Minute, "limit for opening all sessions")
	flag.Parse()
	if *n < 1 || *parallel < 1 || *dsn == "" {
		fmt.Fprintln(os.Stderr, "usage: idle -n N [-parallel P] -dsn DSN")
		os.Exit(2)
	}
	cfg, err := pgx.ParseConfig(*dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idle:", err)
		os.Exit(2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conns := make([]*pgx.Conn, *n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				c, err := pgx.ConnectConfig(ctx, cfg.Copy())
				if err == nil {
					var one int
					err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
					if err != nil {
						_ = c.Close(context.Background())
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("session %d: %w", i, err)
					}
					mu.Unlock()
					cancel() // stop the others: the figure needs all N
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = c.Close(cctx)
				ccancel()
			}
		}
	}
	if firstErr != nil {
		closeAll()
		fmt.Fprintln(os.Stderr, "idle:", firstErr)
		os.Exit(1)
	}
	fmt.Printf("ready %d %.3f\n", *n, time.Since(start).Seconds())

	_, _ = io.Copy(io.Discard, os.Stdin) // hold until stdin closes

	// The sessions must still work after idling.
	bad := 0
	for _, c := range conns {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		var one int
		if err := c.QueryRow(cctx, "SELECT 1").Scan(&one); err != nil {
			bad++
		}
		ccancel()
	}
	closeAll()
	fmt.Printf("done %d failed %d\n", *n, bad)
	if bad > 0 {
		os.Exit(1)
	}
}
