package pgwire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/session"
)

// The event-loop driver. The goroutine driver (relay.go) runs two
// goroutines per session that hand off through Go's netpoller: every
// message wakes a goroutine, often a thread. This driver takes a plain TCP
// session's two sockets out of Go's poller (the descriptors are duplicated
// and the net.Conns closed) and gives them to one of a few loops, one per
// core, each a thread blocked in epoll_wait over the sockets of many
// sessions: a round trip costs a read and a write per direction, the
// epoll_wait is shared by every session ready at once, and nothing wakes
// another thread. The loop never blocks: a write that would block is
// buffered and waits for EPOLLOUT (the source side stops being read
// meanwhile: backpressure), a hold parks the session's state while a
// goroutine waits for the decision, and everything from outside the loop
// (hold decisions, shutdown, credential expiry, timers) comes in as a
// command through an eventfd. The same pipeline core (core.go) decides
// every message, so the protocol state and the record are the driver's
// concern in neither driver.
//
// A TLS client leg runs on the loop too, with crypto/tls driven from it
// over a transport that never blocks (tlsloop_linux.go).

// Driver names for Options.Driver (proxy.driver in the config).
const (
	DriverGoroutines = "goroutines"
	DriverLoop       = "loop"
)

const (
	loopScratch  = 64 << 10 // one read's worth, shared by a loop's sessions
	loopMaxBatch = 128      // events per epoll_wait
)

// How a loop waits for its descriptors. Raw by default: less CPU per
// transaction than the poller wait, measured side by side
// (docs/BENCHMARKS.md "Drivers"); AIRLOCK_PGWIRE_LOOPWAIT=poller selects the
// other, for measuring.
const (
	// waitPoller parks the loop as a goroutine through Go's poller.
	waitPoller = "poller"
	// waitRaw blocks the loop's goroutine in epoll_wait without telling
	// the scheduler (a raw system call): its thread keeps its P, and a
	// wake-up is the kernel's alone, as for PgBouncer's single thread.
	waitRaw = "raw"
)

// rawBackstop bounds a raw wait (ms): a loop idle that long goes back to
// waiting through the scheduler (see runRaw), and a preemption request
// whose signal came just before the wait began is seen by then at the
// latest.
const rawBackstop = 5

// A set of event loops, one per core, started on first use. They live as
// long as the process: a loop with no session costs one parked thread.
type loopSet struct {
	once  sync.Once
	loops []*evloop
	err   error
	next  atomic.Uint32
}

// The process's loops, by wait. Only defaultLoopWait's are ever started
// outside tests.
var loopSets = map[string]*loopSet{waitPoller: {}, waitRaw: {}}

// defaultLoopWait is how the loops wait unless a test says otherwise.
var defaultLoopWait = loopWait()

// pickLoop returns one of the process's event loops that wait as mode says,
// starting them the first time.
func pickLoop(mode string) (*evloop, error) {
	set := loopSets[mode]
	if set == nil {
		return nil, fmt.Errorf("pgwire: event loop: unknown wait %q", mode)
	}
	set.once.Do(func() {
		n := loopCount(runtime.GOMAXPROCS(0))
		if mode == waitRaw {
			// A loop in a raw wait holds a P the scheduler cannot hand to
			// anyone else: without n more, the loops would leave the
			// rest of the daemon (session setup, holds, the audit
			// shipper, timers, the GC's workers) fewer Ps than cores,
			// none at all with one loop per core.
			reserveLoopPs(n)
		}
		for i := 0; i < n; i++ {
			l, err := newEvloop(mode)
			if err != nil {
				set.err = err
				return
			}
			set.loops = append(set.loops, l)
			go l.run()
		}
	})
	if set.err != nil {
		return nil, set.err
	}
	return set.loops[int(set.next.Add(1))%len(set.loops)], nil
}

// reserveLoopPs raises GOMAXPROCS by n, the Ps that n raw loops hold.
func reserveLoopPs(n int) {
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + n)
}

// loopWait is the wait AIRLOCK_PGWIRE_LOOPWAIT names, raw unless it says
// poller. A raw wait relies on the runtime's preemption signal to get the
// loop to stop for the GC, so with asynchronous preemption turned off it
// would stall every stop-the-world up to rawBackstop: the poller wait is
// used then.
func loopWait() string {
	return loopWaitOf(os.Getenv("AIRLOCK_PGWIRE_LOOPWAIT"), os.Getenv("GODEBUG"))
}

func loopWaitOf(env, godebug string) string {
	if env == waitPoller || strings.Contains(godebug, "asyncpreemptoff=1") {
		return waitPoller
	}
	return waitRaw
}

