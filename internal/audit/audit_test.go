package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// storeKind makes a fresh, empty store spec for one test case.
type storeKind struct {
	name string
	open func(t *testing.T) (spec, pwfile string)
}

var pgN int

// stores gives the embedded store and, unless -short, a real PostgreSQL
// server that lives as long as the calling test.
func stores(t *testing.T) []storeKind {
	ks := []storeKind{{"sqlite", func(t *testing.T) (string, string) { return "", "" }}}
	if testing.Short() {
		return ks
	}
	pgSrv := pgtest.Start(t, pgtest.Options{})
	return append(ks, storeKind{"postgres", func(t *testing.T) (string, string) {
		pgN++
		db := fmt.Sprintf("audit_%d_%d", os.Getpid(), pgN)
		pgSrv.Psql(t, "postgres", "CREATE DATABASE "+db)
		pw := pgSrv.AdminPassword
		return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", pgSrv.AdminUser, pgSrv.Addr, pgSrv.Port, db), pw
	}})
}

func openWriter(t *testing.T, state, spec, pw string, pol Policy) (*Writer, context.CancelFunc, chan struct{}) {
	t.Helper()
	w, err := Open(context.Background(), Options{StateDir: state, Store: spec, Password: pw, Policy: pol,
		CommitInterval: 5 * time.Millisecond, ShipInterval: 5 * time.Millisecond, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatalf("open audit writer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	return w, cancel, done
}

func fakeSession(sink session.Sink, uid uint32, name, exe string) *session.Session {
	s := session.New(sink)
	s.Target, s.Connection, s.Protocol = "db", "prod", "postgres"
	s.Dest = netip.MustParseAddrPort("10.0.0.5:5432")
	s.Client = netip.MustParseAddrPort("127.0.0.1:40000")
	s.Person = identity.Person{Name: name, UID: uid, Email: name + "@example.com", Groups: []string{"dev"}}
	s.Origin = session.Origin{PID: 4242, TID: 4243, UID: uid, Exe: exe, Cmdline: []string{exe, "-c", "x"},
		Parents: []session.Proc{{PID: 4000, Exe: "/usr/bin/cursor"}}}
	return s
}

// writeSession records a whole session of n statements.
func writeSession(s *session.Session, n int) {
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	for i := 0; i < n; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "extended",
			SQL: fmt.Sprintf("SELECT %d WHERE $1 = 'x'", i), Params: []string{"x"}, Tag: "SELECT 1", Rows: 1, Duration: time.Millisecond}})
	}
	s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit", Database: "app", UpstreamRole: "airlock_x"}})
}

