package audit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// oldFramePayload is p's payload as journals before time_ns wrote it: the
// time as RFC 3339 text.
func oldFramePayload(p *pending) []byte {
	b := []byte(`{"seq":`)
	b = append(b, fmt.Sprintf("%-*d", seqWidth, p.Seq)...)
	b = append(b, `,"time":"`...)
	b = appendTime(b, p.Time)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, p.Kind)
	b = append(b, `,"session":`...)
	b = appendJSONString(b, p.Session)
	b = append(b, `,"data":`...)
	b = append(b, p.Data...)
	return append(b, '}')
}

// oldFrame is p as a whole frame of the previous version.
func oldFrame(p *pending) []byte {
	payload := oldFramePayload(p)
	b := make([]byte, frameHeader, frameHeader+len(payload))
	b = append(b, payload...)
	checksum(b)
	return b
}

// oldRecords are what a daemon of the previous version journaled: a
// session's start, statements, its end.
func oldRecords(n int) []pending {
	at := time.Date(2026, 11, 29, 23, 59, 59, 123456700, time.UTC)
	out := []pending{{Seq: 1, Time: at, Kind: kindStart, Session: "old-session",
		Data: json.RawMessage(`{"connection":"prod","target":"db","protocol":"postgres","person":{"name":"alice","uid":1001},"process":{"pid":4242,"exe":"/usr/bin/psql"}}`)}}
	for i := 0; i < n; i++ {
		out = append(out, pending{Seq: int64(len(out) + 1), Time: at.Add(time.Duration(i+1) * time.Millisecond), Kind: kindStatement, Session: "old-session",
			Data: json.RawMessage(`{"protocol":"simple","sql":"SELECT ` + strconv.Itoa(i) + `","rows":1,"bytes":1,"duration_us":5,"number":` + strconv.Itoa(i+1) + `}`)})
	}
	// A whole second: no fraction in the old text.
	return append(out, pending{Seq: int64(len(out) + 1), Time: at.Truncate(time.Second).Add(time.Second), Kind: kindEnd, Session: "old-session",
		Data: json.RawMessage(`{"reason":"client_quit","duration_ms":3,"bytes_in":1,"bytes_out":1}`)})
}

// plantRing writes frames as the ring a killed daemon left for the journal
// folder dir (created if need be).
func plantRing(t *testing.T, dir string, frames []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	path := ringPath(dir)
	if path == "" {
		t.Skip("no tmpfs for a ring here")
	}
	const size = 1 << 16
	mem := make([]byte, ringHeader+size)
	copy(mem, ringMagic)
	binary.LittleEndian.PutUint64(mem[offSize:], size)
	binary.LittleEndian.PutUint64(mem[offDev:], uint64(st.Dev))
	binary.LittleEndian.PutUint64(mem[offIno:], st.Ino)
	binary.LittleEndian.PutUint64(mem[offHead:], uint64(len(frames)))
	copy(mem[ringHeader:], frames)
	if err := os.WriteFile(path, mem, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(path) })
}

// A journal left by the previous version at an upgrade (frames with the
// time as text, in the segments, in the ring a killed daemon left, or
// both) is read, shipped and chained as it would have been: the same
// times, so the same hashes; new frames follow it.
func TestJournalOfThePreviousVersion(t *testing.T) {
	const statements = 40
	for _, tc := range []struct {
		name      string
		inSegment int // how many of the records are in a segment; the rest in the ring
	}{
		{"segment", statements + 2},
		{"ring", 0},
		{"segment and ring", statements / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := oldRecords(statements)
			state := t.TempDir()
			dir := filepath.Join(state, "audit", "journal")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			var seg, rg []byte
			for i := range recs {
				if i < tc.inSegment {
					seg = append(seg, oldFrame(&recs[i])...)
				} else {
					rg = append(rg, oldFrame(&recs[i])...)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", 1)), seg, 0o600); err != nil {
				t.Fatal(err)
			}
			if len(rg) > 0 {
				plantRing(t, dir, rg)
			}

			ctx := context.Background()
			w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			// Then the new daemon's first key, in the new form.
			got, err := w.j.read(0, 1000)
			if err != nil || len(got) != len(recs)+1 || got[len(recs)].Kind != KindKey {
				t.Fatalf("read %d records, want the %d of the previous version and a key: %v", len(got), len(recs), err)
			}
			for i, p := range got[:len(recs)] {
				want := recs[i]
				if p.Seq != want.Seq || !p.Time.Equal(want.Time) || p.Kind != want.Kind || p.Session != want.Session || string(p.Data) != string(want.Data) {
					t.Fatalf("record %d read as %+v, want %+v", i+1, p, want)
				}
			}
			// A new record after them, in the new form.
			s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			writeSession(s, 1)
			if err := w.Seal(ctx); err != nil {
				t.Fatal(err)
			}
			stored, err := w.Store().Scan(ctx, "", 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(stored) != len(recs)+4 {
				t.Fatalf("store holds %d records, want %d", len(stored), len(recs)+4)
			}
			// The chain over the old records, computed from what the
			// previous version journaled, is the stored one.
			want := make([]Record, len(recs))
			for i, p := range recs {
				want[i] = Record{Schema: Schema, Daemon: w.Daemon(), Seq: p.Seq, Time: p.Time, Kind: p.Kind, Session: p.Session, Data: p.Data}
			}
			chainRecords(genesis, want)
			for i := range want {
				if g := stored[i]; g.Hash != want[i].Hash || g.PrevHash != want[i].PrevHash || !g.Time.Equal(want[i].Time) {
					t.Fatalf("record %d stored as %+v, want %+v", i+1, g, want[i])
				}
			}
			if rep, err := Verify(ctx, w.Store(), "", w.Expect()); err != nil || !rep.OK {
				t.Fatalf("verify: %v %+v", err, rep.First)
			}
			_ = w.j.close()
			_ = w.store.Close()
		})
	}
}

// digits gives what strconv.ParseInt does for what it reads, at the edges
// of int64 and past them.
func TestDigits(t *testing.T) {
	for _, tc := range []struct {
		in  string
		neg bool
		ok  bool
	}{
		{"0", false, true}, {"7", true, true}, {"1764500000123456789", false, true},
		{"9223372036854775807", false, true}, {"9223372036854775808", false, false},
		{"9223372036854775808", true, true}, {"9223372036854775809", true, false},
		{"9999999999999999999", false, false}, {"12345678901234567890", false, false},
		{"", false, false}, {"1a", false, false}, {"1 ", false, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := digits([]byte(tc.in), tc.neg)
			s := tc.in
			if tc.neg {
				s = "-" + s
			}
			want, err := strconv.ParseInt(s, 10, 64)
			if ok != tc.ok || ok != (err == nil) || (ok && got != want) {
				t.Fatalf("digits(%q, %v) = %d, %v; ParseInt(%q) = %d, %v", tc.in, tc.neg, got, ok, s, want, err)
			}
		})
	}
}

