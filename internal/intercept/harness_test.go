package intercept

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/cgroups"
)

// The test binary doubles as the dialling client: started with
// helperEnv set, TestMain runs runHelper instead of the tests, so the client
// is a real separate process placed in the test cgroup.
const helperEnv = "AIRLOCK_INTERCEPT_HELPER"

var testRemote *remote

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	code := func() int {
		if os.Geteuid() == 0 {
			r, err := newRemote()
			if err != nil {
				fmt.Fprintln(os.Stderr, "set up remote network namespace:", err)
				return 1
			}
			testRemote = r
			defer r.close()
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireRoot skips unprivileged runs, except in CI where a skipped
// interception test would hide a broken setup.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("interception tests need root (CAP_BPF, CAP_NET_ADMIN, cgroup and netns setup); CI=true so not skipping")
	}
	tb.Skip("interception tests need root (CAP_BPF, CAP_NET_ADMIN, cgroup and netns setup); run with sudo")
}

var seq atomic.Int32

// ---------------------------------------------------------------- remote

// remote is a server in its own network namespace behind a veth pair: a
// reachable destination that is not loopback, so it is what a
// non-redirected connect reaches.
type remote struct {
	ns, vethHost string
	v4, v6       netip.Addr
	hostV4       netip.Addr
	ports        [2]uint16 // two listening ports (dual stack)
	accepts      atomic.Int64
	lns          []net.Listener
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func newRemote() (*remote, error) {
	pid := os.Getpid()
	// Addresses derived from the pid keep concurrent test binaries apart.
	id := pid % 16384
	r := &remote{
		ns:       fmt.Sprintf("airlock-t%d", pid),
		vethHost: fmt.Sprintf("alh%d", pid),
		v4:       netip.AddrFrom4([4]byte{10, 231, byte(id / 64), byte(id%64*4 + 2)}),
		hostV4:   netip.AddrFrom4([4]byte{10, 231, byte(id / 64), byte(id%64*4 + 1)}),
		v6:       netip.MustParseAddr(fmt.Sprintf("fd00:231:%x::2", id)),
	}
	hostV6 := fmt.Sprintf("fd00:231:%x::1", id)
	vethPeer := fmt.Sprintf("alp%d", pid)
	steps := [][]string{
		{"ip", "netns", "add", r.ns},
		{"ip", "link", "add", r.vethHost, "type", "veth", "peer", "name", vethPeer},
		{"ip", "link", "set", vethPeer, "netns", r.ns},
		{"ip", "addr", "add", r.hostV4.String() + "/30", "dev", r.vethHost},
		{"ip", "-6", "addr", "add", hostV6 + "/64", "dev", r.vethHost, "nodad"},
		{"ip", "link", "set", r.vethHost, "up"},
		{"ip", "-n", r.ns, "addr", "add", r.v4.String() + "/30", "dev", vethPeer},
		{"ip", "-n", r.ns, "-6", "addr", "add", r.v6.String() + "/64", "dev", vethPeer, "nodad"},
		{"ip", "-n", r.ns, "link", "set", vethPeer, "up"},
		{"ip", "-n", r.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			r.close()
			return nil, err
		}
	}
	for k := range r.ports {
		ln, err := listenInNetns(r.ns, "tcp", "[::]:0")
		if err != nil {
			r.close()
			return nil, err
		}
		r.lns = append(r.lns, ln)
		r.ports[k] = uint16(ln.Addr().(*net.TCPAddr).Port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				r.accepts.Add(1)
				c.Write([]byte("remote\n"))
				c.Close()
			}
		}()
	}
	return r, nil
}

// listenInNetns creates a listening socket inside the named namespace: a
// socket keeps the namespace it was created in, so only the creating thread
// has to switch.
func listenInNetns(ns, network, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		ln, lerr := net.Listen(network, addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime then discards it instead
			// of reusing a thread stuck in the wrong namespace.
			ch <- result{ln, lerr}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ln, lerr}
	}()
	res := <-ch
	return res.ln, res.err
}

func (r *remote) close() {
	for _, ln := range r.lns {
		ln.Close()
	}
	_ = run("ip", "link", "del", r.vethHost)
	_ = run("ip", "netns", "del", r.ns)
}

func needRemote(t *testing.T) *remote {
	t.Helper()
	if testRemote == nil {
		t.Fatal("remote network namespace was not set up")
	}
	return testRemote
}