func TestRecordQueryVerify(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			spec, pw := sk.open(t)
			w, cancel, done := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancel(); <-done }()
			a := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			b := fakeSession(w, 1002, "bob", "/usr/bin/python3")
			writeSession(a, 3)
			writeSession(b, 2)
			ctx := context.Background()
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			all, err := w.Store().Sessions(ctx, Filter{})
			if err != nil || len(all) != 2 {
				t.Fatalf("sessions: %v %+v", err, all)
			}
			for _, tc := range []struct {
				f    Filter
				want string
			}{
				{Filter{Person: "alice"}, a.ID},
				{Filter{Person: "bob@example.com"}, b.ID},
				{Filter{Process: "python"}, b.ID},
				{Filter{Process: "4242"}, ""},
				{Filter{Connection: "nope"}, "none"},
				{Filter{UID: ptr(uint32(1002))}, b.ID},
				{Filter{Since: time.Now().Add(time.Hour)}, "none"},
			} {
				got, err := w.Store().Sessions(ctx, tc.f)
				if err != nil {
					t.Fatal(err)
				}
				switch tc.want {
				case "none":
					if len(got) != 0 {
						t.Errorf("%+v: got %d sessions, want none", tc.f, len(got))
					}
				case "":
					if len(got) != 2 {
						t.Errorf("%+v: got %d sessions, want 2", tc.f, len(got))
					}
				default:
					if len(got) != 1 || got[0].ID != tc.want {
						t.Errorf("%+v: got %+v, want %s", tc.f, got, tc.want)
					}
				}
			}
			d, err := w.Store().Session(ctx, a.ID, nil)
			if err != nil || d == nil {
				t.Fatalf("session %s: %v", a.ID, err)
			}
			if d.Start.Person.Name != "alice" || d.Start.Process.Exe != "/usr/bin/psql" || d.Statements != 3 ||
				d.End == nil || d.End.Reason != "client_quit" || d.End.UpstreamRole != "airlock_x" || len(d.Start.Ancestry) != 1 {
				t.Fatalf("session detail wrong: %+v", d.SessionSummary)
			}
			if strings.Contains(string(d.Records[1].Data), `"params"`) {
				t.Fatalf("parameters recorded although the policy is off: %s", d.Records[1].Data)
			}
			if d, _ := w.Store().Session(ctx, a.ID, ptr(uint32(1002))); d != nil {
				t.Fatal("bob sees alice's session")
			}
			rep, err := Verify(ctx, w.Store(), "", nil)
			if err != nil || !rep.OK {
				t.Fatalf("verify untouched: %v %+v", err, rep)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// Each kind of tampering is caught and named, with the first break's seq.
// The chain (a key, a session start, six statements, its end: seq 1 to 9)
// is laid out in blocks of three records before tampering, so that blocks
// can be deleted and records edited inside them. A chain tamper is a
// careful attacker's: the records are changed, then every block and index
// row is rewritten to match them, so that only the chain can tell.
func TestVerifyCatchesTampering(t *testing.T) {
	swap := func(rs []Record, i, j int) []Record {
		rs[i], rs[j] = rs[j], rs[i]
		return renumber(rs)
	}
	// files tamper with an embedded store's block files (nothing to do on
	// the team store, whose text is inline).
	type filesTamper func(t *testing.T, st *Store, daemon string)
	cases := []struct {
		name    string
		chain   func(rs []Record) []Record // rs[i] is seq i+1
		tamper  []string                   // SQL after the chain tamper, %s = daemon
		files   filesTamper
		kind    string // cases with "block file" or "rows" in the name tamper with what only the embedded store has
		seq     int64
		message string
	}{
		{"edit statement text in a block", nil, nil, func(t *testing.T, st *Store, daemon string) {
			editBlockText(t, st, daemon, 4, func(b []byte) []byte { return bytes.Replace(b, []byte("SELECT 2"), []byte("SELECT 9"), 1) })
		}, BreakEdited, 5, "was edited"},
		{"edit a byte between records in a block file", nil, nil, func(t *testing.T, st *Store, daemon string) {
			// A space where the line ends: every record still reads and
			// hashes as it did; only the block's checksum tells.
			editBlockText(t, st, daemon, 4, func(b []byte) []byte {
				b[bytes.IndexByte(b, '\n')] = ' '
				return b
			})
		}, BreakEdited, 4, "no longer matches its checksum"},
		{"cut a block file", nil, nil, func(t *testing.T, st *Store, daemon string) {
			ref := blockRef(t, st, daemon, 4)
			if err := os.Truncate(filepath.Join(st.files.dir, ref.name), ref.off); err != nil {
				t.Fatal(err)
			}
		}, BreakDeleted, 4, "seq 4 to 6 were deleted: the text of the block stored from seq 4 to 6 is gone"},
		{"cut a block file inside a record", nil, nil, func(t *testing.T, st *Store, daemon string) {
			ref := blockRef(t, st, daemon, 4)
			text, _ := st.files.readText(ref)
			if err := os.Truncate(filepath.Join(st.files.dir, ref.name), ref.off+int64(bytes.IndexByte(text, '\n'))+5); err != nil {
				t.Fatal(err)
			}
		}, BreakDeleted, 5, "seq 5 to 6 were deleted"},
		{"remove a block file", nil, nil, func(t *testing.T, st *Store, daemon string) {
			if err := os.Remove(filepath.Join(st.files.dir, blockRef(t, st, daemon, 4).name)); err != nil {
				t.Fatal(err)
			}
		}, BreakDeleted, 1, "seq 1 to 3 were deleted"},
		{"swap two blocks' bytes in their file", nil, nil, func(t *testing.T, st *Store, daemon string) {
			a, b := blockRef(t, st, daemon, 4), blockRef(t, st, daemon, 7)
			path := filepath.Join(st.files.dir, a.name)
			f, err := os.ReadFile(path)
			if err != nil || b.name != a.name || a.off+a.length != b.off {
				t.Fatalf("blocks 4 and 7 not side by side in one file: %+v %+v %v", a, b, err)
			}
			swapped := slices.Concat(f[:a.off], f[b.off:b.off+b.length], f[a.off:a.off+a.length], f[b.off+b.length:])
			if err := os.WriteFile(path, swapped, 0o600); err != nil {
				t.Fatal(err)
			}
		}, BreakEdited, 4, "no longer matches its checksum"},
		{"swap two blocks' places in their rows", nil, []string{
			`UPDATE audit_blocks SET file_off = (SELECT file_off FROM audit_blocks WHERE first_seq = 7), file_len = (SELECT file_len FROM audit_blocks WHERE first_seq = 7),
				text_crc = (SELECT text_crc FROM audit_blocks WHERE first_seq = 7) WHERE daemon = '%s' AND first_seq = 4`}, nil,
			BreakEdited, 4, "holds records 7 to 9"},
		{"edit statement text, blocks rewritten", func(rs []Record) []Record {
			rs[4].Data = json.RawMessage(strings.Replace(string(rs[4].Data), "SELECT 2", "SELECT 9", 1))
			return rs
		}, nil, nil, BreakEdited, 5, "was edited"},
		{"edit a search column", nil, []string{`UPDATE audit_sessions SET person = 'mallory' WHERE daemon = '%s'`},
			nil, BreakEdited, 2, "search columns"},
		{"hide a session from the list", nil, []string{`DELETE FROM audit_sessions WHERE daemon = '%s'`},
			nil, BreakEdited, 2, "search columns"},
		{"edit the session index", nil, []string{`UPDATE audit_session_blocks SET statements = 0 WHERE daemon = '%s' AND first_seq = 4`},
			nil, BreakEdited, 4, "session index"},
		{"delete a record", func(rs []Record) []Record { return slices.Delete(rs, 3, 4) }, nil,
			nil, BreakDeleted, 4, "seq 4 to 4 were deleted"},
		{"delete a block", nil, []string{`DELETE FROM audit_blocks WHERE daemon = '%s' AND first_seq = 4`},
			nil, BreakDeleted, 4, "seq 4 to 6 were deleted"},
		{"delete the first records", func(rs []Record) []Record { return rs[2:] }, nil,
			nil, BreakDeleted, 3, "records before seq 3 were deleted"},
		{"reorder two records", func(rs []Record) []Record { return swap(rs, 3, 4) }, nil,
			nil, BreakReordered, 4, "was reordered"},
		{"reorder two blocks", func(rs []Record) []Record {
			return renumber(slices.Concat(rs[:3], rs[6:9], rs[3:6]))
		}, nil, nil, BreakReordered, 4, "now at seq 9"},
		{"truncate the tail", nil, []string{`DELETE FROM audit_blocks WHERE daemon = '%s' AND first_seq > 6`},
			nil, BreakTruncated, 7, "tail truncated"},
		{"truncate the tail, blocks rewritten", func(rs []Record) []Record { return rs[:6] }, nil,
			nil, BreakTruncated, 7, "tail truncated"},
		{"truncate the tail with its checkpoints", nil, []string{`DELETE FROM audit_blocks WHERE daemon = '%s' AND first_seq > 6`,
			`DELETE FROM audit_checkpoints WHERE daemon = '%s'`},
			nil, BreakTruncated, 7, "tail truncated"},
		{"forge a checkpoint", nil, []string{`UPDATE audit_checkpoints SET hash = '` + genesis + `' WHERE daemon = '%s'`},
			nil, BreakForged, 0, "does not verify"},
	}
	for _, sk := range stores(t) {
		for _, tc := range cases {
			if sk.name != "sqlite" && (strings.Contains(tc.name, "file") || strings.Contains(tc.name, "rows")) {
				// Block files exist only in the embedded store: the team
				// store keeps its text inline, so these tamperings have
				// nothing to act on there (not a skip: no such case).
				continue
			}
			t.Run(sk.name+"/"+tc.name, func(t *testing.T) {
				spec, pw := sk.open(t)
				state := t.TempDir()
				w, cancel, done := openWriter(t, state, spec, pw, Policy{})
				writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 6)
				cancel() // ships, signs a last checkpoint, closes
				<-done
				st, err := OpenStore(context.Background(), specOr(spec, state), pw)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				ctx := context.Background()
				exp := expectOf(t, state)
				if exp.Stored != 9 {
					t.Fatalf("the writer stored %d records, want 9", exp.Stored)
				}
				relayout(t, st, exp.Daemon, 3, nil)
				if rep, err := Verify(ctx, st, "", exp); err != nil || !rep.OK {
					t.Fatalf("verify before tampering: %v %+v", err, rep)
				}
				if tc.chain != nil {
					relayout(t, st, exp.Daemon, 3, tc.chain)
				}
				for _, q := range tc.tamper {
					if strings.Contains(q, "%") {
						q = fmt.Sprintf(q, exp.Daemon)
					}
					res, err := st.db.Exec(q)
					if err != nil {
						t.Fatalf("tamper %q: %v", q, err)
					}
					if n, _ := res.RowsAffected(); n == 0 {
						t.Fatalf("tamper %q changed nothing", q)
					}
				}
				if tc.files != nil {
					tc.files(t, st, exp.Daemon)
				}
				rep, err := Verify(ctx, st, "", exp)
				if err != nil {
					t.Fatal(err)
				}
				if rep.OK || rep.First == nil {
					t.Fatalf("tampering not detected: %+v", rep)
				}
				b := rep.First
				if b.Kind != tc.kind || (tc.seq != 0 && b.Seq != tc.seq) || !strings.Contains(b.Message, tc.message) {
					t.Fatalf("first break = %+v, want kind %s at seq %d mentioning %q", b, tc.kind, tc.seq, tc.message)
				}
				// Verification only reads: the same break is there again.
				rep2, _ := Verify(ctx, st, "", exp)
				if rep2.First == nil || *rep2.First != *b {
					t.Fatalf("verify changed the store: %+v then %+v", b, rep2.First)
				}
			})
		}
	}
}

