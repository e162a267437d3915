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
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/pgrefuse"
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
	// Refusal, if set, turns every connection of this route away before
	// the handler (a target that has not resolved yet).
	Refusal *Refusal
	// Refuser tells a turned-away client why, in its protocol; nil closes
	// the connection without a word (plain TCP has none).
	Refuser Refuser
	// Exempt, if set, says whether a connection over the session caps may
	// still be served (a PostgreSQL CancelRequest: short, and the way out
	// of a runaway query). It may wait briefly for the client's first bytes.
	Exempt func(conn net.Conn) bool
	// Redirectable says the handler reads the client only with read(2), so
	// its socket may join the kernel's client-leg redirect (Options.Join):
	// splice (io.Copy between sockets) reads the TCP queue alone and would
	// miss redirected bytes.
	Redirectable bool
}

// Refusal is why a connection is turned away before its session starts.
type Refusal struct {
	Code    string // SQLSTATE, for PostgreSQL clients
	Message string // says what to do next
	Reason  string // short key for the counters: unresolved, max_sessions, ...
}

// Refuser tells a client in its own protocol why it is turned away. It
// returns when it is done; the front door closes the connection.
type Refuser interface {
	Refuse(ctx context.Context, conn net.Conn, r Refusal) error
}

// Router maps an original destination to its route.
type Router interface {
	Route(dest netip.AddrPort) (Route, bool)
}

// People says who stands behind a uid.
type People interface {
	Resolve(ctx context.Context, uid uint32) (identity.Person, error)
}

// Keeper is optionally implemented by People whose identities expire: it
// watches a live session's person, renewing the identity, and returns an
// error (why) once the session must end; nil when ctx is done.
type Keeper interface {
	Keep(ctx context.Context, uid uint32, p identity.Person) error
}

// AttrIdentityError is the session attribute that says why no person
// could be resolved; the protocol handler words its refusal with it.
const AttrIdentityError = "identity_error"

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
	// Class says whether an origin is an agent's process or a person's
	// (session.ClassAgent, session.ClassPerson); nil: every origin is a
	// person's.
	Class func(o *session.Origin) string
	// Caps on concurrent sessions in total and per client uid; 0 means no
	// cap. The excess is refused (PostgreSQL: SQLSTATE 53300).
	MaxSessions, MaxSessionsPerUID int

	// ExtraAddrs are more addresses to listen on (with Port): where the
	// kernel sends selected processes of other network namespaces.
	ExtraAddrs []netip.Addr
	// Join, if set, puts an accepted connection of a Redirectable route into
	// the kernel's client-leg redirect (intercept.Interceptor.JoinClientLeg).
	// It is called before anything is read from or written to the client.
	Join func(conn net.Conn)
}

// Refused reasons counted in Stats.
const (
	ReasonMaxSessions       = "max_sessions"
	ReasonMaxSessionsPerUID = "max_sessions_per_uid"
	ReasonNoRecord          = "no_kernel_record"
	ReasonNotATarget        = "not_a_target"
	ReasonUnresolved        = "unresolved" // set by routers for targets without an address
)

// maxRefusing bounds the connections being told why they are refused at
// once: each holds a descriptor until its client has spoken (at most a few
// seconds), and a flood of them must not take the descriptors the caps
// protect. Beyond it, connections are closed without a word.
const maxRefusing = 64

// maxExempt bounds the connections served over the caps at once (see
// Route.Exempt), so exemptions cannot be used to get around them.
const maxExempt = 16

// Stats are the front door's counts, for `airlock status`.
type Stats struct {
	Active            int
	PerUID            map[uint32]int
	MaxSessions       int
	MaxSessionsPerUID int
	Refused           map[string]uint64 // by reason
	AcceptErrors      uint64            // failed accepts (e.g. out of file descriptors)
	LastAcceptError   string
	LastAcceptErrorAt time.Time
}

// Server owns the listeners and the live sessions.
type Server struct {
	opts      Options
	listeners []net.Listener

	mu            sync.Mutex
	sessions      map[string]*session.Session
	perUID        map[uint32]int // sessions counted against the caps
	active        int
	refusing      int
	exempting     int
	refusalLogged map[string]time.Time
	refused       map[string]uint64
	acceptN       uint64
	acceptE       string
	acceptAt      time.Time
	wg            sync.WaitGroup
	origins       originCache
}

