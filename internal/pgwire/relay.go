package pgwire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

// stopGrace is how long the pumps get to notice a stop through their read
// deadlines before their writes are cut off too. A pump stuck in a write has
// a peer that is not reading; after this it is owed no farewell.
const stopGrace = 2 * time.Second

// drainTimeout bounds how long the proxy keeps reading the server's answers
// after the client left: what it sent was forwarded and may be running, and
// must be recorded with its outcome, or as unknown when this runs out.
var drainTimeout = 5 * time.Second // a variable for tests

// errStopped ends a pump that was waiting (on a hold, or for room) when the
// session was stopped.
var errStopped = errors.New("session stopped")

// ending is why a relay stops and what each side is told.
type ending struct {
	err        error  // what Serve returns
	toClient   *fatal // FATAL error for the client, if it can still take one
	terminate  bool   // say Terminate to the upstream, if it can still take one
	clientLeft bool   // the client ended: drain the answers to what it sent
}

// relay runs the session's two directions until one of them, the daemon or
// the credential's expiry ends it. The calling goroutine pumps client to
// upstream through pl; one goroutine pumps back; both are gone when relay
// returns.
func (p *Proxy) relay(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease, pl *pipe) error {
	cio, uio := pumpIO(client), pumpIO(up.conn)
	c2s := newPump(cio, uio, pl.fromClient, pl.clientTypes(), p.opts.MaxMessageLen, p.opts.MaxMessageLen)
	s2c := newPump(uio, cio, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
	c2s.bytes, c2s.msgs = &sess.Stats.BytesIn, &sess.Stats.MsgsIn
	s2c.bytes, s2c.msgs = &sess.Stats.BytesOut, &sess.Stats.MsgsOut
	// Statement events go to the sink before the bytes that complete them
	// are written to the client: the audit record of a statement must be
	// durable (in the kernel, beyond the daemon's reach) before the client
	// can see its result (docs/AUDIT.md). The sink's cost is one write(2)
	// per batch of messages that completes statements; nothing when none.
	s2c.before = pl.flush
	// A client that cannot take its answers any more may still have
	// statements running: the server's answers are read and recorded.
	var always atomic.Bool
	always.Store(true)
	s2c.drain = &always

	var (
		once    sync.Once
		why     ending
		forced  atomic.Bool
		grace   *time.Timer
		mu      sync.Mutex // guards grace against the stop racing the end of relay
		ended   bool
		stopped = make(chan struct{})
		left    atomic.Bool
	)
	stop := func(e ending) {
		once.Do(func() {
			why = e
			close(stopped)
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
	c2s.hold = func(a act, typ byte, body []byte) act {
		if sio, ok := cio.(*sockIO); ok {
			// Nothing is read from the client while it waits, so
			// watch for it leaving: its hold then ends at once. The
			// watcher only peeks; when the client sends more instead,
			// it returns and the pump reads on.
			h := a.hold
			go func() {
				if sio.waitClosed() {
					h.Resolve(Verdict{Action: Reply, Error: &ErrorReply{Code: codeQueryCanceled,
						Message: "the client left while the statement was held"}})
				}
			}()
		}
		for a.kind == actHold {
			v, ok := waitHold(a.hold, pl, stopped)
			if !ok {
				return act{kind: actDrop, err: errStopped}
			}
			a = pl.resume(a, v, typ, body)
		}
		return a
	}
	c2s.space = func() error {
		for pl.full() {
			select {
			case <-pl.space:
			case <-stopped:
				return errStopped
			}
		}
		return nil
	}
	defer context.AfterFunc(ctx, func() { stop(stopEnding(ctx)) })()
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
		pl.flush()
		if left.Load() {
			stop(ending{}) // the server closed after the client's Terminate
			return
		}
		stop(p.upstreamEnding(err, pl))
	}()
	cerr := c2s.run()
	e := p.clientEnding(cerr, sess, pl)
	if e.clientLeft {
		left.Store(true)
		p.drain(cerr, c2s, up.conn, pl, done, stopped)
		stop(ending{})
	} else {
		stop(e)
	}
	<-done

	mu.Lock()
	ended = true
	if grace != nil && !grace.Stop() {
		forced.Store(true)
	}
	mu.Unlock()
	// Whatever the server never answered was still sent: it is recorded,
	// its outcome unknown.
	outcome := "unknown: session ended"
	if left.Load() {
		outcome = "unknown: client left"
	}
	pl.abandon(outcome)

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

// drain waits, after the client left, for the server to answer what was
// sent: it ends the session upstream with Terminate (the server finishes
// what it has first) and waits for it to close, bounded by drainTimeout.
func (p *Proxy) drain(cerr error, c2s *pump, up net.Conn, pl *pipe, done, stopped <-chan struct{}) {
	if pl.outstanding() == 0 && errors.Is(cerr, errClientTerminate) {
		return // nothing running; the server closes on its own
	}
	timer := time.NewTimer(drainTimeout)
	defer timer.Stop()
	if !errors.Is(cerr, errClientTerminate) {
		if c2s.midMsg {
			// The server waits for the rest of a message that will not
			// come: it cannot be told to finish. Wait for the answers
			// to what came before it.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for pl.outstanding() > 0 {
				select {
				case <-tick.C:
				case <-timer.C:
					return
				case <-stopped:
					return
				}
			}
			return
		}
		_ = up.SetWriteDeadline(time.Now().Add(time.Second))
		b, _ := (&pgproto3.Terminate{}).Encode(nil)
		_, _ = up.Write(b)
	}
	select {
	case <-done:
	case <-timer.C:
	case <-stopped:
	}
}

// SessionEnder is a context cause that ends a live session with its own
// FATAL error for the client (an access grant that expired, say).
type SessionEnder interface {
	error
	SessionEnd() (sqlstate, message string)
}

// stopEnding is how a session ends when its context is done: with the
// cause's own farewell (a revoked login, a lost identity), else as a
// shutdown.
func stopEnding(ctx context.Context) ending {
	cause := context.Cause(ctx)
	var ender SessionEnder
	if errors.As(cause, &ender) {
		code, msg := ender.SessionEnd()
		return ending{err: cause, terminate: true, toClient: &fatal{code, msg}}
	}
	if errors.Is(cause, identity.ErrLost) {
		return ending{err: cause, terminate: true, toClient: &fatal{codeInvalidAuth,
			"session ended: your Airlock identity expired and could not be renewed; run `airlock login`, then reconnect"}}
	}
	return ending{err: ErrShutdown, toClient: &fatal{codeAdminShutdown, "Airlock is shutting down"}, terminate: true}
}

// waitHold parks until h is decided, times out, or the session stops
// (false).
func waitHold(h *Holding, pl *pipe, stopped <-chan struct{}) (Verdict, bool) {
	pl.holding.Store(h)
	defer pl.holding.Store(nil)
	h.park()
	t := time.NewTimer(h.timeout)
	defer t.Stop()
	select {
	case v := <-h.ch:
		return v, true
	case <-t.C:
		h.Resolve(Verdict{Action: Reply, Error: &h.onTimeout})
		return <-h.ch, true
	case <-stopped:
		return Verdict{}, false
	}
}

// clientEnding classifies the end of the client-to-upstream pump.
func (p *Proxy) clientEnding(err error, sess *session.Session, t *pipe) ending {
	var we *writeError
	var tl errTooLong
	switch {
	case errors.Is(err, errClientTerminate):
		return ending{clientLeft: true} // Terminate already went upstream
	case errors.Is(err, errStopped):
		return ending{} // the stop that woke it says why
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
		return ending{clientLeft: true}
	}
}

// upstreamEnding classifies the end of the upstream-to-client pump.
func (p *Proxy) upstreamEnding(err error, t *pipe) ending {
	var we *writeError
	if errors.As(err, &we) {
		return ending{terminate: true} // the client is gone
	}
	if errors.Is(err, errBrokenRewrite) {
		return ending{err: err, terminate: true, toClient: &fatal{codeInternal,
			"airlock ended this session: a result could not be rewritten as policy requires (nothing of it was sent); reconnect, and report it to your Airlock administrator if it repeats"}}
	}
	e := ending{err: fmt.Errorf("%w: %v", ErrUpstreamClosed, err)}
	if !t.fatalSeen.Load() {
		// The upstream vanished without a word; say it for it, as
		// PostgreSQL would have, so the client reports the cause.
		e.toClient = &fatal{codeConnectionFailure, fmt.Sprintf("connection to upstream %s lost", p.opts.Name)}
	}
	return e
}
