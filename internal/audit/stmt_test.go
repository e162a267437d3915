package audit

import (
	"context"
	"fmt"
	"testing"
)

// TestStoreExecPrepares holds the shipper's prepared inserts to what
// unprepared ones did: each query prepared once and reused, at most
// maxStmts of them, and a query on a table its own transaction creates (a
// migration) still runs.
func TestStoreExecPrepares(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			spec, pw := sk.open(t)
			if spec == "" {
				spec = t.TempDir() + "/audit.db"
			}
			st, err := OpenStore(ctx, spec, pw)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			insert := func(i int) string {
				// Distinct texts of the same insert.
				return fmt.Sprintf(`INSERT INTO audit_keys (daemon, key_id, public_key, seq, time_ns) VALUES (?, ?, ?, ?, ?) /* %d */`, i)
			}
			for _, tc := range []struct {
				name    string
				queries []string // run in one transaction, each with fresh keys
				setup   string   // run in the transaction first
				stmts   int      // prepared statements kept after it
			}{
				{"one query twice", []string{insert(0), insert(0)}, "", 1},
				{"the same again", []string{insert(0)}, "", 1},
				// Not preparable outside the transaction: run unprepared,
				// and not kept.
				{"a table of the transaction", []string{`INSERT INTO exec_new (a) VALUES (?)`, `INSERT INTO exec_new (a) VALUES (?)`}, `CREATE TABLE exec_new (a BIGINT)`, 1},
				{"up to the bound", func() (qs []string) {
					for i := range maxStmts + 3 {
						qs = append(qs, insert(i))
					}
					return qs
				}(), "", maxStmts},
			} {
				t.Run(tc.name, func(t *testing.T) {
					tx, err := st.db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback()
					if tc.setup != "" {
						if _, err := tx.ExecContext(ctx, tc.setup); err != nil {
							t.Fatal(err)
						}
					}
					var before int
					if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_keys`).Scan(&before); err != nil {
						t.Fatal(err)
					}
					keys := 0
					for i, q := range tc.queries {
						args := []any{"d", fmt.Sprintf("%s-%d", tc.name, i), "pk", int64(i), int64(i)}
						if tc.setup != "" {
							args = []any{int64(i)}
						} else {
							keys++
						}
						if err := st.exec(ctx, tx, q, args...); err != nil {
							t.Fatalf("query %d: %v", i, err)
						}
					}
					var after int
					if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_keys`).Scan(&after); err != nil {
						t.Fatal(err)
					}
					if after-before != keys {
						t.Fatalf("%d rows inserted, want %d", after-before, keys)
					}
					if tc.setup != "" {
						var n int
						if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM exec_new`).Scan(&n); err != nil || n != len(tc.queries) {
							t.Fatalf("exec_new holds %d rows (%v), want %d", n, err, len(tc.queries))
						}
					}
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
					st.stmtMu.Lock()
					n := len(st.stmts)
					st.stmtMu.Unlock()
					if n != tc.stmts {
						t.Fatalf("%d prepared statements kept, want %d", n, tc.stmts)
					}
				})
			}
			if err := st.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if len(st.stmts) != 0 {
				t.Fatalf("%d prepared statements left after close", len(st.stmts))
			}
		})
	}
}
