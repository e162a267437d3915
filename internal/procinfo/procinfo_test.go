package procinfo

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// statLine builds a /proc/PID/stat line with the given comm, ppid and
// starttime, and plausible values elsewhere.
func statLine(pid uint32, comm string, ppid uint32, start uint64) string {
	f := make([]string, 52-2) // fields 3..52
	for i := range f {
		f[i] = "0"
	}
	f[0] = "S"
	f[1] = fmt.Sprint(ppid)
	f[22-3] = fmt.Sprint(start)
	return fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(f, " "))
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       statInfo
		wantErr    bool
	}{
		{"plain", statLine(42, "bash", 7, 123456), statInfo{42, "bash", 'S', 7, 123456}, false},
		{"spaces", statLine(42, "my prog", 7, 9), statInfo{42, "my prog", 'S', 7, 9}, false},
		{"paren space paren", statLine(42, "a) (b", 7, 9), statInfo{42, "a) (b", 'S', 7, 9}, false},
		{"fake fields in comm", statLine(42, ") R 99 1 1 1 1", 7, 9), statInfo{42, ") R 99 1 1 1 1", 'S', 7, 9}, false},
		{"empty comm", statLine(1, "", 0, 1), statInfo{1, "", 'S', 0, 1}, false},
		{"real kernel line", "1 (systemd) S 0 1 1 0 -1 4194560 41862 5431062 105 2006 219 206 7990 2555 20 0 1 0 31 24047616 3244 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
			statInfo{1, "systemd", 'S', 0, 31}, false},
		{"truncated", "42 (x) S 1 2 3", statInfo{}, true},
		{"no parens", "42 x S 1", statInfo{}, true},
		{"no pid", statLine(1, "x", 1, 1)[1:], statInfo{}, true},
		{"empty", "", statInfo{}, true},
		{"bad starttime", strings.Replace(statLine(42, "x", 7, 9), " 9 ", " -9 ", 1), statInfo{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.line))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want error", tc.line, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStat(%q): %v", tc.line, err)
			}
			if got != tc.want {
				t.Fatalf("parseStat(%q) = %+v, want %+v", tc.line, got, tc.want)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine(42, "a) (b", 7, 9)), "a) (b", uint32(7), uint64(9))
	f.Add([]byte("1 (systemd) S 0 1 1 0 -1"), "systemd", uint32(0), uint64(31))
	f.Add([]byte(")("), "((", uint32(1), uint64(1<<63))
	f.Fuzz(func(t *testing.T, raw []byte, comm string, ppid uint32, start uint64) {
		// Arbitrary input: no panic, and a parsed comm lies inside the input.
		if s, err := parseStat(raw); err == nil && !strings.Contains(string(raw), "("+s.Comm+")") {
			t.Fatalf("parseStat(%q): comm %q not in input", raw, s.Comm)
		}
		// A well-formed line round-trips whatever the comm holds.
		line := statLine(1234, comm, ppid, start)
		s, err := parseStat([]byte(line))
		if err != nil {
			t.Fatalf("parseStat(%q): %v", line, err)
		}
		if want := (statInfo{1234, comm, 'S', ppid, start}); s != want {
			t.Fatalf("parseStat(%q) = %+v, want %+v", line, s, want)
		}
	})
}

func TestReadSelf(t *testing.T) {
	p, err := Read(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != uint32(os.Getpid()) {
		t.Errorf("PID = %d, want %d", p.PID, os.Getpid())
	}
	if p.Exe != exe {
		t.Errorf("Exe = %q, want %q", p.Exe, exe)
	}
	if !slices.Equal(p.Cmdline, os.Args) {
		t.Errorf("Cmdline = %q, want %q", p.Cmdline, os.Args)
	}
	if p.UID != uint32(os.Getuid()) {
		t.Errorf("UID = %d, want %d", p.UID, os.Getuid())
	}
	if p.PPID != uint32(os.Getppid()) {
		t.Errorf("PPID = %d, want %d", p.PPID, os.Getppid())
	}
	if p.StartTime == 0 {
		t.Errorf("StartTime = 0")
	}
	if want := filepath.Base(exe); len(want) > 15 && p.Comm != want[:15] || len(want) <= 15 && p.Comm != want {
		t.Errorf("Comm = %q, want (prefix of) %q", p.Comm, want)
	}
	again, err := Read(uint32(os.Getpid()))
	if err != nil || again.StartTime != p.StartTime {
		t.Errorf("second Read: StartTime %d (err %v), want %d", again.StartTime, err, p.StartTime)
	}
}

func TestReadMissing(t *testing.T) {
	_, err := Read(^uint32(0)) // above any pid_max
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read(missing) error = %v, want os.ErrNotExist", err)
	}
}

// A process whose exe cannot be read (a kernel thread, or another user's
// process without privilege) is still described.
func TestReadNoExe(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "77")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", statLine(77, "kworker/0:1-events", 2, 55))
	write("status", "Name:\tkworker/0:1-events\nState:\tI (idle)\nPPid:\t2\nUid:\t0\t0\t0\t0\n")
	write("cmdline", "")
	write("cgroup", "12:cpu:/x\n0::/\n")
	old := procRoot
	procRoot = root
	t.Cleanup(func() { procRoot = old })

	p, err := Read(77)
	if err != nil {
		t.Fatal(err)
	}
	want := Proc{PID: 77, PPID: 2, UID: 0, Comm: "kworker/0:1-events", StartTime: 55}
	if p.Exe != "" || p.Cmdline != nil || p.PID != want.PID || p.PPID != want.PPID || p.Comm != want.Comm || p.StartTime != want.StartTime {
		t.Fatalf("Read = %+v, want %+v", p, want)
	}
	if cg, err := CgroupPath(77); err != nil || cg != "/" {
		t.Fatalf("CgroupPath = %q, %v; want \"/\"", cg, err)
	}
	pids, err := List()
	if err != nil || !slices.Equal(pids, []uint32{77}) {
		t.Fatalf("List = %v, %v; want [77]", pids, err)
	}
}