// evloop is one event loop: an epoll instance, its thread, and the commands
// waiting for it.
type evloop struct {
	epfd, evfd int
	raw        bool // waitRaw, else waitPoller
	backstop   int  // a raw wait's timeout in ms; -1: none (tests)
	quit       bool // set by a command: run returns (tests)
	intr       int  // raw waits ended by a signal (tests)
	// Under waitPoller, the epoll descriptor is itself waited on through
	// Go's poller (it is readable when some of its descriptors are ready):
	// the loop parks as a goroutine, not as a thread in a blocking system
	// call, so waking it costs what waking any goroutine does and no
	// thread hands its P off.
	file  *os.File
	rc    syscall.RawConn
	mu    sync.Mutex
	cmds  []func()
	spare []func()
	// fds is every registered descriptor → the side that reads it,
	// indexed by the descriptor: looked up at every event, where a map
	// costs a hash and probe. Descriptors are small and reused lowest
	// first, so it is as long as the highest one open at once.
	fds     []*lside
	scratch []byte
	seal    []byte // records crypto/tls writes for a TLS client leg, before they go out
	more    bool   // a read of this pass filled its buffer: poll again before parking (waitPoller)
}

func newEvloop(mode string) (*evloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("pgwire: event loop: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("pgwire: event loop: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("pgwire: event loop: add eventfd: %w", err)
	}
	l := &evloop{epfd: epfd, evfd: evfd, scratch: make([]byte, loopScratch),
		raw: mode == waitRaw, backstop: rawBackstop}
	if l.raw {
		// Not in Go's poller: its own epoll would be woken by every
		// event of this one, a wake-up of another thread for nothing.
		return l, nil
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("pgwire: event loop: %w", err)
	}
	l.file = os.NewFile(uintptr(epfd), "pgwire-event-loop")
	rc, err := l.file.SyscallConn()
	if err != nil {
		_ = l.file.Close()
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("pgwire: event loop: %w", err)
	}
	l.rc = rc
	return l, nil
}

// close releases a loop's descriptors once run has returned (tests).
func (l *evloop) close() {
	if l.file != nil {
		_ = l.file.Close()
	} else {
		_ = unix.Close(l.epfd)
	}
	_ = unix.Close(l.evfd)
}

// post runs fn on the loop. Safe from any goroutine.
func (l *evloop) post(fn func()) {
	l.mu.Lock()
	wake := len(l.cmds) == 0
	l.cmds = append(l.cmds, fn)
	l.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = unix.Write(l.evfd, one[:])
	}
}

func (l *evloop) run() {
	events := make([]unix.EpollEvent, loopMaxBatch)
	if l.raw {
		l.runRaw(events)
		return
	}
	// One RawRead for the loop's whole life, so that a readiness
	// notification of the epoll descriptor that arrives while the loop
	// works is kept (RawRead resets it only on entry) and wakes the loop
	// at once; without one, the loop parks without the zero-timeout
	// epoll_wait that would find nothing. That is safe because every
	// descriptor that can still be ready after a pass notifies again: a
	// side made ready by epoll_ctl does, a new arrival does, and the one
	// exception, a level-triggered socket still holding unread input (its
	// read filled the whole buffer), sets more and the loop polls again.
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			n, e := epollWaitRaw(int(fd), events, 0)
			if e == syscall.EINTR {
				continue
			}
			if e != 0 {
				panic(fmt.Sprintf("pgwire: event loop: epoll_wait: %v", e)) // a bad epfd: a bug, not a condition
			}
			l.more = false
			l.dispatch(events[:n])
			if l.quit {
				return true
			}
			if n < len(events) && !l.more {
				return false // park until the epoll descriptor is readable
			}
		}
	})
	if err != nil {
		panic(fmt.Sprintf("pgwire: event loop: wait on the epoll descriptor: %v", err))
	}
}

// runRaw is run for waitRaw: the goroutine blocks in epoll_wait as a raw
// system call, so the runtime takes it for running Go code. Its thread keeps
// its P while it waits and a wake-up goes through no scheduler: the kernel
// wakes the thread and the loop goes on. What that costs elsewhere:
//   - A P per loop, held even while waiting: pickLoop raises GOMAXPROCS.
//   - The runtime cannot stop the loop where it waits. To stop the world
//     (GC) or preempt it (sysmon, every 10 ms of "running") it signals the
//     thread (SIGURG), which ends the wait with EINTR; the signal handler
//     cannot preempt inside the system call, so the loop passes a
//     preemption point (preemptPoint) before it waits again. A signal
//     that lands just before the wait begins is repeated (every 100 µs by
//     a stopping GC), and the wait is bounded by the backstop besides.
//   - An idle loop would hold its P and be preempted every 10 ms for
//     nothing: after a backstop period without an event it waits as a
//     blocking system call instead (the scheduler takes the P back), and
//     returns to raw waits with the next event.
//
// The goroutine is not locked to its thread: nothing here needs the same
// thread, and a locked goroutine's every preemption would hand its P to
// another thread and back.
func (l *evloop) runRaw(events []unix.EpollEvent) {
	for !l.quit {
		n, e := epollWaitRaw(l.epfd, events, l.backstop)
		if e == 0 && n == 0 {
			n, e = epollWaitBlocking(l.epfd, events)
		}
		if e == syscall.EINTR {
			// Most likely the runtime asking the goroutine to stop: this
			// is the preemption point it is waiting for.
			l.intr++
			preemptPoint()
			continue
		}
		if e != 0 {
			panic(fmt.Sprintf("pgwire: event loop: epoll_wait: %v", e)) // a bad epfd: a bug, not a condition
		}
		l.dispatch(events[:n])
	}
}

