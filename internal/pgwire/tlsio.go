package pgwire

import "net"

// rawTCP is a plain TCP connection whose reads and writes are sockIO's raw
// system calls, for crypto/tls to run its record layer over. A TLS session
// cannot use the raw path for its plaintext, but its records can: through
// net.TCPConn each record read and write is a system call the runtime
// treats as possibly blocking, whose bookkeeping wakes the sysmon thread on
// an idle daemon (a context switch per call). Deadlines and Close still go
// through the connection.
type rawTCP struct {
	net.Conn
	io *sockIO
}

func (c *rawTCP) Read(b []byte) (int, error)  { return c.io.Read(b) }
func (c *rawTCP) Write(b []byte) (int, error) { return c.io.Write(b) }

// tlsTransport returns what a TLS server connection should run over.
func tlsTransport(c net.Conn) net.Conn {
	if s := newSockIO(c); s != nil {
		return &rawTCP{Conn: c, io: s}
	}
	return c
}
