package pgmask

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/pgwire"
)

// BenchmarkRow is the stage alone on one row: masked (an email column and a
// card computed column) and the fast path (a table nobody names).
func BenchmarkRow(b *testing.B) {
	for _, tt := range []struct {
		name string
		attr uint16
	}{{"masked", 1}, {"fastpath", 2}} {
		b.Run(tt.name, func(b *testing.B) {
			s := fuzzStage(b)
			s.push(request{kind: 'Q'})
			rd := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
				{Name: []byte("id"), TableOID: 1, TableAttributeNumber: 2, DataTypeOID: 23},
				{Name: []byte("e"), TableOID: 1, TableAttributeNumber: tt.attr, DataTypeOID: 25},
				{Name: []byte("p"), TableOID: 1, TableAttributeNumber: 2, DataTypeOID: 25}}})
			s.Server(&pgwire.ServerMsg{Type: 'T', Body: rd[5:], Len: len(rd) - 5})
			row := enc(&pgproto3.DataRow{Values: [][]byte{[]byte("12345"), []byte("alice.w@corp-mail.com"), []byte("a plan of some length")}})
			m := &pgwire.ServerMsg{Type: 'D', Body: row[5:], Len: len(row) - 5}
			b.SetBytes(int64(len(row)))
			b.ReportAllocs()
			for b.Loop() {
				s.Server(m)
			}
		})
	}
}

// BenchmarkQuery compares a 2000-row result read directly from PostgreSQL,
// through the proxy with masking on (two masked columns per row), and
// through the proxy for a table no rule names (the fast path).
func BenchmarkQuery(b *testing.B) {
	f := startBench(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	direct, err := pgx.Connect(ctx, f.pg.URL("app", "app-pw", "postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close(ctx)
	proxied, err := pgx.Connect(ctx, f.url())
	if err != nil {
		b.Fatal(err)
	}
	defer proxied.Close(ctx)
	run := func(b *testing.B, c *pgx.Conn, q string) {
		for b.Loop() {
			rows, err := c.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if rows.Err() != nil || n != 2000 {
				b.Fatalf("%d rows, %v", n, rows.Err())
			}
		}
	}
	masked := "select id, email, card, plan from big"
	plain := "select id, v, v, v from bigother"
	b.Run("direct/masked-table", func(b *testing.B) { run(b, direct, masked) })
	b.Run("proxy/masked-table", func(b *testing.B) { run(b, proxied, masked) })
	b.Run("direct/other-table", func(b *testing.B) { run(b, direct, plain) })
	b.Run("proxy/other-table", func(b *testing.B) { run(b, proxied, plain) })
}

func startBench(b *testing.B) *fixture {
	f := start(b)
	f.pg.Psql(b, "postgres", `
CREATE TABLE big AS SELECT g AS id, 'user' || g || '@corp-mail.com' AS email, '4111111111111111'::text AS card, 'pro' AS plan FROM generate_series(1, 2000) g;
CREATE TABLE bigother AS SELECT g AS id, 'value number ' || g AS v FROM generate_series(1, 2000) g;
GRANT SELECT ON big, bigother TO app;`)
	return f
}

// BenchmarkPgbenchSelect runs pgbench -S through the proxy with masking
// configured (on tables pgbench does not read) and off, alternating in the
// same run, in simple and prepared mode, and reports both rates and the
// proxy's CPU per transaction (this process's: the proxy runs in it).
func BenchmarkPgbenchSelect(b *testing.B) {
	f := start(b)
	out, err := exec.Command("pgbench", "-i", "-s", "1", "-q", f.pg.AdminURL("postgres")).CombinedOutput()
	if err != nil {
		b.Fatalf("pgbench -i: %v: %s", err, out)
	}
	f.pg.Psql(b, "postgres", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO app")
	txRe := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	tpsRe := regexp.MustCompile(`tps = ([0-9.]+)`)
	for _, mode := range []string{"simple", "prepared"} {
		b.Run(mode, func(b *testing.B) {
			run := func(off bool) (tps, cpuPerTx float64) {
				f.mu.Lock()
				f.off = off
				f.mu.Unlock()
				var before, after unix.Rusage
				_ = unix.Getrusage(unix.RUSAGE_SELF, &before)
				out, err := exec.Command("pgbench", "-S", "-n", "-M", mode, "-c", "2", "-T", "3", f.url()).CombinedOutput()
				_ = unix.Getrusage(unix.RUSAGE_SELF, &after)
				if err != nil {
					b.Fatalf("pgbench: %v: %s", err, out)
				}
				m, n := tpsRe.FindSubmatch(out), txRe.FindSubmatch(out)
				if m == nil || n == nil {
					b.Fatalf("no tps in %s", out)
				}
				tps, _ = strconv.ParseFloat(string(m[1]), 64)
				txs, _ := strconv.ParseFloat(string(n[1]), 64)
				used := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
				return tps, float64(used.Microseconds()) / txs
			}
			var on, off, cpuOn, cpuOff float64
			for b.Loop() {
				t, c := run(true)
				off, cpuOff = off+t, cpuOff+c
				t, c = run(false)
				on, cpuOn = on+t, cpuOn+c
			}
			n := float64(b.N)
			b.ReportMetric(on/n, "tps-masking")
			b.ReportMetric(off/n, "tps-off")
			b.ReportMetric(on/off, "ratio")
			b.ReportMetric(cpuOn/n, "cpu-us/tx-masking")
			b.ReportMetric(cpuOff/n, "cpu-us/tx-off")
		})
	}
}

// BenchmarkSelectTx is the stage's whole cost for one pgbench -S
// transaction on a table no rule names (simple protocol): the Query, then
// RowDescription, one DataRow, CommandComplete and ReadyForQuery.
func BenchmarkSelectTx(b *testing.B) {
	s := fuzzStage(b)
	q := enc(&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 41;"})
	msgs := [][]byte{
		enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), TableOID: 1, TableAttributeNumber: 2, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}),
		enc(&pgproto3.DataRow{Values: [][]byte{[]byte("0")}}),
		enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}),
		enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}),
	}
	cm := &pgwire.ClientMsg{Type: 'Q', Body: q[5:]}
	sms := make([]pgwire.ServerMsg, len(msgs))
	for i, m := range msgs {
		sms[i] = pgwire.ServerMsg{Type: m[0], Body: m[5:], Len: len(m) - 5}
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Client(cm)
		for i := range sms {
			if v := s.Server(&sms[i]); v.Action != pgwire.Forward {
				b.Fatalf("message %c not forwarded", sms[i].Type)
			}
		}
	}
}
