package pgwire

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// capSink records events for assertions.
type capSink struct {
	mu  sync.Mutex
	evs []session.Event
}

func (c *capSink) Record(ev session.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev.Statement = ev.Statement.Clone() // it is ours only during Record
	c.evs = append(c.evs, ev)
}

func (c *capSink) events() []session.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]session.Event(nil), c.evs...)
}

func (c *capSink) statements() []session.Statement {
	var out []session.Statement
	for _, ev := range c.events() {
		if ev.Kind == session.KindStatement {
			out = append(out, *ev.Statement)
		}
	}
	return out
}

func (c *capSink) refusals() []session.Refusal {
	var out []session.Refusal
	for _, ev := range c.events() {
		if ev.Kind == session.KindRefused {
			out = append(out, *ev.Refusal)
		}
	}
	return out
}

func (c *capSink) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evs = nil
}

// staticCreds is the trivial real Credentials: one fixed upstream login.
type staticCreds struct {
	user, password string
	ttl            time.Duration
	err            error
	acquired       atomic.Int32
	released       atomic.Int32
}

type staticLease struct {
	c       *staticCreds
	expires time.Time
}

func (c *staticCreds) Acquire(_ context.Context, _ *session.Session, _ string) (Lease, error) {
	if c.err != nil {
		return nil, c.err
	}
	c.acquired.Add(1)
	l := &staticLease{c: c}
	if c.ttl > 0 {
		l.expires = time.Now().Add(c.ttl)
	}
	return l, nil
}

func (l *staticLease) User() string       { return l.c.user }
func (l *staticLease) Password() string   { return l.c.password }
func (l *staticLease) Expires() time.Time { return l.expires }
func (l *staticLease) Release(context.Context) error {
	l.c.released.Add(1)
	return nil
}

// harness is a proxy behind a loopback listener, serving each accepted
// connection with a hand-built session, as the daemon would.
type harness struct {
	t     testing.TB
	proxy *Proxy
	creds *staticCreds
	sink  *capSink
	logs  *syncBuffer
	addr  string
	port  int
	uid   atomic.Uint32
	// sslmode of url (and connect): "disable" unless set, before any
	// client connects, to test a TLS client leg.
	sslmode string
	person  atomic.Value // string
	cancel  context.CancelFunc

	mu       sync.Mutex
	results  []error
	upConns  []net.Conn
	upLinks  []int // a duplicate of each upstream socket, to cut it under any driver
	sessions []*session.Session
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newHarness(t testing.TB, pg *pgtest.Server, mutate func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, sink: &capSink{}, logs: &syncBuffer{}}
	h.uid.Store(1000)
	h.person.Store("alice")
	opts := Options{Name: "testdb", Databases: []string{"postgres"},
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if pg != nil {
		h.creds = &staticCreds{user: pg.AdminUser, password: pg.AdminPassword}
		opts.Upstream = Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"}
	} else {
		h.creds = &staticCreds{user: "nobody", password: "never-sent-secret"}
		opts.Upstream = Upstream{Host: "127.0.0.1", Port: 1, TLSMode: "disable"}
	}
	opts.Credentials = h.creds
	opts.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			h.mu.Lock()
			h.upConns = append(h.upConns, c)
			h.upLinks = append(h.upLinks, linkOf(t, c))
			h.mu.Unlock()
		}
		return c, err
	}
	if mutate != nil {
		mutate(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.proxy = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	h.port = ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sess := session.New(h.sink)
			sess.Origin.UID = h.uid.Load()
			sess.Person = identity.Person{Name: h.person.Load().(string), UID: sess.Origin.UID}
			h.mu.Lock()
			h.sessions = append(h.sessions, sess)
			h.mu.Unlock()
			// As the daemon's front door serves sessions: detached, so
			// that the tests cover the path where no goroutine waits for
			// a session on the loop (pgwiretest's users cover Serve).
			wg.Add(1)
			go p.ServeDetached(ctx, c, sess, func(err error) {
				h.mu.Lock()
				h.results = append(h.results, err)
				h.mu.Unlock()
				wg.Done()
			})
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		wg.Wait()
	})
	return h
}

// url is a client connection string to the proxy. User and password are
// deliberately bogus: the proxy ignores them.
func (h *harness) url(db string, extra ...string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("whoever", "ignored"), Host: h.addr, Path: "/" + db}
	mode := h.sslmode
	if mode == "" {
		mode = "disable"
	}
	q := url.Values{"sslmode": {mode}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func (h *harness) connect(ctx context.Context, t testing.TB) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, h.url("postgres"))
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// serveResults waits for n sessions to have ended and returns their errors.
func (h *harness) serveResults(n int) []error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		if len(h.results) >= n {
			out := append([]error(nil), h.results...)
			h.mu.Unlock()
			return out
		}
		h.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("fewer than %d sessions ended within 10s", n)
	return nil
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func itoa(n int) string { return strconv.Itoa(n) }

func ctx(t testing.TB) context.Context { return testCtx(t) }

// linkOf duplicates c's socket: shutting the duplicate down cuts the link
// whichever driver holds the connection (the event loop closes the
// net.Conn it was given and keeps a duplicate of its own).
func linkOf(t testing.TB, c net.Conn) int {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatalf("upstream socket: %v", err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || fd < 0 {
		t.Fatalf("duplicate upstream socket: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return fd
}
