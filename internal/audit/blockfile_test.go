package audit

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

func TestBlockFileNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{blockFileName(chainPrefix("host-1"), "20261130", 1), true},
		{"0123456789abcdef-20261130-000042.blocks", true},
		{"0123456789abcdef-20261130-1234567.blocks", true},
		{"../0123456789abcdef-20261130-000001.blocks", false},
		{"0123456789abcdef-20261130-000001.blocks/..", false},
		{"/etc/0123456789abcdef-20261130-000001.blocks", false},
		{"0123456789ABCDEF-20261130-000001.blocks", false},
		{"0123456789abcde/-20261130-000001.blocks", false},
		{"0123456789abcdef-2026113-000001.blocks", false},
		{"0123456789abcdef-20261130-000000.blocks", false},
		{"0123456789abcdef-20261130-.blocks", false},
		{"0123456789abcdef-20261130_000001.blocks", false},
		{"0123456789abcdef-20261130-000001.blocks.tmp", false},
		{"20261130-000001.blocks", false},
		{"audit.db", false},
		{"", false},
	} {
		if _, _, _, ok := parseBlockFileName(tc.name); ok != tc.ok {
			t.Errorf("parseBlockFileName(%q) ok = %v, want %v", tc.name, ok, tc.ok)
		}
	}
}

// The name of a block file comes from a row of the store, which whoever
// can write the database controls: nothing accepted leads out of the
// directory, and what is accepted is a name the store itself makes.
func FuzzParseBlockFileName(f *testing.F) {
	for _, s := range []string{blockFileName(chainPrefix("d"), "20261130", 1), "../0123456789abcdef-20261130-000001.blocks", "0123456789abcdef-20261130-000001.blocks/x", "", "x.blocks"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		prefix, day, n, ok := parseBlockFileName(name)
		if !ok {
			return
		}
		if filepath.Base(name) != name || strings.ContainsAny(name, "/\\\x00") || strings.Contains(name, "..") {
			t.Fatalf("%q accepted as a block file name", name)
		}
		p2, d2, n2, ok2 := parseBlockFileName(blockFileName(prefix, day, n))
		if !ok2 || p2 != prefix || d2 != day || n2 != n {
			t.Fatalf("%q read as day %s, file %d, which do not name a file the same way", name, day, n)
		}
	})
}

// indexedBytes is, for each block file the store's rows name, where the
// last block indexed in it ends.
func indexedBytes(t *testing.T, st *Store) map[string]int64 {
	t.Helper()
	rows, err := st.db.Query(`SELECT file, MAX(file_off + file_len) FROM audit_blocks WHERE file IS NOT NULL GROUP BY file`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var f string
		var end int64
		if err := rows.Scan(&f, &end); err != nil {
			t.Fatal(err)
		}
		out[f] = end
	}
	return out
}

