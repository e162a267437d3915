package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// keptRecord is the data of appender g's n-th record: who wrote it, so a
// record read back can be told from any other, and its own padding.
func keptRecord(g, n int) *pending {
	return &pending{Time: time.Unix(1700000000, int64(n)).UTC(), Kind: "statement", Session: fmt.Sprint("s", g),
		Data: json.RawMessage(fmt.Sprintf(`{"g":%d,"n":%d,"pad":"%s"}`, g, n, strings.Repeat("y", (n*7+g)%900)))}
}

// The kept frames with the shipper's thread and the sessions' at once:
// sessions append (a small ring makes some of them move the ring's frames
// themselves) and sync (the commit interval's drain, which keeps frames
// for the reader) while the shipper reads batches, fails some shipments
// and releases. A batch's records must stay whole until the next read,
// however many drains happen meanwhile, and every record must come once,
// in order.
func TestJournalKeptFramesConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ring      uint64
		max       int
		failEvery int
		// pause is the shipment's time: a slow store lets the kept
		// frames reach keptMax, past which they are read back.
		pause time.Duration
		// kept is whether records must come from the kept frames (a
		// small ring's frames are mostly moved by the sessions), full
		// whether the kept frames must reach their bound.
		kept, full bool
		// bound is the journal's: a small one makes sessions wait for
		// the shipper's releases, which then rotate the active segment.
		bound int64
	}{
		{"default ring", ringDefault, 700, 5, 300 * time.Microsecond, true, false, 1 << 30},
		{"small ring", 8192, 300, 3, 300 * time.Microsecond, false, false, 1 << 30},
		{"slow shipments, kept frames past their bound", ringDefault, 30000, 4, 600 * time.Millisecond, true, true, 1 << 30},
		{"journal at its bound", ringDefault, 700, 5, 300 * time.Microsecond, false, false, 2 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := openJournalRing(t.TempDir(), tc.bound, 0, tc.ring)
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			if j.rg == nil {
				t.Fatalf("no ring: %q", j.notes)
			}
			const appenders, each = 3, 12000
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, appenders+1)
			// In the "full" case the appenders wait, after appender 0's
			// first record, for the reader to have read it: the journal
			// keeps frames only from where its reader has been, and
			// appenders quicker than the reader's first pause would
			// otherwise leave nothing kept.
			gate := make(chan struct{})
			if !tc.full {
				close(gate)
			}
			for g := range appenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 1; n <= each && ctx.Err() == nil; n++ {
						if n == 1 && g != 0 || n == 2 && g == 0 {
							select {
							case <-gate:
							case <-ctx.Done():
								return
							}
						}
						if err := j.append(keptRecord(g, n)); err != nil {
							errs <- err
							return
						}
						if n%50 == g || tc.full && g == 0 && n == 1 {
							// The commit interval's sync, at a
							// pace the shipper can keep up with.
							if err := j.sync(); err != nil {
								errs <- err
								return
							}
							time.Sleep(time.Millisecond)
						}
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()

			rnd := rand.New(rand.NewPCG(7, tc.ring))
			var buf shipBuf
			var stored int64
			next := make([]int, appenders)
			reads, fromKept, keptFull := 0, 0, false
			actives := map[string]bool{}
			finished := false
			// pastHalf is whether the kept frames are past half their
			// bound with records still unread: what the "full" case
			// must reach.
			pastHalf := func() bool {
				j.readMu.Lock()
				defer j.readMu.Unlock()
				j.mu.Lock()
				defer j.mu.Unlock()
				act := j.segs[len(j.segs)-1]
				actives[act.path] = true
				return len(j.kept.buf) > keptMax/2 && (j.cur.path != act.path || j.cur.off != act.size)
			}
			for stored < appenders*each {
				if ctx.Err() != nil {
					t.Fatalf("stored through %d of %d before the deadline", stored, appenders*each)
				}
				select {
				case err := <-errs:
					t.Fatal(err)
				case <-done:
					finished = true
				default:
				}
				// Frames kept, and then some not (past the bound):
				// the reader must read those back from the segment.
				keptFull = pastHalf() || keptFull
				recs, err := j.readInto(&buf, stored, tc.max)
				if err != nil {
					t.Fatal(err)
				}
				reads++
				datas := make([]string, len(recs))
				for i := range recs {
					datas[i] = string(recs[i].Data)
				}
				// Drains by the sessions meanwhile, as while a batch
				// is shipped.
				time.Sleep(time.Duration(rnd.Int64N(int64(tc.pause))))
				if tc.full && !keptFull && len(recs) > 0 {
					// On a loaded machine the appenders may not fill
					// half the bound within any one random pause: the
					// shipment lasts until they have (they append 18 MB
					// in all, the bound is 4 MiB).
					if !isDone(gate) {
						close(gate)
					}
					for !pastHalf() && ctx.Err() == nil && !isDone(done) {
						time.Sleep(time.Millisecond)
					}
				}
				for i := range recs {
					r := &recs[i]
					if want := stored + int64(i) + 1; r.Seq != want {
						t.Fatalf("read %d after %d: record %d has seq %d, want %d", reads, stored, i, r.Seq, want)
					}
					if string(r.Data) != datas[i] {
						t.Fatalf("read %d: record %d changed while its batch was in use: %q, was %q", reads, r.Seq, r.Data, datas[i])
					}
				}
				if tc.failEvery > 0 && reads%tc.failEvery == 0 {
					continue // the store refused it: read again
				}
				for i := range recs {
					if within(recs[i].Data, buf.kept) {
						fromKept++
					}
					var d struct{ G, N int }
					if err := json.Unmarshal(recs[i].Data, &d); err != nil {
						t.Fatalf("record %d: %v: %q", recs[i].Seq, err, recs[i].Data)
					}
					if d.G < 0 || d.G >= appenders || d.N != next[d.G]+1 {
						t.Fatalf("record %d: appender %d's record %d, want its %d", recs[i].Seq, d.G, d.N, next[max(0, min(d.G, appenders-1))]+1)
					}
					if want := keptRecord(d.G, d.N); string(recs[i].Data) != string(want.Data) || recs[i].Session != want.Session {
						t.Fatalf("record %d: %q, want %q", recs[i].Seq, recs[i].Data, want.Data)
					}
					next[d.G] = d.N
				}
				stored += int64(len(recs))
				if rnd.IntN(5) == 0 || tc.bound < 1<<30 {
					j.release(stored)
				}
				if len(recs) == 0 && finished {
					break
				}
			}
			wg.Wait()
			if stored != appenders*each {
				t.Fatalf("stored through %d, %d appended", stored, appenders*each)
			}
			t.Logf("%d reads, %d of %d records from the kept frames, kept frames past their bound: %v, %d active segments", reads, fromKept, stored, keptFull, len(actives))
			if tc.bound < 1<<30 && len(actives) < 3 {
				t.Fatalf("%d active segments at the bound: the releases did not rotate it", len(actives))
			}
			if tc.full && !keptFull {
				t.Fatal("the kept frames never reached their bound: the test did not reach it")
			}
			if tc.kept && fromKept == 0 {
				t.Fatal("no record came from the kept frames: the test did not reach them")
			}
		})
	}
}

// isDone says whether done is closed, without waiting.
func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}