// blockRef is where the text of daemon's block from first is kept.
func blockRef(t *testing.T, st *Store, daemon string, first int64) fileRef {
	t.Helper()
	var file, sum sql.NullString
	var off, length sql.NullInt64
	if err := st.db.QueryRow(st.q(`SELECT `+fileCols+` FROM audit_blocks WHERE daemon = ? AND first_seq = ?`), daemon, first).Scan(&file, &off, &length, &sum); err != nil {
		t.Fatalf("find the block from seq %d: %v", first, err)
	}
	ref, ok := textRef(file, off, length, sum)
	if !ok {
		t.Fatalf("the block from seq %d has its text inline", first)
	}
	return ref
}

// editBlockText changes the text of daemon's block from first by edit, as
// whoever can write the store's files would: in its block file, where the
// text is kept there, else in its row.
func editBlockText(t *testing.T, st *Store, daemon string, first int64, edit func([]byte) []byte) {
	t.Helper()
	var text string
	var file, sum sql.NullString
	var off, length sql.NullInt64
	if err := st.db.QueryRow(st.q(`SELECT records, `+fileCols+` FROM audit_blocks WHERE daemon = ? AND first_seq = ?`), daemon, first).Scan(&text, &file, &off, &length, &sum); err != nil {
		t.Fatalf("find the block from seq %d: %v", first, err)
	}
	ref, inFile := textRef(file, off, length, sum)
	if !inFile {
		if _, err := st.db.Exec(st.q(`UPDATE audit_blocks SET records = ? WHERE daemon = ? AND first_seq = ?`), string(edit([]byte(text))), daemon, first); err != nil {
			t.Fatal(err)
		}
		return
	}
	path := filepath.Join(st.files.dir, ref.name)
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old := slices.Clone(f[ref.off : ref.off+ref.length])
	edited := edit(slices.Clone(old))
	if bytes.Equal(edited, old) {
		t.Fatalf("the edit of the block from seq %d changed nothing", first)
	}
	if err := os.WriteFile(path, slices.Concat(f[:ref.off], edited, f[ref.off+ref.length:]), 0o600); err != nil {
		t.Fatal(err)
	}
}