// Listen binds the proxy port on both loopbacks.
func Listen(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{opts: opts, sessions: map[string]*session.Session{}, perUID: map[uint32]int{}, refused: map[string]uint64{},
		refusalLogged: map[string]time.Time{}}
	port := strconv.Itoa(int(opts.Port))
	addrs := []struct{ network, addr string }{{"tcp4", "127.0.0.1:" + port}, {"tcp6", "[::1]:" + port}}
	for _, a := range opts.ExtraAddrs {
		network := "tcp6"
		if a.Unmap().Is4() {
			network = "tcp4"
		}
		addrs = append(addrs, struct{ network, addr string }{network, netip.AddrPortFrom(a.Unmap(), opts.Port).String()})
	}
	for _, addr := range addrs {
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
// every session to end (handlers see ctx cancelled).
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

// acceptLoop accepts until the listener closes. No accept error ends it:
// out of file descriptors (EMFILE, ENFILE) or memory, it backs off and
// retries, so the proxy comes back by itself once sessions end; pending
// clients wait in the listen backlog meanwhile. Each burst of failures is
// logged once.
func (s *Server) acceptLoop(ctx context.Context, l net.Listener) error {
	const minBackoff, maxBackoff = 5 * time.Millisecond, time.Second
	var backoff time.Duration
	var failed int
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.mu.Lock()
			s.acceptN++
			s.acceptE, s.acceptAt = err.Error(), time.Now()
			s.mu.Unlock()
			if failed == 0 {
				s.opts.Logger.Warn("accept failed; backing off and retrying (new sessions wait until it succeeds)",
					"listener", l.Addr().String(), "err", err, "hint", acceptHint(err))
			}
			failed++
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		if failed > 0 {
			s.opts.Logger.Info("accepting again", "listener", l.Addr().String(), "failed_accepts", failed)
			failed, backoff = 0, 0
		}
		s.wg.Add(1)
		go s.handle(ctx, conn, s.wg.Done)
	}
}

// Detacher is a Handler that can serve a session without holding the
// calling goroutine until it ends: done gets what Serve would return, once,
// from whichever goroutine ends the session. A session with no goroutine
// waiting for it costs no stack while it idles.
type Detacher interface {
	ServeDetached(ctx context.Context, conn net.Conn, sess *session.Session, done func(error))
}

// handle serves one accepted connection and calls finished once the
// session is over, possibly after handle returned (a Detacher's session).
// Its frame stays small: for a handler that does not detach it is on the
// stack of the goroutine that waits out the session, and an idle session's
// memory is mostly that stack (docs/BENCHMARKS.md, "Idle sessions"); admit
// and ended do the work before and after.
func (s *Server) handle(ctx context.Context, conn net.Conn, finished func()) {
	a := &admission{}
	ctx, ok := s.admit(ctx, conn, a)
	if !ok {
		finished()
		return
	}
	// The handler gets the bare *net.TCPConn: a wrapper here would cost
	// every read and write on the data path, and hide the socket from
	// handlers that use it directly. Handlers count what they relay in
	// sess.Stats.
	if d, ok := a.route.Handler.(Detacher); ok {
		d.ServeDetached(ctx, conn, a.sess, func(err error) {
			s.ended(ctx, a.sess, err)
			s.dismiss(a)
			finished()
		})
		return
	}
	err := a.route.Handler.Serve(ctx, conn, a.sess)
	s.ended(ctx, a.sess, err)
	s.dismiss(a)
	finished()
}

// admission is what a served connection holds until its session ends.
type admission struct {
	route    Route
	sess     *session.Session
	uid      uint32
	counted  bool   // counted against the caps (else it holds an exempt slot)
	stopKeep func() // stops the identity keeper; nil without one
}

// admit refuses the connection (and reports false), or starts its session:
// counted against the caps, its person resolved, watched by the identity
// keeper, recorded as started. The context returned is the session's.
func (s *Server) admit(ctx context.Context, conn net.Conn, a *admission) (context.Context, bool) {
	log := s.opts.Logger
	client := addrPort(conn.RemoteAddr())
	rec, err := s.opts.Records.Lookup(client)
	if err != nil {
		// Not redirected by the kernel (or the record was lost): the origin
		// is unknown, so nothing may be relayed.
		s.count(ReasonNoRecord)
		if s.logRefusal(ReasonNoRecord) {
			log.Warn("refused connection to the proxy port that the kernel did not redirect",
				"client", client.String(), "err", err)
		}
		a := session.New(s.opts.Sink)
		a.Client = client
		s.recordRefusal(a, Refusal{Reason: ReasonNoRecord,
			Message: "connection to Airlock's proxy port that the kernel did not redirect: its process is unknown, so it is closed"})
		_ = conn.Close()
		return ctx, false
	}
	route, ok := s.opts.Router.Route(rec.Orig)
	if !ok {
		log.Warn("refused redirected connection to a destination that is no longer a target",
			"dest", rec.Orig.String(), "pid", rec.TGID, "uid", rec.UID)
		s.count(ReasonNotATarget)
		s.recordRefusal(s.attempt(Route{}, rec, client), Refusal{Reason: ReasonNotATarget,
			Message: "redirected connection to " + rec.Orig.String() + ", which is no longer a registered target: closed"})
		_ = conn.Close()
		return ctx, false
	}
	// Before the first byte is read or answered: what the client sends in
	// reply to the proxy must not overtake what it sent before.
	if route.Redirectable && s.opts.Join != nil {
		s.opts.Join(conn)
	}
	if route.Refusal != nil {
		s.refuse(ctx, conn, route, rec, client, *route.Refusal)
		return ctx, false
	}
	if r, ok := s.acquire(rec.UID); !ok {
		if !s.exempt(route, conn) {
			s.refuse(ctx, conn, route, rec, client, r)
			return ctx, false
		}
	} else {
		a.counted = true
	}
	a.uid, a.route = rec.UID, route

	sess := session.New(s.opts.Sink)
	s.reserve(sess)
	sess.Target, sess.Connection, sess.Protocol = route.Target, route.Connection, route.Protocol
	sess.Dest, sess.Client = rec.Orig, client
	sess.Origin = s.origin(rec)
	sess.Origin.Class = session.ClassPerson
	if s.opts.Class != nil {
		sess.Origin.Class = s.opts.Class(&sess.Origin)
	}
	// Resolved before any upstream work: the handler refuses a session
	// without a person, with this error's wording.
	if p, err := s.opts.People.Resolve(ctx, rec.UID); err != nil {
		log.Warn("no identity for session", "session", sess.ID, "uid", rec.UID, "err", err)
		sess.SetAttr(AttrIdentityError, err.Error())
	} else {
		sess.Person = p
	}
	s.add(sess)
	a.sess = sess

	// A person whose identity expires mid-session: the keeper renews it or,
	// failing that, ends the session through its context, with the cause.
	if k, ok := s.opts.People.(Keeper); ok && sess.Person.Subject != "" {
		sctx, cancel := context.WithCancelCause(ctx)
		kctx, stopKeep := context.WithCancel(sctx)
		kdone := make(chan struct{})
		uid, person := rec.UID, sess.Person
		go func() {
			defer close(kdone)
			if err := k.Keep(kctx, uid, person); err != nil {
				log.Warn("ending session: identity lost", "session", sess.ID, "uid", uid, "err", err)
				cancel(err)
			}
		}()
		a.stopKeep = func() { stopKeep(); <-kdone; cancel(nil) }
		ctx = sctx
	}

	sess.Emit(session.Event{Kind: session.KindSessionStart, Start: sess})
	return ctx, true
}

// dismiss gives back what admit took, in the reverse order.
func (s *Server) dismiss(a *admission) {
	if a.stopKeep != nil {
		a.stopKeep()
	}
	s.remove(a.sess)
	if a.counted {
		s.release(a.uid)
	} else {
		s.unexempt()
	}
}

// ended records the end of a session that its handler returned err for.
func (s *Server) ended(ctx context.Context, sess *session.Session, err error) {
	reason, detail := "client_quit", ""
	if err != nil {
		reason, detail = "error", err.Error()
		var r session.Reasoner
		if errors.As(err, &r) {
			reason = r.EndReason()
		}
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) && ctx.Err() != nil {
		// The session's person lost their identity (or their access grant)
		// mid-session; a cause that names its reason says which.
		reason, detail = "identity_lost", cause.Error()
		var r session.Reasoner
		if errors.As(cause, &r) {
			reason = r.EndReason()
		}
	}
	end := &session.End{Reason: reason, Detail: detail, Duration: time.Since(sess.Started),
		BytesIn: sess.Stats.BytesIn.Load(), BytesOut: sess.Stats.BytesOut.Load(),
		Database: sess.Database(), UpstreamRole: sess.UpstreamRole(), Masked: sess.MaskCounts()}
	sess.Emit(session.Event{Kind: session.KindSessionEnd, End: end})
}

func acceptHint(err error) string {
	switch {
	case errors.Is(err, syscall.EMFILE):
		return "out of file descriptors for this process: lower proxy.max_sessions or raise LimitNOFILE"
	case errors.Is(err, syscall.ENFILE):
		return "the system is out of file descriptors"
	case errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		return "out of memory"
	}
	return ""
}

// acquire counts a new session against the caps, or says why it may not
// start.
func (s *Server) acquire(uid uint32) (Refusal, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.opts.MaxSessions; max > 0 && s.active >= max {
		return Refusal{Code: pgrefuse.TooManyConnections, Reason: ReasonMaxSessions, Message: fmt.Sprintf(
			"Airlock has reached its limit of %d concurrent sessions (proxy.max_sessions); retry when some have ended, or ask your Airlock admin to raise it", max)}, false
	}
	if max := s.opts.MaxSessionsPerUID; max > 0 && s.perUID[uid] >= max {
		return Refusal{Code: pgrefuse.TooManyConnections, Reason: ReasonMaxSessionsPerUID, Message: fmt.Sprintf(
			"uid %d already has %d concurrent Airlock sessions, the limit (proxy.max_sessions_per_uid); close some and retry, or ask your Airlock admin to raise it", uid, max)}, false
	}
	s.active++
	s.perUID[uid]++
	return Refusal{}, true
}

func (s *Server) release(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	if s.perUID[uid]--; s.perUID[uid] <= 0 {
		delete(s.perUID, uid)
	}
}

// exempt reports whether a connection over the caps may still be served,
// and if so holds one of the few exempt slots until unexempt.
func (s *Server) exempt(route Route, conn net.Conn) bool {
	if route.Exempt == nil {
		return false
	}
	s.mu.Lock()
	ok := s.exempting < maxExempt
	if ok {
		s.exempting++
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	if route.Exempt(conn) {
		return true
	}
	s.unexempt()
	return false
}

func (s *Server) unexempt() {
	s.mu.Lock()
	s.exempting--
	s.mu.Unlock()
}

// refusalLogEvery is how often each kind of refusal is logged at most.
const refusalLogEvery = 10 * time.Second

func (s *Server) logRefusal(reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if last, ok := s.refusalLogged[reason]; ok && now.Sub(last) < refusalLogEvery {
		return false
	}
	s.refusalLogged[reason] = now
	return true
}

func (s *Server) count(reason string) {
	s.mu.Lock()
	s.refused[reason]++
	s.mu.Unlock()
}

// refuse records why a connection is turned away and tells its client in
// its protocol. Only the kernel's record describes the origin: a refusal
// must stay cheap, as it may come in a flood.
func (s *Server) refuse(ctx context.Context, conn net.Conn, route Route, rec intercept.Record, client netip.AddrPort, r Refusal) {
	defer conn.Close()
	s.mu.Lock()
	s.refused[r.Reason]++
	speak := s.refusing < maxRefusing
	if speak {
		s.refusing++
	}
	s.mu.Unlock()

	sess := s.attempt(route, rec, client)
	s.recordRefusal(sess, r)
	// Every refusal is an event; the log gets the first of each kind per
	// interval, so a flood of them does not flood the journal.
	if s.logRefusal(r.Reason) {
		s.opts.Logger.Warn("refused connection", "reason", r.Reason, "target", route.Target, "dest", rec.Orig.String(),
			"pid", rec.TGID, "uid", rec.UID, "message", r.Message, "refused_so_far", s.Stats().Refused[r.Reason])
	}
	if !speak {
		return
	}
	defer func() {
		s.mu.Lock()
		s.refusing--
		s.mu.Unlock()
	}()
	if route.Refuser != nil {
		if err := route.Refuser.Refuse(ctx, conn, r); err != nil {
			s.opts.Logger.Debug("telling a refused client why", "session", sess.ID, "err", err)
		}
	}
}

// attempt is a connection refused before its session started, described
// by the kernel's record only: a refusal must stay cheap.
func (s *Server) attempt(route Route, rec intercept.Record, client netip.AddrPort) *session.Session {
	a := session.New(s.opts.Sink)
	a.Target, a.Connection, a.Protocol = route.Target, route.Connection, route.Protocol
	a.Dest, a.Client = rec.Orig, client
	a.Origin = session.Origin{PID: rec.TGID, TID: rec.PID, UID: rec.UID, GID: rec.GID,
		Comm: rec.Comm, CgroupID: rec.CgroupID, ConnectAt: rec.At}
	return a
}

// recordRefusal records a refusal before any session: no session.start
// describes the connection, so the record carries what is known of it.
func (s *Server) recordRefusal(a *session.Session, r Refusal) {
	a.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: r.Message, SQLState: r.Code,
		Code: r.Reason, Attempt: a}})
}