// preemptPoint lets a pending preemption request take effect. The runtime
// asks a running goroutine to stop by poisoning its stack bound, which the
// check at the entry of any function that calls another trips; the runtime
// then parks the goroutine the way the request wants (for a GC's stack scan
// it stays parked until scanned). runtime.Gosched would not do: it makes the
// goroutine runnable, the scheduler runs it again at once and clears the
// request, and a GC waiting to scan the loop's stack can miss that instant
// for seconds (measured: a 5.7 s mark phase).
//
//go:noinline
func preemptPoint() { preemptNop() }

//go:noinline
func preemptNop() {}

// epollWaitRaw is epoll_wait(2) without the scheduler's knowledge. Both
// waits are made as epoll_pwait with no signal mask, which is epoll_wait:
// arm64 has only epoll_pwait.
func epollWaitRaw(epfd int, events []unix.EpollEvent, msec int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), e
}

// epollWaitBlocking is epoll_wait(2) with no timeout as a blocking system
// call: the thread lets go of its P while it waits.
func epollWaitBlocking(epfd int, events []unix.EpollEvent) (int, syscall.Errno) {
	r, _, e := syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
	return int(r), e
}

func (l *evloop) dispatch(events []unix.EpollEvent) {
	for i := range events {
		ev := &events[i]
		if int(ev.Fd) == l.evfd {
			var b [8]byte
			_, _ = rawRead(l.evfd, b[:])
			l.runCmds()
			continue
		}
		s := l.side(ev.Fd)
		if s == nil {
			continue // removed by an earlier event of this batch
		}
		s.ls.event(s, ev.Events)
	}
}

// side is the side registered for descriptor fd, nil when none is.
func (l *evloop) side(fd int32) *lside {
	if fd < 0 || int(fd) >= len(l.fds) {
		return nil
	}
	return l.fds[fd]
}

// setSide registers s for fd (nil: none).
func (l *evloop) setSide(fd int, s *lside) {
	if fd >= len(l.fds) {
		if s == nil {
			return
		}
		l.fds = append(l.fds, make([]*lside, fd+1-len(l.fds))...)
	}
	l.fds[fd] = s
}

func (l *evloop) runCmds() {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = l.spare[:0]
	l.mu.Unlock()
	for i, fn := range cmds {
		fn()
		cmds[i] = nil
	}
	l.spare = cmds
}

// lside is one direction of a session on a loop: reading src, framing,
// asking the pipe, writing dst.
type lside struct {
	ls       *lsess
	src, dst int
	peer     *lside  // the other direction: its src is our dst
	decode   typeSet // 32 bytes, not a [256]bool: an idle session holds two
	decMax   int
	maxLen   int
	bytes    *atomic.Int64
	msgs     *atomic.Int64
	client   bool // reads the client
	sealed   bool // dst is a TLS client leg: what is forwarded is plaintext

	buf    []byte // unprocessed input: the loop's scratch during a pass, else owned
	owned  []byte
	r, w   int
	stream int  // bytes of a streamed (undecoded, large) message still to pass
	skip   bool // the streamed message is discarded (a stage replaced it)
	midMsg bool // dst has part of a message

	out      []byte // bytes for dst that it would not take yet
	co       []byte // a run being coalesced around replaced messages
	gone     bool   // dst failed under drain: discard what is bound for it
	drain    bool
	held     *act // parked on a hold at buf[r]
	resumed  *act // the decision for the message at buf[r]
	waitRoom bool // the pipe's pending queue is full
	eof      bool // src ended
	hup      bool // src hung up while paused: out of epoll until unpaused
	reg      bool // src is in the loop's epoll set
	interest uint32
}

// lsess is a session on a loop.
type lsess struct {
	l        *evloop
	p        *Proxy
	pl       *pipe
	sess     *session.Session
	c2s, s2c *lside
	sides    [2]lside
	tl       *tlsLeg // the client leg's record layer; nil for plain TCP
	why      ending
	ended    bool
	left     bool // the client left; the server's answers are drained
	done     chan struct{}
	stopped  chan struct{}
	cerr     error
	timers   []*time.Timer
	stopCtx  func() bool // stops the context's watch
	expiry   *time.Timer // the credential's end; nil if it has none
	onEnd    func(*lsess)
}

