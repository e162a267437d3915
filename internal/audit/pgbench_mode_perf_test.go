//go:build perf

package audit

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/session"
)

// TestPgbenchOneMode runs pgbench -S -c 10 -j 2 (or the options
// AIRLOCK_PERF_PGBENCH gives) through the proxy set up as
// airlockd sets it up with recording on ("sqlite": the audit writer and
// the log's queue behind a Fanout, result samples at the default bounds)
// or off ("off": the queue alone, no samples, as AIRLOCK_BENCH_OFF=audit
// does): the modes AIRLOCK_PERF_MODE lists, "off,sqlite" by default. Run
// with one mode per process, alternately, each process can be profiled on
// its own (perf record -p the pid written to the file AIRLOCK_PERF_READY
// names, which the test waits for the profiler to remove), so that
// what recording adds is compared by symbol in like runs; the in-process
// test (TestPgbenchRecordingOverhead) takes no samples and shares one
// profile between its modes. AIRLOCK_PERF_SCRIPT=people runs the
// benchmark's 20-row script instead of -S; AIRLOCK_PERF_COMMIT sets
// the writer's commit interval (a Go duration). It reports the process's CPU per transaction
// from the moment the proxy is ready, the shipping still to do included.
func TestPgbenchOneMode(t *testing.T) {
	modes := "off,sqlite"
	if m := os.Getenv("AIRLOCK_PERF_MODE"); m != "" {
		modes = m
	}
	for _, mode := range strings.Split(modes, ",") {
		if mode != "off" && mode != "sqlite" {
			t.Fatalf("AIRLOCK_PERF_MODE: %q is not off or sqlite", mode)
		}
		t.Run(mode, func(t *testing.T) { pgbenchOneMode(t, mode) })
	}
}

