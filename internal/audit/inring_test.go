package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// inRingStatement is statement i of a test session: text of every length
// from a few bytes to a few KiB (so that frames outgrow the room left
// before the ring's end, and some are larger than minRoom), characters
// JSON escapes, a secret to redact, and now and then a result sample.
func inRingStatement(sess string, i int) session.Event {
	st := &session.Statement{Protocol: "simple", Tag: "SELECT 1", Rows: int64(i), Bytes: int64(3 * i),
		Duration: time.Duration(i) * time.Microsecond, Number: int64(i)}
	switch i % 4 {
	case 0:
		st.SQL = fmt.Sprintf("SELECT %d /* %s */", i, strings.Repeat("<é\"\n>", i%700))
	case 1:
		st.SQL = fmt.Sprintf("ALTER ROLE r%d PASSWORD 'hunter%d'", i, i)
	case 2:
		st.SQL = fmt.Sprintf("SELECT v FROM t WHERE id = %d", i)
		st.Sample = &session.Sample{Columns: []string{"v"}, OIDs: []uint32{25},
			Data: storedRows([]string{strings.Repeat("v", i%1500)}, []string{strconv.Itoa(i)})}
	default:
		st.SQL = "SELECT " + strconv.Itoa(i) + strings.Repeat(" ", i%3000)
		st.SQLState, st.Error = "42P01", "relation does not exist"
	}
	return session.Event{Kind: session.KindStatement, Session: sess, Time: time.Unix(1700000000, int64(i)),
		Statement: st}
}

// wantInRing is the record data of inRingStatement(sess, i), by
// encoding/json.
func wantInRing(t testing.TB, sess string, i int) []byte {
	t.Helper()
	ev := inRingStatement(sess, i)
	st, _ := statementOf(ev.Statement, Policy{})
	if s := ev.Statement.Sample; s != nil {
		rs := sampleOf(s)
		st.Sample = &rs
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Statements recorded at once by several sessions, encoded straight into
// rings of every size (wrapping at its end, outgrowing the room left
// there, rings smaller than minRoom, no ring) while a shipper moves and
// reads the frames: each is in the journal once, in seq order, each
// session's in its order, with the bytes encoding/json gives its data.
// The same when they are encoded apart and copied in (the benchmark's
// ringcopy step).
func TestRecordInRing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ring  int64
		bench BenchSkip
	}{
		{"default", 0, BenchSkip{}},
		{"small, wraps", 8192, BenchSkip{}},
		{"small, odd size", 8192 + 13, BenchSkip{}},
		{"barely above minRoom", minRoom + 300, BenchSkip{}},
		{"below minRoom", minRoom - 1, BenchSkip{}},
		{"no ring", -1, BenchSkip{}},
		{"copied in", 0, BenchSkip{Copy: true}},
		{"copied in, small, wraps", 8192, BenchSkip{Copy: true}},
		{"copied in, small, odd size", 8192 + 13, BenchSkip{Copy: true}},
		{"copied in, no ring", -1, BenchSkip{Copy: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Open(context.Background(), Options{StateDir: t.TempDir(), CommitInterval: time.Hour, ringSize: tc.ring, Bench: tc.bench})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = w.j.close(); _ = w.store.Close() }()
			if (w.j.rg != nil) != (tc.ring >= 0) {
				t.Fatalf("ring in use: %v (notes %q)", w.j.rg != nil, w.j.notes)
			}
			base := w.j.lastSeq() // the key record
			const sessions, each = 3, 1200
			stop := make(chan struct{})
			shipped := make(chan []pending, 1)
			var ship sync.WaitGroup
			ship.Add(1)
			go func() {
				defer ship.Done()
				var got []pending
				defer func() { shipped <- got }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := w.j.sync(); err != nil {
						t.Error(err)
						return
					}
					recs, err := w.j.read(base+int64(len(got)), 500)
					if err != nil {
						t.Error(err)
						return
					}
					for _, r := range recs {
						r.Data = append(json.RawMessage(nil), r.Data...)
						got = append(got, r)
					}
					w.j.release(base + int64(len(got)))
				}
			}()
			var rec sync.WaitGroup
			for s := 0; s < sessions; s++ {
				rec.Add(1)
				go func() {
					defer rec.Done()
					for i := 1; i <= each; i++ {
						w.Record(inRingStatement("s"+strconv.Itoa(s), i))
					}
				}()
			}
			rec.Wait()
			close(stop)
			ship.Wait()
			got := withRest(t, w.j, base, <-shipped, sessions*each)
			next := map[string]int{}
			for k, r := range got {
				if r.Seq != base+int64(k)+1 {
					t.Fatalf("record %d has seq %d", base+int64(k)+1, r.Seq)
				}
				next[r.Session]++
				if want := wantInRing(t, r.Session, next[r.Session]); string(r.Data) != string(want) {
					t.Fatalf("session %s statement %d:\n got %s\nwant %s", r.Session, next[r.Session], r.Data, want)
				}
			}
		})
	}
}

