package pgwire

import (
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// Why a session ended, for the daemon's session.end record. A nil error from
// Serve means the client ended the session itself.
var (
	ErrRefused        error = &endError{"refused", "refused"}
	ErrShutdown       error = &endError{"airlock is shutting down", "daemon_restart"}
	ErrExpired        error = &endError{"just-in-time credential expired", "ttl"}
	ErrUpstreamClosed error = &endError{"upstream closed the connection", "upstream_lost"}
	ErrProtocol       error = &endError{"protocol violation", "protocol_error"}
)

// endError is a sentinel that names its session.End reason.
type endError struct{ msg, reason string }

func (e *endError) Error() string     { return e.msg }
func (e *endError) EndReason() string { return e.reason }

// SQLSTATEs the proxy itself reports.
const (
	codeProtocolViolation = "08P01"
	codeFeatureNotSupp    = "0A000"
	codeInvalidAuth       = "28000"
	codeInvalidDatabase   = "3D000"
	codeUnableToConnect   = "08001"
	codeConnectionFailure = "08006"
	codeAdminShutdown     = "57P01"
	codeProgramLimit      = "54000"
	codeQueryCanceled     = "57014"
	codeInternal          = "XX000"
)

// fatal is an ErrorResponse the proxy sends before it closes the client.
type fatal struct {
	code string
	msg  string
}

func (f fatal) encode(dst []byte) []byte {
	out, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL",
		Code: f.code, Message: f.msg}).Encode(dst)
	return out
}

// refuse tells the client why it is turned away, records the refusal and
// returns the error Serve reports.
func (p *Proxy) refuse(client net.Conn, sess *session.Session, f fatal) error {
	// Recorded before the client hears it, so the record never lags.
	sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: f.msg, SQLState: f.code}})
	p.log.Info("pgwire: refused", "session", sess.ID, "connection", p.opts.Name, "sqlstate", f.code, "reason", f.msg)
	_ = client.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = client.Write(f.encode(nil))
	return fmt.Errorf("%w: %s (%s)", ErrRefused, f.msg, f.code)
}
