package pgwire

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// cancelKey is the BackendKeyData the proxy handed a client. It is ours, not
// the upstream's: the client never learns the real one, so it cannot cancel
// anything but through us, and we can check who is asking.
type cancelKey struct {
	pid    uint32
	secret [4]byte
}

// cancelTarget is where a cancel for one session must go.
type cancelTarget struct {
	addr    string // upstream backend's address, as connected
	pid     uint32
	secret  []byte
	uid     uint32 // only this uid may cancel
	session string
	hold    func() bool // ends a hold in progress instead; false if none
}

type cancelRegistry struct {
	mu sync.Mutex
	m  map[cancelKey]cancelTarget
}

func (r *cancelRegistry) register(t cancelTarget) cancelKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[cancelKey]cancelTarget{}
	}
	for {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails since Go 1.24
		k := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) &^ (1 << 31)}
		copy(k.secret[:], b[4:])
		if _, taken := r.m[k]; taken || k.pid == 0 {
			continue
		}
		r.m[k] = t
		return k
	}
}

func (r *cancelRegistry) unregister(k cancelKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, k)
}

func (r *cancelRegistry) lookup(k cancelKey) (cancelTarget, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.m[k]
	return t, ok
}

const cancelTimeout = 5 * time.Second

// serveCancel handles a CancelRequest connection. PostgreSQL never answers
// one, so neither do we, whatever the outcome.
func (p *Proxy) serveCancel(ctx context.Context, sess *session.Session, k cancelKey) error {
	t, ok := p.cancels.lookup(k)
	if !ok {
		p.log.Debug("pgwire: cancel request with unknown key", "session", sess.ID, "uid", sess.Origin.UID)
		return nil
	}
	if t.uid != sess.Origin.UID {
		reason := fmt.Sprintf("cancel request from uid %d for session %s of uid %d", sess.Origin.UID, t.session, t.uid)
		sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: reason}})
		p.log.Warn("pgwire: refused cancel", "session", sess.ID, "reason", reason)
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	if t.hold != nil && t.hold() {
		// The statement is parked here, not running upstream: the
		// cancel is ours to carry out, and the server is not told.
		p.log.Debug("pgwire: cancel ended a hold", "session", sess.ID, "target", t.session)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, cancelTimeout)
	defer cancel()
	conn, err := p.dial(ctx, "tcp", t.addr)
	if err != nil {
		return fmt.Errorf("forward cancel for session %s: %w", t.session, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(cancelTimeout))
	msg, _ := (&pgproto3.CancelRequest{ProcessID: t.pid, SecretKey: t.secret}).Encode(nil)
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("forward cancel for session %s: %w", t.session, err)
	}
	// Like libpq, wait for the server to close: returning earlier could let
	// the client's next query race ahead of the cancel.
	_, _ = io.Copy(io.Discard, conn)
	p.log.Debug("pgwire: forwarded cancel", "session", sess.ID, "target", t.session)
	return nil
}

func (p *Proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.opts.Dial != nil {
		return p.opts.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
