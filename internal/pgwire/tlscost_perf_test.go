//go:build perf

package pgwire

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// TestTLSLegCost measures what the proxy spends per pgbench transaction
// with a TLS client leg on the event loop, on goroutines, and with a plain
// leg on the loop, in one process and rotated round by round: CPU time,
// context switches and read/write system calls of this process (the proxy;
// pgbench and PostgreSQL are other processes), per transaction. Counts, not
// throughput, are what to compare on a shared machine. Slow and
// load-sensitive: built with -tags perf only (AIRLOCK_PERF_CLIENTS, _SECONDS,
// _ROUNDS, _ARGS change the run).
func TestTLSLegCost(t *testing.T) {
	requireTools(t, "pgbench")
	pg := pgtest.Start(t, pgtest.Options{})
	tlsOpt, _ := clientTLS(t)
	type path struct {
		name    string
		h       *harness
		sslmode string
		cpu     []float64 // µs per transaction, one per round
		csw     []float64
		calls   []float64
		tps     []float64
	}
	mk := func(driver string, tlsOn bool) *harness {
		return newHarness(t, pg, func(o *Options) {
			o.Driver = driver
			if tlsOn {
				tlsOpt(o)
			}
		})
	}
	paths := []*path{
		{name: "plain, loop", h: mk(DriverLoop, false), sslmode: "disable"},
		{name: "TLS, loop", h: mk(DriverLoop, true), sslmode: "require"},
		{name: "TLS, goroutines", h: mk(DriverGoroutines, true), sslmode: "require"},
	}
	direct := []string{"PGPORT=" + itoa(pg.Port), "PGUSER=" + pg.AdminUser, "PGPASSWORD=" + pg.AdminPassword, "PGSSLMODE=disable"}
	run(t, paths[0].h, direct, "pgbench", "-i", "-q", "-s", "10")
	clients := envOr("AIRLOCK_PERF_CLIENTS", "10")
	args := []string{"-n", "-S", "-c", clients, "-j", "2", "-T", envOr("AIRLOCK_PERF_SECONDS", "6")}
	if extra := os.Getenv("AIRLOCK_PERF_ARGS"); extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	rounds, _ := strconv.Atoi(envOr("AIRLOCK_PERF_ROUNDS", "3"))
	txRe := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	tpsRe := regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	for r := 0; r < rounds; r++ {
		for i := range paths {
			p := paths[(i+r)%len(paths)]
			cpu0, csw0, calls0 := selfCounts(t)
			out := run(t, p.h, []string{"PGSSLMODE=" + p.sslmode}, "pgbench", args...)
			cpu1, csw1, calls1 := selfCounts(t)
			m, m2 := txRe.FindStringSubmatch(out), tpsRe.FindStringSubmatch(out)
			if m == nil || m2 == nil {
				t.Fatalf("%s: no transaction count in %s", p.name, out)
			}
			tx, _ := strconv.ParseFloat(m[1], 64)
			tps, _ := strconv.ParseFloat(m2[1], 64)
			p.cpu = append(p.cpu, float64(cpu1-cpu0)/1e3/tx)
			p.csw = append(p.csw, float64(csw1-csw0)/tx)
			p.calls = append(p.calls, float64(calls1-calls0)/tx)
			p.tps = append(p.tps, tps)
		}
	}
	t.Logf("pgbench %s, %d rounds, rotated; per transaction, this process (the proxy):", strings.Join(args, " "), rounds)
	t.Logf("| path | CPU µs/tx | ctx switches/tx | read+write calls/tx | TPS |")
	t.Logf("|---|---|---|---|---|")
	for _, p := range paths {
		t.Logf("| %s | %s | %s | %s | %s |", p.name, join(p.cpu, "%.1f"), join(p.csw, "%.2f"), join(p.calls, "%.2f"), join(p.tps, "%.0f"))
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func join(v []float64, f string) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf(f, x)
	}
	return strings.Join(s, " / ")
}

// selfCounts is this process's CPU time (ns), context switches (all
// threads, voluntary and not) and read/write system calls so far.
func selfCounts(t *testing.T) (cpu, csw, calls int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && (k == "syscr" || k == "syscw") {
			n, _ := strconv.ParseInt(v, 10, 64)
			calls += n
		}
	}
	return ru.Utime.Nano() + ru.Stime.Nano(), ru.Nvcsw + ru.Nivcsw, calls
}