func (s *lside) paused() bool {
	return s.held != nil || s.waitRoom || len(s.out) > 0 || s.eof
}

// fdsOf takes the descriptors of two plain TCP connections out of Go's
// poller: each is duplicated, made non-blocking, and the connection closed.
func takeFD(c net.Conn) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, errors.New("not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	_ = tc.Close()
	return fd, nil
}

// loopable reports whether the session can run on the event-loop driver:
// both legs plain TCP, or the client's TLS over plain TCP.
func loopable(client, up net.Conn) bool {
	_, a := client.(*net.TCPConn)
	_, b := up.(*net.TCPConn)
	return (a || loopTLS(client) != nil) && b
}

// relayLoop is relay on an event loop. It returns when the session ended,
// for the same reasons and with the same farewells as relay.
//
// While the session lives, this goroutine only waits: its frame is kept
// small (setup in loopStart, the tail in finish) because the stack of an
// idle session's goroutine is what it holds most of (docs/BENCHMARKS.md,
// "Idle sessions"): the garbage collector shrinks a waiting goroutine's
// stack to no less than four times what its frames use.
func (p *Proxy) relayLoop(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease, pl *pipe) error {
	ls, err := p.loopStart(ctx, client, up, sess, lease, pl, nil)
	if errors.Is(err, errNoLoop) {
		return p.relay(ctx, client, up, sess, lease, pl)
	}
	if err != nil {
		return err
	}
	<-ls.done
	return ls.finish()
}

// errNoLoop: the session cannot go on a loop, and is relayed by goroutines.
var errNoLoop = errors.New("no event loop")

// loopStart hands the session to a loop, or says why not (errNoLoop: use
// the goroutine driver). onEnd, if not nil, runs on the loop once the
// session ended (after done is closed); it must not block.
func (p *Proxy) loopStart(ctx context.Context, client net.Conn, up *upstreamConn, sess *session.Session, lease Lease, pl *pipe,
	onEnd func(*lsess)) (*lsess, error) {
	mode := p.opts.loopWait
	if mode == "" {
		mode = defaultLoopWait
	}
	l, err := pickLoop(mode)
	if err != nil {
		p.log.Warn("pgwire: event loop unavailable; using goroutines", "err", err)
		return nil, errNoLoop
	}
	csock := client
	var tl *tlsLeg
	if tr := loopTLS(client); tr != nil {
		tl = &tlsLeg{conn: client.(*tls.Conn), tr: tr}
		csock = tr.Conn
	}
	_ = csock.(*net.TCPConn).SetNoDelay(true)
	_ = up.conn.(*net.TCPConn).SetNoDelay(true)
	cfd, err := takeFD(csock)
	if err != nil {
		return nil, errNoLoop
	}
	if tl != nil {
		tl.tr.take(cfd)
	}
	ufd, err := takeFD(up.conn)
	if err != nil {
		if tl != nil {
			tl.tr.done = true // see finish
		}
		_ = unix.Close(cfd)
		return nil, fmt.Errorf("%w: take upstream socket: %v", ErrUpstreamClosed, err)
	}
	ls := &lsess{l: l, p: p, pl: pl, sess: sess, tl: tl, done: make(chan struct{}), stopped: make(chan struct{})}
	if tl != nil {
		tl.retry = ls.retryTLS
	}
	ls.c2s, ls.s2c = &ls.sides[0], &ls.sides[1] // one allocation per session
	*ls.c2s = lside{ls: ls, src: cfd, dst: ufd, decMax: p.opts.MaxMessageLen, maxLen: p.opts.MaxMessageLen,
		bytes: &sess.Stats.BytesIn, msgs: &sess.Stats.MsgsIn, client: true}
	*ls.s2c = lside{ls: ls, src: ufd, dst: cfd, decMax: serverDecodeMax,
		bytes: &sess.Stats.BytesOut, msgs: &sess.Stats.MsgsOut, drain: true, sealed: tl != nil}
	ls.c2s.peer, ls.s2c.peer = ls.s2c, ls.c2s
	ls.c2s.decode.add(pl.clientTypes())
	ls.s2c.decode.add(pl.serverTypes())
	ls.onEnd = onEnd

	l.post(ls.start)
	ls.stopCtx = context.AfterFunc(ctx, func() {
		e := stopEnding(ctx)
		l.post(func() { ls.end(e) })
	})
	if exp := lease.Expires(); !exp.IsZero() {
		ls.expiry = time.AfterFunc(time.Until(exp), func() {
			l.post(func() {
				ls.end(ending{err: ErrExpired, terminate: true,
					toClient: &fatal{codeAdminShutdown, "just-in-time credential expired; reconnect"}})
			})
		})
	}
	return ls, nil
}

