package pgwire

import (
	"crypto/tls"
	"net"
)

// tlsTransport is what crypto/tls runs a client's record layer over. It has
// two lives:
//
// Until an event loop takes the socket (the handshake, startup and
// authentication, and the whole session under the goroutine driver), its
// reads and writes are sockIO's raw system calls: through net.TCPConn each
// record read and write is a system call the runtime treats as possibly
// blocking, whose bookkeeping wakes the sysmon thread on an idle daemon (a
// context switch per call). Deadlines and Close go through the connection.
//
// Once a loop has taken the socket (take), crypto/tls is driven from the
// loop and must never block it: Read makes one non-blocking read(2) of the
// descriptor and, when the socket has nothing, fails with errWouldBlock,
// which crypto/tls does not make sticky (a net.Error whose Temporary() is
// true: it keeps a partial record and the next Read goes on from it; see
// TestTLSWouldBlockNotSticky); Write only appends the records to out, which
// the loop sends with the session's other output. Everything then happens
// on the loop's thread, or after the loop let the session go.
type tlsTransport struct {
	net.Conn
	io *sockIO // nil: not plain TCP, so never taken by a loop

	fd int // the loop's descriptor, once taken; else -1
	// drained: a read(2) of this pass came back short, so the socket is
	// empty as of then and anything arriving later is reported by epoll.
	// Until the loop's next pass, Read fails at once instead of making a
	// read(2) that would find nothing.
	drained bool
	out     []byte // records written since the loop last took them
	done    bool   // the loop let the session go: the descriptor is closed
}

// newTLSTransport returns what a TLS server connection should run over.
func newTLSTransport(c net.Conn) *tlsTransport {
	return &tlsTransport{Conn: c, io: newSockIO(c), fd: -1}
}

func (t *tlsTransport) Read(b []byte) (int, error) {
	switch {
	case t.done:
		return 0, net.ErrClosed
	case t.fd >= 0:
		return t.loopRead(b)
	case t.io != nil:
		return t.io.Read(b)
	}
	return t.Conn.Read(b)
}

func (t *tlsTransport) Write(b []byte) (int, error) {
	switch {
	case t.done:
		return 0, net.ErrClosed
	case t.fd >= 0:
		t.out = append(t.out, b...)
		return len(b), nil
	case t.io != nil:
		return t.io.Write(b)
	}
	return t.Conn.Write(b)
}

// Close closes the connection unless a loop took its descriptor, which the
// loop's session closes.
func (t *tlsTransport) Close() error {
	if t.fd >= 0 {
		t.done = true
		return nil
	}
	return t.Conn.Close()
}

// take hands the socket, now fd, to an event loop (see the type).
func (t *tlsTransport) take(fd int) { t.fd = fd }

// errWouldBlock is what a loop-driven transport's Read returns when the
// socket has nothing more this pass.
var errWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "pgwire: TLS transport: no input until the socket is ready" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// loopTLS returns the transport of a client connection that is TLS over a
// plain TCP socket, which an event loop can drive; nil for any other.
func loopTLS(c net.Conn) *tlsTransport {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	nc := tc.NetConn()
	if pc, ok := nc.(*prefixConn); ok {
		if len(pc.prefix) > 0 {
			return nil // the handshake left replayed bytes unread: never the case after a handshake
		}
		nc = pc.Conn
	}
	tr, ok := nc.(*tlsTransport)
	if !ok || tr.io == nil || tr.fd >= 0 || tr.done {
		return nil
	}
	if _, ok := tr.Conn.(*net.TCPConn); !ok {
		return nil
	}
	return tr
}
