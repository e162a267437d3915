//go:build perf

package tests

import (
	"context"
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

// TestConnectDaemonCPU measures what a new connection costs a real airlockd:
// pgbench -C (a connection per transaction, as psql -c in a script or a tool
// without a pool) runs SELECT 1 through interception, so every transaction
// pays the daemon's whole per-connection path: accept, the original
// destination and the process lookup, identity, policy, a just-in-time role
// from the pool (and its refill and drop), the upstream login, the session's
// start and end records. It reports airlockd's CPU per connection
// (/proc/PID/stat, all threads, the pool's drops still to do included: the
// window ends when no role is left). With AIRLOCK_PERF_OTHER_BINDIR (another
// build's airlockd) every round runs that build's daemon too, alternately,
// for A/B in one run; with AIRLOCK_PERF_RECORD (a directory) the first
// round's windows are recorded by perf record -g there. Slow and
// load-sensitive: a measurement, built with -tags perf only.
func TestConnectDaemonCPU(t *testing.T) {
	w := &pgWorld{env: newEnv(t)}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host})
	w.srv.Psql(t, "postgres", pgSetup)
	dir := t.TempDir()
	w.pwFile = filepath.Join(dir, "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "one.sql")
	if err := os.WriteFile(script, []byte("SELECT 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // pgbench runs as root, but in the clients' cgroup
	dsn := fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=30", w.host.V4)
	seconds := 5
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_PERF_SECONDS")); err == nil && v > 0 && v <= 60 {
		seconds = v
	}
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("AIRLOCK_PERF_ROUNDS")); err == nil && v > 0 && v <= 20 {
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
		out, err := w.run(ctx, "pgbench", "-n", "-C", "-M", "simple", "-c", "2", "-j", "2", "-T", strconv.Itoa(secs), "-f", script, dsn)
		m := txRe.FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("pgbench: %v\n%s\ndaemon:\n%s", err, out, w.daemonOut.String())
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	// settled waits until the daemon has dropped every role it handed
	// out: a connection's cost includes its role's revocation.
	settled := func() {
		for i := 0; i < 300; i++ {
			out := w.srv.Psql(t, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'airlock\\_%' AND rolname NOT IN ('airlock_admin', 'airlock_orphans')")
			if strings.TrimSpace(out) == "0" {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for r := 0; r < rounds; r++ {
		for k := range builds {
			bi := (k + r) % len(builds) // rotated: neither build always first
			binDir = builds[bi]
			w.config(appdbConfig(w.host.V4, w.pwFile))
			// As the bench's daemons: debug logging's work is not the
			// connection's.
			cfg, err := os.ReadFile(w.cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(w.cfgPath, []byte(strings.Replace(string(cfg), "log_level: debug", "log_level: info", 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			w.startDaemon()
			pgbench(1) // credentials, pools and caches set up
			settled()
			pid := w.daemon.Process.Pid
			var rec *exec.Cmd
			if out := os.Getenv("AIRLOCK_PERF_RECORD"); out != "" && r == 0 {
				rec = exec.Command("perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(pid),
					"-o", filepath.Join(out, fmt.Sprintf("conn-build%d.data", bi)))
				if err := rec.Start(); err != nil {
					t.Fatalf("perf record: %v", err)
				}
			}
			before := procCPU(t, pid)
			txs := pgbench(seconds)
			settled()
			used := procCPU(t, pid) - before
			if rec != nil {
				_ = rec.Process.Signal(os.Interrupt)
				_ = rec.Wait()
			}
			w.stopDaemon()
			t.Logf("round %d build %d %7.1f µs CPU/connection  %5.0f connections/s", r+1, bi,
				float64(used.Microseconds())/float64(txs), float64(txs)/float64(seconds))
		}
	}
}