// What a crash or a tamperer leaves in the block files, at the next start:
// bytes after the last indexed block (a shipment written, its commit never
// made) are cut back and the chain goes on; a settled block cut from its
// file is reported by verify and left as it was found.
func TestBlockFilesAtRestart(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, last fileRef)
		// wantBreak is the first break verify reports after the
		// restart, "" for none.
		wantBreak string
	}{
		{"a shipment's text without its commit", func(t *testing.T, path string, _ fileRef) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(`{"seq":99,"half a line`); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"a settled block cut from its file", func(t *testing.T, path string, last fileRef) {
			if err := os.Truncate(path, last.off+10); err != nil {
				t.Fatal(err)
			}
		}, "were deleted: the text of the block stored"},
		{"a settled block file removed", func(t *testing.T, path string, _ fileRef) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "is missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			state := t.TempDir()
			w, cancel, done := openWriter(t, state, "", "", Policy{})
			s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			writeSession(s, 5)
			cancel() // ships, signs, settles: every block is settled
			<-done

			st, err := OpenStore(ctx, specOr("", state), "")
			if err != nil {
				t.Fatal(err)
			}
			exp := expectOf(t, state)
			var lastFirst int64
			if err := st.db.QueryRow(`SELECT MAX(first_seq) FROM audit_blocks`).Scan(&lastFirst); err != nil {
				t.Fatal(err)
			}
			last := blockRef(t, st, exp.Daemon, lastFirst)
			st.Close()
			path := filepath.Join(state, "audit", "blocks", last.name)
			tc.damage(t, path, last)
			damaged, damagedErr := os.ReadFile(path)

			w2, cancel2, done2 := openWriter(t, state, "", "", Policy{})
			defer func() { cancel2(); <-done2 }()
			writeSession(fakeSession(w2, 1001, "alice", "/usr/bin/psql"), 2)
			if err := w2.Seal(ctx); err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, w2.Store(), "", w2.Expect())
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantBreak == "" {
				if !rep.OK {
					t.Fatalf("verify after the restart: %+v", rep.First)
				}
				d, err := w2.Store().Session(ctx, s.ID, nil)
				if err != nil || d == nil || d.Statements != 5 {
					t.Fatalf("the first session after the restart: %v %+v", err, d)
				}
				// No file holds bytes past its last indexed block.
				for name, end := range indexedBytes(t, w2.Store()) {
					fi, err := os.Stat(filepath.Join(state, "audit", "blocks", name))
					if err != nil || fi.Size() != end {
						t.Fatalf("block file %s: %v bytes, its rows index %d (%v)", name, fi.Size(), end, err)
					}
				}
				return
			}
			if rep.OK || rep.First.Kind != BreakDeleted || !strings.Contains(rep.First.Message, tc.wantBreak) {
				t.Fatalf("verify after the restart: first break %+v, want one mentioning %q", rep.First, tc.wantBreak)
			}
			// Reported, not repaired: the damaged file is as it was left
			// (a removed one not made again), and the new records went
			// elsewhere.
			now, err := os.ReadFile(path)
			if (err == nil) != (damagedErr == nil) || string(now) != string(damaged) {
				t.Fatalf("the damaged block file was changed by the restart (%v, before %v)", err, damagedErr)
			}
		})
	}
}

