package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// Two daemons share a store; one session's records span several blocks.
// The list, a session's records, export paging and the interrupted-session
// query read across blocks and daemons as they did across rows.
func TestReadsAcrossBlocksAndDaemons(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			spec, pw := sk.open(t)
			if spec == "" {
				spec = filepath.Join(t.TempDir(), "team.db")
			}
			wa, cancelA, doneA := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancelA(); <-doneA }()
			wb, cancelB, doneB := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancelB(); <-doneB }()
			flush := func(w *Writer) {
				t.Helper()
				if err := w.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			stmt := func(s *session.Session, n int) {
				for i := 0; i < n; i++ {
					s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "simple", SQL: fmt.Sprintf("SELECT %d", i), Tag: "SELECT 1"}})
				}
			}
			a := fakeSession(wa, 1001, "alice", "/usr/bin/psql")
			a.Emit(session.Event{Kind: session.KindSessionStart, Start: a})
			flush(wa)
			stmt(a, 3)
			flush(wa)
			stmt(a, 2)
			a.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
			flush(wa)
			b := fakeSession(wb, 1002, "bob", "/usr/bin/python3")
			b.Emit(session.Event{Kind: session.KindSessionStart, Start: b})
			stmt(b, 1)
			flush(wb)

			st := wa.Store()
			var blocks int
			if err := st.db.QueryRowContext(ctx, st.q(`SELECT count(*) FROM audit_blocks WHERE daemon = ?`), wa.Daemon()).Scan(&blocks); err != nil || blocks < 3 {
				t.Fatalf("%d blocks for three shipments (%v)", blocks, err)
			}
			sums, err := st.Sessions(ctx, Filter{})
			if err != nil || len(sums) != 2 {
				t.Fatalf("sessions: %v %+v", err, sums)
			}
			for _, tc := range []struct {
				id         string
				daemon     string
				statements int64
				ended      bool
			}{{a.ID, wa.Daemon(), 5, true}, {b.ID, wb.Daemon(), 1, false}} {
				i := slices.IndexFunc(sums, func(s SessionSummary) bool { return s.ID == tc.id })
				if i < 0 || sums[i].Daemon != tc.daemon || sums[i].Statements != tc.statements || (sums[i].End != nil) != tc.ended {
					t.Fatalf("session %s in the list: %+v, want daemon %s, %d statements, ended %v", tc.id, sums, tc.daemon, tc.statements, tc.ended)
				}
			}
			d, err := st.Session(ctx, a.ID, nil)
			if err != nil || d == nil || len(d.Records) != 7 || d.Records[0].Kind != kindStart || d.Records[6].Kind != kindEnd {
				t.Fatalf("session of alice: %v %+v", err, d)
			}
			for i := 1; i < len(d.Records); i++ {
				if d.Records[i].Seq <= d.Records[i-1].Seq || d.Records[i].Session != a.ID {
					t.Fatalf("session records out of order or foreign at %d: %+v", i, d.Records)
				}
			}
			// Export pages of every size give the same records as one read.
			all, err := st.Scan(ctx, "", 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			for _, page := range []int{1, 2, 3, 1000} {
				var got []Record
				ad, as := "", int64(0)
				for range 1000 {
					rs, err := st.Scan(ctx, ad, as, page)
					if err != nil {
						t.Fatal(err)
					}
					if len(rs) == 0 {
						break
					}
					got = append(got, rs...)
					ad, as = rs[len(rs)-1].Daemon, rs[len(rs)-1].Seq
				}
				if len(got) != len(all) {
					t.Fatalf("pages of %d gave %d records, one read %d", page, len(got), len(all))
				}
				for i := range got {
					if got[i].Daemon != all[i].Daemon || got[i].Seq != all[i].Seq || got[i].Hash != all[i].Hash {
						t.Fatalf("pages of %d: record %d is %s/%d, want %s/%d", page, i, got[i].Daemon, got[i].Seq, all[i].Daemon, all[i].Seq)
					}
					if i > 0 && !(all[i-1].Daemon < all[i].Daemon || all[i-1].Daemon == all[i].Daemon && all[i-1].Seq < all[i].Seq) {
						t.Fatalf("export not in (daemon, seq) order at %d", i)
					}
				}
			}
			open, err := st.openSessions(ctx, wb.Daemon(), 1<<40)
			if err != nil || !slices.Equal(open, []string{b.ID}) {
				t.Fatalf("open sessions of bob's daemon: %v %v", err, open)
			}
			if open, err := st.openSessions(ctx, wa.Daemon(), 1<<40); err != nil || len(open) != 0 {
				t.Fatalf("open sessions of alice's daemon: %v %v", err, open)
			}
			rep, err := Verify(ctx, st, "", nil)
			if err != nil || !rep.OK || len(rep.Chains) != 2 {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}

// A newest block damaged in the store does not stop recording: the daemon
// goes on shipping (and says nothing is wrong with reaching the store),
// and verify names the damage.
func TestDamagedNewestBlockKeepsRecording(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			spec, pw := sk.open(t)
			state := t.TempDir()
			w, cancel, done := openWriter(t, state, spec, pw, Policy{})
			writeSession(fakeSession(w, 1001, "alice", "/usr/bin/psql"), 2)
			cancel()
			<-done
			st, err := OpenStore(ctx, specOr(spec, state), pw)
			if err != nil {
				t.Fatal(err)
			}
			var daemon string
			var newest int64
			if err := st.db.QueryRowContext(ctx, `SELECT daemon, first_seq FROM audit_blocks ORDER BY first_seq DESC LIMIT 1`).Scan(&daemon, &newest); err != nil {
				t.Fatal(err)
			}
			editBlockText(t, st, daemon, newest, func(b []byte) []byte { return append([]byte("not records"), b[len("not records"):]...) })
			st.Close()

			w2, cancel2, done2 := openWriter(t, state, spec, pw, Policy{})
			defer func() { cancel2(); <-done2 }()
			writeSession(fakeSession(w2, 1001, "alice", "/usr/bin/psql"), 1)
			if err := w2.Seal(ctx); err != nil {
				t.Fatalf("shipping after the damage: %v", err)
			}
			if s := w2.Status(); !s.Reachable || s.Spooled != 0 {
				t.Fatalf("status after the damage: %+v", s)
			}
			rep, err := Verify(ctx, w2.Store(), "", w2.Expect())
			if err != nil || rep.OK || rep.First.Kind != BreakEdited || !strings.Contains(rep.First.Message, "no longer reads as records") {
				t.Fatalf("verify after the damage: %v %+v", err, rep.First)
			}
		})
	}
}

