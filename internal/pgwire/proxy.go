// Package pgwire is Airlock's PostgreSQL proxy. It takes a client connection
// the daemon intercepted, vouches for the person behind it with a
// just-in-time upstream credential, and relays the session through a
// message pipeline (pipeline.go): stages that may refuse, hold, drop or
// rewrite messages, and the statement record. Messages no stage asked to see
// are relayed byte for byte, undecoded.
package pgwire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/access"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

// Lease is an upstream credential held for one session.
type Lease interface {
	User() string
	Password() string
	Expires() time.Time // zero: does not expire
	Release(ctx context.Context) error
}

// Credentials hands out upstream credentials for sessions.
type Credentials interface {
	Acquire(ctx context.Context, sess *session.Session, database string) (Lease, error)
}

// RoleCredentials is implemented by credentials that can grant a session
// exactly the roles the access rules give its person.
type RoleCredentials interface {
	AcquireRoles(ctx context.Context, sess *session.Session, database string, roles []string) (Lease, error)
}

// Access decides from the session's person whether it may open the
// connection and with which upstream roles (nil Roles: the defaults).
type Access interface {
	Decide(p identity.Person) (access.Decision, error)
}

// Upstream is the real PostgreSQL server.
type Upstream struct {
	Host       string
	Port       int
	TLSMode    string // disable, prefer (default), require, verify-ca, verify-full
	CAFile     string // roots for verify-ca and verify-full
	ServerName string // name to verify instead of Host
}

// Options configures a Proxy.
type Options struct {
	Name        string // connection name, for messages
	Upstream    Upstream
	Databases   []string // allowed database names; empty refuses all
	Credentials Credentials
	Access      Access                                                            // nil: every person with an identity, default roles
	ClientTLS   *tls.Config                                                       // nil: clients are told TLS is unavailable
	Dial        func(ctx context.Context, network, addr string) (net.Conn, error) // nil: an unmarked net.Dialer (tests only)
	// Lookup resolves the upstream host; nil uses the system resolver. The
	// daemon passes its own, so the names that define targets define
	// upstreams too.
	Lookup        func(ctx context.Context, host string) ([]string, error)
	Logger        *slog.Logger
	MaxMessageLen int // largest client message body; default 1 MiB
	// MaxPreparedBytes bounds the prepared statement text one session may
	// keep (the proxy must remember it to record what each execution
	// ran); a Parse past it gets SQLSTATE 54000. Default 16 MiB.
	MaxPreparedBytes int
	// Stages builds each session's pipeline (nil: the record only).
	Stages func(sess *session.Session) Stages
	// Driver runs the data path: DriverLoop (default) or DriverGoroutines.
	Driver string
	// SampleRows and SampleBytes bound the result sample each statement
	// record keeps (the first rows as the client got them); either 0 keeps
	// none.
	SampleRows, SampleBytes int

	loopWait string // the loops' wait (tests); "": defaultLoopWait
}

// frontdoorIdentityError is frontdoor.AttrIdentityError (frontdoor
// imports this package's users, not the other way round).
const frontdoorIdentityError = "identity_error"

const (
	defaultMaxMessageLen = 1 << 20
	startupTimeout       = 30 * time.Second
	acquireTimeout       = 30 * time.Second
	releaseTimeout       = 10 * time.Second
)

// Proxy serves sessions for one configured connection.
type Proxy struct {
	opts    Options
	log     *slog.Logger
	cancels cancelRegistry
}

// New checks opts and returns a Proxy.
func New(opts Options) (*Proxy, error) {
	u := &opts.Upstream
	if u.Host == "" || strings.ContainsAny(u.Host, ", ") {
		return nil, fmt.Errorf("pgwire: upstream host %q: want one host name or address", u.Host)
	}
	if u.Port <= 0 || u.Port > 65535 {
		return nil, fmt.Errorf("pgwire: upstream port %d out of range", u.Port)
	}
	if u.TLSMode == "" {
		u.TLSMode = "prefer"
	}
	switch u.TLSMode {
	case "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		return nil, fmt.Errorf("pgwire: upstream TLS mode %q: want disable, prefer, require, verify-ca or verify-full", u.TLSMode)
	}
	if opts.Credentials == nil {
		return nil, errors.New("pgwire: no credentials source")
	}
	if opts.Name == "" {
		opts.Name = net.JoinHostPort(u.Host, fmt.Sprint(u.Port))
	}
	switch opts.Driver {
	case "":
		opts.Driver = defaultDriver
	case DriverGoroutines, DriverLoop:
	default:
		return nil, fmt.Errorf("pgwire: driver %q: want %s or %s", opts.Driver, DriverGoroutines, DriverLoop)
	}
	if opts.MaxMessageLen <= 0 {
		opts.MaxMessageLen = defaultMaxMessageLen
	}
	opts.Databases = slices.Clone(opts.Databases)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{opts: opts, log: log}, nil
}