// Stats returns the session counts and refusals so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Active: s.active, PerUID: make(map[uint32]int, len(s.perUID)), Refused: make(map[string]uint64, len(s.refused)),
		MaxSessions: s.opts.MaxSessions, MaxSessionsPerUID: s.opts.MaxSessionsPerUID,
		AcceptErrors: s.acceptN, LastAcceptError: s.acceptE, LastAcceptErrorAt: s.acceptAt}
	for k, v := range s.perUID {
		st.PerUID[k] = v
	}
	for k, v := range s.refused {
		st.Refused[k] = v
	}
	return st
}

func (s *Server) origin(rec intercept.Record) session.Origin {
	o := session.Origin{PID: rec.TGID, TID: rec.PID, UID: rec.UID, GID: rec.GID,
		Comm: rec.Comm, CgroupID: rec.CgroupID, ConnectAt: rec.At}
	// The process may be gone already (a short-lived client): the kernel's
	// record still stands; /proc only adds detail.
	client, cerr := procinfo.Read(rec.TGID)
	if cerr == nil {
		o.Exe, o.Cmdline = client.Exe, client.Cmdline
	}
	if cg, err := procinfo.CgroupPath(rec.TGID); err == nil {
		o.CgroupPath = cg
		if pod, ok := cgroups.ParseKubepods(cg); ok {
			o.PodUID, o.ContainerID = pod.UID, pod.Container
		}
	}
	stop := func(p procinfo.Proc) bool { return s.opts.IsRoot != nil && s.opts.IsRoot(p.PID) }
	// The ancestry starts from the client just read: reading it again
	// cost a new connection as much as one more ancestor. A client that
	// could not be read has no ancestry either (it exited, or its PID
	// names another process by now).
	if cerr == nil {
		if chain, err := procinfo.AncestryOf(client, stop, 16); err == nil {
			for _, p := range chain {
				o.Parents = append(o.Parents, session.Proc{PID: p.PID, Exe: p.Exe, Cmdline: p.Cmdline, UID: p.UID})
			}
		}
	}
	s.origins.share(&o)
	return o
}