// ---------------------------------------------------------------- cgroup, pins

func newCgroup(t testing.TB) string {
	t.Helper()
	mnt, err := cgroups.Mount()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(mnt, fmt.Sprintf("airlock-test-%d-%d", os.Getpid(), seq.Add(1)))
	if err := cgroups.Create(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroups.Remove(p); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return p
}

func newPinDir(t testing.TB) string {
	t.Helper()
	base := filepath.Join(bpffsRoot, fmt.Sprintf("airlock-test-%d", os.Getpid()))
	dir := filepath.Join(base, strconv.Itoa(int(seq.Add(1))), fmt.Sprintf("v%d", LayoutVersion))
	t.Cleanup(func() {
		if err := Uninstall(dir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		os.Remove(filepath.Dir(dir))
		os.Remove(base) // only succeeds once the last test is done
	})
	return dir
}

// ---------------------------------------------------------------- proxy

type accepted struct {
	client netip.AddrPort
	rec    Record
	err    error
}

// proxy stands in for the daemon's listener: it looks every accepted
// connection up, reports the record, and answers "proxy".
type proxy struct {
	port   uint16
	ic     atomic.Pointer[Interceptor]
	got    chan accepted
	lns    []net.Listener
	closed sync.Once
	sink   bool // accept and close only (benchmarks)
	// echo: join the client leg, then send back what the client sends
	// until it half-closes (see echo).
	echo atomic.Bool
}

func newProxy(t testing.TB) *proxy {
	t.Helper()
	var p *proxy
	for attempt := 0; attempt < 20 && p == nil; attempt++ {
		ln4, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln4.Addr().(*net.TCPAddr).Port
		ln6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			ln4.Close()
			continue
		}
		p = &proxy{port: uint16(port), got: make(chan accepted, 256), lns: []net.Listener{ln4, ln6}}
	}
	if p == nil {
		t.Fatal("no port free on both 127.0.0.1 and [::1]")
	}
	for _, ln := range p.lns {
		go p.serve(ln)
	}
	t.Cleanup(p.close)
	return p
}

// relisten opens the listeners again on the same port (after close), as a
// restarted daemon does.
func (p *proxy) relisten(t testing.TB) {
	t.Helper()
	ln4, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	ln6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	p.lns = []net.Listener{ln4, ln6}
	p.closed = sync.Once{}
	for _, ln := range p.lns {
		go p.serve(ln)
	}
}

func (p *proxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if p.sink {
			c.Close()
			continue
		}
		if p.echo.Load() {
			go p.echoConn(c.(*net.TCPConn))
			continue
		}
		client := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		a := accepted{client: client}
		if ic := p.ic.Load(); ic != nil {
			a.rec, a.err = ic.Lookup(client)
		} else {
			a.err = errors.New("no interceptor")
		}
		select {
		case p.got <- a:
		default: // benchmarks do not read
		}
		c.Write([]byte("proxy\n"))
		c.Close()
	}
}

func (p *proxy) close() {
	p.closed.Do(func() {
		for _, ln := range p.lns {
			ln.Close()
		}
	})
}

func (p *proxy) next(t testing.TB) accepted {
	t.Helper()
	select {
	case a := <-p.got:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("proxy accepted nothing")
		return accepted{}
	}
}

// ---------------------------------------------------------------- env

type env struct {
	t      *testing.T // the test owning the env; cleanups go there, not to subtests
	cgroup string
	pinDir string
	proxy  *proxy
	remote *remote
	ic     *Interceptor
	opts   Options
}

func newEnv(t *testing.T, mode Mode) *env {
	t.Helper()
	return newEnvWith(t, mode, nil)
}

