// Package tests holds Airlock's privileged end-to-end tests: a real airlockd
// binary with real eBPF programs attached to a test cgroup, real remote hosts
// in network namespaces, real clients.
package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/testnet"
)

var binDir, helper string

func TestMain(m *testing.M) {
	switch os.Getenv("AIRLOCK_E2E_HELPER") {
	case "":
	case "echo":
		helperEcho()
		return
	case "dial":
		helperDial()
		return
	case "tree":
		helperTree()
		return
	case "pgx":
		helperPgx()
		return
	case "raw":
		helperRaw()
		return
	case "spawn":
		helperSpawn()
		return
	default:
		fmt.Fprintln(os.Stderr, "unknown helper")
		os.Exit(2)
	}
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips (or fails under CI=true) on its own
		}
		dir, err := os.MkdirTemp("", "airlock-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		for _, c := range []string{"airlockd", "airlock"} {
			build := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c)
			if other := os.Getenv("AIRLOCK_E2E_BINDIR"); other != "" {
				// Binaries of another build, e.g. to show that a test fails
				// on an older release.
				build = exec.Command("cp", filepath.Join(other, c), filepath.Join(dir, c))
			}
			out, err := build.CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", c, err, out)
				return 1
			}
		}
		// Helpers run as other uids too: they need a binary they can reach.
		_ = os.Chmod(dir, 0o755)
		self, _ := os.Executable()
		helper = filepath.Join(dir, "e2e-helper")
		in, err := os.ReadFile(self)
		if err == nil {
			err = os.WriteFile(helper, in, 0o755)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// env is one test's world: a test cgroup the daemon attaches to, a client
// cgroup inside it, a pin folder and runtime folders of its own.
type env struct {
	t         *testing.T
	cgroup    string // absolute path of the attach cgroup
	cgroupRel string
	clients   string // absolute path of a cgroup under it for clients
	bpffs     string
	state     string
	runtime   string
	port      int
	cfgPath   string
	daemon    *exec.Cmd
	daemonOut *lockedBuffer
	done      chan struct{}

	daemonCgroup string // if set, airlockd starts inside this cgroup
}

var envSeq int

func newEnv(t *testing.T) *env {
	t.Helper()
	testnet.RequireRoot(t)
	root, err := cgroups.Mount()
	if err != nil {
		t.Fatal(err)
	}
	envSeq++
	name := fmt.Sprintf("airlock-e2e-%d-%d", os.Getpid(), envSeq)
	e := &env{t: t, cgroupRel: "/" + name, cgroup: filepath.Join(root, name)}
	e.clients = filepath.Join(e.cgroup, "clients")
	if err := cgroups.Create(e.clients); err != nil {
		t.Fatal(err)
	}
	e.bpffs = filepath.Join("/sys/fs/bpf", name)
	tmp := t.TempDir()
	// The control socket's folder must be reachable by other users too.
	e.state, e.runtime = filepath.Join(tmp, "state"), filepath.Join("/run", name)
	_ = os.Chmod(tmp, 0o755)
	e.port = freePort(t)
	t.Cleanup(func() {
		e.stopDaemon()
		// Uninstall even if the test did not, so no pin or link outlives it.
		if e.cfgPath != "" {
			_ = exec.Command(filepath.Join(binDir, "airlockd"), "uninstall", "--config", e.cfgPath).Run()
		}
		_ = os.RemoveAll(e.bpffs)
		_ = os.RemoveAll(e.runtime)
		// A daemon killed and not started again leaves its journal ring
		// in /dev/shm, which outlives the test's folders.
		if p := audit.RingPath(e.state); p != "" {
			_ = os.Remove(p)
		}
		if err := cgroups.Remove(e.cgroup); err != nil {
			t.Logf("remove test cgroup: %v", err)
		}
	})
	return e
}

// config writes the daemon's configuration: the common part plus body,
// which must have an intercept section.
func (e *env) config(body string) {
	e.t.Helper()
	cfg := fmt.Sprintf("state_dir: %s\nruntime_dir: %s\nlog_level: debug\nproxy:\n  port: %d\n",
		e.state, e.runtime, e.port)
	if d := os.Getenv("AIRLOCK_E2E_DRIVER"); d != "" {
		cfg += "  driver: " + d + "\n" // the whole suite under another proxy.driver
	}
	// Every test attaches to its own cgroup and pins in its own folder, and
	// ignores the machine's hosts file unless it says otherwise.
	body = strings.Replace(body, "intercept:\n", "intercept:\n  attach_cgroup: "+e.cgroupRel+"\n  bpffs: "+e.bpffs+"\n", 1)
	if !strings.Contains(body, "\ndns:\n") && !strings.HasPrefix(body, "dns:\n") {
		body += "dns:\n  hosts: \"-\"\n"
	}
	cfg += body
	e.cfgPath = filepath.Join(filepath.Dir(e.state), "airlock.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// startDaemon runs airlockd and waits until its control socket answers.
func (e *env) startDaemon() {
	e.t.Helper()
	e.daemonOut = &lockedBuffer{}
	cmd := exec.Command(filepath.Join(binDir, "airlockd"), "--config", e.cfgPath)
	cmd.Stdout, cmd.Stderr = e.daemonOut, e.daemonOut
	if e.daemonCgroup != "" {
		f, err := cgroups.OpenFD(e.daemonCgroup)
		if err != nil {
			e.t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon, e.done = cmd, make(chan struct{})
	done := e.done
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			e.t.Fatalf("airlockd exited at start:\n%s", e.daemonOut.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := control.Call(ctx, e.socket(), control.Request{Op: "status"})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("airlockd did not answer on %s within 30s:\n%s", e.socket(), e.daemonOut.String())
}

func (e *env) socket() string { return filepath.Join(e.runtime, "airlock.sock") }

// stopDaemon sends SIGTERM and waits (bounded) for a clean exit.
func (e *env) stopDaemon() {
	if e.daemon == nil {
		return
	}
	_ = e.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(20 * time.Second):
		_ = e.daemon.Process.Kill()
		<-e.done
	}
	if e.t.Failed() {
		e.t.Logf("airlockd output:\n%s", e.daemonOut.String())
	}
	e.daemon = nil
}

// killDaemon kills airlockd with SIGKILL, as a crash would.
func (e *env) killDaemon() {
	e.t.Helper()
	_ = e.daemon.Process.Kill()
	<-e.done
	e.daemon = nil
}

func (e *env) status() *control.Status {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := control.Call(ctx, e.socket(), control.Request{Op: "status"})
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	return rep.Status
}

// client starts a helper process inside the clients cgroup (or cg).
func (e *env) clientIn(cg string, uid uint32, env ...string) *exec.Cmd {
	e.t.Helper()
	f, err := cgroups.OpenFD(cg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Close() })
	cmd := exec.Command(helper)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	}
	return cmd
}

// dialResult is what the dial helper reports.
type dialResult struct {
	PID   int    `json:"pid"`
	UID   int    `json:"uid"`
	Peer  string `json:"peer"`  // getpeername on the client socket
	Reply string `json:"reply"` // what the server said
	Err   string `json:"err"`
	Errno int    `json:"errno"`
}

// dial runs the dial helper in cg against addr and returns its report. With
// hold, the helper keeps the connection open until release is called.
func (e *env) dial(cg string, uid uint32, addr string) dialResult {
	e.t.Helper()
	r, release := e.dialHold(cg, uid, addr, false)
	release()
	return r
}

func (e *env) dialHold(cg string, uid uint32, addr string, hold bool, extra ...string) (dialResult, func()) {
	e.t.Helper()
	cmd := e.clientIn(cg, uid, append(extra, "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr, "DIAL_HOLD="+strconv.FormatBool(hold))...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var res dialResult
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		e.t.Fatalf("dial helper: %v", err)
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		e.t.Fatalf("dial helper output %q: %v", line, err)
	}
	return res, func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

// helperDial connects to DIAL_ADDR, reports getpeername and the server's
// first line, and with DIAL_HOLD waits for stdin to close.
func helperDial() {
	res := dialResult{PID: os.Getpid(), UID: os.Getuid()}
	out := func() { b, _ := json.Marshal(res); fmt.Println(string(b)) }
	network := os.Getenv("DIAL_NET")
	if network == "" {
		network = "tcp"
	}
	if os.Getenv("DIAL_WAIT") == "true" {
		// Dial only when told (a line on stdin), so the test can act first.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	}
	var c net.Conn
	var err error
	if network == "raw6" {
		c, err = dialV4Mapped(os.Getenv("DIAL_ADDR"))
	} else {
		c, err = net.DialTimeout(network, os.Getenv("DIAL_ADDR"), 5*time.Second)
	}
	if err != nil {
		res.Err = err.Error()
		var errno syscall.Errno
		if ok := asErrno(err, &errno); ok {
			res.Errno = int(errno)
		}
		out()
		return
	}
	res.Peer = c.RemoteAddr().String() // Go fills this from getpeername
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		res.Err = err.Error()
	} else if line, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		res.Err = "read: " + err.Error()
	} else {
		res.Reply = strings.TrimSpace(line)
	}
	out()
	if os.Getenv("DIAL_HOLD") == "true" {
		_ = c.SetDeadline(time.Time{})
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	_ = c.Close()
}

// dialV4Mapped connects an AF_INET6 socket to a v4-mapped address, which
// Go's net package would turn into an AF_INET socket.
func dialV4Mapped(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "v4mapped")
	defer f.Close()
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

func asErrno(err error, target *syscall.Errno) bool {
	for err != nil {
		if e, ok := err.(syscall.Errno); ok {
			*target = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// helperEcho serves ECHO_ADDR: each connection gets one line naming the
// server and the peer it saw, then an echo of what it sends.
func helperEcho() {
	l, err := net.Listen("tcp", os.Getenv("ECHO_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "server=%s peer=%s said=%s\n", os.Getenv("ECHO_NAME"), c.RemoteAddr(), strings.TrimSpace(line))
			// Stay open until the client leaves, so its session stays live.
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// helperTree stands in for Cursor: it forks a child that forks a grandchild
// that dials TREE_ADDR after TREE_DELAY; with TREE_LEVEL it is that child.
func helperTree() {
	level, _ := strconv.Atoi(os.Getenv("TREE_LEVEL"))
	if level < 2 {
		self, _ := os.Executable()
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "TREE_LEVEL="+strconv.Itoa(level+1))
		if level == 1 {
			cmd.Env = append(cmd.Env, "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+os.Getenv("TREE_ADDR"))
		}
		// Wait for the go-ahead on stdin before forking, so the test can
		// start the daemon in between.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if level == 0 {
			cmd.Stdin = strings.NewReader("go\n")
		}
		_ = cmd.Run()
	}
}

// echoServer runs the echo helper inside h at addr.
func echoServer(t *testing.T, h *testnet.Host, name, addr string) {
	t.Helper()
	self, _ := os.Executable()
	cmd := h.Command(context.Background(), self)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=echo", "ECHO_ADDR="+addr, "ECHO_NAME="+name)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("echo server at %s did not come up", addr)
}

// freePort picks a port for a daemon to bind later on both loopbacks. It
// is taken below the kernel's ephemeral range, and never twice in one
// run: a port the kernel handed out (net.Listen on :0) and that was then
// released can be taken again as the source port of any outgoing
// connection (pgbench's, the tests' own) before the daemon binds it, which
// under load made a daemon fail with "address already in use".
func freePort(t *testing.T) int {
	t.Helper()
	lo, hi := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var elo, ehi int
		if n, _ := fmt.Sscan(string(b), &elo, &ehi); n == 2 && elo <= hi && ehi >= lo {
			// A machine whose ephemeral range covers ours: below it.
			lo, hi = 10000, elo
		}
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 500 {
		p := lo + mrand.IntN(hi-lo)
		if portsGiven[p] {
			continue
		}
		l4, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", p))
		l4.Close()
		if err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			continue
		}
		if l6 != nil {
			l6.Close()
		}
		portsGiven[p] = true
		return p
	}
	t.Fatalf("no free port between %d and %d", lo, hi)
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// startDaemonIn runs airlockd inside cgroup cg.
func (e *env) startDaemonIn(cg string) {
	e.t.Helper()
	e.daemonCgroup = cg
	e.startDaemon()
}
