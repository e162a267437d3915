package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/session"
)

// closeJournal closes j when the test ends, which also removes its ring
// (in /dev/shm, which outlives the test's folders).
func closeJournal(t testing.TB, j *journal) {
	t.Cleanup(func() { _ = j.close() })
}

// ringRecord is the data of the test's records: its own number, so that
// a record read back can be told from a neighbour.
func ringRecord(i int) *pending {
	return &pending{Time: time.Unix(1700000000, int64(i)).UTC(), Kind: "statement", Session: "s",
		Data: json.RawMessage(fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", i%300)))}
}

// checkRecords reads the journal back and wants records 1 to at least
// want, each with its own data, in order and without a gap.
func checkRecords(t *testing.T, j *journal, want int64) {
	t.Helper()
	var n int64
	for {
		recs, err := j.read(n, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			n++
			if r.Seq != n {
				t.Fatalf("record %d has seq %d", n, r.Seq)
			}
			if wantData := ringRecord(int(n)).Data; string(r.Data) != string(wantData) {
				t.Fatalf("record %d: data %s, want %s", n, r.Data, wantData)
			}
		}
	}
	if n < want {
		t.Fatalf("journal holds %d records, %d were acknowledged", n, want)
	}
}

// Records go through rings of every size, with frames wrapping around the
// ring's end, a ring too small for one frame, and a ring filling up
// between syncs (the appender moves the frames out itself); none is
// lost, reordered or changed, and a closed journal leaves no ring behind.
func TestJournalRing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ring      uint64
		n, syncAt int
	}{
		{"default, no sync", ringDefault, 3000, 0},
		{"default, synced", ringDefault, 3000, 7},
		{"small, wraps", 4096, 3000, 0},
		{"small, wraps, synced", 4096 + 13, 3000, 5},
		{"smaller than a frame", 64, 200, 0},
		{"no ring", 0, 500, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j, err := openJournalRing(dir, 1<<30, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			if (j.rg != nil) != (tc.ring > 0) {
				t.Fatalf("ring in use: %v, want %v (notes %q)", j.rg != nil, tc.ring > 0, j.notes)
			}
			for i := 1; i <= tc.n; i++ {
				if err := j.append(ringRecord(i)); err != nil {
					t.Fatal(err)
				}
				if tc.syncAt > 0 && i%tc.syncAt == 0 {
					if err := j.sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			checkRecords(t, j, int64(tc.n))
			var path string
			if j.rg != nil {
				path = j.rg.path
			}
			if err := j.close(); err != nil {
				t.Fatal(err)
			}
			if path != "" {
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Fatalf("ring %s left after close: %v", path, err)
				}
			}
			j2, err := openJournalRing(dir, 1<<30, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j2)
			checkRecords(t, j2, int64(tc.n))
		})
	}
}

// The ring's frames survive the process: a child appends records as fast
// as it can, says after each which one the journal took, and is killed
// with SIGKILL; every record it acknowledged is in the journal its
// successor opens. Rings of both sizes, with the shipper's sync running
// or not, so that the kill lands between appends, in the middle of an
// append, or in the middle of moving frames into the segments.
func TestJournalRingSurvivesKill9(t *testing.T) {
	if os.Getenv("AIRLOCK_RING_CHILD") != "" {
		ringChild()
		return
	}
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	for _, tc := range []struct {
		name   string
		ring   uint64
		sync   time.Duration
		killAt int64
	}{
		{"in the ring only", ringDefault, 0, 2000},
		{"ring and segments", ringDefault, time.Millisecond, 20000},
		{"small ring, appenders move frames", 8192, 0, 20000},
		{"small ring, synced", 8192, 200 * time.Microsecond, 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			acked := killChildAfter(t, "TestJournalRingSurvivesKill9", tc.killAt, "AIRLOCK_RING_CHILD="+dir,
				"AIRLOCK_RING_SIZE="+strconv.FormatUint(tc.ring, 10), "AIRLOCK_RING_SYNC="+tc.sync.String())
			j, err := openJournalRing(dir, 1<<30, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			checkRecords(t, j, acked)
			t.Logf("%d records acknowledged, %d in the journal; %q", acked, j.lastSeq(), j.notes)
		})
	}
}

// killChildAfter runs the test binary's test named run as a child with env
// added, reads the numbers the child prints as it acknowledges records,
// kills it with SIGKILL once it has acknowledged killAt, and returns the
// last number it read (the child may print a few more before it dies).
func killChildAfter(t *testing.T, run string, killAt int64, env ...string) int64 {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^"+run+"$")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked int64
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, err := strconv.ParseInt(sc.Text(), 10, 64)
		if err != nil {
			continue // the test framework's own output
		}
		acked = n
		if n == killAt {
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	if acked < killAt {
		t.Fatalf("child acknowledged %d records, stopped before %d", acked, killAt)
	}
	return acked
}

// ringChild is the killed process of TestJournalRingSurvivesKill9.
func ringChild() {
	dir := os.Getenv("AIRLOCK_RING_CHILD")
	size, _ := strconv.ParseUint(os.Getenv("AIRLOCK_RING_SIZE"), 10, 64)
	every, _ := time.ParseDuration(os.Getenv("AIRLOCK_RING_SYNC"))
	j, err := openJournalRing(dir, 1<<30, 0, size)
	if err != nil || j.rg == nil {
		fmt.Fprintln(os.Stderr, "child: open journal:", err, j.notes)
		os.Exit(2)
	}
	if every > 0 {
		go func() {
			for {
				time.Sleep(every)
				_ = j.sync()
			}
		}()
	}
	// Bounded, though the parent kills it long before.
	for i := 1; i <= 10_000_000; i++ {
		if err := j.append(ringRecord(i)); err != nil {
			fmt.Fprintln(os.Stderr, "child: append:", err)
			os.Exit(2)
		}
		// Unbuffered: once the parent reads i, record i was journaled.
		if _, err := os.Stdout.WriteString(strconv.Itoa(i) + "\n"); err != nil {
			os.Exit(0)
		}
	}
	os.Exit(0)
}

// Only this user can read or write the ring: a name in /dev/shm taken
// first by someone else (a link to a file of theirs, a file they own or
// can read) is removed and the ring made afresh, and what was there is
// never read as frames.
func TestRingFileIsTheDaemonsOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the planted files belong to another user")
	}
	if path := ringPath(t.TempDir()); path == "" || !strings.HasPrefix(path, "/dev/shm/") {
		t.Skip("the ring is not in /dev/shm here")
	}
	const other = 65534 // nobody
	plant := map[string]func(t *testing.T, path string){
		"file of another user": func(t *testing.T, path string) {
			if err := os.WriteFile(path, make([]byte, ringHeader+4096), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path, other, other); err != nil {
				t.Fatal(err)
			}
		},
		"readable by others": func(t *testing.T, path string) {
			if err := os.WriteFile(path, make([]byte, ringHeader+4096), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"link to another file": func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "theirs")
			if err := os.WriteFile(target, []byte("not a ring"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if b, err := os.ReadFile(target); err != nil || string(b) != "not a ring" {
					t.Errorf("the link's target was changed: %q %v", b, err)
				}
			})
		},
		"fifo": func(t *testing.T, path string) {
			if err := unix.Mkfifo(path, 0o666); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path, other, other); err != nil {
				t.Fatal(err)
			}
		},
		"socket": func(t *testing.T, path string) {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
				t.Fatal(err)
			}
		},
		"empty directory": func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path, other, other); err != nil {
				t.Fatal(err)
			}
		},
		"hard link": func(t *testing.T, path string) {
			target := filepath.Join("/dev/shm", fmt.Sprintf("airlock-test-%d", os.Getpid()))
			if err := os.WriteFile(target, make([]byte, ringHeader+4096), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(target) })
			if err := os.Link(target, path); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, setup := range plant {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := ringPath(dir)
			setup(t, path)
			j, err := openJournalRing(dir, 1<<30, 0, 4096)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			if j.rg == nil {
				t.Fatalf("no ring: %q", j.notes)
			}
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 0 || st.Mode&0o777 != 0o600 || st.Nlink != 1 {
				t.Fatalf("ring is mode %o uid %d links %d", st.Mode, st.Uid, st.Nlink)
			}
			if err := j.append(ringRecord(1)); err != nil {
				t.Fatal(err)
			}
			checkRecords(t, j, 1)
		})
	}
}