func pgbenchOneMode(t *testing.T, mode string) {
	secs := "8"
	if s := os.Getenv("AIRLOCK_PERF_SECONDS"); s != "" {
		secs = s
	}
	pg := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off", "synchronous_commit = off"}})
	env := []string{"PGUSER=" + pg.AdminUser, "PGPASSWORD=" + pg.AdminPassword, "PGHOST=" + pg.Addr}
	pgbench := func(port int, args ...string) string {
		cmd := exec.Command("pgbench", append([]string{"-p", strconv.Itoa(port)}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pgbench(pg.Port, "-i", "-q", "-s", "10", "postgres")
	var script []string
	if os.Getenv("AIRLOCK_PERF_SCRIPT") == "people" {
		// The benchmark's masked script (tests/bench/run.sh), unmasked: 20
		// rows of five columns a transaction, of which the record keeps a
		// 10-row sample (issue 11's recorded statement).
		psql := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", strconv.Itoa(pg.Port), "-d", "postgres", "-c",
			`CREATE TABLE bench_people AS SELECT g AS id, 'Person ' || g AS name, 'user' || g || '@corp-mail.com' AS email,
			   (4000000000000000 + g)::text AS card, (ARRAY['free', 'pro', 'team'])[1 + g % 3] AS plan
			 FROM generate_series(1, 100000) g;
			 ALTER TABLE bench_people ADD PRIMARY KEY (id);`, "-c", "VACUUM ANALYZE bench_people")
		psql.Env = append(os.Environ(), env...)
		if out, err := psql.CombinedOutput(); err != nil {
			t.Fatalf("create bench_people: %v\n%s", err, out)
		}
		f := filepath.Join(t.TempDir(), "people.sql")
		if err := os.WriteFile(f, []byte("\\set a random(1, 99981)\n"+
			"SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + 19;\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		script = []string{"-f", f}
	}
	q := session.NewQueue(session.LogSink{Logger: slog.New(slog.DiscardHandler)}, 4096, nil)
	ctx, cancel := context.WithCancel(context.Background())
	qdone := make(chan struct{})
	go func() { defer close(qdone); q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-qdone })
	sink := session.Fanout{q}
	opts := pgwire.Options{Name: "bench", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: staticLease{pg.AdminUser, pg.AdminPassword}}
	var w *Writer
	if mode == "sqlite" {
		var err error
		wopts := Options{StateDir: t.TempDir()}
		if ci := os.Getenv("AIRLOCK_PERF_COMMIT"); ci != "" {
			// Another commit interval (a Go duration), to tell what the
			// shipper pays per interval from what it pays per record.
			if wopts.CommitInterval, err = time.ParseDuration(ci); err != nil {
				t.Fatalf("AIRLOCK_PERF_COMMIT: %v", err)
			}
		}
		w, err = Open(context.Background(), wopts)
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.Run(wctx) }()
		t.Cleanup(func() { wcancel(); <-done })
		sink = session.Fanout{w, q}
		opts.SampleRows, opts.SampleBytes = config.DefaultSampleRows, config.DefaultSampleBytes
	}
	p, err := pgwire.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	addr := pgwiretest.Serve(t, p, func() *session.Session {
		s := session.New(sink)
		s.Person = identity.Person{Name: "bench", UID: 1000}
		s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
		return s
	}, func(s *session.Session) {
		s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
	})
	_, ps, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(ps)
	if f := os.Getenv("AIRLOCK_PERF_READY"); f != "" {
		// The profiler attaches after the set-up, before the load: it
		// reads the pid from f and removes f once it is recording (on a
		// loaded machine perf takes seconds to start; a profile that
		// missed the start of the run was a fraction of the CPU it ran).
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
				break
			}
			if i == 600 {
				t.Fatalf("%s still there after a minute: no profiler took it", f)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	args := []string{"-c", "10", "-j", "2", "-S"}
	if script != nil {
		args = append(args[:4], script...)
	}
	if a := os.Getenv("AIRLOCK_PERF_PGBENCH"); a != "" {
		// Other pgbench options: "-C -S -c 2 -j 2" connects per
		// transaction, what a new connection costs the proxy.
		args = strings.Fields(a)
	}
	var ship shipperThread
	if w != nil {
		ship = findShipper(t)
	}
	c0, s0 := cpuTime(), ship.cpu(t)
	out := pgbench(port, append(append([]string{"-n", "-T", secs}, args...), "postgres")...)
	if w != nil {
		if err := w.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	cpu, shipCPU := cpuTime()-c0, ship.cpu(t)-s0
	m := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`).FindStringSubmatch(out)
	tp := regexp.MustCompile(`tps = ([0-9.]+) \((?:without initial|including reconnection)`).FindStringSubmatch(out)
	if m == nil || tp == nil {
		t.Fatalf("no result in %s", out)
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("RESULT mode=%s tps=%s tx=%.0f cpu_us_per_tx=%.2f shipper_us_per_tx=%.2f", mode, tp[1], n, float64(cpu.Microseconds())/n, float64(shipCPU.Nanoseconds())/1e3/n)
}

// shipperThread is the shipper's thread in this process (0: none).
type shipperThread int

// findShipper finds the shipper's thread, the one thread at shipNice
// (Writer.Run sets it as it starts, so it is waited for a little), so
// that its CPU can be told from the proxy's: the shipping is deferred
// work, at a lower priority, that a loaded machine makes cost more.
func findShipper(t *testing.T) shipperThread {
	t.Helper()
	for range 100 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatalf("list this process's threads: %v", err)
		}
		for _, e := range tasks {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if nice, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && 20-nice == shipNice {
				return shipperThread(tid)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no thread at nice %d: the shipper did not start", shipNice)
	return 0
}

// cpu is the thread's CPU time so far (its schedstat's, in ns); 0 for no
// thread. It must be read while the writer runs: the thread ends with Run.
func (s shipperThread) cpu(t *testing.T) time.Duration {
	t.Helper()
	if s == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(int(s)) + "/schedstat")
	if err != nil {
		t.Fatalf("read the shipper thread's CPU: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("the shipper thread's schedstat is empty")
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		t.Fatalf("the shipper thread's schedstat %q: %v", b, err)
	}
	return time.Duration(ns)
}
