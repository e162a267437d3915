//go:build perf

package tests

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// TestMaskedRowsDaemonCPU runs the bench's masked script (docs/BENCHMARKS.md
// "Feature overhead": 20 rows of bench_people a transaction, email hashed
// and card partial) with pgbench -c 10 -j 2 -M simple through a real
// airlockd, recording on, in four configurations one after the other, each
// its own daemon: masking off or on, the result sample off (sample_rows: 0)
// or at its default (10 rows). It reports airlockd's CPU per transaction
// (/proc/PID/stat, all threads), which on a shared machine moves less than
// throughput. With AIRLOCK_PERF_OTHER_BINDIR (a directory with another
// build's airlockd) every round runs that build's daemons too, for A/B in
// one run; with AIRLOCK_PERF_RECORD (a directory) the first round's
// windows are also recorded by perf record -g there. Slow and
// load-sensitive: a measurement, built with -tags perf only.
func TestMaskedRowsDaemonCPU(t *testing.T) {
	w := &pgWorld{env: newEnv(t)}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host})
	w.srv.Psql(t, "postgres", pgSetup)
	w.srv.Psql(t, "app", `
CREATE TABLE bench_people AS
  SELECT g AS id, 'Person ' || g AS name, 'user' || g || '@corp-mail.com' AS email,
         (4000000000000000 + g)::text AS card, (ARRAY['free', 'pro', 'team'])[1 + g % 3] AS plan
  FROM generate_series(1, 100000) g;
ALTER TABLE bench_people ADD PRIMARY KEY (id);
GRANT USAGE ON SCHEMA public TO app_rw;
GRANT SELECT ON bench_people TO app_rw;
VACUUM ANALYZE bench_people;`)
	dir := t.TempDir()
	w.pwFile = filepath.Join(dir, "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "mask.key")
	if err := os.WriteFile(key, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "masked.sql")
	if err := os.WriteFile(script, []byte("\\set a random(1, 99981)\n"+
		"SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + 19;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // pgbench runs as root, but in the clients' cgroup
	base := appdbConfig(w.host.V4, w.pwFile)
	masking := fmt.Sprintf(`masking:
  key_file: %s
  rules:
    - name: pii
      columns: ["public.bench_people.email"]
      strategy: hash
    - name: cards
      columns: ["public.bench_people.card"]
      strategy: partial
      keep: 4
`, key)
	dsn := fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=30", w.host.V4)
	seconds := 5
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_PERF_SECONDS")); err == nil && v > 0 && v <= 60 {
		seconds = v
	}
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_PERF_ROUNDS")); err == nil && v > 0 && v <= 10 {
		rounds = v
	}
	builds := []string{binDir}
	if other := os.Getenv("AIRLOCK_PERF_OTHER_BINDIR"); other != "" {
		builds = append(builds, other)
	}
	ownBin := binDir
	defer func() { binDir = ownBin }()
	txRe := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	pgbench := func(secs int) int64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
		defer cancel()
		out, err := w.run(ctx, "pgbench", "-n", "-M", "simple", "-c", "10", "-j", "2", "-T", strconv.Itoa(secs), "-f", script, dsn)
		m := txRe.FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("pgbench: %v\n%s\ndaemon:\n%s", err, out, w.daemonOut.String())
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	type config struct {
		name, yaml string
	}
	configs := []config{
		{"plain", "audit:\n  sample_rows: 0\n"},
		{"plain+sample", ""},
		{"masked", masking + "audit:\n  sample_rows: 0\n"},
		{"masked+sample", masking},
	}
	for r := 0; r < rounds; r++ {
		for k := range configs {
			c := configs[(k+r)%len(configs)] // rotated: none always first
			for bi, b := range builds {
				binDir = b
				w.config(base + c.yaml)
				// As the bench's daemons: debug logging's work is not
				// the data path's.
				cfg, err := os.ReadFile(w.cfgPath)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(w.cfgPath, []byte(strings.Replace(string(cfg), "log_level: debug", "log_level: info", 1)), 0o644); err != nil {
					t.Fatal(err)
				}
				w.startDaemon()
				// The configuration is in force: masked exactly where masking is.
				got := w.psql(t, dsn, "-F", " ", "-c", "SELECT email, card FROM bench_people WHERE id = 1")
				if plain := got == "user1@corp-mail.com 4000000000000001"; plain == strings.HasPrefix(c.name, "masked") ||
					!plain && (strings.Contains(got, "user1@") || strings.Contains(got, "400000000000")) {
					t.Fatalf("%s: bench_people row 1 reads %q", c.name, got)
				}
				pgbench(1) // sessions, credentials and caches set up
				pid := w.daemon.Process.Pid
				var rec *exec.Cmd
				if out := os.Getenv("AIRLOCK_PERF_RECORD"); out != "" && r == 0 {
					// A profile of the measured window, for perf report.
					rec = exec.Command("perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(pid),
						"-o", filepath.Join(out, fmt.Sprintf("build%d-%s.data", bi, c.name)))
					if err := rec.Start(); err != nil {
						t.Fatalf("perf record: %v", err)
					}
				}
				before := procCPU(t, pid)
				txs := pgbench(seconds)
				used := procCPU(t, pid) - before
				if rec != nil {
					_ = rec.Process.Signal(os.Interrupt)
					_ = rec.Wait()
				}
				w.stopDaemon()
				t.Logf("round %d build %d %-14s %6.1f µs CPU/tx  %6.0f tps", r+1, bi, c.name,
					float64(used.Microseconds())/float64(txs), float64(txs)/float64(seconds))
			}
		}
	}
}

// procCPU is a process's user and system CPU time, all its threads.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command's closing parenthesis: utime and
	// stime are the 14th and 15th of the line, the 12th and 13th here.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("short /proc/%d/stat: %q", pid, b)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(u+s) * time.Second / 100 // USER_HZ: 100 on Linux
}
