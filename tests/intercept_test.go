package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/testnet"
)

// remote is a namespaced host with an echo server on port 7000 (a target)
// and 7001 (not a target), on both families.
func remote(t *testing.T) *testnet.Host {
	h := testnet.NewHost(t)
	echoServer(t, h, "target", net.JoinHostPort(h.V4.String(), "7000"))
	echoServer(t, h, "target6", net.JoinHostPort(h.V6.String(), "7000"))
	echoServer(t, h, "other", net.JoinHostPort(h.V4.String(), "7001"))
	return h
}

func allModeConfig(h *testnet.Host, extra string) string {
	return fmt.Sprintf(`intercept:
  mode: all
targets:
  - name: remote4
    address: %s:7000
  - name: remote6
    address: "[%s]:7000"
%s`, h.V4, h.V6, extra)
}

func findSession(st *control.Status, pid int) *control.SessionStatus {
	for i := range st.Sessions {
		if int(st.Sessions[i].Origin.PID) == pid {
			return &st.Sessions[i]
		}
	}
	return nil
}

func TestRedirectFamiliesAndOrigin(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.startDaemon()
	self := helper

	tests := []struct {
		name     string
		network  string
		addr     string
		uid      uint32
		wantPeer string
		server   string
		target   string
	}{
		{"ipv4", "tcp", net.JoinHostPort(h.V4.String(), "7000"), 0, net.JoinHostPort(h.V4.String(), "7000"), "target", "remote4"},
		{"ipv6", "tcp", net.JoinHostPort(h.V6.String(), "7000"), 0, net.JoinHostPort(h.V6.String(), "7000"), "target6", "remote6"},
		{"v4-mapped on an AF_INET6 socket", "raw6", "[::ffff:" + h.V4.String() + "]:7000", 0, "", "target", "remote4"},
		{"another uid", "tcp", net.JoinHostPort(h.V4.String(), "7000"), 65534, net.JoinHostPort(h.V4.String(), "7000"), "target", "remote4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, release := e.dialHold(e.clients, tt.uid, tt.addr, true, "DIAL_NET="+tt.network)
			defer release()
			if res.Err != "" {
				t.Fatalf("dial %s: %s", tt.addr, res.Err)
			}
			if !strings.HasPrefix(res.Reply, "server="+tt.server+" ") {
				t.Fatalf("reply %q is not from server %s", res.Reply, tt.server)
			}
			// getpeername must report the original peer, not the proxy.
			wantPeer := tt.wantPeer
			if wantPeer == "" {
				wantPeer = tt.addr
			}
			if gotPeer, _ := netip.ParseAddrPort(res.Peer); gotPeer.Addr().Unmap() != netip.MustParseAddrPort(wantPeer).Addr().Unmap() || gotPeer.Port() != 7000 {
				t.Errorf("getpeername = %s, want %s", res.Peer, wantPeer)
			}
			s := findSession(e.status(), res.PID)
			if s == nil {
				t.Fatalf("no session for pid %d in status (redirect did not happen)", res.PID)
			}
			if s.Target != tt.target || int(s.Origin.UID) != int(tt.uid) || s.Origin.Exe != self {
				t.Errorf("session = target %s uid %d exe %s; want %s, %d, %s", s.Target, s.Origin.UID, s.Origin.Exe, tt.target, tt.uid, self)
			}
			if s.Dest != netip.AddrPortFrom(netip.MustParseAddrPort(wantPeer).Addr().Unmap(), 7000).String() {
				t.Errorf("session dest = %s, want %s", s.Dest, wantPeer)
			}
			wantPerson := "root"
			if tt.uid == 65534 {
				wantPerson = "nobody"
			}
			if s.Person != wantPerson {
				t.Errorf("person = %q, want %q", s.Person, wantPerson)
			}
		})
	}

	t.Run("destination outside the targets", func(t *testing.T) {
		res, release := e.dialHold(e.clients, 0, net.JoinHostPort(h.V4.String(), "7001"), true)
		defer release()
		if res.Err != "" || !strings.HasPrefix(res.Reply, "server=other ") {
			t.Fatalf("direct dial failed: %+v", res)
		}
		if s := findSession(e.status(), res.PID); s != nil {
			t.Fatalf("non-target connection was intercepted: %+v", s)
		}
	})
	t.Run("process outside the attach cgroup", func(t *testing.T) {
		outside := filepath.Dir(e.cgroup) // the v2 root: we only start a process there, never attach
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+net.JoinHostPort(h.V4.String(), "7000"), "DIAL_HOLD=true")
		_ = outside
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); _ = cmd.Wait() }()
		line, _ := bufio.NewReader(out).ReadString('\n')
		if !strings.Contains(line, "server=target ") {
			t.Fatalf("direct dial from outside failed: %s", line)
		}
		if s := findSession(e.status(), cmd.Process.Pid); s != nil {
			t.Fatalf("process outside the selection was intercepted: %+v", s)
		}
	})
	t.Run("direct connection to the proxy port is refused", func(t *testing.T) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.port))
		if err != nil {
			t.Fatalf("proxy port not listening: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("hello\n"))
		n, err := c.Read(make([]byte, 64))
		if n != 0 || err == nil {
			t.Fatalf("proxy served a connection the kernel did not redirect: n=%d err=%v", n, err)
		}
		waitLog(t, e, "did not redirect")
	})
}

