package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/control"
)

// mutableDNS serves A and AAAA records (TTL 1s) that the test may change
// while the daemon runs; a name without records is NXDOMAIN.
type mutableDNS struct {
	mu      sync.Mutex
	records map[string][]string
}

func (m *mutableDNS) set(name string, addrs ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(addrs) == 0 {
		delete(m.records, name)
		return
	}
	m.records[name] = addrs
}

func startMutableDNS(t *testing.T) (*mutableDNS, string) {
	t.Helper()
	m := &mutableDNS{records: map[string][]string{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		msg := new(dns.Msg)
		msg.SetReply(r)
		m.mu.Lock()
		for _, q := range r.Question {
			addrs, ok := m.records[q.Name]
			if !ok {
				msg.Rcode = dns.RcodeNameError
			}
			for _, a := range addrs {
				ip := net.ParseIP(a)
				hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 1}
				switch {
				case q.Qtype == dns.TypeA && ip.To4() != nil:
					hdr.Rrtype = dns.TypeA
					msg.Answer = append(msg.Answer, &dns.A{Hdr: hdr, A: ip})
				case q.Qtype == dns.TypeAAAA && ip.To4() == nil:
					hdr.Rrtype = dns.TypeAAAA
					msg.Answer = append(msg.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
				}
			}
		}
		m.mu.Unlock()
		_ = w.WriteMsg(msg)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return m, pc.LocalAddr().String()
}

func targetStatus(st *control.Status, name string) control.TargetStatus {
	for _, t := range st.Targets {
		if t.Name == name {
			return t
		}
	}
	return control.TargetStatus{}
}

// runIn runs a command inside cgroup cg as root and returns its output.
func (e *env) runIn(cg string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = e.clientIn(cg, 0).SysProcAttr
	cmd.Env = append(append(os.Environ(), "PGCONNECT_TIMEOUT=10"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A hostname target that does not resolve yet must not let connections
// through: its port is intercepted at every address and those connections
// are refused, PostgreSQL clients being told why in their protocol, and
// `airlock status` shows the target unresolved with its error. Once it
// resolves, only its addresses are intercepted.
func TestUnresolvedHostnameTargetFailsClosed(t *testing.T) {
	h := remote(t)
	zone, dnsAddr := startMutableDNS(t)
	e := newEnv(t)
	pw := filepath.Join(t.TempDir(), "static-password")
	if err := os.WriteFile(pw, []byte("not-used\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.config(fmt.Sprintf(`intercept:
  mode: all
dns:
  servers: ["%s"]
  hosts: "-"
  min_ttl: 1s
  max_ttl: 1s
targets:
  - name: echo
    address: echo.airlock.test:7000
  - name: pg
    address: pg.airlock.test:5432
connections:
  - name: pg
    protocol: postgres
    targets: [pg]
    postgres:
      databases: [app]
      credential:
        mode: static
        user: app
        password_file: %s
`, dnsAddr, pw))
	e.startDaemon()

	st := e.status()
	for _, name := range []string{"echo", "pg"} {
		ts := targetStatus(st, name)
		if !ts.Unresolved || !strings.Contains(ts.Error, "NXDOMAIN") || len(ts.Resolved) != 0 {
			t.Fatalf("status of unresolved target %s = %+v, want unresolved with its DNS error", name, ts)
		}
	}
	out, _ := exec.Command(filepath.Join(binDir, "airlock"), "status", "--socket", e.socket()).CombinedOutput()
	if !strings.Contains(string(out), "UNRESOLVED") || !strings.Contains(string(out), "NXDOMAIN") {
		t.Fatalf("airlock status does not show the unresolved targets:\n%s", out)
	}

	// Plain TCP: closed, never relayed to the real server.
	echoAddr := netip.AddrPortFrom(h.V4, 7000).String()
	if res := e.dial(e.clients, 0, echoAddr); strings.HasPrefix(res.Reply, "server=") {
		t.Fatalf("connection to a port of an unresolved target went through: %+v", res)
	}
	// PostgreSQL, at an address nothing told Airlock about: a FATAL
	// ErrorResponse that says why (with and without TLS).
	for _, mode := range []string{"disable", "prefer", "require"} {
		out, err := e.runIn(e.clients, []string{"PGSSLMODE=" + mode}, "psql", "-X", "-w",
			fmt.Sprintf("host=%s port=5432 dbname=app user=agent", h.V4), "-c", "select 1")
		if err == nil || !strings.Contains(out, "target pg.airlock.test has not resolved yet") {
			t.Fatalf("psql (sslmode=%s) to an unresolved target: %v\n%s\nwant the refusal", mode, err, out)
		}
	}
	if st := e.status(); st.Proxy == nil || st.Proxy.Refused["unresolved"] < 4 {
		t.Fatalf("refusals not counted: %+v", st.Proxy)
	}
	waitLog(t, e, "kind=session.refused")

	// It resolves: its address is intercepted, every other address of the
	// port is left alone again.
	zone.set("echo.airlock.test.", h.V4.String())
	waitFor(t, "the target to resolve", 20*time.Second, func() bool {
		ts := targetStatus(e.status(), "echo")
		return !ts.Unresolved && len(ts.Resolved) == 1
	})
	res, release := e.dialHold(e.clients, 0, echoAddr, true)
	s := findSession(e.status(), res.PID)
	release()
	if !strings.HasPrefix(res.Reply, "server=target ") || s == nil || s.Target != "echo" {
		t.Fatalf("resolved target: %+v, session %+v", res, s)
	}
	res, release = e.dialHold(e.clients, 0, netip.AddrPortFrom(h.V6, 7000).String(), true)
	s = findSession(e.status(), res.PID)
	release()
	if !strings.HasPrefix(res.Reply, "server=target6 ") || s != nil {
		t.Fatalf("an address the target does not resolve to is still intercepted: %+v, session %+v", res, s)
	}
	if ts := targetStatus(e.status(), "pg"); !ts.Unresolved {
		t.Fatalf("the other target is no longer unresolved: %+v", ts)
	}
}

// DNS that rotates subsets of replicas drops addresses clients still hold:
// each must stay intercepted (lingering) after DNS stopped answering with
// it, and `airlock status` shows when it was last seen and when it expires.
func TestDNSRotationKeepsDroppedAddresses(t *testing.T) {
	h := remote(t)
	zone, dnsAddr := startMutableDNS(t)
	zone.set("db.airlock.test.", h.V4.String())
	e := newEnv(t)
	e.config(fmt.Sprintf(`intercept:
  mode: all
dns:
  servers: ["%s"]
  hosts: "-"
  min_ttl: 1s
  max_ttl: 1s
targets:
  - name: db
    address: db.airlock.test:7000
`, dnsAddr))
	e.startDaemon()
	if ts := targetStatus(e.status(), "db"); len(ts.Addresses) != 1 || ts.Addresses[0].State != "current" {
		t.Fatalf("before rotation: %+v", ts)
	}

	// The replica set rotates: DNS now answers with the IPv6 address only.
	rotated := time.Now()
	zone.set("db.airlock.test.", h.V6.String())
	var ts control.TargetStatus
	waitFor(t, "the rotation to be seen", 20*time.Second, func() bool {
		ts = targetStatus(e.status(), "db")
		return len(ts.Addresses) == 2
	})
	for _, a := range ts.Addresses {
		switch a.Address {
		case h.V6.String():
			if a.State != "current" {
				t.Fatalf("new address %+v, want current", a)
			}
		case h.V4.String():
			if a.State != "lingering" || a.LastSeen.IsZero() || a.Expires.Before(rotated.Add(59*time.Minute)) {
				t.Fatalf("dropped address %+v, want lingering for the default hour", a)
			}
		default:
			t.Fatalf("unexpected address %+v", a)
		}
	}
	out, _ := exec.Command(filepath.Join(binDir, "airlock"), "status", "--socket", e.socket()).CombinedOutput()
	if !strings.Contains(string(out), "lingering") || !strings.Contains(string(out), "expires in") {
		t.Fatalf("airlock status does not show the lingering address:\n%s", out)
	}

	// A client that resolved before the rotation dials the old address.
	for _, a := range []netip.Addr{h.V4, h.V6} {
		res, release := e.dialHold(e.clients, 0, netip.AddrPortFrom(a, 7000).String(), true)
		s := findSession(e.status(), res.PID)
		release()
		if res.Err != "" || s == nil || s.Target != "db" {
			t.Fatalf("connection to %s after the rotation not intercepted: %+v, session %+v", a, res, s)
		}
	}
}

// setProxyLimits adds keys to the proxy section of the env's configuration.
func (e *env) setProxyLimits(extra string) {
	e.t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	port := fmt.Sprintf("proxy:\n  port: %d\n", e.port)
	if !strings.Contains(string(b), port) {
		e.t.Fatalf("no proxy section in %s", b)
	}
	s := strings.Replace(string(b), port, port+extra, 1)
	if err := os.WriteFile(e.cfgPath, []byte(s), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// Sessions are capped per uid and in total; the excess is refused, counted
// in `airlock status`, and sessions work again once others end.
func TestSessionCaps(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.setProxyLimits("  max_sessions: 3\n  max_sessions_per_uid: 2\n")
	e.startDaemon()
	addr := netip.AddrPortFrom(h.V4, 7000).String()

	var releases []func()
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	hold := func(uid uint32, wantOK bool, why string) {
		t.Helper()
		res, release := e.dialHold(e.clients, uid, addr, true)
		releases = append(releases, release)
		if ok := strings.HasPrefix(res.Reply, "server=target "); ok != wantOK {
			t.Fatalf("%s: uid %d got %+v, want served=%v\n%s", why, uid, res, wantOK, e.daemonOut.String())
		}
	}
	hold(65534, true, "first session of nobody")
	hold(65534, true, "second session of nobody")
	hold(65534, false, "third session of nobody (per-uid cap 2)")
	hold(0, true, "root's first session (3 in total)")
	hold(0, false, "root's second session (total cap 3)")

	st := e.status()
	p := st.Proxy
	if p == nil || p.Active != 3 || p.PerUID["65534"] != 2 || p.PerUID["0"] != 1 ||
		p.Refused["max_sessions_per_uid"] != 1 || p.Refused["max_sessions"] != 1 || p.MaxSessions != 3 || p.MaxSessionsPerUID != 2 {
		t.Fatalf("proxy status = %+v", p)
	}
	out, _ := exec.Command(filepath.Join(binDir, "airlock"), "status", "--socket", e.socket()).CombinedOutput()
	if !strings.Contains(string(out), "3 open (max 3, max 2 per uid") || !strings.Contains(string(out), "refused (max_sessions_per_uid)") {
		t.Fatalf("airlock status does not show the session counts:\n%s", out)
	}

	for _, r := range releases {
		r()
	}
	releases = nil
	waitFor(t, "sessions to end", 10*time.Second, func() bool { return e.status().Proxy.Active == 0 })
	hold(65534, true, "nobody again after the others ended")
}

// A PostgreSQL client over the cap gets SQLSTATE 53300 in its protocol.
func TestSessionCapPostgres(t *testing.T) {
	w := newPGWorld(t, "10m")
	w.stopDaemon()
	w.setProxyLimits("  max_sessions_per_uid: 1\n")
	w.startDaemon()

	first := w.pgxHold(t, w.dsn)
	if first.user == "" {
		t.Fatal("first session did not start")
	}
	m := w.pgxHelper(t, "scenario", w.dsn)
	if !strings.Contains(m["error"], "uid 0 already has 1 concurrent Airlock sessions") || !strings.Contains(m["error"], "SQLSTATE 53300") {
		t.Fatalf("second session over the per-uid cap: %v, want 53300", m)
	}
	out, err := w.run(context.Background(), "psql", "-X", "-w", w.dsn, "-c", "select 1")
	if err == nil || !strings.Contains(out, "proxy.max_sessions_per_uid") {
		t.Fatalf("psql over the cap: %v\n%s", err, out)
	}
	first.release()
	waitFor(t, "the first session to end", 10*time.Second, func() bool { return w.status().Proxy.Active == 0 })
	if got := w.psql(t, w.dsn, "-c", "select 41+1"); got != "42" {
		t.Fatalf("session after the cap freed: %q", got)
	}
	// psql exits before the daemon has ended that session (dropping its
	// role takes a round trip): until then it still counts against the cap.
	waitFor(t, "the second session to end", 10*time.Second, func() bool { return w.status().Proxy.Active == 0 })

	// At the cap, a client can still cancel its running query: the
	// CancelRequest comes on a connection of its own.
	cmd := exec.Command("psql", "-X", "-At", w.dsn, "-c", "SELECT pg_sleep(30)")
	cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	var sleepOut strings.Builder
	cmd.Stdout, cmd.Stderr = &sleepOut, &sleepOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pg_sleep to run upstream", 15*time.Second, func() bool {
		return w.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'") == "1"
	})
	_ = cmd.Process.Signal(unix.SIGINT) // psql sends a CancelRequest
	_ = cmd.Wait()
	if !strings.Contains(sleepOut.String(), "canceling statement due to user request") || time.Since(start) > 20*time.Second {
		t.Fatalf("cancel at the session cap did not reach the server: %q after %s", sleepOut.String(), time.Since(start))
	}
}

// Out of file descriptors, the daemon keeps accepting: it backs off while
// accept fails with EMFILE, keeps the waiting client in the backlog, and
// serves it and new sessions once descriptors are back. (The accept loop
// used to end for good, and the daemon with it.)
func TestAcceptSurvivesFileDescriptorExhaustion(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.startDaemon()
	addr := netip.AddrPortFrom(h.V4, 7000).String()
	if res := e.dial(e.clients, 0, addr); !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("before the limit: %+v", res)
	}
	waitFor(t, "the first session to end", 10*time.Second, func() bool { return e.status().Proxy.Active == 0 })

	// The kernel hands out the lowest free descriptor number and fails
	// with EMFILE when it is not below RLIMIT_NOFILE: a limit at the lowest
	// free number leaves the daemon no descriptor at all.
	pid := e.daemon.Process.Pid
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	var lowest uint64
	waitFor(t, "the daemon's descriptors to settle", 10*time.Second, func() bool {
		a, b := lowestFreeFD(t, pid), lowestFreeFD(t, pid)
		time.Sleep(100 * time.Millisecond)
		lowest = lowestFreeFD(t, pid)
		return a == b && b == lowest
	})
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: lowest, Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
				t.Errorf("restore the daemon's limit: %v", err)
			}
		}
	}
	defer restore()

	// A client connects meanwhile: the handshake completes in the kernel's
	// backlog, and the daemon cannot accept it.
	type result struct {
		res dialResult
		err error
	}
	done := make(chan result, 1)
	cmd := e.clientIn(e.clients, 0, "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	go func() {
		var r result
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if r.err = err; err == nil {
			r.err = json.Unmarshal([]byte(line), &r.res)
		}
		done <- r
	}()
	waitLog(t, e, "accept failed; backing off and retrying")
	if !strings.Contains(e.daemonOut.String(), "too many open files") {
		t.Fatalf("accept did not fail with EMFILE:\n%s", e.daemonOut.String())
	}

	// Descriptors come back: the waiting client is served, and new ones.
	restore()
	r := <-done
	if r.err != nil || !strings.HasPrefix(r.res.Reply, "server=target ") {
		t.Fatalf("the client that waited through EMFILE: %+v %v\n%s", r.res, r.err, e.daemonOut.String())
	}
	if res := e.dial(e.clients, 0, addr); !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("after the limit: %+v\n%s", res, e.daemonOut.String())
	}
	waitLog(t, e, "accepting again")
	if st := e.status(); st.Proxy.AcceptErrors == 0 || !strings.Contains(st.Proxy.LastAcceptError, "too many open files") {
		t.Fatalf("accept errors not in status: %+v", st.Proxy)
	}
}

// lowestFreeFD is the lowest descriptor number pid has not open.
func lowestFreeFD(t *testing.T, pid int) uint64 {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	used := map[uint64]bool{}
	for _, e := range ents {
		var n uint64
		if _, err := fmt.Sscan(e.Name(), &n); err == nil {
			used[n] = true
		}
	}
	var n uint64
	for used[n] {
		n++
	}
	return n
}
