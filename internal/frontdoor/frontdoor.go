// Package frontdoor accepts the connections the kernel redirected to the
// proxy port, finds out from the kernel's record where each was going and who
// opened it, and hands it as a Session to the handler of its target.
//
// A connection with no kernel record was not redirected: some local process
// dialled the proxy port directly. It is refused, because its origin cannot
// be trusted.
package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/procinfo"
	"github.com/airlockhq/airlock/internal/session"
)

// Records gives the kernel's record of a redirected connection, by the
// client's address as the proxy sees it.
type Records interface {
	Lookup(client netip.AddrPort) (intercept.Record, error)
}

// Handler serves one session to its end and closes conn.
type Handler interface {
	Serve(ctx context.Context, conn net.Conn, sess *session.Session) error
}

// Route is where a destination's sessions go.
type Route struct {
	Target     string
	Connection string
	Protocol   string
	Handler    Handler
}

// Router maps an original destination to its route.
type Router interface {
	Route(dest netip.AddrPort) (Route, bool)
}

// People says who stands behind a uid.
type People interface {
	Resolve(ctx context.Context, uid uint32) (identity.Person, error)
}

// Options configures a Server.
type Options struct {
	Port    uint16
	Records Records
	Router  Router
	People  People
	Sink    session.Sink
	Logger  *slog.Logger
	// IsRoot tells where an origin's ancestry stops (a tracked root);
	// nil walks up to 16 parents.
	IsRoot func(pid uint32) bool
}

// Server owns the listeners and the live sessions.
type Server struct {
	opts      Options
	listeners []net.Listener

	mu       sync.Mutex
	sessions map[string]*session.Session
	wg       sync.WaitGroup
}

// Listen binds the proxy port on both loopbacks.
func Listen(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{opts: opts, sessions: map[string]*session.Session{}}
	port := strconv.Itoa(int(opts.Port))
	for _, addr := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:" + port}, {"tcp6", "[::1]:" + port}} {
		l, err := net.Listen(addr.network, addr.addr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listen on proxy address %s: %w", addr.addr, err)
		}
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

// Addrs returns the bound addresses.
func (s *Server) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		_ = l.Close()
	}
}

// Serve accepts until ctx is done, then closes the listeners and waits for
// every session's handler to return (handlers see ctx cancelled).
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		go func(l net.Listener) { errc <- s.acceptLoop(ctx, l) }(l)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.closeListeners()
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop(ctx context.Context, l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn)
		}()
	}
}

func (s *Server) handle(ctx context.Context, conn net.Conn) {
	log := s.opts.Logger
	client := addrPort(conn.RemoteAddr())
	rec, err := s.opts.Records.Lookup(client)
	if err != nil {
		// Not redirected by the kernel (or the record was lost): the origin
		// is unknown, so nothing may be relayed.
		log.Warn("refused connection to the proxy port that the kernel did not redirect",
			"client", client.String(), "err", err)
		_ = conn.Close()
		return
	}
	route, ok := s.opts.Router.Route(rec.Orig)
	if !ok {
		log.Warn("refused redirected connection to a destination that is no longer a target",
			"dest", rec.Orig.String(), "pid", rec.TGID, "uid", rec.UID)
		_ = conn.Close()
		return
	}

	sess := session.New(s.opts.Sink)
	sess.Target, sess.Connection, sess.Protocol = route.Target, route.Connection, route.Protocol
	sess.Dest, sess.Client = rec.Orig, client
	sess.Origin = s.origin(rec)
	if p, err := s.opts.People.Resolve(ctx, rec.UID); err != nil {
		log.Warn("no identity for session", "session", sess.ID, "uid", rec.UID, "err", err)
	} else {
		sess.Person = p
	}
	s.add(sess)
	defer s.remove(sess)

	sess.Emit(session.Event{Kind: session.KindSessionStart, Start: sess})
	// The handler gets the bare *net.TCPConn: a wrapper here would cost
	// every read and write on the data path, and hide the socket from
	// handlers that use it directly. Handlers count what they relay in
	// the session attributes bytes_in and bytes_out.
	err = route.Handler.Serve(ctx, conn, sess)
	reason, detail := "client_quit", ""
	if err != nil {
		reason, detail = "error", err.Error()
		var r session.Reasoner
		if errors.As(err, &r) {
			reason = r.EndReason()
		}
	}
	attrs := sess.Attrs()
	end := &session.End{Reason: reason, Detail: detail, Duration: time.Since(sess.Started),
		BytesIn: attrInt(attrs["bytes_in"]), BytesOut: attrInt(attrs["bytes_out"]),
		Database: attrs["database"], UpstreamRole: attrs["upstream_user"]}
	sess.Emit(session.Event{Kind: session.KindSessionEnd, End: end})
}

func (s *Server) origin(rec intercept.Record) session.Origin {
	o := session.Origin{PID: rec.TGID, TID: rec.PID, UID: rec.UID, GID: rec.GID,
		Comm: rec.Comm, CgroupID: rec.CgroupID, ConnectAt: rec.At}
	// The process may be gone already (a short-lived client): the kernel's
	// record still stands; /proc only adds detail.
	if p, err := procinfo.Read(rec.TGID); err == nil {
		o.Exe, o.Cmdline = p.Exe, p.Cmdline
	}
	if cg, err := procinfo.CgroupPath(rec.TGID); err == nil {
		o.CgroupPath = cg
	}
	stop := func(p procinfo.Proc) bool { return s.opts.IsRoot != nil && s.opts.IsRoot(p.PID) }
	if chain, err := procinfo.Ancestry(rec.TGID, stop, 16); err == nil {
		for _, p := range chain {
			o.Parents = append(o.Parents, session.Proc{PID: p.PID, Exe: p.Exe, Cmdline: p.Cmdline, UID: p.UID})
		}
	}
	return o
}

func (s *Server) add(sess *session.Session) {
	s.mu.Lock()
	s.sessions[sess.ID] = sess
	s.mu.Unlock()
}

func (s *Server) remove(sess *session.Session) {
	s.mu.Lock()
	delete(s.sessions, sess.ID)
	s.mu.Unlock()
}

// Sessions returns the live sessions, oldest first.
func (s *Server) Sessions() []*session.Session {
	s.mu.Lock()
	out := make([]*session.Session, 0, len(s.sessions))
	for _, v := range s.sessions {
		out = append(out, v)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// attrInt reads a byte count a handler recorded; 0 if it recorded none.
func attrInt(v string) int64 {
	n, _ := strconv.ParseInt(v, 10, 64)
	return n
}