// newEnvWith is newEnv with a chance to adjust the options before Open.
func newEnvWith(t *testing.T, mode Mode, adjust func(*Options)) *env {
	t.Helper()
	requireRoot(t)
	e := &env{t: t, cgroup: newCgroup(t), pinDir: newPinDir(t), proxy: newProxy(t), remote: needRemote(t)}
	e.opts = Options{
		PinDir:     e.pinDir,
		CgroupPath: e.cgroup,
		ProxyPort:  e.proxy.port,
		Mode:       mode,
		Mark:       0xa1b0c,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		e.opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if adjust != nil {
		adjust(&e.opts)
	}
	e.open(t)
	return e
}

func (e *env) open(t testing.TB) {
	t.Helper()
	ic, err := Open(context.Background(), e.opts)
	if err != nil {
		t.Fatal(err)
	}
	e.ic = ic
	e.proxy.ic.Store(ic)
	e.t.Cleanup(func() { ic.Close() })
}

func (e *env) target(addr netip.Addr, port uint16) Target {
	bits := 128
	if addr.Is4() {
		bits = 32
	}
	return Target{Prefix: netip.PrefixFrom(addr, bits), Port: port}
}

// ---------------------------------------------------------------- helper process

type dialResult struct {
	PID   int    `json:"pid"`
	UID   int    `json:"uid"`
	Local string `json:"local"`
	Peer  string `json:"peer"`
	Line  string `json:"line"`
	Err   string `json:"err"`
	NsOp  int64  `json:"ns_op"`
	// Echo runs: bytes sent and read back intact, and what TCP carried
	// of them (TCP_INFO of the client's socket).
	Echoed    int64  `json:"echoed"`
	TCPSent   uint64 `json:"tcp_sent"`
	TCPRecved uint64 `json:"tcp_recved"`
	Spurious  int    `json:"spurious"` // EAGAINs from blocking reads
	SegsOut   uint32 `json:"segs_out"`
}

// helperSpec describes a helper run. Depth is how many generations the
// helper forks before the last one dials; WaitAt is the generation that
// prints "ready PID" and waits for a line on stdin.
type helperSpec struct {
	Cgroup   string
	Addr     netip.AddrPort
	Family   int // 4 or 6; 6 with an IPv4 Addr dials the v4-mapped address
	Proto    string
	Mark     uint32
	Depth    int
	WaitAt   int // -1: never wait
	Exe      string
	ChildExe string
	Bench    int
	Echo     int  // bytes to send and read back (proxy.echo)
	Splice   bool // read the echo with splice(2)
	PingPong int  // round trips of 100 bytes (proxy.echo)
}

type helperProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	ReadyP int
}

func startHelper(t testing.TB, s helperSpec) *helperProc {
	t.Helper()
	exe := s.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe)
	fam := s.Family
	if fam == 0 {
		fam = 4
		if s.Addr.Addr().Is6() {
			fam = 6
		}
	}
	cmd.Env = append(os.Environ(),
		helperEnv+"=1",
		"HELPER_ADDR="+s.Addr.String(),
		"HELPER_FAMILY="+strconv.Itoa(fam),
		"HELPER_PROTO="+s.Proto,
		"HELPER_MARK="+strconv.FormatUint(uint64(s.Mark), 10),
		"HELPER_DEPTH="+strconv.Itoa(s.Depth),
		"HELPER_LEVEL=0",
		"HELPER_WAIT_AT="+strconv.Itoa(s.WaitAt),
		"HELPER_CHILD_EXE="+s.ChildExe,
		"HELPER_BENCH="+strconv.Itoa(s.Bench),
		"HELPER_ECHO="+strconv.Itoa(s.Echo),
		"HELPER_SPLICE="+map[bool]string{true: "1"}[s.Splice],
		"HELPER_PINGPONG="+strconv.Itoa(s.PingPong),
	)
	cmd.Stderr = os.Stderr
	if s.Cgroup != "" {
		f, err := cgroups.OpenFD(s.Cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if s.WaitAt >= 0 {
		line := h.readLine(t)
		var pid int
		if _, err := fmt.Sscanf(line, "ready %d", &pid); err != nil {
			t.Fatalf("helper said %q, want ready PID", line)
		}
		h.ReadyP = pid
	}
	return h
}

func (h *helperProc) readLine(t testing.TB) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := h.out.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil && r.s == "" {
			t.Fatalf("read helper output: %v", r.err)
		}
		return r.s
	case <-time.After(20 * time.Second):
		t.Fatal("helper produced no output")
		return ""
	}
}

func (h *helperProc) release(t testing.TB) {
	t.Helper()
	if _, err := h.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
}

func (h *helperProc) result(t testing.TB) dialResult {
	t.Helper()
	line := h.readLine(t)
	var r dialResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("helper result %q: %v", line, err)
	}
	h.cmd.Wait()
	return r
}