// finish is the session's tail, after the loop ended it: the record of what
// the server never answered, the farewells, the sockets closed. It returns
// what Serve returns.
func (ls *lsess) finish() error {
	ls.stopCtx()
	if ls.expiry != nil {
		ls.expiry.Stop()
	}
	for _, t := range ls.timers {
		t.Stop()
	}

	outcome := "unknown: session ended"
	if ls.left {
		outcome = "unknown: client left"
	}
	ls.pl.flush()
	ls.pl.abandon(outcome)

	// Farewells, with the sockets back in blocking mode and a send timeout:
	// this goroutine, not the loop, waits for them.
	why := ls.why
	tl, cfd := ls.tl, ls.c2s.src
	blocking := func(fd int) {
		_ = unix.SetNonblock(fd, false)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1})
	}
	// intact: every write to s.dst went through, so a TLS record stream to
	// it ends at a record boundary.
	farewell := func(s *lside, b []byte) (intact bool) {
		blocking(s.dst)
		intact = !s.gone
		if len(s.out) > 0 && !s.gone {
			if writeAll(s.dst, s.out) != nil {
				s.midMsg, intact = true, false
			}
			s.out = nil
		}
		if b != nil && !s.midMsg && !s.gone {
			if s.sealed {
				b = tl.sealFarewell(b)
			}
			if writeAll(s.dst, b) != nil {
				intact = false
			}
		}
		return intact
	}
	if why.terminate {
		farewell(ls.c2s, terminateMsg)
	}
	intact := len(ls.s2c.out) == 0 && !ls.s2c.gone
	if why.toClient != nil {
		intact = farewell(ls.s2c, why.toClient.encode(nil))
	}
	if tl != nil && intact && tl.clean() {
		// As PostgreSQL and the goroutine driver (tls.Conn.Close) do.
		blocking(cfd)
		_ = writeAll(cfd, tl.closeNotify())
	}
	if tl != nil {
		// Once cfd is closed its number may be reused: a Close of the
		// tls.Conn afterwards (Serve's) must write nothing to it.
		tl.tr.done = true
	}
	_ = unix.Close(cfd)
	_ = unix.Close(ls.s2c.src)
	return why.err
}

var terminateMsg = []byte{'X', 0, 0, 0, 4}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// start registers the session's sockets (on the loop).
func (ls *lsess) start() {
	for _, s := range []*lside{ls.c2s, ls.s2c} {
		s.interest = unix.EPOLLIN | unix.EPOLLRDHUP
		if err := unix.EpollCtl(ls.l.epfd, unix.EPOLL_CTL_ADD, s.src, &unix.EpollEvent{Events: s.interest, Fd: int32(s.src)}); err != nil {
			ls.end(ending{err: fmt.Errorf("%w: event loop: %v", ErrUpstreamClosed, err)})
			return
		}
		ls.l.setSide(s.src, s)
		s.reg = true
	}
	if ls.tl != nil {
		// crypto/tls may already hold what the client sent after its
		// startup: no readiness event would say so.
		ls.readSide(ls.c2s)
		ls.settle()
	}
}