// A store of schema version 2 (the text of its blocks inline) has it moved
// into block files at start, as it is: the records read and verify as
// before, an edit made before the upgrade is still reported, and new
// records go on the chain.
func TestMigrateBlocksIntoFiles(t *testing.T) {
	cases := []struct {
		name    string
		tamper  string // SQL on the version-2 store
		kind    string // "" = verifies
		seq     int64
		message string
	}{
		{"untouched", "", "", 0, ""},
		{"edited before the upgrade", `UPDATE audit_blocks SET records = REPLACE(records, 'SELECT 3', 'SELECT 7')`, BreakEdited, 3, "seq 3 (statement, session s) was edited"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			spec := filepath.Join(dir, "audit.db")
			raw := openRaw(t, spec, "")
			for _, q := range append([]string{`CREATE TABLE audit_schema (version BIGINT NOT NULL)`},
				append(strings.Split(migrations[0], ";\n"), strings.Split(migrations[1], ";\n")...)...) {
				if _, err := raw.db.ExecContext(ctx, q); err != nil {
					t.Fatalf("schema 2: %v", err)
				}
			}
			if _, err := raw.db.ExecContext(ctx, `INSERT INTO audit_schema (version) VALUES (1), (2)`); err != nil {
				t.Fatal(err)
			}
			var want []Record
			prev := genesis
			for i := 1; i <= 30; i++ {
				r := Record{Schema: Schema, Daemon: "d2", Seq: int64(i), Time: time.Unix(1700000000, int64(i)).UTC(), Kind: kindStatement,
					Session: "s", Data: []byte(fmt.Sprintf(`{"sql":"SELECT %d"}`, i)), PrevHash: prev}
				r.Hash = hashRecord(prev, &r)
				prev = r.Hash
				want = append(want, r)
			}
			tx, err := raw.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(want); i += 7 { // several blocks
				if err := raw.writeBlock(ctx, tx, nil, want[i:min(i+7, len(want))], nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if tc.tamper != "" {
				if _, err := raw.db.ExecContext(ctx, tc.tamper); err != nil {
					t.Fatal(err)
				}
			}
			raw.Close()

			st, err := OpenStore(ctx, spec, "")
			if err != nil {
				t.Fatalf("open and migrate: %v", err)
			}
			defer st.Close()
			var inline, inFiles int
			if err := st.db.QueryRow(`SELECT COUNT(*) FILTER (WHERE records <> ''), COUNT(*) FILTER (WHERE file IS NOT NULL) FROM audit_blocks`).Scan(&inline, &inFiles); err != nil {
				t.Fatal(err)
			}
			if inline != 0 || inFiles != 5 {
				t.Fatalf("after the migration: %d blocks with inline text, %d in files; want 0 and 5", inline, inFiles)
			}
			for name := range indexedBytes(t, st) {
				fi, err := os.Stat(filepath.Join(dir, "blocks", name))
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("block file %s: %v %v", name, fi.Mode(), err)
				}
			}
			rep, err := Verify(ctx, st, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.kind != "" {
				if rep.OK || rep.First.Kind != tc.kind || rep.First.Seq != tc.seq || !strings.Contains(rep.First.Message, tc.message) {
					t.Fatalf("first break = %+v, want %s at seq %d mentioning %q", rep.First, tc.kind, tc.seq, tc.message)
				}
				return
			}
			if !rep.OK {
				t.Fatalf("verify after the move: %+v", rep.First)
			}
			got, err := st.Scan(ctx, "", 0, 100)
			if err != nil || len(got) != len(want) {
				t.Fatalf("scan: %v, %d records, want %d", err, len(got), len(want))
			}
			for i := range want {
				if got[i].Hash != want[i].Hash || string(got[i].Data) != string(want[i].Data) {
					t.Fatalf("record %d moved as %+v, want %+v", i+1, got[i], want[i])
				}
			}
			// The chain goes on after the moved blocks.
			r := Record{Schema: Schema, Daemon: "d2", Seq: 31, Time: time.Unix(1700000001, 0).UTC(), Kind: kindStatement,
				Session: "s", Data: []byte(`{"sql":"SELECT 31"}`), PrevHash: prev}
			r.Hash = hashRecord(prev, &r)
			if err := st.append(ctx, []Record{r}, nil, nil); err != nil {
				t.Fatal(err)
			}
			if rep, err := Verify(ctx, st, "", nil); err != nil || !rep.OK || rep.Chains[0].Last != 31 {
				t.Fatalf("verify after a new block: %v %+v", err, rep)
			}
		})
	}
}

// Retention deletes a block file once every block in it is pruned, and
// keeps the one still in use.
func TestRetentionRemovesPrunedBlockFiles(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	w, cancel, done := openWriter(t, state, "", "", Policy{})
	defer func() { cancel(); <-done }()
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	w.store.files.mu.Lock()
	w.store.files.now = func() time.Time { return day }
	w.store.files.mu.Unlock()
	for range 3 {
		writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 3)
		if err := w.Seal(ctx); err != nil {
			t.Fatal(err)
		}
		// Each day's blocks in a file of their own.
		w.store.files.mu.Lock()
		day = day.AddDate(0, 0, 1)
		w.store.files.mu.Unlock()
	}
	files := func() []string {
		fs, _ := filepath.Glob(filepath.Join(state, "audit", "blocks", "*.blocks"))
		return fs
	}
	if n := len(files()); n != 3 {
		t.Fatalf("%d block files, want one a day (3)", n)
	}
	// Everything is older than now: all but what the last checkpoint
	// leaves goes, and with it every file whose blocks all went but the
	// one being appended to. The prune's own record, shipped in the
	// background, may start the next day's file meanwhile: the file that
	// was current when pruning began may then be left empty (until the
	// next pruning), and so may the new one.
	appending := w.store.files.current(w.Daemon())
	n, err := w.Prune(ctx, time.Now().Add(time.Hour))
	if err != nil || n == 0 {
		t.Fatalf("prune: %d %v", n, err)
	}
	left := files()
	used := indexedBytes(t, w.store)
	for _, f := range left {
		b := filepath.Base(f)
		if _, ok := used[b]; !ok && b != appending && b != w.store.files.current(w.Daemon()) {
			t.Fatalf("block file %s kept with no block in it", f)
		}
	}
	if len(left) >= 3 {
		t.Fatalf("no block file removed: %v", left)
	}
	writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 1)
	if err := w.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
		t.Fatalf("verify after pruning files: %v %+v", err, rep)
	}
}

