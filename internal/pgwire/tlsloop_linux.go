package pgwire

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// A TLS client leg on the event loop. The handshake, startup and
// authentication happen before the relay, on Serve's goroutine, as for the
// goroutine driver; the loop takes the established session. crypto/tls
// keeps the record layer: the loop calls its Read when the client's socket
// is readable and its Write for what goes to the client, over a transport
// that never blocks (tlsTransport). Two things the kernel no longer tells
// the loop are tracked here: whole records crypto/tls read ahead and holds
// (more), and records it wrote while reading (alerts, a TLS 1.3 key update
// answer), which must reach the client in order with the rest.

// tlsLeg is the session's TLS client leg.
type tlsLeg struct {
	conn *tls.Conn
	tr   *tlsTransport
	// more: the last read stopped with the buffer full, or at an error
	// after data: crypto/tls may hold input the socket will not report.
	more   bool
	posted bool   // a retry of the read is queued on the loop
	err    error  // the record layer's read error, once seen (kept: not all are sticky in crypto/tls)
	retry  func() // ls.retryTLS, made once
}

// loopRead is tlsTransport.Read on the loop: one non-blocking read(2).
func (t *tlsTransport) loopRead(b []byte) (int, error) {
	if t.drained {
		return 0, errWouldBlock
	}
	for {
		n, err := rawRead(t.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			t.drained = true
			return 0, errWouldBlock
		case err != nil:
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
		case n == 0:
			return 0, io.EOF
		}
		if n < len(b) {
			t.drained = true
		}
		return n, nil
	}
}

// readTLS reads the client's plaintext into dst, with readSide's
// conventions for rawRead: (0, EAGAIN) when nothing whole came.
func (ls *lsess) readTLS(dst []byte) (int, error) {
	tl := ls.tl
	if tl.err != nil {
		return 0, tl.err
	}
	tl.more = false
	tl.tr.drained = false
	tl.tr.out = ls.l.seal[:0]
	n := 0
	var err error
	// Until crypto/tls says it would block: it returns one record's
	// plaintext per Read and may hold whole records it read ahead, which
	// no readiness event would report.
	for n < len(dst) {
		var k int
		k, err = tl.conn.Read(dst[n:])
		n += k
		if err != nil {
			break
		}
	}
	ls.tlsSent()
	switch {
	case err == nil:
		tl.more = true // dst is full
	case errors.Is(err, errWouldBlock):
		if n == 0 {
			return 0, unix.EAGAIN
		}
	default:
		tl.err = err
		if n > 0 {
			tl.more = true // this data first; the next read returns the error
		} else {
			return 0, err
		}
	}
	return n, nil
}

// retryTLS reads what crypto/tls still holds (posted by settle).
func (ls *lsess) retryTLS() {
	ls.tl.posted = false
	if ls.ended || !ls.tl.more || ls.c2s.paused() {
		return
	}
	ls.readSide(ls.c2s)
	ls.settle()
}

// settleTLS queues a read of what crypto/tls holds once the client side can
// take it: the socket may have nothing to report.
func (ls *lsess) settleTLS() {
	if tl := ls.tl; tl != nil && tl.more && !tl.posted && !ls.c2s.paused() {
		tl.posted = true
		ls.l.post(tl.retry)
	}
}

// sealOut sends b to the client through the record layer.
func (ls *lsess) sealOut(s *lside, b []byte) {
	tl := ls.tl
	tl.tr.out = ls.l.seal[:0]
	_, err := tl.conn.Write(b)
	if err != nil {
		// The record layer failed earlier (an alert it sent): the
		// client can take nothing more.
		tl.tr.out = nil
		ls.writeFailed(s, err)
		return
	}
	if s.bytes != nil {
		s.bytes.Add(int64(len(b))) // plaintext, as the goroutine driver counts
	}
	ls.tlsSent()
}

// tlsSent sends the records crypto/tls wrote since the loop last looked,
// after whatever is already on its way to the client.
func (ls *lsess) tlsSent() {
	out := ls.tl.tr.out
	ls.tl.tr.out = nil
	s := ls.s2c
	if len(out) > 0 && !s.gone && !ls.ended {
		ls.put(s, out)
	}
	if cap(out) <= 4*loopScratch {
		ls.l.seal = out[:0] // put copied what it kept
	}
}

// sealFarewell is what to write for plaintext b once the loop let the
// session go (on relayLoop's goroutine).
func (tl *tlsLeg) sealFarewell(b []byte) []byte {
	tl.tr.out = nil
	if _, err := tl.conn.Write(b); err != nil {
		return nil
	}
	out := tl.tr.out
	tl.tr.out = nil
	return out
}

// clean reports whether the record layer saw no error but the client's end
// (its close_notify, or the socket's end): after any other, crypto/tls may
// have sent a fatal alert, and nothing may follow one.
func (tl *tlsLeg) clean() bool {
	return tl.err == nil || errors.Is(tl.err, io.EOF)
}

// closeNotify is the close_notify alert's record, for the end of a session
// whose record stream to the client is intact (PostgreSQL sends one too).
func (tl *tlsLeg) closeNotify() []byte {
	tl.tr.out = nil
	_ = tl.conn.CloseWrite()
	out := tl.tr.out
	tl.tr.out = nil
	return out
}
