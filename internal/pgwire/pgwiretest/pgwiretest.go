// Package pgwiretest serves a pgwire proxy on loopback for the tests of the
// packages that plug stages into it (guard, pgmask, audit), so that each
// does not carry its own accept loop.
package pgwiretest

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// Serve accepts connections on a loopback port until the test ends, giving
// each the session newSession makes (what the daemon would take from the
// kernel's record and the identity store), and returns the address. done,
// when not nil, runs after each session's Serve returns.
func Serve(tb testing.TB, p *pgwire.Proxy, newSession func() *session.Session, done func(*session.Session)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sess := newSession()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = p.Serve(ctx, c, sess)
				if done != nil {
					done(sess)
				}
			}()
		}
	}()
	tb.Cleanup(func() { cancel(); _ = ln.Close(); wg.Wait() })
	return ln.Addr().String()
}