// originCache lets the sessions of one process share the memory of their
// origins' details: a pool of connections holds as many copies of the same
// command lines and ancestry, a few KB each, for as long as it is open.
// Only what was just read and found equal is shared, so a reused PID never
// lends a session another process's details. Nothing mutates an origin
// after the front door builds it.
type originCache struct {
	mu    sync.Mutex
	byPID map[uint32]*session.Origin // the last origin seen of each process
}

// originCacheSize bounds the processes remembered; when full it starts
// over (only sharing is lost).
const originCacheSize = 256

func (c *originCache) share(o *session.Origin) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.byPID[o.PID]; prev != nil {
		// Equal strings, but the new one's bytes become garbage.
		if o.Exe == prev.Exe {
			o.Exe = prev.Exe
		}
		if slices.Equal(o.Cmdline, prev.Cmdline) {
			o.Cmdline = prev.Cmdline
		}
		if o.CgroupPath == prev.CgroupPath {
			o.CgroupPath = prev.CgroupPath
		}
		if slices.EqualFunc(o.Parents, prev.Parents, sameProc) {
			o.Parents = prev.Parents
		}
	}
	if c.byPID == nil || len(c.byPID) >= originCacheSize {
		c.byPID = map[uint32]*session.Origin{}
	}
	kept := *o
	c.byPID[o.PID] = &kept
}

func sameProc(a, b session.Proc) bool {
	return a.PID == b.PID && a.UID == b.UID && a.Exe == b.Exe && slices.Equal(a.Cmdline, b.Cmdline)
}

// reserve gives sess an id no live session has, and holds it until add.
// Ids are random (and the second they were made in), so a clash is
// unlikely, not impossible: two live sessions under one id would share an
// upstream role name and their audit records, and the first to end would
// drop the other from the live list.
func (s *Server) reserve(sess *session.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// 60 fresh random bits each time: a second clash in a row would
	// take a broken random source, and NewID panics on one that fails.
	for range maxIDTries {
		if _, taken := s.sessions[sess.ID]; !taken {
			break
		}
		sess.ID = session.NewID()
	}
	if _, taken := s.sessions[sess.ID]; taken {
		panic("frontdoor: no session id that a live session does not have: the random source repeats")
	}
	s.sessions[sess.ID] = nil
}

const maxIDTries = 16

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
		if v != nil { // reserved, not yet started
			out = append(out, v)
		}
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