func waitLog(t *testing.T, e *env, substr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(e.daemonOut.String(), substr) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon log never said %q", substr)
}

// The daemon runs inside the very cgroup it intercepts (mode all): only its
// mark and tgid checks keep its upstream dials from looping into itself.
func TestDaemonDialsAreNotLooped(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.startDaemonIn(e.clients)
	res := e.dial(e.clients, 0, net.JoinHostPort(h.V4.String(), "7000"))
	if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("session through a daemon inside the intercepted cgroup failed: %+v\n%s", res, e.daemonOut.String())
	}
	// Events are written in batches: wait for this session's end.
	waitLog(t, e, "kind=session.end")
	time.Sleep(200 * time.Millisecond)
	if strings.Count(e.daemonOut.String(), "kind=session.start") != 1 {
		t.Fatalf("want exactly one session (a loop would open more):\n%s", e.daemonOut.String())
	}
}

func TestHostnameTarget(t *testing.T) {
	h := remote(t)
	dnsAddr := fakeDNS(t, map[string][]string{
		"db.airlock.test.": {h.V4.String(), h.V6.String()},
	})
	e := newEnv(t)
	e.config(fmt.Sprintf(`intercept:
  mode: all
dns:
  servers: ["%s"]
  hosts: "-"
  min_ttl: 1s
targets:
  - name: db
    address: db.airlock.test:7000
`, dnsAddr))
	e.startDaemon()
	st := e.status()
	if len(st.Targets) != 1 || len(st.Targets[0].Resolved) != 2 {
		t.Fatalf("hostname target not resolved to both addresses: %+v", st.Targets)
	}
	for _, a := range []netip.Addr{h.V4, h.V6} {
		res, release := e.dialHold(e.clients, 0, netip.AddrPortFrom(a, 7000).String(), true)
		if res.Err != "" {
			release()
			t.Fatalf("dial %s: %s", a, res.Err)
		}
		s := findSession(e.status(), res.PID)
		release()
		if s == nil || s.Target != "db" {
			t.Fatalf("connection to %s (resolved from db.airlock.test) not intercepted: %+v", a, s)
		}
	}
}

// fakeDNS serves A and AAAA records on loopback with a 1s TTL.
func fakeDNS(t *testing.T, records map[string][]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			for _, a := range records[q.Name] {
				ip := net.ParseIP(a)
				switch {
				case q.Qtype == dns.TypeA && ip.To4() != nil:
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: ip})
				case q.Qtype == dns.TypeAAAA && ip.To4() == nil:
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 1}, AAAA: ip})
				}
			}
			if _, ok := records[q.Name]; !ok {
				m.Rcode = dns.RcodeNameError
			}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestTreeMode(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(fmt.Sprintf(`intercept:
  mode: tree
  executables: [cursor]
targets:
  - name: remote4
    address: %s:7000
`, h.V4))
	// A stand-in for Cursor: the test binary under the name "cursor",
	// already running when the daemon starts.
	self := helper
	cursor := filepath.Join(t.TempDir(), "cursor")
	copyFile(t, self, cursor)
	f := e.clientIn(e.clients, 0)
	cmd := exec.Command(cursor)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=tree", "TREE_ADDR="+net.JoinHostPort(h.V4.String(), "7000"))
	cmd.SysProcAttr = f.SysProcAttr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	e.startDaemon()
	st := e.status()
	tracked := false
	for _, p := range st.Tracked {
		tracked = tracked || int(p.PID) == cmd.Process.Pid
	}
	if !tracked {
		t.Fatalf("running cursor (pid %d) not seeded into the tracked set: %+v", cmd.Process.Pid, st.Tracked)
	}

	// Now the grandchild is forked, after start, and dials.
	fmt.Fprintln(stdin, "go")
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var res dialResult
	mustJSON(t, line, &res)
	if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("grandchild dial: %+v", res)
	}
	waitLog(t, e, "pid="+strconv.Itoa(res.PID)+" ")
	if !regexp.MustCompile(`kind=session.start .*pid=` + strconv.Itoa(res.PID) + ` `).MatchString(e.daemonOut.String()) {
		t.Fatalf("grandchild pid %d forked after start was not intercepted:\n%s", res.PID, e.daemonOut.String())
	}

	// A process in the same cgroup that is not a cursor descendant is left alone.
	other, release := e.dialHold(e.clients, 0, net.JoinHostPort(h.V4.String(), "7000"), true)
	defer release()
	if other.Err != "" {
		t.Fatal(other.Err)
	}
	if s := findSession(e.status(), other.PID); s != nil {
		t.Fatalf("untracked process intercepted in tree mode: %+v", s)
	}
}

