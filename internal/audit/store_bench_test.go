package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// BenchmarkStoreAppend is the store's share of shipping: one op is one
// pgbench-like statement record stored, in batches of shipBatch (the
// chain is built with the timer stopped). cpu-ns/op is this process's CPU
// (getrusage), the figure that matters on a busy machine; ns/op also has
// the wait for the commit's fsync.
func BenchmarkStoreAppend(b *testing.B) {
	kinds := []string{"sqlite"}
	var pg *pgtest.Server
	if !testing.Short() {
		pg = pgtest.Start(b, pgtest.Options{})
		kinds = append(kinds, "postgres")
	}
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			spec, pw := filepath.Join(b.TempDir(), "audit.db"), ""
			if kind == "postgres" {
				pgN++
				db := fmt.Sprintf("audit_bench_%d", pgN)
				pg.Psql(b, "postgres", "CREATE DATABASE "+db)
				spec, pw = fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", pg.AdminUser, pg.Addr, pg.Port, db), pg.AdminPassword
			}
			ctx := context.Background()
			st, err := OpenStore(ctx, spec, pw)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			data, err := encodeData(Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
				Tag: "SELECT 1", Rows: 1, Bytes: 11, DurationUS: 80})
			if err != nil {
				b.Fatal(err)
			}
			recs := make([]Record, shipBatch)
			prev, seq := genesis, int64(0)
			at := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			var cpu time.Duration
			for done := 0; done < b.N; {
				b.StopTimer()
				n := min(shipBatch, b.N-done)
				for i := range recs[:n] {
					seq++
					recs[i] = Record{Daemon: "bench", Seq: seq, Time: at.Add(time.Duration(seq)), Kind: kindStatement,
						Session: fmt.Sprintf("session-%d", seq%10), Data: data, PrevHash: prev}
					recs[i].Hash = hashRecord(prev, &recs[i])
					prev = recs[i].Hash
				}
				c0 := recCPU()
				b.StartTimer()
				if err := st.append(ctx, recs[:n], nil, nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += recCPU() - c0
				b.StartTimer()
				done += n
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
