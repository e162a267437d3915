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

	"github.com/jackc/pgx/v5/pgproto3"

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
	st, _, sess := benchStage(b)
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

// benchStage is the guard stage of an agent's session under the built-in
// policy.
func benchStage(b *testing.B) (pgwire.ClientStage, pgwire.BatchStage, *session.Session) {
	b.Helper()
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
	st := g.Stages(sess)
	return st.Client[0], st.Batch[0], sess
}

// BenchmarkStagePgbench is the guard's cost per pgbench transaction
// (classifying and deciding each statement) with new constants each time,
// for -S and TPC-B in the simple protocol, and -S in the extended protocol
// (Parse with $1, Bind, Describe, Execute, Sync) and prepared (Bind
// onwards). The message bodies are built before the loop. ClientMsg's
// SQLText copies the text once per new statement here, where the pipeline
// shares its copy with the record instead: one allocation of the simple
// rows is the harness's.
func BenchmarkStagePgbench(b *testing.B) {
	const n = 1 << 13
	tpcb := func(i int) []string {
		aid, tid, delta := strconv.Itoa(i%100000+1), strconv.Itoa(i%10+1), strconv.Itoa(i%10001-5000)
		return []string{
			"BEGIN;",
			"UPDATE pgbench_accounts SET abalance = abalance + " + delta + " WHERE aid = " + aid + ";",
			"SELECT abalance FROM pgbench_accounts WHERE aid = " + aid + ";",
			"UPDATE pgbench_tellers SET tbalance = tbalance + " + delta + " WHERE tid = " + tid + ";",
			"UPDATE pgbench_branches SET bbalance = bbalance + " + delta + " WHERE bid = 1;",
			"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (" + tid + ", 1, " + aid + ", " + delta + ", CURRENT_TIMESTAMP);",
			"END;",
		}
	}
	simple := map[string]func(i int) []string{
		"select-only": func(i int) []string {
			return []string{"SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i%100000+1) + ";"}
		},
		"tpcb": tpcb,
	}
	for _, name := range []string{"select-only", "tpcb"} {
		b.Run("simple/"+name, func(b *testing.B) {
			cs, _, sess := benchStage(b)
			txs := make([][][]byte, n)
			for i := range txs {
				for _, q := range simple[name](i) {
					txs[i] = append(txs[i], append([]byte(q), 0))
				}
			}
			b.ReportAllocs()
			start := processCPU()
			m := &pgwire.ClientMsg{Type: 'Q', TxStatus: 'I', Session: sess} // the pipeline reuses its message too
			i := 0
			for b.Loop() {
				i++
				for _, body := range txs[i%n] {
					m.Body = body
					if v := cs.Client(m); v.Action != pgwire.Forward {
						b.Fatalf("verdict %+v", v)
					}
				}
			}
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/tx")
		})
	}
	body := func(m interface{ Encode([]byte) ([]byte, error) }) []byte {
		out, err := m.Encode(nil)
		if err != nil {
			b.Fatal(err)
		}
		return out[5:] // after the type and the length
	}
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
	bind := func(stmt string, i int) []byte {
		return body(&pgproto3.Bind{PreparedStatement: stmt, Parameters: [][]byte{[]byte(strconv.Itoa(i%100000 + 1))}})
	}
	for _, mode := range []string{"extended", "prepared"} {
		b.Run(mode+"/select-only", func(b *testing.B) {
			_, bs, sess := benchStage(b)
			stmt := ""
			if mode == "prepared" {
				stmt = "P0_1"
				prep := &pgwire.Batch{Complete: true, Msgs: []pgwire.ClientMsg{
					{Type: 'P', Body: body(&pgproto3.Parse{Name: stmt, Query: sql}), Session: sess}, {Type: 'S', Session: sess}}}
				if v := bs.Batch(prep); v.Action != pgwire.Forward {
					b.Fatalf("verdict %+v", v)
				}
			}
			batches := make([]pgwire.Batch, n)
			for i := range batches {
				var msgs []pgwire.ClientMsg
				if mode == "extended" {
					msgs = append(msgs, pgwire.ClientMsg{Type: 'P', Body: body(&pgproto3.Parse{Query: sql}), Session: sess})
				}
				msgs = append(msgs, pgwire.ClientMsg{Type: 'B', Body: bind(stmt, i), Session: sess},
					pgwire.ClientMsg{Type: 'D', Body: body(&pgproto3.Describe{ObjectType: 'P'}), Session: sess},
					pgwire.ClientMsg{Type: 'E', Body: body(&pgproto3.Execute{}), Session: sess},
					pgwire.ClientMsg{Type: 'S', Session: sess})
				batches[i] = pgwire.Batch{Complete: true, Msgs: msgs}
			}
			b.ReportAllocs()
			start := processCPU()
			i := 0
			for b.Loop() {
				i++
				if v := bs.Batch(&batches[i%n]); v.Action != pgwire.Forward {
					b.Fatalf("verdict %+v", v)
				}
			}
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/tx")
		})
	}
}
