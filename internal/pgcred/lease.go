// Package pgcred gives Airlock's PostgreSQL proxy the upstream credentials it
// logs in with. The client never sees them.
//
// Two sources exist. Ephemeral creates one short-lived login role per session
// (CREATE ROLE ... VALID UNTIL ... IN ROLE <groups>), tagged with a comment so
// that leftovers are recognised and swept, and drops it when the session ends
// after terminating the role's backends. Static hands out a fixed user and
// password read from a secret file.
//
// No password ever appears in an error, an event, a log line or the fmt/slog
// rendering of a value of this package.
package pgcred

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

const redacted = "[redacted]"

// Lease is one upstream credential handed to one session. Its String, GoString,
// LogValue and MarshalJSON never show the password.
type Lease struct {
	user     string
	password string
	expires  time.Time // zero for static credentials
	mode     string    // "ephemeral" or "static"

	eph      *Ephemeral // nil for static leases: Release is a no-op
	sess     *session.Session
	database string
	groups   []string

	mu       sync.Mutex
	released bool
}

// User is the upstream role to log in as.
func (l *Lease) User() string { return l.user }

// Password is the upstream password. Hand it to the upstream authentication
// and nowhere else.
func (l *Lease) Password() string { return l.password }

// Expires is when the role stops accepting logins (VALID UNTIL); zero for a
// static credential, which does not expire.
func (l *Lease) Expires() time.Time { return l.expires }

// Release revokes an ephemeral credential: the role loses LOGIN, its backends
// are terminated and it is dropped (with whatever it owns reassigned). When
// the drop cannot complete, the role stays NOLOGIN and the Ephemeral retries
// in the background; the error then matches ErrDropPending. Release is
// idempotent: only the first call does anything. For a static credential it is
// a no-op.
func (l *Lease) Release(ctx context.Context) error {
	if l == nil || l.eph == nil {
		return nil
	}
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.released = true
	l.mu.Unlock()
	return l.eph.release(ctx, l)
}

// String describes the lease without its password.
func (l *Lease) String() string {
	if l == nil {
		return "<nil lease>"
	}
	s := fmt.Sprintf("pgcred.Lease{mode=%s user=%s password=%s", l.mode, l.user, redacted)
	if !l.expires.IsZero() {
		s += " expires=" + l.expires.UTC().Format(time.RFC3339)
	}
	return s + "}"
}

// GoString keeps %#v from printing the password field.
func (l *Lease) GoString() string { return l.String() }

// Format makes every fmt verb (%v, %+v, %#v, %s, %q, ...) use String.
func (l *Lease) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", l.String())
		return
	}
	_, _ = fmt.Fprint(f, l.String())
}

// LogValue is the slog representation: no password.
func (l *Lease) LogValue() slog.Value {
	if l == nil {
		return slog.StringValue("<nil lease>")
	}
	attrs := []slog.Attr{slog.String("mode", l.mode), slog.String("user", l.user),
		slog.String("password", redacted)}
	if !l.expires.IsZero() {
		attrs = append(attrs, slog.Time("expires", l.expires))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON renders the lease without its password.
func (l *Lease) MarshalJSON() ([]byte, error) {
	v := struct {
		Mode     string     `json:"mode"`
		User     string     `json:"user"`
		Password string     `json:"password"`
		Expires  *time.Time `json:"expires,omitempty"`
	}{Mode: l.mode, User: l.user, Password: redacted}
	if !l.expires.IsZero() {
		v.Expires = &l.expires
	}
	return json.Marshal(v)
}

// Static is a fixed upstream user and password (from a secret file). Its
// fields are unexported so that fmt cannot print the password.
type Static struct {
	user     string
	password string
}

// NewStatic returns a static credential source.
func NewStatic(user, password string) *Static { return &Static{user: user, password: password} }

// Acquire returns the static credential; its Release is a no-op. It emits a
// credential.create event with mode "static" (never the password).
func (s *Static) Acquire(ctx context.Context, sess *session.Session, database string) (*Lease, error) {
	if sess != nil {
		sess.SetUpstreamRole(s.user)
		sess.Emit(session.Event{Kind: session.KindCredentialCreate, Credential: &session.Credential{
			Mode: "static", Role: s.user, Outcome: "ok",
		}})
	}
	return &Lease{user: s.user, password: s.password, mode: "static", sess: sess, database: database}, nil
}

// String describes the source without its password.
func (s *Static) String() string {
	return "pgcred.Static{user=" + s.user + " password=" + redacted + "}"
}

// GoString keeps %#v from printing the password.
func (s *Static) GoString() string { return s.String() }

// Format makes every fmt verb use String.
func (s *Static) Format(f fmt.State, verb rune) { _, _ = fmt.Fprint(f, s.String()) }

// LogValue is the slog representation: no password.
func (s *Static) LogValue() slog.Value {
	return slog.GroupValue(slog.String("mode", "static"), slog.String("user", s.user),
		slog.String("password", redacted))
}

// Source is what Ephemeral and Static have in common.
type Source interface {
	Acquire(ctx context.Context, sess *session.Session, database string) (*Lease, error)
}

// Adapter presents a Source through an Acquire that returns the consumer's
// lease interface L (Go has no covariant return types, so *Ephemeral cannot
// satisfy pgwire.Credentials directly). Use it as
//
//	creds := pgcred.Adapt[pgwire.Lease](eph) // creds implements pgwire.Credentials
type Adapter[L any] struct{ Source Source }

// Adapt wraps src. It panics at once (at daemon start) when *Lease does not
// implement L.
func Adapt[L any](src Source) Adapter[L] {
	if _, ok := any((*Lease)(nil)).(L); !ok {
		var zero L
		panic(fmt.Sprintf("pgcred.Adapt: *pgcred.Lease does not implement %T", &zero))
	}
	return Adapter[L]{Source: src}
}

// Acquire calls the source and returns its lease as L (a nil L on error, never
// a typed nil pointer).
func (a Adapter[L]) Acquire(ctx context.Context, sess *session.Session, database string) (L, error) {
	var zero L
	l, err := a.Source.Acquire(ctx, sess, database)
	if err != nil || l == nil {
		return zero, err
	}
	return any(l).(L), nil
}
