package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/control"
)

// `airlock run` as an unprivileged user: the daemon moves the CLI's own
// process into an intercepted cgroup, and what it execs is intercepted.
func TestAirlockRun(t *testing.T) {
	h := remote(t)
	e := newEnv(t)
	e.config(fmt.Sprintf(`intercept:
  mode: cgroup
targets:
  - name: remote4
    address: %s:7000
`, h.V4))
	e.startDaemon()
	addr := net.JoinHostPort(h.V4.String(), "7000")

	// Without airlock run, nothing in this cgroup mode is selected. (Events
	// are written in batches, so give one the time to show up.)
	if res := e.dial(e.clients, 65534, addr); res.Err != "" {
		t.Fatal(res.Err)
	} else if time.Sleep(200 * time.Millisecond); strings.Contains(e.daemonOut.String(), "kind=session.start") {
		t.Fatal("a process not started by airlock run was intercepted")
	}

	cmd := exec.Command(filepath.Join(binDir, "airlock"), "run", "--socket", e.socket(), "--", helper)
	cmd.Env = append(os.Environ(), "AIRLOCK_E2E_HELPER=dial", "DIAL_ADDR="+addr, "DIAL_HOLD=true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("airlock run: %v\n%s", err, e.daemonOut.String())
	}
	var res dialResult
	mustJSON(t, line, &res)
	if res.Err != "" || res.PID != cmd.Process.Pid {
		t.Fatalf("airlock run did not exec in place (pid %d vs %d): %+v", res.PID, cmd.Process.Pid, res)
	}
	s := findSession(e.status(), res.PID)
	if s == nil || s.Person != "nobody" || !strings.Contains(s.Origin.CgroupPath, "airlock.run/") {
		t.Fatalf("airlock run session = %+v", s)
	}

	// `airlock status --json`, as that same unprivileged user, sees its
	// own session; the text form lists it too.
	for _, args := range [][]string{{"status", "--json"}, {"status"}} {
		st := exec.Command(filepath.Join(binDir, "airlock"), append(args, "--socket", e.socket())...)
		st.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := st.CombinedOutput()
		if err != nil {
			t.Fatalf("airlock %v: %v\n%s", args, err, out)
		}
		if len(args) > 1 {
			var js control.Status
			if err := json.Unmarshal(out, &js); err != nil {
				t.Fatalf("status --json is not JSON: %v\n%s", err, out)
			}
			if len(js.Sessions) != 1 || js.Sessions[0].ID != s.ID || len(js.Programs) == 0 || len(js.Targets) != 1 {
				t.Fatalf("status --json: %s", out)
			}
		} else if !strings.Contains(string(out), s.ID) || !strings.Contains(string(out), "connect4") {
			t.Fatalf("status text lacks the session or programs:\n%s", out)
		}
	}
}

// A configuration with an unknown key is refused with file, line and key.
func TestDaemonRefusesBadConfig(t *testing.T) {
	e := newEnv(t)
	e.config("intercept:\n  mode: all\n  atach_cgroup: /x\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "airlockd"), "--config", e.cfgPath).CombinedOutput()
	if err == nil {
		t.Fatalf("airlockd started with an unknown key:\n%s", out)
	}
	want := e.cfgPath + ":10: intercept.atach_cgroup: unknown key"
	if !strings.Contains(string(out), want) {
		t.Fatalf("error %q does not say %q", out, want)
	}
}