// event handles readiness of s.src (EPOLLIN and hang-ups) and of the same
// descriptor as the peer's dst (EPOLLOUT).
func (ls *lsess) event(s *lside, ev uint32) {
	if ls.ended {
		return
	}
	if ev&unix.EPOLLOUT != 0 && len(s.peer.out) > 0 {
		ls.flushOut(s.peer)
		if ls.ended {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
		if !s.paused() {
			ls.readSide(s)
			if ev&(unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 && !s.eof {
				// The peer's last bytes and its FIN came together and
				// the read took only the bytes: the end is still to
				// read, and no new notification will say so (a server
				// answering a client that left, then closing).
				ls.l.more = true
			}
		} else {
			// Not read: poll once more before parking, after settle
			// has taken EPOLLIN out of the interest.
			ls.l.more = true
			if ev&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
				if s.held != nil && s.client {
					// The client left while its statement was held
					// (only a hang-up is watched while held): the hold
					// ends at once, as under the goroutine driver.
					s.held.hold.Resolve(Verdict{Action: Reply, Error: &ErrorReply{Code: codeQueryCanceled,
						Message: "the client left while the statement was held"}})
				}
				// Level-triggered: leave the set until the side reads
				// again, or the loop would spin.
				s.hup = true
			}
		}
	}
	ls.settle()
}

// readSide reads once from s.src and processes what came.
func (ls *lsess) readSide(s *lside) {
	var dst []byte
	if s.r == s.w {
		s.buf, s.r, s.w = ls.l.scratch, 0, 0
		dst = s.buf
	} else {
		if cap(s.buf) == s.w {
			s.own(0)
		}
		dst = s.buf[s.w:cap(s.buf)]
	}
	var n int
	var err error
	if s.client && ls.tl != nil {
		n, err = ls.readTLS(dst)
	} else {
		n, err = rawRead(s.src, dst)
	}
	if err == unix.EINTR {
		ls.l.more = true // nothing was read: still ready, with no new notification
	}
	if err == unix.EAGAIN || err == unix.EINTR {
		ls.keep(s)
		return
	}
	if n == len(dst) {
		ls.l.more = true // more may be waiting, with no new notification
	}
	if n > 0 {
		s.w += n
	}
	if n <= 0 {
		s.eof = true
		if err == nil {
			err = io.EOF
		}
		if s.stream > 0 || s.w-s.r > 0 {
			err = fmt.Errorf("read message: %w", io.ErrUnexpectedEOF)
		}
		ls.sideEnded(s, err)
		return
	}
	if perr := ls.process(s); perr != nil {
		ls.sideEnded(s, perr)
		return
	}
	ls.keep(s)
}

// keep moves unprocessed input off the loop's scratch buffer, which the
// next session's read reuses.
func (s *lside) keepInput() {
	if s.r == s.w {
		s.r, s.w = 0, 0
		// Nothing left over: an idle session holds no buffer.
		s.owned, s.buf = nil, nil
		return
	}
	if s.isOwned() {
		return
	}
	s.own(0)
}

func (s *lside) isOwned() bool {
	return len(s.buf) > 0 && len(s.owned) > 0 && &s.buf[0] == &s.owned[0]
}

func (ls *lsess) keep(s *lside) { s.keepInput() }

// own copies buf[r:w] to the side's own buffer, with room for at least
// need bytes in total (and always some room to read into).
func (s *lside) own(need int) {
	have := s.w - s.r
	size := max(need, have*2, 4<<10)
	if s.isOwned() && cap(s.owned) >= size {
		copy(s.owned, s.buf[s.r:s.w])
	} else {
		nb := make([]byte, size)
		copy(nb, s.buf[s.r:s.w])
		s.owned = nb
	}
	s.owned = s.owned[:cap(s.owned)]
	s.buf, s.r, s.w = s.owned, 0, have
}

// process frames buf[r:w] and acts on each whole message, as pump.run does.
func (ls *lsess) process(s *lside) error {
	for !s.paused() && !ls.ended {
		if s.stream > 0 {
			k := min(s.stream, s.w-s.r)
			if k == 0 {
				return nil
			}
			if !s.skip {
				ls.forward(s, s.buf[s.r:s.r+k])
			}
			s.r += k
			s.stream -= k
			if s.stream == 0 {
				s.midMsg = false
			}
			continue
		}
		start := s.r
		var stop error
		var msgs int64
		for stop == nil && s.w-s.r >= 5 && !ls.ended {
			typ := s.buf[s.r]
			n := int(binary.BigEndian.Uint32(s.buf[s.r+1:]))
			if n < 4 {
				stop = errBadLength
				break
			}
			if s.maxLen > 0 && n-4 > s.maxLen {
				stop = errTooLong{n - 4, s.maxLen}
				break
			}
			total := 1 + n
			if total > s.w-s.r {
				break
			}
			var body []byte
			if s.decode.has(typ) && n-4 <= s.decMax {
				body = s.buf[s.r+5 : s.r+total]
			}
			var a act
			if s.resumed != nil {
				a, s.resumed = *s.resumed, nil
			} else {
				msgs++
				// Written out rather than through on: this runs
				// for every row, and on is too big to be inlined.
				if s.client {
					a = ls.pl.fromClient(typ, n, body)
				} else {
					a = ls.pl.fromServer(typ, n, body)
				}
			}
			if a.kind == actHold {
				ls.count(s, &msgs)
				ls.flushed(s, start, s.r)
				ls.run(s, s.buf[start:s.r])
				ls.park(s, a, typ, body)
				return nil
			}
			if a.kind != actForward {
				// What came before and the replacement go out
				// together with the rest of the run: a stage that
				// rewrites every row costs no write per row.
				s.co = append(s.co, s.buf[start:s.r]...)
				if a.kind == actReplace {
					s.co = append(s.co, a.out...)
				}
				s.r += total
				start = s.r
			} else {
				s.r += total
			}
			stop = a.err
			if a.wait && stop == nil {
				s.waitRoom = true
				break
			}
		}
		ls.count(s, &msgs) // before they go out: whoever sees the answer finds them counted
		ls.flushed(s, start, s.r)
		ls.run(s, s.buf[start:s.r])
		if stop != nil {
			return stop
		}
		if s.paused() || s.w-s.r < 5 || ls.ended {
			return nil
		}
		// A message not all here: wait for the rest of one to decode,
		// stream one that nobody decodes.
		typ := s.buf[s.r]
		n := int(binary.BigEndian.Uint32(s.buf[s.r+1:]))
		total := 1 + n
		if s.decode.has(typ) && n-4 <= s.decMax {
			if !s.isOwned() || cap(s.buf)-s.r < total {
				s.own(total)
			}
			return nil
		}
		if s.msgs != nil {
			s.msgs.Add(1)
		}
		a := ls.on(s, typ, n, nil)
		if a.err != nil {
			return a.err
		}
		s.skip = a.kind != actForward
		if a.kind == actReplace {
			ls.run(s, a.out)
		}
		s.stream = total
		s.midMsg = !s.skip
	}
	return nil
}

// on asks the pipe about one message s read: a direct call, not through a
// func value, since it runs for every message (every row).
func (ls *lsess) on(s *lside, typ byte, n int, body []byte) act {
	if s.client {
		return ls.pl.fromClient(typ, n, body)
	}
	return ls.pl.fromServer(typ, n, body)
}

// run forwards b after whatever replaced messages are queued before it, in
// one write.
func (ls *lsess) run(s *lside, b []byte) {
	if len(s.co) == 0 {
		ls.forward(s, b)
		return
	}
	s.co = append(s.co, b...)
	ls.forward(s, s.co)
	if cap(s.co) > loopScratch {
		s.co = nil // a burst of rewrites is over: give the memory back
	} else {
		s.co = s.co[:0]
	}
}

// count publishes the message counts of a run.
func (ls *lsess) count(s *lside, msgs *int64) {
	if s.msgs != nil && *msgs > 0 {
		s.msgs.Add(*msgs)
		*msgs = 0
	}
}

// flushed hands the statement events a run completes to the session
// BEFORE the run is written: the audit journal must hold a statement
// before its result can reach the client (docs/AUDIT.md). Replacements
// gathered for the write (s.co) count too: the stages publish their
// counters of what they rewrote before it goes out.
func (ls *lsess) flushed(s *lside, start, end int) {
	if !s.client && (end > start || len(s.co) > 0) {
		ls.pl.flush()
	}
}

// forward writes b to s.dst now, or keeps it for when dst has room.
func (ls *lsess) forward(s *lside, b []byte) {
	if len(b) == 0 || s.gone || ls.ended {
		return
	}
	if s.sealed {
		ls.sealOut(s, b)
		return
	}
	ls.put(s, b)
}

// put writes bytes as they go on the wire to s.dst now, or keeps them for
// when dst has room.
func (ls *lsess) put(s *lside, b []byte) {
	if len(s.out) > 0 {
		s.out = append(s.out, b...)
		return
	}
	for len(b) > 0 {
		n, err := rawWrite(s.dst, b)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			s.out = append(s.out, b...)
			return
		}
		if err != nil {
			ls.writeFailed(s, err)
			return
		}
		if s.bytes != nil && !s.sealed {
			s.bytes.Add(int64(n))
		}
		b = b[n:]
	}
}

