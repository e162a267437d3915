// Package pgrefuse turns a PostgreSQL client away before any session
// exists, in the client's own protocol: it answers the client's pre-startup
// requests (TLS included, so sslmode=require clients see the reason too) up
// to its StartupMessage, then sends a FATAL ErrorResponse with a SQLSTATE
// and a message that says what to do next.
//
// The front door uses it when it must refuse before a protocol proxy gets
// the connection: a session cap reached, or a target that has not resolved.
package pgrefuse

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"
)

// SQLSTATEs used by the front door's refusals.
const (
	TooManyConnections = "53300"
	UnableToConnect    = "08001"
)

const (
	codeCancel   = 80877102
	codeSSL      = 80877103
	codeGSSENC   = 80877104
	tlsRecordHdr = 0x16
	// maxPackets bounds how many pre-startup packets a client may send
	// (SSLRequest, GSSENCRequest, then the StartupMessage).
	maxPackets = 4
	// maxStartupLen is as in the proxy: nothing legitimate is bigger.
	maxStartupLen = 10000
	timeout       = 5 * time.Second
)

// Refuse answers conn's start-up with a FATAL ErrorResponse (code, msg) and
// returns; the caller closes conn. tlsConf, if not nil, is offered to
// clients that ask for TLS. A CancelRequest gets no answer, as PostgreSQL
// gives none. A client that breaks the protocol still gets the refusal.
func Refuse(ctx context.Context, conn net.Conn, tlsConf *tls.Config, code, msg string) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	c := conn
	encrypted := false
	for range maxPackets {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:1]); err != nil {
			return fmt.Errorf("read client start-up: %w", err)
		}
		if hdr[0] == tlsRecordHdr && !encrypted && tlsConf != nil {
			// Direct TLS negotiation (PostgreSQL 17 clients).
			tc := tls.Server(&prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(hdr[:1]), c)}, tlsConf)
			if err := tc.HandshakeContext(ctx); err != nil {
				return fmt.Errorf("TLS handshake with client: %w", err)
			}
			c, encrypted = tc, true
			continue
		}
		if _, err := io.ReadFull(c, hdr[1:]); err != nil {
			return fmt.Errorf("read client start-up: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		req := binary.BigEndian.Uint32(hdr[4:])
		if n < 8 || n > maxStartupLen {
			return send(c, code, msg)
		}
		switch {
		case n == 8 && req == codeSSL && !encrypted && tlsConf != nil:
			if _, err := c.Write([]byte{'S'}); err != nil {
				return fmt.Errorf("answer SSLRequest: %w", err)
			}
			tc := tls.Server(c, tlsConf)
			if err := tc.HandshakeContext(ctx); err != nil {
				return fmt.Errorf("TLS handshake with client: %w", err)
			}
			c, encrypted = tc, true
		case n == 8 && (req == codeSSL || req == codeGSSENC):
			if _, err := c.Write([]byte{'N'}); err != nil {
				return fmt.Errorf("answer %s: %w", requestName(req), err)
			}
		case req == codeCancel:
			return nil
		default:
			// The StartupMessage (or anything else): its content does not
			// matter, the answer is the same. Read it so the client is
			// not reset with unread data, then refuse.
			if _, err := io.CopyN(io.Discard, c, int64(n-8)); err != nil {
				return fmt.Errorf("read client start-up: %w", err)
			}
			return send(c, code, msg)
		}
	}
	return send(c, code, msg)
}

func requestName(code uint32) string {
	if code == codeSSL {
		return "SSLRequest"
	}
	return "GSSENCRequest"
}

// Encode returns the FATAL ErrorResponse for code and msg.
func Encode(code, msg string) []byte {
	out, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	return out
}

func send(c net.Conn, code, msg string) error {
	if _, err := c.Write(Encode(code, msg)); err != nil {
		return fmt.Errorf("send refusal: %w", err)
	}
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
	}
	return nil
}

// prefixConn replays bytes already read before the rest of the connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// IsCancelRequest reports whether the first packet waiting on conn (not
// consumed) is a CancelRequest, waiting at most wait for it to arrive. A
// client at its session cap must still be able to cancel a running query,
// as PostgreSQL allows at max_connections.
func IsCancelRequest(conn net.Conn, wait time.Duration) bool {
	sc, ok := conn.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	defer conn.SetReadDeadline(time.Time{})
	var buf [8]byte
	got := 0
	// Read blocks (through the runtime's poller, so the deadline holds)
	// until the callback says done; MSG_PEEK leaves the bytes in place.
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == nil && n > 0 && n < len(buf) {
			return false // wait for more
		}
		if err == nil {
			got = n
		}
		return true
	})
	if err != nil || got < len(buf) {
		return false
	}
	return binary.BigEndian.Uint32(buf[:4]) == 16 && binary.BigEndian.Uint32(buf[4:]) == codeCancel
}