// The shipper reads segments straight into its slabs: frames that straddle
// two reads, frames larger than a slab chunk, batches larger than the
// chunks kept, and a damaged frame (the records before it are read, none
// after) all come back byte for byte, each batch's records intact until
// the next batch is read.
func TestJournalReadIntoSlabs(t *testing.T) {
	small := func(i int) int { return 200 + (i*7919)%2800 } // straddles reads at unaligned places
	for _, tc := range []struct {
		name    string
		n       int
		size    func(i int) int
		damage  int // seq of a frame to damage (0: none)
		wantMax int // records read back (0: all)
	}{
		{"straddling and spilling past the chunks kept", 3 * shipBatch, small, 0, 0},
		{"frames larger than a chunk", 40, func(i int) int {
			if i%9 == 4 {
				return slabChunk + 1000*i
			}
			return small(i)
		}, 0, 0},
		{"a damaged frame", 500, small, 321, 320},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := openJournalRing(t.TempDir(), 1<<40, 0, 0) // no ring: every frame in the segments
			if err != nil {
				t.Fatal(err)
			}
			closeJournal(t, j)
			data := func(i int) string {
				head := fmt.Sprintf(`{"i":%d,"pad":"`, i)
				return head + strings.Repeat(string(rune('a'+i%26)), max(tc.size(i)-len(head)-2, 0)) + `"}`
			}
			for i := 1; i <= tc.n; i++ {
				if err := j.append(&pending{Time: time.Unix(0, int64(i)), Kind: "statement", Session: "s", Data: json.RawMessage(data(i))}); err != nil {
					t.Fatal(err)
				}
			}
			if err := j.sync(); err != nil {
				t.Fatal(err)
			}
			if tc.damage > 0 {
				damageFrame(t, j, int64(tc.damage))
			}
			want := tc.n
			if tc.wantMax > 0 {
				want = tc.wantMax
			}
			var buf shipBuf
			var after int64
			for round := 0; round < tc.n+1; round++ {
				recs, err := j.readInto(&buf, after, shipBatch)
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) == 0 {
					break
				}
				// Checked once the whole batch is read: a payload
				// handed out twice would show here.
				for k, r := range recs {
					i := int(after) + k + 1
					if r.Seq != int64(i) || r.Time.UnixNano() != int64(i) || string(r.Data) != data(i) {
						t.Fatalf("record %d read back as seq %d, %d bytes of data (want %d)", i, r.Seq, len(r.Data), len(data(i)))
					}
				}
				after += int64(len(recs))
			}
			if after != int64(want) {
				t.Fatalf("read %d records, want %d", after, want)
			}
		})
	}
}

// damageFrame flips a byte of the payload of the frame with seq in j's
// segments.
func damageFrame(t *testing.T, j *journal, seq int64) {
	t.Helper()
	for _, s := range j.segs {
		if seq < s.first || seq > s.last {
			continue
		}
		b, err := os.ReadFile(s.path)
		if err != nil {
			t.Fatal(err)
		}
		off := 0
		for at := s.first; at < seq; at++ {
			off += frameHeader + int(binary.BigEndian.Uint32(b[off:]))
		}
		b[off+frameHeader+40] ^= 1
		if err := os.WriteFile(s.path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no segment holds seq %d", seq)
}