// flushOut writes what s.dst would not take before.
func (ls *lsess) flushOut(s *lside) {
	for len(s.out) > 0 && !ls.ended {
		n, err := rawWrite(s.dst, s.out)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			ls.writeFailed(s, err)
			return
		}
		if s.bytes != nil && !s.sealed {
			s.bytes.Add(int64(n))
		}
		s.out = s.out[n:]
	}
	s.out = nil
	// The source side may have input it stopped processing.
	if !s.paused() && s.w > s.r {
		if err := ls.process(s); err != nil {
			ls.sideEnded(s, err)
			return
		}
		s.keepInput()
	}
}

func (ls *lsess) writeFailed(s *lside, err error) {
	s.out = nil
	s.midMsg = true
	if s.drain {
		s.gone = true
		return
	}
	ls.sideEnded(s, &writeError{err: fmt.Errorf("write: %w", err)})
}

// park holds the session's client side on a decision; a goroutine waits for
// it and hands it back to the loop.
func (ls *lsess) park(s *lside, a act, typ byte, body []byte) {
	s.held = &a
	s.keepInput() // the held message stays in the side's own buffer
	h := a.hold
	go func() {
		v, ok := waitHold(h, ls.pl, ls.stopped)
		ls.l.post(func() {
			if ls.ended || !ok {
				return
			}
			ls.resume(s, v)
		})
	}()
}

// resume applies a hold's decision to the parked message (on the loop).
func (ls *lsess) resume(s *lside, v Verdict) {
	typ := s.buf[s.r]
	n := int(binary.BigEndian.Uint32(s.buf[s.r+1:]))
	var body []byte
	if s.decode.has(typ) && n-4 <= s.decMax {
		body = s.buf[s.r+5 : s.r+1+n]
	}
	a := ls.pl.resume(*s.held, v, typ, body)
	s.held = nil
	if a.kind == actHold {
		ls.park(s, a, typ, body)
		return
	}
	s.resumed = &a
	if err := ls.process(s); err != nil {
		ls.sideEnded(s, err)
		return
	}
	s.keepInput()
	ls.settle()
}