// Unsettled blocks whose text is gone are shipped again only from a
// journal that still has their records: with the journal gone as well (not
// what a crash does), nothing is dropped, and verify reports the loss.
func TestUnsettledBlocksKeptWithoutTheirJournal(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour, ringSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
	ship := func(n int) {
		for i := 0; i < n; i++ {
			s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{SQL: fmt.Sprintf("SELECT %d", i)}})
		}
		w.shipMu.Lock()
		defer w.shipMu.Unlock()
		if err := w.ship(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ship(20) // settled: the first shipment
	dir := filepath.Join(state, "audit")
	files, _ := filepath.Glob(filepath.Join(dir, "blocks", "*.blocks"))
	if len(files) != 1 {
		t.Fatalf("block files %v, want one", files)
	}
	settledText, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	ship(20) // not settled
	stored := w.stored
	_ = w.j.close()
	_ = w.store.Close()
	if err := os.WriteFile(files[0], settledText, 0o600); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	for _, seg := range segs {
		if err := os.Remove(seg); err != nil {
			t.Fatal(err)
		}
	}

	w2, cancel, done := openWriter(t, state, "", "", Policy{})
	defer func() { cancel(); <-done }()
	var blocks int64
	if err := w2.store.db.QueryRow(`SELECT MAX(last_seq) FROM audit_blocks`).Scan(&blocks); err != nil || blocks != stored {
		t.Fatalf("the store ends at seq %d (%v) after the restart, want the %d it had: nothing dropped", blocks, err, stored)
	}
	rep, err := Verify(ctx, w2.Store(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.First.Kind != BreakDeleted || !strings.Contains(rep.First.Message, "is gone") {
		t.Fatalf("verify: first break %+v, want the lost block reported", rep.First)
	}
}

// Appends written directly (O_DIRECT, blocks of directMin or more: each
// rewrites the file's last partial page and pads to a page), mixed with
// small ones through the page cache, leave the files exactly as appends
// through the page cache did: every block's text where its reference
// says, and after a settle (sync) or closing nothing after the last,
// across rolls and a restart that takes up a file whose end is not on a
// page.
func TestBlockFileDirectAppends(t *testing.T) {
	rnd := rand.New(rand.NewPCG(9, 11))
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"small blocks within a page", []int{1, 2, 100, 3000, 990}},
		{"small ones around pages", []int{4095, 1, 4096, 4097, 8191, 2}},
		{"direct between small ones", []int{4095, directMin + 1, 1, 4096, directMin, 3, directMin + 4095, 2, directMin}},
		{"direct ones", []int{3 << 20, directMin + 12345, directMin, directMin + 1, 5 << 20}},
		{"one byte at a time", []int{1, 1, 1, 1, 1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			day := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			want := map[string][]byte{}
			var refs []fileRef
			var texts [][]byte
			newest := ""
			ends := func(context.Context, string, string) (int64, string, error) {
				if newest == "" {
					return 0, "", nil
				}
				return int64(len(want[newest])), newest, nil
			}
			f := newBlockFiles(dir)
			f.now = func() time.Time { return day }
			for i, n := range tc.sizes {
				switch i {
				case len(tc.sizes) / 2:
					// A restart: the tail is read back from the file.
					if err := f.close(); err != nil {
						t.Fatal(err)
					}
					f = newBlockFiles(dir)
					f.now = func() time.Time { return day }
				case len(tc.sizes) - 1:
					day = day.Add(24 * time.Hour) // a roll
				}
				text := make([]byte, n)
				for j := range text {
					text[j] = byte(' ' + rnd.IntN(95))
				}
				ref, err := f.write(context.Background(), "d1", ends, text)
				if err != nil {
					t.Fatal(err)
				}
				if c := f.chains["d1"]; c.dio == nil {
					t.Logf("block %d appended through the page cache: no O_DIRECT here", i)
				}
				if got := int64(len(want[ref.name])); ref.off != got || ref.length != int64(n) {
					t.Fatalf("block %d at %d, %d bytes; the file had %d", i, ref.off, ref.length, got)
				}
				want[ref.name] = append(want[ref.name], text...)
				newest = ref.name
				refs, texts = append(refs, ref), append(texts, text)
				if i%3 == 2 {
					// A settle: the file ends where its blocks do.
					if err := f.sync(); err != nil {
						t.Fatal(err)
					}
					fi, err := os.Stat(filepath.Join(dir, ref.name))
					if err != nil {
						t.Fatal(err)
					}
					if fi.Size() != int64(len(want[ref.name])) {
						t.Fatalf("after a settle, block file %s is %d bytes, its blocks %d", ref.name, fi.Size(), len(want[ref.name]))
					}
				}
			}
			for name, w := range want {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("block file %s: %d bytes, not the %d appended", name, len(got), len(w))
				}
			}
			for i, ref := range refs {
				got, err := f.readText(ref)
				if err != nil || !bytes.Equal(got, texts[i]) {
					t.Fatalf("block %d reads back %d bytes (%v)", i, len(got), err)
				}
			}
			if err := f.close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