// Serve runs one client session until it ends, and closes client. It
// returns nil when the client ended the session (or gave up before it
// began), else why the proxy ended it: ErrRefused, ErrShutdown, ErrExpired,
// ErrUpstreamClosed, ErrProtocol, wrapped with detail. It also records the
// bytes and messages relayed, and the statements, in sess.Stats.
func (p *Proxy) Serve(ctx context.Context, client net.Conn, sess *session.Session) error {
	// The session's setup runs in open, whose frame (and the startup
	// parameters, the upstream's ParameterStatus map, pgconn's state) is
	// gone by the time this goroutine waits for the session's end: what an
	// idle session keeps on its stack is this frame and drive's, and the
	// garbage collector shrinks the stack grown during setup to fit them.
	var lv live
	lv.client = client
	defer lv.close(p, sess)
	ok, err := p.open(ctx, &lv, sess)
	if !ok {
		return err
	}
	return p.drive(ctx, lv.conn, lv.up, sess, lv.lease, lv.pl)
}

// ServeDetached is Serve for a caller that need not wait for the session's
// end: done gets what Serve would return, once, after everything Serve
// releases is released. A session the event loop takes holds no goroutine
// while it lives (the stack of the one waiting was most of an idle
// session's memory, docs/BENCHMARKS.md "Idle sessions"): ServeDetached
// returns once it is on the loop, and the session's tail runs in a
// goroutine started when it ends, which calls done. Any other session is
// served on the calling goroutine, which calls done before returning.
func (p *Proxy) ServeDetached(ctx context.Context, client net.Conn, sess *session.Session, done func(error)) {
	lv := &live{client: client}
	ok, err := p.open(ctx, lv, sess)
	if ok && p.driverOf(lv.conn, lv.up) == DriverLoop {
		// On the loop the sockets are the loop's descriptors (their
		// net.Conns closed); the tail needs only what else lv holds, and
		// the session keeps no more than that.
		rest := &live{lease: lv.lease, key: lv.key, keyed: lv.keyed}
		// The session may end on the loop before loopStart has returned
		// (and set what finish reads): the tail waits for it.
		started := make(chan struct{})
		_, err = p.loopStart(ctx, lv.conn, lv.up, sess, lv.lease, lv.pl, func(ls *lsess) {
			go func() {
				<-started
				err := ls.finish()
				rest.close(p, sess)
				done(err)
			}()
		})
		close(started)
		if err == nil {
			return
		}
		ok = errors.Is(err, errNoLoop) // relayed by goroutines instead
	}
	if ok {
		err = p.relay(ctx, lv.conn, lv.up, sess, lv.lease, lv.pl)
	}
	lv.close(p, sess)
	done(err)
}

// live is what an established session holds until it ends, and gives back
// in close.
type live struct {
	client net.Conn
	conn   net.Conn // the client, TLS-wrapped if it asked for TLS
	up     *upstreamConn
	lease  Lease
	key    cancelKey
	keyed  bool
	pl     *pipe
}

// close releases what open took, in the reverse order: the cancel key, the
// upstream backend, then the credential (whose role can only be dropped
// once its backend is gone), then the client.
func (lv *live) close(p *Proxy, sess *session.Session) {
	if lv.keyed {
		p.cancels.unregister(lv.key)
	}
	if lv.up != nil {
		_ = lv.up.conn.Close()
	}
	if lv.lease != nil {
		p.release(sess, lv.lease)
	}
	if lv.conn != nil && lv.conn != lv.client {
		_ = lv.conn.Close()
	}
	if lv.client != nil {
		_ = lv.client.Close()
	}
}