// dial runs a helper that dials at once and returns its result.
func dial(t testing.TB, s helperSpec) dialResult {
	t.Helper()
	s.WaitAt = -1
	return startHelper(t, s).result(t)
}

// ---------------------------------------------------------------- helper side

func runHelper() int {
	level, _ := strconv.Atoi(os.Getenv("HELPER_LEVEL"))
	depth, _ := strconv.Atoi(os.Getenv("HELPER_DEPTH"))
	waitAt, _ := strconv.Atoi(os.Getenv("HELPER_WAIT_AT"))
	if level == waitAt {
		fmt.Printf("ready %d\n", os.Getpid())
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return 3
		}
	}
	if level < depth {
		exe := os.Getenv("HELPER_CHILD_EXE")
		if exe == "" {
			exe = "/proc/self/exe"
		}
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "HELPER_LEVEL="+strconv.Itoa(level+1))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "helper child:", err)
			return 4
		}
		return 0
	}
	var r dialResult
	if n, _ := strconv.Atoi(os.Getenv("HELPER_BENCH")); n > 0 {
		r = helperBench(n)
	} else if n, _ := strconv.Atoi(os.Getenv("HELPER_PINGPONG")); n > 0 {
		r = helperPingPong(n)
	} else if n, _ := strconv.Atoi(os.Getenv("HELPER_ECHO")); n > 0 {
		r = helperEcho(n)
	} else {
		r = helperDial()
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return 0
}

func helperSockaddr() (int, unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(os.Getenv("HELPER_ADDR"))
	if err != nil {
		return 0, nil, err
	}
	if os.Getenv("HELPER_FAMILY") == "6" {
		return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
	}
	return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return ""
}

func errString(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func helperDial() dialResult {
	r := dialResult{PID: os.Getpid(), UID: os.Getuid()}
	fam, sa, err := helperSockaddr()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	typ := unix.SOCK_STREAM
	if os.Getenv("HELPER_PROTO") == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		r.Err = errString(err)
		return r
	}
	defer unix.Close(fd)
	if m, _ := strconv.ParseUint(os.Getenv("HELPER_MARK"), 10, 32); m != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(m)); err != nil {
			r.Err = errString(err)
			return r
		}
	}
	tv := unix.Timeval{Sec: 3}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := connectFD(fd, sa); err != nil {
		r.Err = errString(err)
		return r
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		r.Peer = sockaddrString(sa)
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		r.Local = sockaddrString(sa)
	}
	if typ == unix.SOCK_DGRAM {
		return r
	}
	buf := make([]byte, 64)
	n, err := readFD(fd, buf)
	if err != nil {
		r.Err = errString(err)
		return r
	}
	r.Line = strings.TrimSpace(string(buf[:n]))
	return r
}

// helperBench connects and closes n times; closing with linger 0 (RST)
// avoids filling the ephemeral port range with TIME_WAIT sockets.
func helperBench(n int) dialResult {
	r := dialResult{PID: os.Getpid()}
	fam, sa, err := helperSockaddr()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	start := time.Now()
	for k := 0; k < n; k++ {
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			r.Err = errString(err)
			return r
		}
		if err := connectFD(fd, sa); err != nil {
			unix.Close(fd)
			r.Err = errString(err)
			return r
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	r.NsOp = time.Since(start).Nanoseconds() / int64(n)
	return r
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The helper's blocking socket calls are not restarted after a signal when
// the socket has a send or receive timeout (signal(7)), and the Go runtime
// does signal its threads (preemption, GC): without these the helper would
// report a stray EINTR as the connection's fate.

// connectFD connects a blocking socket. After EINTR the kernel goes on
// connecting: wait until it is done and take its result.
func connectFD(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for tries := 0; ; tries++ {
		n, err := unix.Poll(pfd, 20_000)
		if err == unix.EINTR && tries < 100 {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		break
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}

// readFD and writeFD are read(2) and write(2), again after EINTR (nothing
// was transferred then), a bounded number of times.
func readFD(fd int, b []byte) (int, error) {
	for tries := 0; ; tries++ {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR || tries == 100 {
			return n, err
		}
	}
}

func writeFD(fd int, b []byte) (int, error) {
	for tries := 0; ; tries++ {
		n, err := unix.Write(fd, b)
		if err != unix.EINTR || tries == 100 {
			return n, err
		}
	}
}
