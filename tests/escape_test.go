package tests

// End-to-end tests of the interception escapes of issue 6: each runs the
// real airlockd on a test cgroup and an adversarial program as an
// unprivileged user, and checks that the connection reaches the proxy (or
// is refused), never the server directly.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/airlockhq/airlock/internal/cgroups"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/intercept"
	"github.com/airlockhq/airlock/internal/testnet"
)

const nobody = 65534

// helperSpawn stands in for Cursor: it runs SPAWN_ARGV (JSON) as its child,
// with AIRLOCK_E2E_HELPER set to SPAWN_HELPER for whatever the child runs.
func helperSpawn() {
	var argv []string
	if err := json.Unmarshal([]byte(os.Getenv("SPAWN_ARGV")), &argv); err != nil || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "spawn: bad SPAWN_ARGV")
		os.Exit(2)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER="+os.Getenv("SPAWN_HELPER"))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "spawn:", err)
		os.Exit(1)
	}
	if os.Getenv("SPAWN_LINGER") == "true" {
		// Stay, as Cursor would, until the test ends (and kills us).
		time.Sleep(5 * time.Minute)
	}
}

// cursorBinary copies the helper to a directory every user can read, under
// the name "cursor", so that the kernel's exec match tracks it.
func cursorBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "airlock-e2e-cursor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cursor := filepath.Join(dir, "cursor")
	copyFile(t, helper, cursor)
	return cursor
}

// runInCursor runs argv as a child of a "cursor" process started as uid in
// cg, and returns the first line the tree prints (bounded by 30s).
func (e *env) runInCursor(t *testing.T, cg string, uid uint32, argv []string, childHelper string, env ...string) string {
	t.Helper()
	cursor := cursorBinary(t)
	b, _ := json.Marshal(argv)
	f := e.clientIn(cg, uid)
	cmd := exec.Command(cursor)
	cmd.SysProcAttr = f.SysProcAttr
	cmd.Env = append(os.Environ(), append(env, "AIRLOCK_E2E_HELPER=spawn", "SPAWN_ARGV="+string(b), "SPAWN_HELPER="+childHelper)...)
	// Our own pipe, not StdoutPipe: Wait (below, concurrent with the read)
	// would close StdoutPipe's read end as soon as a short-lived tree exits,
	// losing a line it printed but we had not read yet.
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	cmd.Stdout = w
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// Its descendants die with the test cgroup.
		_ = cmd.Process.Kill()
		<-done
	})
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
	}()
	select {
	case line := <-lines:
		return line
	case <-time.After(30 * time.Second):
		t.Fatalf("cursor tree printed nothing within 30s:\n%s", e.daemonOut.String())
	}
	return ""
}

// waitSession waits (bounded) for the daemon to log a session of pid.
func (e *env) waitSession(t *testing.T, pid int) {
	t.Helper()
	re := regexp.MustCompile(`kind=session.start .*pid=` + strconv.Itoa(pid) + ` `)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if re.MatchString(e.daemonOut.String()) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no session for pid %d: its connection went around the proxy\n%s", pid, e.daemonOut.String())
}

func treeConfig(h *testnet.Host, extra string) string {
	return fmt.Sprintf(`intercept:
  mode: tree
  executables: [cursor]
%stargets:
  - name: remote4
    address: %s:7000
`, extra, h.V4)
}

