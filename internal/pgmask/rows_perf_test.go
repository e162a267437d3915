//go:build perf

package pgmask

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/session"
)

// countSink counts statement events and keeps none, as the audit sink's
// queue does not (its cost is internal/audit's to measure).
type countSink struct{ n atomic.Int64 }

func (c *countSink) Record(ev session.Event) {
	if ev.Kind == session.KindStatement {
		c.n.Add(1)
	}
}

// TestMaskedRowsCPU is the bench's masked script (docs/BENCHMARKS.md,
// "Feature overhead": 20 rows of bench_people, email hashed, card partial)
// run by pgbench -c 10 -j 2 -M simple through an in-process proxy on a real
// PostgreSQL, the proxy's configurations alternating in one run: without a
// masking stage or with one, with the result sample (10 rows, 4 KiB, the
// daemon's default) or without. It reports the proxy's CPU per transaction
// (this process's getrusage: only the proxy runs in it; pgbench and the
// server are other processes), steadier than throughput on a shared
// machine. Slow and load-sensitive: built with -tags perf only.
func TestMaskedRowsCPU(t *testing.T) {
	if _, err := exec.LookPath("pgbench"); err != nil {
		t.Skip("pgbench not installed")
	}
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Psql(t, "postgres", `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE TABLE bench_people AS
  SELECT g AS id, 'Person ' || g AS name, 'user' || g || '@corp-mail.com' AS email,
         (4000000000000000 + g)::text AS card, (ARRAY['free', 'pro', 'team'])[1 + g % 3] AS plan
  FROM generate_series(1, 100000) g;
ALTER TABLE bench_people ADD PRIMARY KEY (id);
GRANT SELECT ON bench_people TO app;
VACUUM ANALYZE bench_people;`)
	rs, err := mask.Compile(mask.Policy{Rules: []mask.Rule{
		{Name: "pii", Columns: []string{"public.bench_people.email"}, Strategy: "hash"},
		{Name: "cards", Columns: []string{"public.bench_people.card"}, Strategy: "partial", Keep: 4},
	}}, bytes.Repeat([]byte("k"), 32))
	if err != nil {
		t.Fatal(err)
	}
	adminCfg, err := pgx.ParseConfig(pg.AdminURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cat := NewCatalog(adminCfg, 2)
	t.Cleanup(cat.Close)
	script := filepath.Join(t.TempDir(), "masked.sql")
	if err := os.WriteFile(script, []byte("\\set a random(1, 99981)\n"+
		"SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + 19;\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	type config struct {
		name    string
		masking bool
		sample  int
	}
	configs := []config{{"plain", false, 0}, {"plain+sample", false, 10}, {"masked", true, 0}, {"masked+sample", true, 10}}
	if only := os.Getenv("AIRLOCK_PERF_CONFIGS"); only != "" {
		// Some of them only ("masked+sample"), so that a profile of the
		// process (perf record -p) is of one configuration.
		var some []config
		for _, c := range configs {
			if slices.Contains(strings.Split(only, ","), c.name) {
				some = append(some, c)
			}
		}
		if len(some) == 0 {
			t.Fatalf("AIRLOCK_PERF_CONFIGS=%q names none of the configurations", only)
		}
		configs = some
	}
	urls := make([]string, len(configs))
	for i, c := range configs {
		p, err := pgwire.New(pgwire.Options{
			Name: "testdb", Databases: []string{"postgres"},
			Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
			Credentials: creds{lease{"app", "app-pw"}},
			SampleRows:  c.sample, SampleBytes: 4096,
			Stages: func(sess *session.Session) pgwire.Stages {
				if !c.masking {
					return pgwire.Stages{}
				}
				st := New(rs.ForSubject(Subject(sess)), cat, sess, nil)
				return pgwire.Stages{Client: []pgwire.ClientStage{st}, Server: []pgwire.ServerStage{st}}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		addr := pgwiretest.Serve(t, p, func() *session.Session {
			sess := session.New(&countSink{})
			sess.Connection = "testdb"
			sess.Origin.Class = session.ClassAgent
			sess.Person = identity.Person{Name: "alice", UID: 1000}
			return sess
		}, nil)
		f := &fixture{addr: addr}
		urls[i] = f.url()
		// The configuration is in force: masked exactly where masking is.
		out, err := exec.Command("psql", "-X", "-At", "-F", " ", "-c", "SELECT email, card FROM bench_people WHERE id = 1", urls[i]).CombinedOutput()
		got := strings.TrimSpace(string(out))
		if plain := got == "user1@corp-mail.com 4000000000000001"; err != nil || plain == c.masking ||
			!plain && (strings.Contains(got, "user1@") || strings.Contains(got, "400000000000")) {
			t.Fatalf("%s: bench_people row 1 reads %q (%v)", c.name, got, err)
		}
	}
	txRe := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	tpsRe := regexp.MustCompile(`tps = ([0-9.]+)`)
	seconds := os.Getenv("AIRLOCK_PERF_SECONDS")
	if seconds == "" {
		seconds = "5"
	}
	run := func(u string) (cpuPerTx, userPerTx, tps float64) {
		var before, after syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		out, err := exec.Command("pgbench", "-n", "-M", "simple", "-c", "10", "-j", "2", "-T", seconds, "-f", script, u).CombinedOutput()
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
		if err != nil {
			t.Fatalf("pgbench: %v: %s", err, out)
		}
		m, n := tpsRe.FindSubmatch(out), txRe.FindSubmatch(out)
		if m == nil || n == nil {
			t.Fatalf("no tps in %s", out)
		}
		tps, _ = strconv.ParseFloat(string(m[1]), 64)
		txs, _ := strconv.ParseFloat(string(n[1]), 64)
		user := after.Utime.Nano() - before.Utime.Nano()
		used := user + after.Stime.Nano() - before.Stime.Nano()
		return float64(used) / 1e3 / txs, float64(user) / 1e3 / txs, tps
	}
	rounds := 3
	if r, err := strconv.Atoi(os.Getenv("AIRLOCK_PERF_ROUNDS")); err == nil && r > 0 && r <= 20 {
		rounds = r
	}
	for r := 0; r < rounds; r++ {
		// Rotated, so no configuration always runs first.
		for k := range configs {
			i := (k + r) % len(configs)
			cpu, user, tps := run(urls[i])
			t.Logf("round %d %-14s %6.1f µs CPU/tx (user %5.1f)  %7.0f tps", r+1, configs[i].name, cpu, user, tps)
		}
	}
}