// A batch is cut into blocks by bytes as well as by count, and read back
// whole.
func TestBlocksBoundedInBytes(t *testing.T) {
	cases := []struct {
		name      string
		records   int
		dataBytes int
		minBlocks int
		maxBlocks int
	}{
		{"small records, one block", 50, 100, 1, 1},
		{"large records, several blocks", 12, 1 << 20, 3, 12},
		{"one record larger than a block", 2, maxBlockBytes + 10, 2, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st, err := OpenStore(ctx, filepath.Join(t.TempDir(), "audit.db"), "")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			data := []byte(`{"sql":"` + strings.Repeat("x", tc.dataBytes) + `"}`)
			recs := make([]Record, tc.records)
			prev := genesis
			for i := range recs {
				recs[i] = Record{Schema: Schema, Daemon: "d", Seq: int64(i + 1), Time: time.Unix(0, int64(i+1)).UTC(), Kind: kindStatement,
					Session: "s", Data: data, PrevHash: prev}
				recs[i].Hash = hashRecord(prev, &recs[i])
				prev = recs[i].Hash
			}
			if err := st.append(ctx, recs, nil, nil); err != nil {
				t.Fatal(err)
			}
			var blocks, longest int
			if err := st.db.QueryRowContext(ctx, `SELECT count(*), max(file_len) FROM audit_blocks`).Scan(&blocks, &longest); err != nil {
				t.Fatal(err)
			}
			if blocks < tc.minBlocks || blocks > tc.maxBlocks || (tc.dataBytes < maxBlockBytes && longest > maxBlockBytes) {
				t.Fatalf("%d blocks, the longest %d bytes; want %d to %d blocks of at most %d bytes", blocks, longest, tc.minBlocks, tc.maxBlocks, maxBlockBytes)
			}
			got, err := st.Scan(ctx, "", 0, 1000)
			if err != nil || len(got) != len(recs) {
				t.Fatalf("read back %d of %d records: %v", len(got), len(recs), err)
			}
			for i := range got {
				if got[i].Hash != recs[i].Hash || string(got[i].Data) != string(recs[i].Data) {
					t.Fatalf("record %d read back changed", i+1)
				}
			}
			if rep, err := Verify(ctx, st, "", nil); err != nil || !rep.OK {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}

// FuzzParseBlock feeds arbitrary text as a block's records, as whoever can
// write the store could leave it: parsing must not panic, and whatever it
// reads must encode back to lines that read as the same records (the data
// bytes untouched, since they are what was hashed).
func FuzzParseBlock(f *testing.F) {
	r := Record{Seq: 7, Time: time.Unix(0, 1700000000123456789), Kind: "statement", Session: "s\"1",
		Data: json.RawMessage(`{"sql":"SELECT '<&>'"}`), PrevHash: genesis, Hash: genesis}
	line := appendLine(nil, &r)
	f.Add(string(line))
	f.Add(string(line) + string(line[:len(line)-5]))
	f.Add(`{"seq":1,"data":{"a": [1, 2 ]}}` + "\n" + `{"seq":2}`)
	f.Add(`not json`)
	f.Fuzz(func(t *testing.T, text string) {
		recs, _ := parseBlock("d", text)
		var again []byte
		for i := range recs {
			again = appendLine(again, &recs[i])
		}
		back, err := parseBlock("d", string(again))
		if err != nil || len(back) != len(recs) {
			t.Fatalf("%d records re-read as %d: %v", len(recs), len(back), err)
		}
		for i := range recs {
			a, b := recs[i], back[i]
			if a.Seq != b.Seq || !a.Time.Equal(b.Time) || a.Kind != b.Kind || a.Session != b.Session ||
				string(a.Data) != string(b.Data) || a.PrevHash != b.PrevHash || a.Hash != b.Hash {
				t.Fatalf("record %d changed on the way back: %+v, then %+v", i, a, b)
			}
		}
	})
}

// writeBlock sizes its text buffer by blockSize once, rather than let
// append grow it a dozen times: the size must not fall short of the lines
// for the records a recorder writes, whatever their seq, time or data.
func TestBlockSizeCoversItsLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  Record
	}{
		{"pgbench statement", Record{Seq: 48213, Time: time.Unix(1764582000, 123456789), Kind: kindStatement, Session: "0193a5c2-7d1e-7b40-9f2a-5c1d2e3f4a5b",
			Data: json.RawMessage(`{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;","tag":"SELECT 1","rows":1}`)}},
		{"largest seq and time, no session", Record{Seq: math.MaxInt64, Time: time.Unix(0, math.MaxInt64), Kind: kindStart, Data: json.RawMessage(`{}`)}},
		{"no data", Record{Seq: 1, Time: time.Unix(0, 1), Kind: kindEnd, Session: "s"}},
		{"long data", Record{Seq: 7, Time: time.Unix(0, 7), Kind: kindStatement, Session: "s", Data: json.RawMessage(`{"sql":"` + strings.Repeat("y", 100000) + `"}`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.rec
			r.Schema, r.Daemon, r.PrevHash = Schema, "d", genesis
			r.Hash = hashRecord(r.PrevHash, &r)
			recs := []Record{r, r, r}
			var text []byte
			for i := range recs {
				text = appendLine(text, &recs[i])
			}
			if size := blockSize(recs); size < len(text) {
				t.Fatalf("blockSize %d for %d bytes of lines", size, len(text))
			}
		})
	}
}