// Items 1 and 2: the exact reproductions from the issue, as an unprivileged
// user in Cursor's tree, with our dial helper in place of psql.
func TestThreadEscapesStayIntercepted(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(treeConfig(h, ""))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")

	tests := []struct {
		name   string
		script string
	}{
		{
			// A non-leader thread execs: de_thread kills the leader first.
			"exec from a non-leader thread",
			`import threading,os,sys,time; threading.Thread(target=os.execvp, args=(sys.argv[1], [sys.argv[1]])).start(); time.sleep(5)`,
		},
		{
			// The leader calls SYS_exit while a worker thread lives on and
			// then starts the client. The worker waits until the leader is
			// a zombie, so the escape is exercised every time.
			"leader exits while a thread runs the client",
			`import threading,ctypes,os,subprocess,sys,time
pid = os.getpid()
def work():
    deadline = time.time() + 10
    while time.time() < deadline:
        with open("/proc/%d/task/%d/stat" % (pid, pid)) as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        time.sleep(0.01)
    subprocess.run([sys.argv[1]])
threading.Thread(target=work).start()
ctypes.CDLL(None).syscall(60, 0)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := e.runInCursor(t, e.clients, nobody, []string{"/usr/bin/python3", "-c", tt.script, helper}, "dial", "DIAL_ADDR="+addr)
			var res dialResult
			mustJSON(t, line, &res)
			if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
				t.Fatalf("dial from the tree: %+v", res)
			}
			e.waitSession(t, res.PID)
		})
	}
}

// Item 3: `airlock run` intercepts in every mode, not only in cgroup mode.
func TestAirlockRunEveryMode(t *testing.T) {
	h := remote(t)
	addr := net.JoinHostPort(h.V4.String(), "7000")
	for _, mode := range []string{"tree", "user", "cgroup"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			var extra string
			switch mode {
			case "tree":
				extra = "  executables: [cursor]\n"
			case "user":
				extra = "  users: [\"4242\"]\n" // not the caller's uid: only the run cgroup selects it
			}
			e.config(fmt.Sprintf("intercept:\n  mode: %s\n%stargets:\n  - name: remote4\n    address: %s\n", mode, extra, addr))
			e.startDaemon()
			cmd := exec.Command(filepath.Join(binDir, "airlock"), "run", "--socket", e.socket(), "--", helper)
			cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("airlock run: %v\n%s", err, e.daemonOut.String())
			}
			var res dialResult
			mustJSON(t, string(out), &res)
			if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
				t.Fatalf("dial under airlock run: %+v", res)
			}
			e.waitSession(t, res.PID)
		})
	}
}

// Item 4: a process outside the tree acting for one inside it (a tmux
// server started before, fed with `tmux send-keys` from the tree). Tree mode
// leaves this open, and says so in `airlock status`; user mode closes it.
func TestDaemonMediatedEscape(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is needed (tests/deps.sh installs it): %v", err)
	}
	h := remote(t)
	addr := net.JoinHostPort(h.V4.String(), "7000")
	tests := []struct {
		mode        string
		extra       string
		intercepted bool
	}{
		{"tree", "  executables: [cursor]\n", false},
		{"user", fmt.Sprintf("  users: [\"%d\"]\n", nobody), true},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			e := newEnv(t)
			e.config(fmt.Sprintf("intercept:\n  mode: %s\n%stargets:\n  - name: remote4\n    address: %s\n", tt.mode, tt.extra, addr))
			e.startDaemon()

			dir, err := os.MkdirTemp("", "airlock-e2e-tmux-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chown(dir, nobody, nobody); err != nil {
				t.Fatal(err)
			}
			sock, result := filepath.Join(dir, "s"), filepath.Join(dir, "result.json")
			// SHELL too: tmux runs every pane command through it, and without it
			// falls back to the passwd shell, which is nologin for nobody (CI's
			// environment has no SHELL).
			tmuxEnv := []string{"TERM=xterm", "HOME=" + dir, "TMUX_TMPDIR=" + dir, "SHELL=/bin/sh"}
			// The server: started by the same user, outside any tree.
			srv := e.clientIn(e.clients, nobody, tmuxEnv...)
			srv.Path, srv.Args = "/usr/bin/tmux", []string{"tmux", "-S", sock, "new-session", "-d", "-x", "120", "-y", "20", "/bin/sh"}
			if out, err := srv.CombinedOutput(); err != nil {
				t.Fatalf("start tmux server: %v: %s", err, out)
			}
			t.Cleanup(func() { _ = exec.Command("tmux", "-S", sock, "kill-server").Run() })

			before := e.status().Counters
			keys := fmt.Sprintf("AIRLOCK_E2E_HELPER=dial DIAL_ADDR=%s %s > %s.tmp && mv %s.tmp %s", addr, helper, result, result, result)
			line := e.runInCursor(t, e.clients, nobody,
				[]string{"/bin/sh", "-c", `tmux -S "$0" send-keys "$1" Enter && echo sent`, sock, keys}, "", tmuxEnv...)
			if strings.TrimSpace(line) != "sent" {
				t.Fatalf("tmux send-keys from the tree: %q", line)
			}
			var b []byte
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if b, err = os.ReadFile(result); err == nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("the command sent to tmux never reported: %v", err)
			}
			var res dialResult
			mustJSON(t, string(b), &res)
			if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
				t.Fatalf("dial from the tmux server's shell: %+v", res)
			}
			if tt.intercepted {
				e.waitSession(t, res.PID)
				return
			}
			// Tree mode: the kernel saw the connect and did not select it.
			after := e.status()
			if after.Counters["redirected"] != before["redirected"] || after.Counters["skip_selection"] <= before["skip_selection"] {
				t.Fatalf("tree mode: want the tmux server's dial left alone; counters before %v after %v", before, after.Counters)
			}
			if after.Selection == nil || !strings.Contains(strings.Join(after.Selection.OpenEscapes, "\n"), "tmux send-keys") {
				t.Fatalf("airlock status does not say that tree mode leaves tmux open: %+v", after.Selection)
			}
			text, err := exec.Command(filepath.Join(binDir, "airlock"), "status", "--socket", e.socket()).CombinedOutput()
			if err != nil || !strings.Contains(string(text), "left open by mode tree") || !strings.Contains(string(text), "tmux send-keys") {
				t.Fatalf("airlock status text does not list what tree mode leaves open: %v\n%s", err, text)
			}
			t.Logf("airlock status:\n%s", text)
		})
	}
}

// Item 5: a selected process in another network namespace (a container,
// a pod) is sent to the proxy's address there, with its pod identity on the
// session, or refused when no address is configured; never direct.
func TestOtherNetworkNamespace(t *testing.T) {
	h := remote(t)
	addr := net.JoinHostPort(h.V4.String(), "7000")
	const podUID = "0f5c0a3e-7f1b-4b6e-9a7d-2c1f0e9b8a77"
	const ctrID = "4b1c3c2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
	tests := []struct {
		name, mode, extra string
		netnsAddr         bool
		uid               uint32
	}{
		{"all mode, proxy address", "all", "", true, 0},
		// A container (own network and cgroup namespaces) inside Cursor's
		// tree: selected by the tracked map, left in its container's cgroup.
		{"tree mode, proxy address", "tree", "  executables: [cursor]\n", true, nobody},
		{"user mode, proxy address", "user", fmt.Sprintf("  users: [\"%d\"]\n", nobody), true, nobody},
		{"all mode, no address: refused", "all", "", false, 0},
		{"user mode, no address: refused", "user", fmt.Sprintf("  users: [\"%d\"]\n", nobody), false, nobody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := testnet.NewHost(t) // the "pod": a namespace with a veth to the host
			if out, err := exec.Command("ip", "-n", pod.NS, "route", "add", "default", "via", pod.LocalV4.String()).CombinedOutput(); err != nil {
				t.Fatalf("route in pod namespace: %v: %s", err, out)
			}
			e := newEnv(t)
			extra := tt.extra
			if tt.netnsAddr {
				extra += fmt.Sprintf("  netns_addresses: [%s]\n", pod.LocalV4)
			}
			e.config(fmt.Sprintf("intercept:\n  mode: %s\n%stargets:\n  - name: remote4\n    address: %s\n", tt.mode, extra, addr))
			e.startDaemon()

			cg := filepath.Join(e.cgroup, "kubepods", "besteffort", "pod"+podUID, ctrID)
			if err := cgroups.Create(cg); err != nil {
				t.Fatal(err)
			}
			f, err := cgroups.OpenFD(cg)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := exec.Command("ip", "netns", "exec", pod.NS, helper)
			cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr, "DIAL_HOLD=true")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
			if tt.uid != 0 {
				// ip netns exec needs root: drop to the user inside it.
				cmd.Args = []string{"ip", "netns", "exec", pod.NS, "setpriv", "--reuid", strconv.Itoa(int(tt.uid)), "--regid", strconv.Itoa(int(tt.uid)), "--clear-groups", helper}
			}
			if tt.mode == "tree" {
				// cursor, in a cgroup namespace of its own, runs the client.
				cursor := cursorBinary(t)
				cmd.Args = []string{"ip", "netns", "exec", pod.NS, "unshare", "--cgroup", "setpriv", "--reuid", strconv.Itoa(int(tt.uid)), "--regid", strconv.Itoa(int(tt.uid)), "--clear-groups", cursor}
				cmd.Env = append(cmd.Env, "AIRLOCK_E2E_HELPER=spawn", `SPAWN_ARGV=["`+helper+`"]`, "SPAWN_HELPER=dial")
			}
			stdin, _ := cmd.StdinPipe()
			out, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("client in the pod namespace: %v", err)
			}
			var res dialResult
			mustJSON(t, line, &res)
			if !tt.netnsAddr {
				if res.Errno != int(syscall.EPERM) {
					t.Fatalf("with no netns address the connect must be refused (EPERM), got %+v", res)
				}
				if st := e.status(); st.Counters["refused_netns"] == 0 {
					t.Fatalf("refused_netns not counted: %v", st.Counters)
				}
				return
			}
			if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
				t.Fatalf("dial from the pod namespace: %+v\n%s", res, e.daemonOut.String())
			}
			if res.Peer != addr {
				t.Errorf("getpeername in the pod = %s, want the original %s", res.Peer, addr)
			}
			var s *control.SessionStatus
			for _, ss := range e.status().Sessions {
				if ss.Origin.CgroupPath != "" && strings.Contains(ss.Origin.CgroupPath, ctrID) {
					s = &ss
				}
			}
			if s == nil {
				t.Fatalf("no session from the pod namespace (it went direct):\n%s", e.daemonOut.String())
			}
			if s.Dest != addr || s.Origin.PodUID != podUID || s.Origin.ContainerID != ctrID || s.Origin.UID != tt.uid {
				t.Fatalf("session = dest %s pod %q container %q uid %d; want %s, %s, %s, %d", s.Dest, s.Origin.PodUID, s.Origin.ContainerID, s.Origin.UID, addr, podUID, ctrID, tt.uid)
			}
		})
	}
}

// Item 6: a full tracked-process map fails closed: while the kernel could
// not track a process, tree mode refuses target connects of untracked
// processes, `airlock status` says so, and once there is room again the
// daemon rebuilds the set from /proc and lifts the refusal.
func TestTrackedMapFullFailsClosed(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(treeConfig(h, ""))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")

	m, err := ebpf.LoadPinnedMap(filepath.Join(e.bpffs, "airlock", fmt.Sprintf("v%d", intercept.LayoutVersion), "airlock_tracked"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Fill it with tgids above any pid_max (2^22), so no process has one.
	var filler []uint32
	for k := uint32(0); k <= m.MaxEntries(); k++ {
		tgid, reason := uint32(1<<23)+k, uint32(1)
		if err := m.Update(tgid, reason, ebpf.UpdateNoExist); err != nil {
			if errors.Is(err, syscall.E2BIG) || errors.Is(err, ebpf.ErrKeyExist) {
				break
			}
			t.Fatalf("fill tracked map: %v", err)
		}
		filler = append(filler, tgid)
	}
	t.Cleanup(func() {
		for _, k := range filler {
			_ = m.Delete(k)
		}
	})

	// Cursor starts, execs its child: neither can be tracked. Cursor stays,
	// so the daemon's rebuild keeps failing while the map is full.
	line := e.runInCursor(t, e.clients, nobody, []string{helper}, "dial", "DIAL_ADDR="+addr, "SPAWN_LINGER=true")
	var res dialResult
	mustJSON(t, line, &res)
	if res.Errno != int(syscall.EPERM) {
		t.Fatalf("a tree process the kernel could not track must be refused, got %+v", res)
	}
	// Everything untracked is refused meanwhile, not only the tree.
	if res := e.dial(e.clients, nobody, addr); res.Errno != int(syscall.EPERM) {
		t.Fatalf("an untracked process during the overflow must be refused, got %+v", res)
	}
	st := e.status()
	if st.Selection == nil || !st.Selection.TrackingIncomplete || st.Selection.TrackingLost == 0 || st.Counters["refused_overflow"] < 2 {
		t.Fatalf("status does not show the overflow: %+v %v", st.Selection, st.Counters)
	}
	text, err := exec.Command(filepath.Join(binDir, "airlock"), "status", "--socket", e.socket()).CombinedOutput()
	if err != nil || !strings.Contains(string(text), "TRACKING INCOMPLETE") {
		t.Fatalf("airlock status text does not show the overflow: %v\n%s", err, text)
	}

	// Room again: the daemon rebuilds and lifts the refusal.
	for _, k := range filler {
		_ = m.Delete(k)
	}
	filler = nil
	// Bounded generously: the rebuild walks /proc, slow on a loaded machine.
	deadline := time.Now().Add(45 * time.Second)
	for e.status().Selection.TrackingIncomplete {
		if time.Now().After(deadline) {
			t.Fatalf("tracking still incomplete 45s after the map had room:\n%s", e.daemonOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res := e.dial(e.clients, nobody, addr); res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("after the rebuild an untracked process goes direct again, got %+v", res)
	}
	line = e.runInCursor(t, e.clients, nobody, []string{helper}, "dial", "DIAL_ADDR="+addr)
	mustJSON(t, line, &res)
	if res.Err != "" {
		t.Fatalf("tree dial after the rebuild: %+v", res)
	}
	e.waitSession(t, res.PID)
}

// Item 6: no process is exempt by pid. With the daemon killed, a process
// that gets the daemon's old pid is refused like any other, not let through.
func TestRecycledDaemonPIDIsIntercepted(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(allModeConfig(h, ""))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")
	old := e.daemon.Process.Pid
	e.killDaemon()

	// ns_last_pid makes the next new task get old; another task (ours or
	// the machine's) may take it first, so try a bounded number of times.
	var res dialResult
	got := false
	for attempt := 0; attempt < 200 && !got; attempt++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(old-1)), 0); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		cmd := e.clientIn(e.clients, 0, "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr)
		out, err := cmd.Output()
		if cmd.Process == nil || cmd.Process.Pid != old {
			continue
		}
		if err != nil {
			t.Fatalf("dial helper with the daemon's old pid: %v", err)
		}
		mustJSON(t, string(out), &res)
		got = true
	}
	if !got {
		t.Fatalf("could not start a process with the daemon's old pid %d", old)
	}
	if res.Errno != int(syscall.ECONNREFUSED) {
		t.Fatalf("a process with the dead daemon's pid must be refused like any other, got %+v", res)
	}
}

// Item 7: loopback and localhost targets are configuration errors.
func TestLoopbackTargetRejected(t *testing.T) {
	testnet.RequireRoot(t)
	for _, a := range []string{"127.0.0.1:5432", "localhost:5432", "'[::1]:5432'"} {
		t.Run(a, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "airlock.yaml")
			body := fmt.Sprintf("intercept:\n  mode: all\ntargets:\n  - name: db\n    address: %s\n", a)
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(filepath.Join(binDir, "airlockd"), "check", "--config", p).CombinedOutput()
			if err == nil {
				t.Fatalf("airlockd check accepted a loopback target:\n%s", out)
			}
			if want := p + ":5: targets[0].address:"; !strings.Contains(string(out), want) || !strings.Contains(string(out), "loopback") {
				t.Fatalf("airlockd check output %q does not name %q and loopback", out, want)
			}
		})
	}
}

// Tree mode keeps each tree in a cgroup Airlock owns: its processes stay
// intercepted even when the kernel's tracked entries are gone (here: all
// deleted by hand, standing in for any way a pid-based record can be lost),
// and an unprivileged process cannot move itself out.
func TestTreeContainment(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(treeConfig(h, ""))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")

	cursor := cursorBinary(t)
	f := e.clientIn(e.clients, nobody)
	cmd := exec.Command(cursor)
	cmd.SysProcAttr = f.SysProcAttr
	b, _ := json.Marshal([]string{helper})
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=spawn", "SPAWN_ARGV="+string(b), "SPAWN_HELPER=dial", "DIAL_ADDR="+addr, "DIAL_WAIT=true", "DIAL_HOLD=true", "SPAWN_LINGER=true")
	stdin, _ := cmd.StdinPipe()
	// Our own pipe, not StdoutPipe: Wait (below, concurrent with the read)
	// would close StdoutPipe's read end as soon as a short-lived tree exits,
	// losing a line it printed but we had not read yet.
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	cmd.Stdout = w
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })

	// Cursor and its child end up in one tree cgroup under airlock.tree.
	treeRoot := filepath.Join(e.cgroupRel, intercept.TreeCgroupName) + "/"
	var cg string
	deadline := time.Now().Add(45 * time.Second) // generous: a loaded machine
	for {
		cg = procCgroup(cmd.Process.Pid)
		kids := childPIDs(cmd.Process.Pid)
		all := len(kids) > 0
		for _, k := range kids {
			all = all && procCgroup(k) == cg
		}
		if strings.HasPrefix(cg, treeRoot) && all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursor (%d, %q) and its children %v not contained under %s\n%s", cmd.Process.Pid, cg, kids, treeRoot, e.daemonOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := e.status(); st.Selection == nil || st.Selection.Containment != strings.TrimSuffix(treeRoot, "/") {
		t.Fatalf("status does not name the containment cgroup %s: %+v", treeRoot, st.Selection)
	}

	// The user cannot move the tree out again.
	esc := exec.Command("/bin/sh", "-c", fmt.Sprintf("echo %d > %s/cgroup.procs", cmd.Process.Pid, e.clients))
	esc.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := esc.CombinedOutput(); err == nil {
		t.Fatalf("an unprivileged process moved a contained process out: %s", out)
	}

	// Forget every tracked entry: only the cgroup holds the tree now.
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.bpffs, "airlock", fmt.Sprintf("v%d", intercept.LayoutVersion), "airlock_tracked"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var keys []uint32
	var k, v uint32
	for it := m.Iterate(); it.Next(&k, &v); {
		keys = append(keys, k)
	}
	for _, k := range keys {
		_ = m.Delete(k)
	}

	fmt.Fprintln(stdin, "go")
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("contained child: %v", err)
	}
	var res dialResult
	mustJSON(t, line, &res)
	if res.Err != "" || !strings.HasPrefix(res.Reply, "server=target ") {
		t.Fatalf("dial from the contained child: %+v", res)
	}
	if s := findSession(e.status(), res.PID); s == nil || s.Origin.CgroupPath != cg {
		t.Fatalf("dial from the contained child %d: session %+v, want one from cgroup %s\n%s", res.PID, s, cg, e.daemonOut.String())
	}
	_ = stdin.Close()

	// Uninstalling moves the tree back instead of killing Cursor.
	e.stopDaemon()
	if out, err := exec.Command(filepath.Join(binDir, "airlockd"), "uninstall", "--config", e.cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v: %s", err, out)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("uninstall killed the contained cursor: %v", err)
	}
	if cg := procCgroup(cmd.Process.Pid); cg != e.cgroupRel {
		t.Fatalf("after uninstall cursor is in %q, want the attach cgroup %s", cg, e.cgroupRel)
	}
	if _, err := os.Stat(filepath.Join(e.cgroup, intercept.TreeCgroupName)); !os.IsNotExist(err) {
		t.Fatalf("containment cgroup left after uninstall: %v", err)
	}
}

func procCgroup(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "0::") {
			return strings.TrimPrefix(l, "0::")
		}
	}
	return ""
}

// childPIDs lists pid's child processes, whichever of its threads forked
// them (/proc/PID/task/TID/children only lists one thread's).
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		end := strings.LastIndexByte(string(b), ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(string(b[end+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			if n, err := strconv.Atoi(e.Name()); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// With no pid exemption, the daemon's own sockets are told apart by their
// mark alone: that includes DNS over TCP. Here the daemon runs inside the
// cgroup it intercepts (mode all) and its DNS server is itself a target,
// answering UDP truncated so that the resolver must retry over TCP.
func TestDaemonDNSOverTCPNotIntercepted(t *testing.T) {
	h := remote(t)
	dnsAddr := truncatingDNS(t, h.LocalV4, map[string]string{"db.airlock.test.": h.V4.String()})
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
  - name: dns
    address: %s
`, dnsAddr, dnsAddr))
	e.startDaemonIn(e.clients)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := e.status()
		var resolved []string
		for _, ts := range st.Targets {
			if ts.Name == "db" {
				resolved = ts.Resolved
			}
		}
		if len(resolved) == 1 && resolved[0] == h.V4.String()+"/32" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("db.airlock.test never resolved over TCP: %+v\n%s", st.Targets, e.daemonOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let a few more lookups (1s TTL) happen, then: none of them was a session.
	time.Sleep(2500 * time.Millisecond)
	if st := e.status(); st.Counters["skip_mark"] == 0 {
		t.Fatalf("the daemon's DNS-over-TCP dials were not recognised by their mark: %v", st.Counters)
	}
	if strings.Contains(e.daemonOut.String(), "kind=session.start") {
		t.Fatalf("the daemon's own DNS query was intercepted:\n%s", e.daemonOut.String())
	}
}

// truncatingDNS answers A queries for records over TCP on addr (port
// chosen), and over UDP only with the truncated bit set.
func truncatingDNS(t *testing.T, addr netip.Addr, records map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	l, err := net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	answer := func(tcp bool) dns.HandlerFunc {
		return func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			if !tcp {
				m.Truncated = true
				_ = w.WriteMsg(m)
				return
			}
			for _, q := range r.Question {
				a, ok := records[q.Name]
				switch {
				case !ok:
					m.Rcode = dns.RcodeNameError
				case q.Qtype == dns.TypeA:
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.ParseIP(a)})
				}
			}
			_ = w.WriteMsg(m)
		}
	}
	udp := &dns.Server{PacketConn: pc, Handler: answer(false)}
	tcp := &dns.Server{Listener: l, Handler: answer(true)}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return net.JoinHostPort(addr.String(), strconv.Itoa(port))
}
