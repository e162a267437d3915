package pgwire

import (
	"context"
	"net"

	"github.com/airlockhq/airlock/internal/session"
)

// defaultDriver drives sessions whose Options name none. A variable so the
// test suite can run whole under either driver (AIRLOCK_PGWIRE_DRIVER). The
// loop is the default: fewer system calls and less CPU per transaction
// (docs/BENCHMARKS.md, "Drivers").
var defaultDriver = DriverLoop

// drive relays an established session with the configured driver. The event
// loop takes plain TCP sessions; a TLS client leg stays on goroutines.
func (p *Proxy) drive(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease, pl *pipe) error {
	if p.opts.Driver == DriverLoop && loopable(client, up.conn) {
		return p.relayLoop(ctx, client, up, sess, lease, pl)
	}
	return p.relay(ctx, client, up, sess, lease, pl)
}