// open sets a session up: the client's startup, its admission, the
// credential, the upstream login, the greeting. It reports whether the
// session is ready to relay; if not, err is what Serve returns. What it
// took is in lv, for lv.close, whether or not it succeeded.
func (p *Proxy) open(ctx context.Context, lv *live, sess *session.Session) (bool, error) {
	client := lv.client
	_ = client.SetDeadline(time.Now().Add(startupTimeout))
	st, f, err := p.handshake(client)
	conn := st.conn
	lv.conn = conn
	if err != nil {
		if clientGone(err) {
			return false, nil
		}
		return false, fmt.Errorf("pgwire: client startup: %w", err)
	}
	if f != nil {
		return false, p.refuse(conn, sess, *f)
	}
	if st.cancel != nil {
		return false, p.serveCancel(ctx, sess, *st.cancel)
	}

	if sess.Person.Name == "" {
		msg := sess.Attrs()[frontdoorIdentityError]
		if msg == "" {
			msg = fmt.Sprintf("no identity for uid %d: run `airlock login`", sess.Origin.UID)
		}
		return false, p.refuse(conn, sess, fatal{codeInvalidAuth, "Airlock: " + msg})
	}
	var roles []string
	if p.opts.Access != nil {
		d, err := p.opts.Access.Decide(sess.Person)
		if err != nil {
			return false, p.refuse(conn, sess, fatal{codeInvalidAuth, "Airlock: " + err.Error()})
		}
		roles = d.Roles
		if d.Groups != nil {
			sess.SetAttr("access_groups", strings.Join(d.Groups, ","))
		}
	}
	database := st.params["database"]
	if database == "" {
		database = st.params["user"] // PostgreSQL's default
	}
	if !slices.Contains(p.opts.Databases, database) {
		return false, p.refuse(conn, sess, fatal{codeInvalidDatabase, p.databaseRefusal(database)})
	}
	sess.SetDatabase(database)

	actx, cancel := context.WithTimeout(ctx, acquireTimeout)
	var lease Lease
	if rc, ok := p.opts.Credentials.(RoleCredentials); ok && roles != nil {
		lease, err = rc.AcquireRoles(actx, sess, database, roles)
	} else {
		lease, err = p.opts.Credentials.Acquire(actx, sess, database)
	}
	cancel()
	if err != nil {
		return false, p.refuse(conn, sess, fatal{codeInvalidAuth, fmt.Sprintf(
			"could not create a just-in-time credential for connection %s: %v; ask your Airlock admin", p.opts.Name, err)})
	}
	lv.lease = lease
	sess.SetUpstreamRole(lease.User())

	up, f := p.connectUpstream(ctx, sess, lease, database, st.params)
	if f != nil {
		return false, p.refuse(conn, sess, *f)
	}
	lv.up = up
	if f := p.revokeLogin(ctx, sess, lease); f != nil {
		return false, p.refuse(conn, sess, *f)
	}

	var stages Stages
	if p.opts.Stages != nil {
		stages = p.opts.Stages(sess)
	}
	pl := newPipe(sess, stages, p.opts.MaxPreparedBytes)
	pl.samp = newSampler(p.opts.SampleRows, p.opts.SampleBytes)
	lv.key = p.cancels.register(cancelTarget{addr: up.conn.RemoteAddr().String(), pid: up.pid,
		secret: up.secret, uid: sess.Origin.UID, session: sess.ID, hold: pl.cancelHold})
	lv.keyed = true

	if err := p.greet(conn, st, up, lv.key); err != nil {
		return false, nil // the client left while we connected
	}
	up.params = nil // the greeting's: only the socket is needed from here on
	lv.pl = pl
	_ = client.SetDeadline(time.Time{})
	p.log.Debug("pgwire: session relaying", "session", sess.ID, "connection", p.opts.Name,
		"database", database, "upstream_pid", up.pid, "driver", p.driverOf(conn, up))
	return true, nil
}

func (p *Proxy) databaseRefusal(db string) string {
	if len(p.opts.Databases) == 0 {
		return fmt.Sprintf("database %q is not available through Airlock connection %s: no databases are allowed", db, p.opts.Name)
	}
	return fmt.Sprintf("database %q is not available through Airlock connection %s; allowed: %s",
		db, p.opts.Name, strings.Join(p.opts.Databases, ", "))
}

// greet finishes the client's startup as if the upstream had authenticated
// it directly, with our cancel key in place of the upstream's.
func (p *Proxy) greet(conn net.Conn, st startup, up *upstreamConn, key cancelKey) error {
	var b []byte
	if st.negotiate != nil {
		b, _ = st.negotiate.Encode(b)
	}
	b, _ = (&pgproto3.AuthenticationOk{}).Encode(b)
	for k, v := range up.params {
		b, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(b)
	}
	b, _ = (&pgproto3.BackendKeyData{ProcessID: key.pid, SecretKey: key.secret[:]}).Encode(b)
	tx := up.txStatus
	if tx == 0 {
		tx = 'I'
	}
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: tx}).Encode(b)
	_, err := conn.Write(b)
	return err
}

// loginRevoker is a Lease whose role can lose LOGIN once the proxy holds its
// upstream session, so that a password the session sets for its own role
// opens nothing outside Airlock.
type loginRevoker interface {
	RevokeLogin(ctx context.Context) error
}

// revokeLogin runs before the client is greeted, so before it can send a
// statement. A failure ends the session: the credential would stay usable
// outside the proxy.
func (p *Proxy) revokeLogin(ctx context.Context, sess *session.Session, lease Lease) *fatal {
	r, ok := lease.(loginRevoker)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, acquireTimeout)
	defer cancel()
	if err := r.RevokeLogin(ctx); err != nil {
		p.log.Warn("pgwire: revoke upstream login", "session", sess.ID, "connection", p.opts.Name, "err", err)
		return &fatal{codeInvalidAuth, fmt.Sprintf(
			"could not secure the just-in-time credential for connection %s; ask your Airlock admin", p.opts.Name)}
	}
	return nil
}

// release gives the credential back with a context of its own: the
// session's may already be cancelled by a shutdown.
func (p *Proxy) release(sess *session.Session, lease Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := lease.Release(ctx); err != nil {
		p.log.Warn("pgwire: release credential", "session", sess.ID, "connection", p.opts.Name, "err", err)
	}
}

// clientGone reports errors that only mean the peer went away.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
