//go:build perf

package tests

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIdleSessionRSS measures what an idle session costs a real airlockd:
// its VmRSS before and with AIRLOCK_IDLE_N (default 600) sessions opened
// through interception by tests/bench/idle and held idle, upstream TLS off
// so that they run on the loop driver, as in `make bench`. It is the bench's
// idle figure without the bench's shared setup, for comparing builds
// (AIRLOCK_E2E_BINDIR) in one run; RSS depends on the machine and the
// moment, so it is a measurement, built with -tags perf only.
func TestIdleSessionRSS(t *testing.T) {
	n := 600
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_IDLE_N")); err == nil && v > 0 && v <= 2000 {
		n = v
	}
	idleBin := filepath.Join(t.TempDir(), "idle")
	if out, err := exec.Command("go", "build", "-o", idleBin, "./bench/idle").CombinedOutput(); err != nil {
		t.Fatalf("build tests/bench/idle: %v\n%s", err, out)
	}
	_ = os.Chmod(filepath.Dir(idleBin), 0o755)

	w := configAuditWorld(t, "", fmt.Sprintf("max_connections = %d", n+50))
	// As the bench's daemons: debug logging's allocations are not a
	// session's.
	cfg, err := os.ReadFile(w.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.cfgPath, []byte(strings.Replace(string(cfg), "log_level: debug", "log_level: info", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	w.startDaemon()
	dsn := fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=30", w.host.V4)

	// A few sessions first, so that what every daemon sets up once (the
	// loops, the credential pool) is not counted.
	warm := w.idleClients(t, idleBin, dsn, 8)
	defer warm.close(t)
	before := vmRSS(t, w.daemon.Process.Pid)
	held := w.idleClients(t, idleBin, dsn, n)
	time.Sleep(2 * time.Second) // the sessions' last work settles
	after := vmRSS(t, w.daemon.Process.Pid)
	t.Logf("airlockd VmRSS %d KiB before, %d KiB with %d idle sessions: %.1f KiB per idle session",
		before, after, n, float64(after-before)/float64(n))
	held.close(t)
}

type idleRun struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// idleClients starts tests/bench/idle with n sessions in the intercepted
// cgroup and waits until they are open.
func (w *pgWorld) idleClients(t *testing.T, bin, dsn string, n int) *idleRun {
	t.Helper()
	cmd := exec.Command(bin, "-n", strconv.Itoa(n), "-parallel", "8", "-dsn", dsn)
	cmd.SysProcAttr = w.clientIn(w.clients, 0).SysProcAttr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &idleRun{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := r.out.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		_ = stdin.Close()
		_ = cmd.Wait()
		t.Fatalf("idle -n %d: %q, %v\ndaemon:\n%s", n, line, err, w.daemonOut.String())
	}
	return r
}

// close ends the idle sessions, after checking that each still works.
func (r *idleRun) close(t *testing.T) {
	t.Helper()
	if r.cmd == nil {
		return
	}
	_ = r.stdin.Close()
	rest, _ := io.ReadAll(r.out)
	err := r.cmd.Wait()
	r.cmd = nil
	if err != nil || !strings.Contains(string(rest), " failed 0") {
		t.Errorf("idle sessions after idling: %v\n%s", err, rest)
	}
}

// vmRSS is a process's resident set in KiB.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
