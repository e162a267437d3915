package guard_test

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

type discard struct{}

func (discard) Record(session.Event) {}

// proxyFor serves pg through pgwire on a loopback listener, with the
// guard's stages (the built-in policy) or none.
func proxyFor(b *testing.B, pg *pgtest.Server, g *guard.Guard) string {
	b.Helper()
	p, err := pgwire.New(pgwire.Options{Name: "bench", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: creds{pg.AdminUser, pg.AdminPassword},
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Stages: func(s *session.Session) pgwire.Stages {
			if g == nil {
				return pgwire.Stages{}
			}
			return g.Stages(s)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return pgwiretest.Serve(b, p, func() *session.Session {
		sess := session.New(discard{})
		sess.Origin.UID, sess.Origin.Class = 1000, session.ClassAgent
		sess.Person = identity.Person{Name: "alice", UID: 1000}
		return sess
	}, nil)
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var tpsRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

// pgbench runs select-only pgbench against addr and returns the
// transactions and this process's CPU (the proxy's: pgbench and
// PostgreSQL are other processes) over the run.
func pgbench(b *testing.B, addr string, seconds, clients int) (int, time.Duration) {
	b.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("pgbench", "-n", "-S", "-M", "simple", "-T", strconv.Itoa(seconds), "-c", strconv.Itoa(clients),
		"-h", host, "-p", port, "-U", "bench", "postgres")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PGPASSWORD=x", "PGSSLMODE=disable"}
	start := processCPU()
	out, err := cmd.CombinedOutput()
	cpu := processCPU() - start
	if err != nil {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		b.Fatalf("pgbench output: %s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n, cpu
}

// BenchmarkPgbenchGuard runs pgbench -S (simple protocol: a new text per
// transaction, as pgbench sends its random aid inline) through the proxy
// with the guard (built-in policy, agent class) and without, in one run,
// rotating the order, and reports throughput and the proxy's CPU per
// transaction for each. Run with -benchtime 1x:
//
//	go test -run '^$' -bench PgbenchGuard -benchtime 1x ./internal/guard/
func BenchmarkPgbenchGuard(b *testing.B) {
	pg := pgtest.Start(b, pgtest.Options{})
	env := []string{"PATH=/usr/bin:/bin", "PGPASSWORD=" + pg.AdminPassword, "PGSSLMODE=disable"}
	init := exec.Command("pgbench", "-i", "-s", "2", "-q", "-h", pg.Addr, "-p", strconv.Itoa(pg.Port), "-U", pg.AdminUser, "postgres")
	init.Env = env
	if out, err := init.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	pol := filepath.Join(b.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	store, err := policy.NewStore(pol)
	if err != nil {
		b.Fatal(err)
	}
	g := &guard.Guard{Connection: "bench", Policies: store, Classifier: sqlclass.New(sqlclass.Options{})}
	addrs := map[string]string{"off": proxyFor(b, pg, nil), "on": proxyFor(b, pg, g)}
	seconds, rounds := 5, 3
	if s, err := strconv.Atoi(os.Getenv("GUARD_BENCH_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	for _, clients := range []int{1, 4} {
		tx := map[string]int{}
		cpu := map[string]time.Duration{}
		order := []string{"off", "on"}
		for r := 0; r < rounds; r++ {
			for _, k := range order {
				n, c := pgbench(b, addrs[k], seconds, clients)
				tx[k] += n
				cpu[k] += c
			}
			order[0], order[1] = order[1], order[0]
		}
		for _, k := range []string{"off", "on"} {
			b.ReportMetric(float64(tx[k])/float64(rounds*seconds), fmt.Sprintf("tps-%s-c%d", k, clients))
			b.ReportMetric(float64(cpu[k].Microseconds())/float64(tx[k]), fmt.Sprintf("proxy-cpu-us/tx-%s-c%d", k, clients))
		}
		b.ReportMetric(float64(tx["on"])/float64(tx["off"]), fmt.Sprintf("tps-on/off-c%d", clients))
	}
}

// BenchmarkStageSelectOnly is the guard's own CPU per pgbench -S
// transaction: a simple Query with a new aid each time (served by the
// classifier's shape cache), decided by the built-in policy for an agent.
// The pgbench runs above give the proxy's whole CPU per transaction to
// compare it with; on a shared machine this figure is the steadier one.
func BenchmarkStageSelectOnly(b *testing.B) {
	pol := filepath.Join(b.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	store, err := policy.NewStore(pol)
	if err != nil {
		b.Fatal(err)
	}
	g := &guard.Guard{Connection: "bench", Policies: store, Classifier: sqlclass.New(sqlclass.Options{})}
	sess := session.New(discard{})
	sess.Origin.UID, sess.Origin.Class = 1000, session.ClassAgent
	sess.Person = identity.Person{Name: "alice", UID: 1000}
	st := g.Stages(sess).Client[0]
	b.ReportAllocs()
	start := processCPU()
	i := 0
	for b.Loop() {
		i++
		body := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i%200000+1) + ";\x00")
		if v := st.Client(&pgwire.ClientMsg{Type: 'Q', Body: body, TxStatus: 'I', Session: sess}); v.Action != pgwire.Forward {
			b.Fatalf("verdict %+v", v)
		}
	}
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}
