// Package relay serves sessions of targets that have no protocol proxy: it
// copies bytes to and from the original destination, so the interception
// path can be used and observed end to end.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/airlockhq/airlock/internal/session"
)

// Dialer opens upstream connections (marked, so they are not redirected).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// TCP relays to the session's original destination.
type TCP struct {
	Dialer Dialer
}

// Serve copies both ways until either side ends or ctx is done.
func (r TCP) Serve(ctx context.Context, client net.Conn, sess *session.Session) error {
	defer client.Close()
	if sess.Person.Name == "" {
		return errors.New("refused: no identity for the connecting uid")
	}
	up, err := r.Dialer.DialContext(ctx, "tcp", sess.Dest.String())
	if err != nil {
		return fmt.Errorf("relay to %s: %w", sess.Dest, err)
	}
	defer up.Close()

	in, out := &sess.Stats.BytesIn, &sess.Stats.BytesOut
	stop := context.AfterFunc(ctx, func() {
		_ = client.Close()
		_ = up.Close()
	})
	defer stop()

	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		c, _ := io.Copy(dst, src)
		n.Add(c)
		// Half-close so a client that shuts down its write side still gets
		// the rest of the answer.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	go pipe(up, client, in)
	go pipe(client, up, out)
	wg.Wait()
	return nil
}
