package pgwire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// stopGrace is how long the pumps get to notice a stop through their read
// deadlines before their writes are cut off too. A pump stuck in a write has
// a peer that is not reading; after this it is owed no farewell.
const stopGrace = 2 * time.Second

// Message types whose bodies the tracker decodes. The rest are counted by
// length and forwarded untouched.
const (
	clientDecoded   = "QPBEC" // Query, Parse, Bind, Execute, Close
	serverDecoded   = "CE"    // CommandComplete, ErrorResponse
	serverDecodeMax = 1 << 20
)

// ending is why a relay stops and what each side is told.
type ending struct {
	err       error  // what Serve returns
	toClient  *fatal // FATAL error for the client, if it can still take one
	terminate bool   // say Terminate to the upstream, if it can still take one
}

// relay runs the session's two directions until one of them, the daemon or
// the credential's expiry ends it. The calling goroutine pumps client to
// upstream; one goroutine pumps back; both are gone when relay returns.
func (p *Proxy) relay(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease) error {
	t := newTracker(sess)
	cio, uio := pumpIO(client), pumpIO(up.conn)
	c2s := newPump(cio, uio, func(typ byte, _ int, body []byte) error { return t.client(typ, body) },
		clientDecoded, p.opts.MaxMessageLen, p.opts.MaxMessageLen)
	s2c := newPump(uio, cio, t.server, serverDecoded, serverDecodeMax, 0)
	// Statement events go to the sink before the response that completes
	// them is forwarded: the audit record of a statement must be durable
	// (in the kernel, beyond the daemon's reach) before the client can see
	// its result. The sink's cost is one write(2) per batch of messages.
	s2c.before = t.flush

	var (
		once   sync.Once
		why    ending
		forced atomic.Bool
		grace  *time.Timer
		mu     sync.Mutex // guards grace against the stop racing the end of relay
		ended  bool
	)
	stop := func(e ending) {
		once.Do(func() {
			why = e
			now := time.Now()
			_ = client.SetReadDeadline(now)
			_ = up.conn.SetReadDeadline(now)
			mu.Lock()
			defer mu.Unlock()
			if ended {
				return
			}
			grace = time.AfterFunc(stopGrace, func() {
				forced.Store(true)
				_ = client.SetWriteDeadline(time.Now())
				_ = up.conn.SetWriteDeadline(time.Now())
			})
		})
	}
	defer context.AfterFunc(ctx, func() {
		stop(ending{err: ErrShutdown, toClient: &fatal{codeAdminShutdown, "Airlock is shutting down"}, terminate: true})
	})()
	if exp := lease.Expires(); !exp.IsZero() {
		timer := time.AfterFunc(time.Until(exp), func() {
			stop(ending{err: ErrExpired, terminate: true,
				toClient: &fatal{codeAdminShutdown, "just-in-time credential expired; reconnect"}})
		})
		defer timer.Stop()
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		err := s2c.run()
		t.flush()
		stop(p.upstreamEnding(err, t))
	}()
	stop(p.clientEnding(c2s.run(), sess, t))
	<-done

	mu.Lock()
	ended = true
	if grace != nil && !grace.Stop() {
		forced.Store(true)
	}
	mu.Unlock()
	sess.SetAttr("bytes_in", strconv.FormatInt(c2s.moved, 10))
	sess.SetAttr("bytes_out", strconv.FormatInt(s2c.moved, 10))

	if why.terminate && !c2s.midMsg && !forced.Load() {
		_ = up.conn.SetWriteDeadline(time.Now().Add(time.Second))
		b, _ := (&pgproto3.Terminate{}).Encode(nil)
		_, _ = up.conn.Write(b)
	}
	if why.toClient != nil && !s2c.midMsg && !forced.Load() {
		_ = client.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = client.Write(why.toClient.encode(nil))
	}
	return why.err
}

// clientEnding classifies the end of the client-to-upstream pump.
func (p *Proxy) clientEnding(err error, sess *session.Session, t *tracker) ending {
	var we *writeError
	var tl errTooLong
	switch {
	case errors.Is(err, errClientTerminate):
		return ending{} // Terminate already went upstream
	case errors.As(err, &we):
		return ending{err: fmt.Errorf("%w: %v", ErrUpstreamClosed, we.err),
			toClient: &fatal{codeConnectionFailure, fmt.Sprintf("connection to upstream %s lost", p.opts.Name)}}
	case errors.As(err, &tl):
		f := fatal{codeProgramLimit, tl.Error()}
		sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: f.msg, SQLState: f.code}})
		return ending{err: fmt.Errorf("%w: %s", ErrProtocol, f.msg), toClient: &f, terminate: true}
	case errors.Is(err, errBadLength):
		f := fatal{codeProtocolViolation, "invalid message length from client"}
		sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: f.msg, SQLState: f.code}})
		return ending{err: fmt.Errorf("%w: %s", ErrProtocol, f.msg), toClient: &f, terminate: true}
	case t.fatalSeen.Load():
		// The client left because the upstream ended the session.
		return ending{err: fmt.Errorf("%w: upstream ended the session: %v", ErrUpstreamClosed, err)}
	default:
		// EOF or a broken socket: the client is gone.
		p.log.Debug("pgwire: client ended", "session", sess.ID, "err", err)
		return ending{terminate: true}
	}
}

// upstreamEnding classifies the end of the upstream-to-client pump.
func (p *Proxy) upstreamEnding(err error, t *tracker) ending {
	var we *writeError
	if errors.As(err, &we) {
		return ending{terminate: true} // the client is gone
	}
	e := ending{err: fmt.Errorf("%w: %v", ErrUpstreamClosed, err)}
	if !t.fatalSeen.Load() {
		// The upstream vanished without a word; say it for it, as
		// PostgreSQL would have, so the client reports the cause.
		e.toClient = &fatal{codeConnectionFailure, fmt.Sprintf("connection to upstream %s lost", p.opts.Name)}
	}
	return e
}