// The data path allocates nothing for a statement record.
func TestRecordStatementAllocatesNothing(t *testing.T) {
	w, err := Open(context.Background(), Options{StateDir: t.TempDir(), CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.j.close(); _ = w.store.Close() }()
	for _, tc := range []struct {
		name string
		st   session.Statement
	}{
		{"simple", session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}},
		{"with a sample", session.Statement{Protocol: "extended", SQL: "SELECT $1", Params: []string{"x"}, Tag: "SELECT 1", Rows: 1,
			Sample: &session.Sample{Columns: []string{"a"}, OIDs: []uint32{25}, Data: storedRows([]string{"x"})}}},
		{"failed", session.Statement{Protocol: "simple", SQL: "SELECT * FROM nope", SQLState: "42P01", Error: `relation "nope" does not exist`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := session.Event{Kind: session.KindStatement, Session: "abc", Time: time.Now(), Statement: &tc.st}
			w.Record(ev)
			if n := testing.AllocsPerRun(1000, func() { w.Record(ev) }); n != 0 {
				t.Fatalf("%.1f allocations per statement record", n)
			}
		})
	}
	if err := w.j.sync(); err != nil {
		t.Fatal(err)
	}
}

// Sessions append at once while the shipper's thread moves and reads the
// ring (run with -race): every record is there once, in seq order, and
// each session's records in the order it appended them.
func TestJournalRingConcurrent(t *testing.T) {
	for _, size := range []uint64{ringDefault, 4096, 0} {
		t.Run(strconv.FormatUint(size, 10), func(t *testing.T) {
			j, err := openJournalRing(t.TempDir(), 1<<30, 0, size)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			const sessions, each = 4, 1500
			stop := make(chan struct{})
			shipped := make(chan []pending)
			go func() {
				var got []pending
				defer func() { shipped <- got }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := j.sync(); err != nil {
						t.Error(err)
						return
					}
					recs, err := j.read(int64(len(got)), 1000)
					if err != nil {
						t.Error(err)
						return
					}
					got = append(got, recs...)
					j.release(int64(len(got)))
				}
			}()
			errs := make(chan error, sessions)
			for s := 0; s < sessions; s++ {
				go func() {
					for i := 0; i < each; i++ {
						p := &pending{Kind: "statement", Session: strconv.Itoa(s), Data: json.RawMessage(strconv.Itoa(i))}
						if err := j.append(p); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			for s := 0; s < sessions; s++ {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			close(stop)
			got := withRest(t, j, 0, <-shipped, sessions*each)
			next := map[string]int{}
			for i, r := range got {
				if r.Seq != int64(i+1) {
					t.Fatalf("record %d has seq %d", i+1, r.Seq)
				}
				if n, _ := strconv.Atoi(string(r.Data)); n != next[r.Session] {
					t.Fatalf("session %s: record %d after %d", r.Session, n, next[r.Session]-1)
				}
				next[r.Session]++
			}
		})
	}
}

// A second journal on the same folder (a second daemon on the same state
// dir) is refused while the first holds the ring, rather than take the
// first one's records; once the first is gone, it opens.
func TestJournalRingIsExclusive(t *testing.T) {
	dir := t.TempDir()
	if ringPath(dir) == "" {
		t.Skip("no tmpfs for the ring")
	}
	j, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(ringRecord(1)); err != nil {
		t.Fatal(err)
	}
	if j2, err := openJournal(dir, 1<<30, 0); !errors.Is(err, errRingInUse) {
		if j2 != nil {
			_ = j2.close()
		}
		t.Fatalf("second journal on %s: %v, want %v", dir, err, errRingInUse)
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	j2, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j2)
	checkRecords(t, j2, 1)
}

// A record over the frame limit is refused at once (a session must not
// wait for it to fit), and takes no seq.
func TestJournalRefusesOversizedRecord(t *testing.T) {
	j, err := openJournal(t.TempDir(), 1<<40, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	huge := make([]byte, maxFrame+2)
	huge[0], huge[len(huge)-1] = '"', '"'
	for i := 1; i < len(huge)-1; i++ {
		huge[i] = 'x'
	}
	if err := j.append(&pending{Kind: "statement", Data: huge}); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("oversized record: %v, want %v", err, errFrameTooLarge)
	}
	if err := j.append(ringRecord(1)); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, j, 1)
}

// withRest is what a test's shipper read (got, the records after seq
// base) and the rest of j after it: want records in all, or the test fails.
func withRest(t *testing.T, j *journal, base int64, got []pending, want int) []pending {
	t.Helper()
	rest, err := j.read(base+int64(len(got)), want)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, rest...)
	if len(got) != want {
		t.Fatalf("%d records, want %d", len(got), want)
	}
	return got
}

// A burst that fills the ring past half is drained into the segments at
// once, not at the end of the commit interval (an hour here): sessions
// keep appending into the ring instead of writing segments themselves,
// and no record is lost or reordered on the way.
func TestRingPressureDrainsBeforeTheInterval(t *testing.T) {
	state := t.TempDir()
	if ringPath(filepath.Join(state, "audit", "journal")) == "" {
		t.Skip("no tmpfs for the ring")
	}
	const ringSize = 64 << 10
	w, err := Open(context.Background(), Options{StateDir: state, CommitInterval: time.Hour, ringSize: ringSize})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if w.j.rg == nil {
		t.Fatal("the writer has no ring")
	}
	used := func() uint64 { return w.j.rg.head() - w.j.rg.tail() }
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	sent := 0
	for round := 0; round < 5; round++ {
		// Past half the ring, well short of full.
		for used() <= ringSize/2+ringSize/8 {
			s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
			sent++
		}
		deadline := time.Now().Add(10 * time.Second)
		for used() > ringSize/2 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if u := used(); u > ringSize/2 {
			t.Fatalf("round %d: the ring stayed %d of %d bytes full for 10 s (commit interval an hour)", round, u, ringSize)
		}
	}
	if n := w.Status().RingFull; n != 0 {
		t.Fatalf("%d appends found the ring full", n)
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := w.Store().Scan(context.Background(), "", 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
		if r.Kind == string(session.KindStatement) {
			got++
		}
	}
	if got != sent {
		t.Fatalf("%d statement records stored, %d sent", got, sent)
	}
}