func TestAncestry(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	child := uint32(cmd.Process.Pid)
	self := uint32(os.Getpid())

	t.Run("stop at self", func(t *testing.T) {
		chain, err := Ancestry(child, func(p Proc) bool { return p.PID == self }, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 1 || chain[0].PID != self {
			t.Fatalf("Ancestry = %v, want just the test process %d", pids(chain), self)
		}
	})
	t.Run("to the top", func(t *testing.T) {
		chain, err := Ancestry(child, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) == 0 || chain[0].PID != self {
			t.Fatalf("Ancestry = %v, want to start with the test process %d", pids(chain), self)
		}
		top := chain[len(chain)-1]
		if top.PID != 1 && top.PPID != 0 {
			t.Fatalf("Ancestry = %v ends at %+v, want PID 1 or a process without parent", pids(chain), top)
		}
		for i := 1; i < len(chain); i++ {
			if chain[i-1].PPID != chain[i].PID {
				t.Fatalf("Ancestry = %v: %d's parent is %d", pids(chain), chain[i-1].PID, chain[i-1].PPID)
			}
		}
	})
	t.Run("max", func(t *testing.T) {
		chain, err := Ancestry(child, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 1 || chain[0].PID != self {
			t.Fatalf("Ancestry(max 1) = %v, want [%d]", pids(chain), self)
		}
	})
	t.Run("of a process already read", func(t *testing.T) {
		p, err := Read(child)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Ancestry(child, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := AncestryOf(p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, want, func(a, b Proc) bool {
			return a.PID == b.PID && a.StartTime == b.StartTime && a.Exe == b.Exe && slices.Equal(a.Cmdline, b.Cmdline)
		}) {
			t.Fatalf("AncestryOf = %v, Ancestry = %v", pids(got), pids(want))
		}
	})
	t.Run("of pid 1", func(t *testing.T) {
		chain, err := Ancestry(1, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 0 {
			t.Fatalf("Ancestry(1) = %v, want none", pids(chain))
		}
	})
}

func pids(chain []Proc) []uint32 {
	var out []uint32
	for _, p := range chain {
		out = append(out, p.PID)
	}
	return out
}

func TestCgroupPathSelf(t *testing.T) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skip(err)
	}
	if _, ok := parseCgroup(b); !ok {
		t.Skip("no cgroup v2 here")
	}
	p, err := CgroupPath(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p, "/") {
		t.Fatalf("CgroupPath = %q, want an absolute path", p)
	}
}

func TestParseCgroup(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"0::/user.slice/user-1000.slice/session-2.scope\n", "/user.slice/user-1000.slice/session-2.scope", true},
		{"12:memory:/a\n1:name=systemd:/b\n0::/c:d\n", "/c:d", true},
		{"12:memory:/a\n", "", false},
		{"", "", false},
	} {
		got, ok := parseCgroup([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseCgroup(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestList(t *testing.T) {
	pids, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, uint32(os.Getpid())) {
		t.Fatalf("List() lacks own pid %d", os.Getpid())
	}
	if !slices.IsSorted(pids) {
		t.Fatalf("List() not sorted")
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	type tc struct{ name, path string }
	var cases []tc
	for _, n := range []int{0, 1, 2047, 2048, 2049, 4096, 100_000} {
		path := filepath.Join(dir, fmt.Sprintf("f%d", n))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + n)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, tc{fmt.Sprintf("%d bytes", n), path})
	}
	// procfs: a file whose size stat does not tell, stable while read.
	cases = append(cases, tc{"proc cmdline", "/proc/self/cmdline"}, tc{"proc cgroup", "/proc/self/cgroup"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, err := os.ReadFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("readFile read %d bytes, os.ReadFile %d, or different ones", len(got), len(want))
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := readFile(filepath.Join(dir, "none"))
		var pe *os.PathError
		if !errors.Is(err, os.ErrNotExist) || !errors.As(err, &pe) {
			t.Fatalf("readFile of a missing file: %v, want a *os.PathError for ErrNotExist", err)
		}
	})
}

// TestDirHandleStaysWithItsProcess is what Read's freedom from PID reuse
// rests on: a handle of /proc/PID reads nothing once its process has been
// reaped, whatever process the PID names next.
func TestDirHandleStaysWithItsProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start sleep: %v", err)
	}
	pid := uint32(cmd.Process.Pid)
	dir := pidDir(pid)
	d, err := openDir(dir)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	defer syscall.Close(d)
	st, err := readStat(d, dir)
	if err != nil || st.PID != pid {
		t.Fatalf("stat of the live process: %+v, %v", st, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // reaped: the PID is free for the next process
	for _, name := range []string{"stat", "status", "cmdline"} {
		if b, err := readFileAt(d, dir, name); err == nil {
			t.Errorf("%s of a reaped process read through its handle: %q", name, b)
		}
	}
	if exe, err := readlinkAt(d, "exe"); err == nil {
		t.Errorf("exe of a reaped process read through its handle: %q", exe)
	}
}