func TestFailClosedAndRestart(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")
	if res := e.dial(e.clients, 0, addr); res.Err != "" {
		t.Fatalf("dial before kill: %+v", res)
	}
	e.killDaemon()
	var logs strings.Builder
	logs.WriteString(e.daemonOut.String())

	res := e.dial(e.clients, 0, addr)
	if res.Errno != int(syscall.ECONNREFUSED) {
		t.Fatalf("with the daemon killed, a connect to a target must be refused, got %+v", res)
	}

	// Restart while a client keeps dialling: every dial is refused or goes
	// through the proxy, never around it.
	type outcome struct {
		pid   int
		err   string
		errno int
	}
	stop := make(chan struct{})
	results := make(chan outcome, 1000)
	go func() {
		defer close(results)
		for i := 0; i < 200; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := e.dialNoFatal(addr)
			results <- outcome{r.PID, r.Err, r.Errno}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	e.startDaemon()
	// Let a few dials land after the restart.
	time.Sleep(500 * time.Millisecond)
	close(stop)
	var ok, refused int
	var okPIDs []int
	for r := range results {
		switch {
		case r.err == "":
			ok++
			okPIDs = append(okPIDs, r.pid)
		case r.errno == int(syscall.ECONNREFUSED):
			refused++
		default:
			t.Errorf("dial during restart failed oddly: %+v", r)
		}
	}
	if ok == 0 {
		t.Fatalf("no dial succeeded after restart (refused %d)", refused)
	}
	e.stopDaemon()
	logs.WriteString(e.daemonOut.String())
	for _, pid := range okPIDs {
		if !regexp.MustCompile(`kind=session.start .*pid=` + strconv.Itoa(pid) + ` `).MatchString(logs.String()) {
			t.Errorf("dial by pid %d succeeded without a session: it went around the proxy", pid)
		}
	}
	t.Logf("during restart: %d refused, %d through the proxy", refused, ok)
	if t.Failed() {
		t.Logf("daemon logs:\n%s", logs.String())
	}

	// Uninstall removes every pin and detaches from the cgroup.
	out, err := exec.Command(filepath.Join(binDir, "airlockd"), "uninstall", "--config", e.cfgPath).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(e.bpffs, "airlock")); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(filepath.Join(e.bpffs, "airlock"))
		t.Fatalf("pins left after uninstall: %v", entries)
	}
	if res := e.dial(e.clients, 0, addr); res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("after uninstall connections must go direct again: %+v", res)
	}
	if out, _ := exec.Command("bpftool", "cgroup", "show", e.cgroup).CombinedOutput(); strings.Contains(string(out), "connect") {
		t.Fatalf("programs still attached to the test cgroup after uninstall:\n%s", out)
	}
}

// dialNoFatal is dial usable from a goroutine.
func (e *env) dialNoFatal(addr string) dialResult {
	cmd := e.clientIn(e.clients, 0, "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr)
	out, err := cmd.Output()
	var res dialResult
	if err != nil {
		res.Err = err.Error()
		return res
	}
	if err := jsonUnmarshal(out, &res); err != nil {
		res.Err = err.Error()
	}
	return res
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
