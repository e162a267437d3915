package pgwire

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the untyped packets a client may send before startup.
const (
	codeCancel   = 80877102
	codeSSL      = 80877103
	codeGSSENC   = 80877104
	proto30      = 3 << 16
	tlsRecordHdr = 0x16 // first byte of a TLS handshake record: direct SSL negotiation
)

// maxStartupLen matches PostgreSQL's MAX_STARTUP_PACKET_LENGTH: nothing
// legitimate before authentication is bigger, so nothing bigger is read.
const maxStartupLen = 10000

// startup is what the client asked for before the relay begins.
type startup struct {
	conn      net.Conn          // the client, TLS-wrapped if it asked for TLS
	params    map[string]string // StartupMessage parameters
	negotiate *pgproto3.NegotiateProtocolVersion
	cancel    *cancelKey // set instead of params for a CancelRequest
}

// handshake reads the client's pre-startup packets up to its StartupMessage
// or CancelRequest. A non-nil *fatal is what to tell the client before
// closing; a bare error means the client went away and is owed nothing.
func (p *Proxy) handshake(conn net.Conn) (startup, *fatal, error) {
	st := startup{conn: conn}
	encrypted, sslAnswered, gssAnswered := false, false, false
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(st.conn, hdr[:]); err != nil {
			return st, nil, fmt.Errorf("read startup packet: %w", err)
		}
		if hdr[0] == tlsRecordHdr && !encrypted && p.opts.ClientTLS != nil {
			tc := tls.Server(&prefixConn{Conn: newTLSTransport(st.conn), prefix: append([]byte(nil), hdr[:]...)}, p.opts.ClientTLS)
			if err := tc.Handshake(); err != nil {
				return st, nil, fmt.Errorf("direct TLS handshake with client: %w", err)
			}
			st.conn, encrypted = tc, true
			continue
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n < 8 || n > maxStartupLen {
			return st, &fatal{codeProtocolViolation, fmt.Sprintf("invalid startup packet length %d", n)}, nil
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(st.conn, body); err != nil {
			return st, nil, fmt.Errorf("read startup packet: %w", err)
		}
		code := binary.BigEndian.Uint32(body)
		switch code {
		case codeSSL:
			if encrypted || sslAnswered || n != 8 {
				return st, &fatal{codeProtocolViolation, "unexpected SSLRequest"}, nil
			}
			sslAnswered = true
			if p.opts.ClientTLS == nil {
				if _, err := st.conn.Write([]byte{'N'}); err != nil {
					return st, nil, fmt.Errorf("answer SSLRequest: %w", err)
				}
				continue
			}
			if _, err := st.conn.Write([]byte{'S'}); err != nil {
				return st, nil, fmt.Errorf("answer SSLRequest: %w", err)
			}
			// Reads above were exact, so no plaintext sent after the
			// SSLRequest can have been buffered and mistaken for encrypted.
			tc := tls.Server(newTLSTransport(st.conn), p.opts.ClientTLS)
			if err := tc.Handshake(); err != nil {
				return st, nil, fmt.Errorf("TLS handshake with client: %w", err)
			}
			st.conn, encrypted = tc, true
		case codeGSSENC:
			if encrypted || gssAnswered || n != 8 {
				return st, &fatal{codeProtocolViolation, "unexpected GSSENCRequest"}, nil
			}
			gssAnswered = true
			if _, err := st.conn.Write([]byte{'N'}); err != nil {
				return st, nil, fmt.Errorf("answer GSSENCRequest: %w", err)
			}
		case codeCancel:
			// Only 4-byte secrets are ever handed out; any other length is
			// an unknown key and gets the same silent close.
			k := &cancelKey{}
			if n == 16 {
				k.pid = binary.BigEndian.Uint32(body[4:8])
				copy(k.secret[:], body[8:12])
			}
			st.cancel = k
			return st, nil, nil
		default:
			major, minor := code>>16, code&0xffff
			if major != 3 {
				return st, &fatal{codeFeatureNotSupp, fmt.Sprintf(
					"unsupported frontend protocol %d.%d: Airlock supports protocol 3.0", major, minor)}, nil
			}
			params, err := parseStartupParams(body[4:])
			if err != nil {
				return st, &fatal{codeProtocolViolation, "invalid startup packet: " + err.Error()}, nil
			}
			st.params = params
			st.negotiate = negotiation(minor, params)
			return st, nil, nil
		}
	}
}

// parseStartupParams reads the name/value pairs of a StartupMessage.
func parseStartupParams(b []byte) (map[string]string, error) {
	params := map[string]string{}
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil, fmt.Errorf("missing terminator")
		}
		if i == 0 {
			if len(b) != 1 {
				return nil, fmt.Errorf("%d bytes after the last parameter", len(b)-1)
			}
			return params, nil
		}
		name := string(b[:i])
		b = b[i+1:]
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			return nil, fmt.Errorf("parameter %q has no value", name)
		}
		params[name] = string(b[:j])
		b = b[j+1:]
	}
}

// negotiation answers newer minor versions and protocol options the way
// PostgreSQL does: by saying what it speaks (3.0), so the client downgrades
// instead of failing.
func negotiation(minor uint32, params map[string]string) *pgproto3.NegotiateProtocolVersion {
	var opts []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			opts = append(opts, k)
		}
	}
	if minor == 0 && len(opts) == 0 {
		return nil
	}
	return &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: opts}
}

// prefixConn replays bytes already read from Conn, so that a TLS handshake
// can start from a record whose first bytes were read as a length.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
