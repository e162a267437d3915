package audit

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"
)

// chainOf makes n records of daemon from seq first on, chained after
// prev: a session start, then statements whose text is sqls in turn.
func chainOf(t *testing.T, daemon string, first int64, prev string, n int, sqls []string) []Record {
	t.Helper()
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var recs []Record
	for i := 0; i < n; i++ {
		kind, data := kindStatement, any(Statement{Protocol: "simple", SQL: sqls[i%len(sqls)], Rows: 1})
		if i == 0 {
			kind, data = kindStart, SessionStart{Connection: "prod", Person: Person{Name: "ünï", UID: 1001}, Process: Process{PID: 7, Exe: "/usr/bin/psql"}}
		}
		b, err := json.Marshal(data)
		if err != nil {
			t.Fatal(err)
		}
		r := Record{Schema: Schema, Daemon: daemon, Seq: first + int64(i), Time: at.Add(time.Duration(i) * time.Millisecond),
			Kind: kind, Session: "s-copy", Data: b, PrevHash: prev}
		r.Hash = hashRecord(prev, &r)
		prev = r.Hash
		recs = append(recs, r)
	}
	return recs
}

// TestStoreBlockText: what a store keeps of a block is its lines byte for
// byte, whatever the statements hold (a team store's text goes in as a
// raw parameter, the embedded store's to a block file), and a shipment that
// cannot be stored leaves nothing behind and does not spoil the next one.
func TestStoreBlockText(t *testing.T) {
	cases := []struct {
		name string
		sqls []string
	}{
		{"ascii", []string{"SELECT 1", "UPDATE t SET a = a + 1 WHERE id = 42"}},
		{"escapes", []string{`SELECT '\x', E'\\', '"q"', 'tab	cr` + "\r" + `nl` + "\n" + `'`, "SELECT '\\.'", "\\.\n"}},
		{"non-ascii", []string{"SELECT 'Grüße', '✓', '🚀'", "-- コメント\nSELECT 1"}},
		{"long", []string{longSQL(70000)}},
	}
	ctx := context.Background()
	for _, sk := range stores(t) {
		for _, tc := range cases {
			t.Run(sk.name+"/"+tc.name, func(t *testing.T) {
				spec, pw := sk.open(t)
				if spec == "" {
					spec = filepath.Join(t.TempDir(), "audit.db")
				}
				st, err := OpenStore(ctx, spec, pw)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				const daemon = "d-copy"
				recs := chainOf(t, daemon, 1, genesis, 30, tc.sqls)
				if err := st.append(ctx, recs[:20], nil, nil); err != nil {
					t.Fatalf("append: %v", err)
				}
				// The same seqs again: the block's key is taken, so the
				// whole shipment fails.
				if err := st.append(ctx, recs[:5], nil, nil); err == nil {
					t.Fatal("a block over seqs already stored was accepted")
				}
				if err := st.append(ctx, recs[20:], nil, nil); err != nil {
					t.Fatalf("append after a failed one: %v", err)
				}
				got, err := st.Scan(ctx, daemon, 0, 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(recs) {
					t.Fatalf("%d records read back, want %d", len(got), len(recs))
				}
				for i := range recs {
					if got[i].Seq != recs[i].Seq || got[i].Hash != recs[i].Hash || string(got[i].Data) != string(recs[i].Data) ||
						hashRecord(got[i].PrevHash, &got[i]) != recs[i].Hash {
						t.Fatalf("record %d read back as %+v, want %+v", i, got[i], recs[i])
					}
				}
				blocks := 0
				if st.postgres {
					rows, err := st.db.QueryContext(ctx, `SELECT first_seq, last_seq, records FROM audit_blocks WHERE daemon = $1 ORDER BY first_seq`, daemon)
					if err != nil {
						t.Fatal(err)
					}
					for rows.Next() {
						var first, last int64
						var text string
						if err := rows.Scan(&first, &last, &text); err != nil {
							t.Fatal(err)
						}
						var want []byte
						for i := first - 1; i < last && i < int64(len(recs)); i++ {
							want = appendLine(want, &recs[i])
						}
						if text != string(want) {
							t.Fatalf("block %d-%d: the stored text differs from its lines (%d bytes, want %d)", first, last, len(text), len(want))
						}
						blocks++
					}
					if err := rows.Err(); err != nil {
						t.Fatal(err)
					}
					rows.Close()
				} else if err := st.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_blocks`).Scan(&blocks); err != nil {
					t.Fatal(err)
				}
				var sessions, sessionBlocks int
				if err := st.db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM audit_sessions), (SELECT COUNT(*) FROM audit_session_blocks)`).Scan(&sessions, &sessionBlocks); err != nil {
					t.Fatal(err)
				}
				// One session: one row for its start, one per block it has
				// records in, nothing of the failed shipment.
				if blocks < 2 || sessions != 1 || sessionBlocks != blocks {
					t.Fatalf("%d blocks, %d session rows and %d session block rows, want 2 or more, 1 and one per block", blocks, sessions, sessionBlocks)
				}
			})
		}
	}
}

func longSQL(n int) string {
	b := make([]byte, 0, n+16)
	b = append(b, "SELECT '"...)
	for len(b) < n {
		b = append(b, "ab\\c\"dé"...)
	}
	return string(append(b, '\''))
}
