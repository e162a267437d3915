package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// openRaw opens a store's database without migrating it.
func openRaw(t *testing.T, spec, pw string) *Store {
	t.Helper()
	if !IsPostgres(spec) {
		db, err := sql.Open("sqlite", "file:"+spec+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		return &Store{db: db, name: "sqlite:" + spec}
	}
	cfg, err := pgx.ParseConfig(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = pw
	return &Store{db: stdlib.OpenDB(*cfg), postgres: true, name: "postgres"}
}

// writeV1 writes, in the first layout (schema version 1, one audit_records
// row per record), the chain of daemon "old-d": a key record, two sessions
// (three and two statements, each ended), with checkpoints at seq 4 and at
// the end. It returns the records.
func writeV1(t *testing.T, st *Store, keyPath string) []Record {
	t.Helper()
	ctx := context.Background()
	for _, q := range append([]string{`CREATE TABLE audit_schema (version BIGINT NOT NULL)`}, strings.Split(migrations[0], ";\n")...) {
		if _, err := st.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("schema 1: %v", err)
		}
	}
	if _, err := st.db.ExecContext(ctx, `INSERT INTO audit_schema (version) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	sig, err := newSigner(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	const daemon = "old-d"
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	var recs []Record
	add := func(kind, sess string, data any) {
		b, err := json.Marshal(data)
		if err != nil {
			t.Fatal(err)
		}
		prev := genesis
		if len(recs) > 0 {
			prev = recs[len(recs)-1].Hash
		}
		r := Record{Schema: Schema, Daemon: daemon, Seq: int64(len(recs) + 1), Time: at.Add(time.Duration(len(recs)) * time.Second),
			Kind: kind, Session: sess, Data: b, PrevHash: prev}
		r.Hash = hashRecord(prev, &r)
		recs = append(recs, r)
	}
	add(KindKey, "", KeyData{KeyID: sig.id, PublicKey: sig.pubB64()})
	for i, who := range []string{"alice", "bob"} {
		sess := "s-" + who
		add(kindStart, sess, SessionStart{Connection: "prod", Person: Person{Name: who, UID: uint32(1001 + i), Email: who + "@example.com"},
			Process: Process{PID: uint32(4000 + i), Exe: "/usr/bin/psql"}})
		for k := 0; k < 3-i; k++ {
			add(kindStatement, sess, Statement{Protocol: "simple", SQL: "SELECT <'&'>", Rows: 1})
		}
		add(kindEnd, sess, SessionEnd{Reason: "client_quit"})
	}
	for _, r := range recs {
		c := colsOf(r.Kind, r.Data)
		if _, err := st.db.ExecContext(ctx, st.q(`INSERT INTO audit_records (`+legacyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			r.Daemon, r.Seq, r.Time.UnixNano(), r.Kind, r.Session, c.person, c.uid, c.pid, c.exe, c.connection, string(r.Data), r.PrevHash, r.Hash); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.db.ExecContext(ctx, st.q(`INSERT INTO audit_keys (daemon, key_id, public_key, seq, time_ns) VALUES (?, ?, ?, 1, ?)`),
		daemon, sig.id, sig.pubB64(), at.UnixNano()); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []int64{4, int64(len(recs))} {
		cp := Checkpoint{Daemon: daemon, Seq: seq, Hash: recs[seq-1].Hash, Time: recs[seq-1].Time, KeyID: sig.id}
		cp.Signature = sig.sign(cp.message())
		if _, err := st.db.ExecContext(ctx, st.q(`INSERT INTO audit_checkpoints (daemon, seq, hash, time_ns, key_id, signature) VALUES (?, ?, ?, ?, ?, ?)`),
			cp.Daemon, cp.Seq, cp.Hash, cp.Time.UnixNano(), cp.KeyID, cp.Signature); err != nil {
			t.Fatal(err)
		}
	}
	return recs
}

// A store written in the first layout is moved into blocks at start and
// reads and verifies as before; tampering done before the upgrade is still
// reported after it.
func TestMigrateRowsIntoBlocks(t *testing.T) {
	cases := []struct {
		name    string
		tamper  string // SQL on the old layout
		kind    string // "" = verifies
		seq     int64
		message string
	}{
		{"untouched", "", "", 0, ""},
		{"edited data", `UPDATE audit_records SET data = REPLACE(data, 'SELECT', 'DELETE') WHERE seq = 4`, BreakEdited, 4, "was edited"},
		{"edited search column", `UPDATE audit_records SET person = 'mallory' WHERE seq = 2`, BreakEdited, 2, "search columns"},
		{"deleted row", `DELETE FROM audit_records WHERE seq = 3`, BreakDeleted, 3, "seq 3 to 3 were deleted"},
	}
	for _, sk := range stores(t) {
		for _, tc := range cases {
			t.Run(sk.name+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				spec, pw := sk.open(t)
				if spec == "" {
					spec = filepath.Join(t.TempDir(), "audit.db")
				}
				raw := openRaw(t, spec, pw)
				want := writeV1(t, raw, filepath.Join(t.TempDir(), "key"))
				if tc.tamper != "" {
					if _, err := raw.db.ExecContext(ctx, tc.tamper); err != nil {
						t.Fatal(err)
					}
				}
				raw.Close()

				st, err := OpenStore(ctx, spec, pw)
				if err != nil {
					t.Fatalf("open and migrate: %v", err)
				}
				defer st.Close()
				var left int
				if err := st.db.QueryRowContext(ctx, `SELECT count(*) FROM audit_records`).Scan(&left); err == nil {
					t.Fatalf("audit_records still there after the move (%d rows)", left)
				}
				rep, err := Verify(ctx, st, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.kind != "" {
					if rep.OK || rep.First == nil || rep.First.Kind != tc.kind || rep.First.Seq != tc.seq || !strings.Contains(rep.First.Message, tc.message) {
						t.Fatalf("first break = %+v, want %s at seq %d mentioning %q", rep.First, tc.kind, tc.seq, tc.message)
					}
					return
				}
				if !rep.OK || rep.Chains[0].SealedTo != int64(len(want)) {
					t.Fatalf("verify after the move: %+v", rep)
				}
				got, err := st.Scan(ctx, "", 0, 100)
				if err != nil || len(got) != len(want) {
					t.Fatalf("scan: %v, %d records, want %d", err, len(got), len(want))
				}
				for i := range want {
					g, w := got[i], want[i]
					if g.Seq != w.Seq || !g.Time.Equal(w.Time) || g.Kind != w.Kind || g.Session != w.Session || string(g.Data) != string(w.Data) ||
						g.PrevHash != w.PrevHash || g.Hash != w.Hash {
						t.Fatalf("record %d moved as %+v, want %+v", i+1, g, w)
					}
				}
				sums, err := st.Sessions(ctx, Filter{Person: "bob@example.com"})
				if err != nil || len(sums) != 1 || sums[0].ID != "s-bob" || sums[0].Statements != 2 || sums[0].End == nil {
					t.Fatalf("sessions of bob: %v %+v", err, sums)
				}
				d, err := st.Session(ctx, "s-alice", nil)
				if err != nil || d == nil || len(d.Records) != 5 || d.Statements != 3 || d.Start.Person.Name != "alice" {
					t.Fatalf("session of alice: %v %+v", err, d)
				}
				// Blocks end at the old checkpoints: retention can prune up
				// to the first one and the rest still verifies.
				seq, err := st.pruneTarget(ctx, "old-d", want[4].Time)
				if err != nil || seq != 4 {
					t.Fatalf("prune target = %d (%v), want the checkpoint at 4", seq, err)
				}
				if n, err := st.prune(ctx, "old-d", seq); err != nil || n != 4 {
					t.Fatalf("pruned %d (%v), want 4", n, err)
				}
				if rep, err := Verify(ctx, st, "", nil); err != nil || !rep.OK || rep.Chains[0].First != 5 {
					t.Fatalf("verify after pruning the moved records: %v %+v", err, rep)
				}
			})
		}
	}
}

// A daemon upgraded over the state and store of the previous version (its
// head file, its key, its rows) goes on with the same chain: the old
// records moved into blocks, the new ones after them, one chain that
// verifies from seq 1, and the head file in its new form.
func TestUpgradeContinuesTheChain(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			state := t.TempDir()
			dir := filepath.Join(state, "audit")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			spec, pw := sk.open(t)
			rawSpec := spec
			if spec == "" {
				rawSpec = filepath.Join(dir, "audit.db")
			}
			raw := openRaw(t, rawSpec, pw)
			old := writeV1(t, raw, filepath.Join(dir, "signing.key"))
			raw.Close()
			last := old[len(old)-1]
			if err := os.WriteFile(filepath.Join(dir, "daemon-id"), []byte(last.Daemon+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := writeJSONAtomic(filepath.Join(dir, "head"), map[string]any{"seq": last.Seq, "hash": last.Hash}); err != nil {
				t.Fatal(err)
			}

			w, cancel, done := openWriter(t, state, spec, pw, Policy{})
			defer func() { cancel(); <-done }()
			if w.Daemon() != last.Daemon {
				t.Fatalf("daemon id %q, want %q", w.Daemon(), last.Daemon)
			}
			writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 2)
			if err := w.Seal(ctx); err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, w.Store(), "", w.Expect())
			if err != nil || !rep.OK || len(rep.Chains) != 1 {
				t.Fatalf("verify after the upgrade: %v %+v", err, rep)
			}
			c := rep.Chains[0]
			if c.First != 1 || c.Last != last.Seq+4 || c.SealedTo != c.Last {
				t.Fatalf("chain after the upgrade: %+v, want seq 1 to %d sealed", c, last.Seq+4)
			}
			if sums, err := w.Store().Sessions(ctx, Filter{}); err != nil || len(sums) != 3 {
				t.Fatalf("sessions after the upgrade: %v %d", err, len(sums))
			}
			hf, _, err := readHead(filepath.Join(dir, "head"))
			if err != nil || hf.Seq != c.Last || hf.Gen == 0 {
				t.Fatalf("head note after the upgrade: %+v %v", hf, err)
			}
			if st := w.Status(); st.Problem != "" || !st.Reachable {
				t.Fatalf("status after the upgrade: %+v", st)
			}
		})
	}
}