// A daemon killed with SIGKILL while it records statements straight into
// the ring (the kill lands before, in the middle of or after encoding a
// frame, or while frames move to the segments) loses none it returned
// from Record for, and a frame it was encoding is not taken for one.
func TestRecordInRingSurvivesKill9(t *testing.T) {
	if dir := os.Getenv("AIRLOCK_INRING_CHILD"); dir != "" {
		inRingChild(dir)
		return
	}
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	for _, tc := range []struct {
		name   string
		ring   int64
		sync   time.Duration
		killAt int
	}{
		{"in the ring only", 0, 0, 2000},
		{"ring and segments", 0, time.Millisecond, 6000},
		{"small ring, recorders move frames", 8192, 0, 6000},
		{"small ring, synced", 8192, 200 * time.Microsecond, 6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			acked := killChildAfter(t, "TestRecordInRingSurvivesKill9", int64(tc.killAt), "AIRLOCK_INRING_CHILD="+state,
				"AIRLOCK_INRING_SIZE="+strconv.FormatInt(tc.ring, 10), "AIRLOCK_INRING_SYNC="+tc.sync.String())
			ring := uint64(ringDefault)
			if tc.ring > 0 {
				ring = uint64(tc.ring)
			}
			dir := filepath.Join(state, "audit", "journal")
			// Statements are copied into the ring raw (rawframe.go): a
			// kill with nothing moved leaves them so, for the next
			// start to encode.
			if raw := rawFramesInRing(t, ringPath(dir)); tc.sync == 0 && tc.ring == 0 && raw == 0 {
				t.Fatal("no raw frames in the ring at the kill")
			} else {
				t.Logf("%d raw frames in the ring at the kill", raw)
			}
			j, err := openJournalRing(dir, 1<<30, 0, ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			// What the start encoded is redacted like the rest: no
			// segment holds a statement's password.
			for name, b := range readSegments(t, dir) {
				if bytes.Contains(b, []byte("'hunter")) {
					t.Fatalf("segment %s holds a password", name)
				}
			}
			recs, err := j.read(0, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, r := range recs {
				if r.Kind != "statement" {
					continue
				}
				n++
				if want := wantInRing(t, "s", n); string(r.Data) != string(want) {
					t.Fatalf("statement %d:\n got %s\nwant %s", n, r.Data, want)
				}
			}
			if int64(n) < acked {
				t.Fatalf("%d statements acknowledged, %d in the journal", acked, n)
			}
			t.Logf("%d statements acknowledged, %d in the journal; %q", acked, n, j.notes)
		})
	}
}

// inRingChild is the killed daemon of TestRecordInRingSurvivesKill9.
func inRingChild(state string) {
	size, _ := strconv.ParseInt(os.Getenv("AIRLOCK_INRING_SIZE"), 10, 64)
	every, _ := time.ParseDuration(os.Getenv("AIRLOCK_INRING_SYNC"))
	w, err := Open(context.Background(), Options{StateDir: state, CommitInterval: time.Hour, ringSize: size})
	if err != nil || w.j.rg == nil {
		fmt.Fprintln(os.Stderr, "child: open writer:", err)
		os.Exit(2)
	}
	if every > 0 {
		go func() {
			for {
				time.Sleep(every)
				_ = w.j.sync()
			}
		}()
	}
	// Bounded, though the parent kills it long before.
	for i := 1; i <= 10_000_000; i++ {
		w.Record(inRingStatement("s", i))
		// Unbuffered: once the parent reads i, statement i was recorded.
		if _, err := os.Stdout.WriteString(strconv.Itoa(i) + "\n"); err != nil {
			os.Exit(0)
		}
	}
	os.Exit(0)
}
