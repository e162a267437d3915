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

// drive relays an established session with the configured driver.
func (p *Proxy) drive(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease, pl *pipe) error {
	if p.driverOf(client, up) == DriverLoop {
		return p.relayLoop(ctx, client, up, sess, lease, pl)
	}
	return p.relay(ctx, client, up, sess, lease, pl)
}

// driverOf is the driver a session will run on: the event loop takes plain
// TCP sessions and TLS client legs over TCP (an upstream leg in TLS stays
// on goroutines).
func (p *Proxy) driverOf(client net.Conn, up *upstreamConn) string {
	if p.opts.Driver == DriverLoop && loopable(client, up.conn) {
		return DriverLoop
	}
	return DriverGoroutines
}