// settle re-admits a side that waited for room in the pipe, and sets each
// descriptor's epoll interest from the sides' state.
func (ls *lsess) settle() {
	if ls.ended {
		return
	}
	c := ls.c2s
	if c.waitRoom && !ls.pl.full() {
		c.waitRoom = false
		if c.w > c.r {
			if err := ls.process(c); err != nil {
				ls.sideEnded(c, err)
				return
			}
			c.keepInput()
		}
	}
	for _, s := range []*lside{ls.c2s, ls.s2c} {
		var want uint32
		if !s.paused() {
			want = unix.EPOLLIN | unix.EPOLLRDHUP
		} else if s.held != nil && s.client {
			want = unix.EPOLLRDHUP // nothing is read while held, but a client leaving is seen
		}
		if len(s.peer.out) > 0 {
			want |= unix.EPOLLOUT
		}
		switch {
		case s.hup && want&unix.EPOLLIN == 0:
			if s.reg {
				s.reg = false
				_ = unix.EpollCtl(ls.l.epfd, unix.EPOLL_CTL_DEL, s.src, nil)
			}
		case !s.reg:
			s.reg, s.hup, s.interest = true, false, want
			_ = unix.EpollCtl(ls.l.epfd, unix.EPOLL_CTL_ADD, s.src, &unix.EpollEvent{Events: want, Fd: int32(s.src)})
		case want != s.interest:
			s.interest = want
			_ = unix.EpollCtl(ls.l.epfd, unix.EPOLL_CTL_MOD, s.src, &unix.EpollEvent{Events: want, Fd: int32(s.src)})
		}
	}
	if ls.left && ls.pl.outstanding() == 0 && (ls.cerrTerminate() || ls.c2s.midMsg) {
		ls.end(ending{})
		return
	}
	ls.settleTLS()
}

func (ls *lsess) cerrTerminate() bool { return errors.Is(ls.cerr, errClientTerminate) }

// sideEnded classifies the end of one direction, as relay does.
func (ls *lsess) sideEnded(s *lside, err error) {
	if ls.ended {
		return
	}
	if !s.client {
		ls.pl.flush()
		if ls.left {
			ls.end(ending{})
			return
		}
		ls.end(ls.p.upstreamEnding(err, ls.pl))
		return
	}
	if ls.left {
		return
	}
	e := ls.p.clientEnding(err, ls.sess, ls.pl)
	if !e.clientLeft {
		ls.end(e)
		return
	}
	// The client left: read and record the server's answers to what it
	// sent, for at most drainTimeout.
	ls.left, ls.cerr = true, err
	s.eof = true
	ls.s2c.drain = true
	if ls.pl.outstanding() == 0 && errors.Is(err, errClientTerminate) {
		ls.end(ending{})
		return
	}
	if !errors.Is(err, errClientTerminate) && !s.midMsg {
		ls.forward(s, terminateMsg)
	}
	ls.timers = append(ls.timers, time.AfterFunc(drainTimeout, func() {
		ls.l.post(func() { ls.end(ending{}) })
	}))
	ls.settle()
}

// end stops the session (on the loop): its descriptors leave the loop and
// the goroutine in relayLoop, or the one onEnd starts, says the farewells.
func (ls *lsess) end(e ending) {
	if ls.ended {
		return
	}
	ls.ended = true
	ls.why = e
	for _, s := range []*lside{ls.c2s, ls.s2c} {
		if ls.l.side(int32(s.src)) == s {
			ls.l.setSide(s.src, nil)
		}
		if s.reg {
			s.reg = false
			_ = unix.EpollCtl(ls.l.epfd, unix.EPOLL_CTL_DEL, s.src, nil)
		}
		if s.r == s.w || (len(s.buf) > 0 && &s.buf[0] == &ls.l.scratch[0]) {
			s.buf = nil
		}
	}
	close(ls.stopped)
	close(ls.done)
	if ls.onEnd != nil {
		ls.onEnd(ls)
	}
}

// loopCount is how many loops serve sessions: one per core, or
// AIRLOCK_PGWIRE_LOOPS for measuring (docs/BENCHMARKS.md).
func loopCount(cores int) int {
	if n, err := strconv.Atoi(os.Getenv("AIRLOCK_PGWIRE_LOOPS")); err == nil && n > 0 && n <= 64 {
		return n
	}
	return cores
}

// rawRead and rawWrite are read(2) and write(2) on non-blocking sockets,
// made as raw system calls: the runtime's bookkeeping around a system call
// that might block wakes the sysmon thread when the process was idle, a
// context switch per call (see sockIO).
func rawRead(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}