// renumber gives rs consecutive seqs from 1, as an attacker hiding a
// change would.
func renumber(rs []Record) []Record {
	for i := range rs {
		rs[i].Seq = int64(i + 1)
	}
	return rs
}

// relayout rewrites daemon's records, changed by change if set, as blocks
// of size records, with index rows to match: everything but the chain is
// consistent afterwards.
func relayout(t *testing.T, st *Store, daemon string, size int, change func([]Record) []Record) {
	t.Helper()
	ctx := context.Background()
	recs, err := st.Scan(ctx, daemon, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if change != nil {
		recs = change(recs)
	}
	tx, err := st.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, tbl := range []string{"audit_blocks", "audit_sessions", "audit_session_blocks"} {
		if _, err := tx.Exec(st.q(`DELETE FROM `+tbl+` WHERE daemon = ?`), daemon); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < len(recs); i += size {
		if err := st.writeBlock(ctx, tx, nil, recs[i:min(i+size, len(recs))], nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func specOr(spec, state string) string {
	if spec == "" {
		return filepath.Join(state, "audit", "audit.db")
	}
	return spec
}

// expectOf reads what the daemon keeps about its own chain.
func expectOf(t *testing.T, state string) *Expect {
	t.Helper()
	id, err := os.ReadFile(filepath.Join(state, "audit", "daemon-id"))
	if err != nil {
		t.Fatal(err)
	}
	ex := &Expect{Daemon: strings.TrimSpace(string(id))}
	var cp Checkpoint
	if ok, err := readJSON(filepath.Join(state, "audit", "checkpoint"), &cp); err != nil || !ok {
		t.Fatalf("no checkpoint kept: %v", err)
	}
	ex.Checkpoint = &cp
	hf, _, err := readHead(filepath.Join(state, "audit", "head"))
	if err != nil {
		t.Fatal(err)
	}
	ex.Stored, ex.Hash = hf.Seq, hf.Hash
	return ex
}

func TestRedaction(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ALTER ROLE x PASSWORD 'hunter2'", "ALTER ROLE x PASSWORD '<redacted>'"},
		{"alter user x with encrypted password 'a''b'", "alter user x with encrypted password '<redacted>'"},
		{"CREATE ROLE x LOGIN PASSWORD $$s3cret$$", "CREATE ROLE x LOGIN PASSWORD '<redacted>'"},
		{"SELECT 1", "SELECT 1"},
	} {
		if got := redactSQL(tc.in); got != tc.want {
			t.Errorf("redactSQL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	args := redactArgs([]string{"psql", "host=db password=hunter2 dbname=app", "postgres://bob:hunter2@db/app", "-c", "ALTER ROLE x PASSWORD 'hunter2'"})
	if j := strings.Join(args, " "); strings.Contains(j, "hunter2") || !strings.Contains(j, "bob:<redacted>@db") {
		t.Errorf("command line not redacted: %q", j)
	}
	params := redactParams("SELECT * FROM users WHERE name = $1", []string{"alice", "SCRAM-SHA-256$4096:abc", "eyJhbGciOi.x.y"})
	if params[0] != "alice" || params[1] != redacted || params[2] != redacted {
		t.Errorf("params: %q", params)
	}
	if p := redactParams("UPDATE users SET api_key = $1 WHERE id = $2", []string{"k", "7"}); p[0] != redacted || p[1] != redacted {
		t.Errorf("params of a statement naming a secret: %q", p)
	}
}
