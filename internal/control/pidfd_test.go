package control

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pidOfPIDFD reads the pid a pidfd names from its fdinfo.
func pidOfPIDFD(t *testing.T, f *os.File) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	t.Fatalf("no Pid in fdinfo:\n%s", b)
	return 0
}

// The caller of the control socket is named by a pidfd of its own process.
func TestPeerPIDFD(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	peer, err := peerOf(sc)
	if err != nil {
		t.Fatal(err)
	}
	f, err := peerPIDFD(sc, peer.PID, bootTicks())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := pidOfPIDFD(t, f); got != os.Getpid() {
		t.Fatalf("pidfd names pid %d, want %d", got, os.Getpid())
	}
}

// The fallback's check: a process started before the call passes, one
// started after it (as a process that took over a recycled pid would be)
// does not.
func TestStartTicksOrdering(t *testing.T) {
	self, err := startTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	before := bootTicks()
	if self > before {
		t.Fatalf("this process started at tick %d, after now (%d)", self, before)
	}
	time.Sleep(50 * time.Millisecond) // five ticks of 10ms
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	later, err := startTicks(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if later <= before {
		t.Fatalf("a process started 50ms after tick %d reports start tick %d", before, later)
	}
}
