package pgwire

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// sockIO reads and writes a plain TCP connection through its file
// descriptor, for the relay's two pumps. A round trip through the proxy is
// two reads and two writes of a few dozen bytes each, so what surrounds each
// system call is much of the proxy's cost. The socket is non-blocking, so
// its reads and writes return at once; sockIO makes them as raw system
// calls. net.TCPConn makes them as calls that might block, and the
// scheduler's bookkeeping for those (handing off the P, waking the sysmon
// thread when the process was idle) can cost a thread wake-up per call on
// an idle daemon, more than the call itself.
//
// Waiting still goes through the connection's poller, so deadlines and Close
// work as on the net.Conn. (Waiting before the read that would fail with
// EAGAIN, to save that call, is not safe: RawConn.Read clears the poller's
// readiness before the first attempt, and an arrival it cleared would be
// missed.)
type sockIO struct {
	conn net.Conn
	rc   syscall.RawConn
}

// newSockIO returns a sockIO for a *net.TCPConn, or nil for any other
// connection (TLS), which the pumps then use as it is.
func newSockIO(c net.Conn) *sockIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &sockIO{conn: c, rc: rc}
}

func (s *sockIO) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var (
		n    int
		serr syscall.Errno
	)
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			switch e {
			case 0:
				n = int(r)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // nothing yet: wait for the poller
			default:
				serr = e
				return true
			}
		}
	})
	switch {
	case err != nil:
		return n, err
	case serr != 0:
		return n, s.opError("read", os.NewSyscallError("read", serr))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *sockIO) Write(b []byte) (int, error) {
	var (
		n    int
		serr syscall.Errno
	)
	err := s.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // the send buffer is full: wait for room
			default:
				serr = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, err
	case serr != 0:
		return n, s.opError("write", os.NewSyscallError("write", serr))
	}
	return n, nil
}

func (s *sockIO) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: err}
}

// pumpIO is what a pump reads from or writes to on conn: the fast path for
// plain TCP, the connection itself otherwise.
func pumpIO(conn net.Conn) io.ReadWriter {
	if conn, ok := conn.(*net.TCPConn); ok {
		// Both legs carry small request/response messages: Nagle would
		// hold each one back for the peer's delayed ACK. Go sets this by
		// default; the relay depends on it, so it says so.
		_ = conn.SetNoDelay(true)
	}
	if s := newSockIO(conn); s != nil {
		return s
	}
	return conn
}

// waitClosed blocks until the peer closes the connection (true) or sends
// data (false), without consuming anything: a session parked on a hold
// reads nothing, yet must notice its client leaving. A read deadline or
// Close ends it (false).
func (s *sockIO) waitClosed() bool {
	closed := false
	_ = s.rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // nothing yet: wait for the poller
			case err != nil:
				closed = true // reset: as gone as closed
			default:
				closed = n == 0
			}
			return true
		}
	})
	return closed
}
