package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzJournalSegment feeds arbitrary bytes as the last journal segment, as a
// crash or a damaged disk could leave it: opening must not panic, and must
// keep exactly the valid frames before the damage, and appends must go on.
func FuzzJournalSegment(f *testing.F) {
	dir := f.TempDir()
	j, err := openJournal(dir, 1<<30, 0)
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_ = j.append(&pending{Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)})
	}
	_ = j.close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	good, _ := os.ReadFile(segs[0])
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(append(append([]byte{}, good...), 0xff, 0xff, 0xff, 0xff))
	f.Add([]byte{0, 0, 0, 2, 0, 0, 0, 0, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000001.seg"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := openJournal(dir, 1<<30, 0)
		if err != nil {
			return
		}
		defer j.close()
		recs, err := j.read(0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		last := j.lastSeq()
		if err := j.append(&pending{Kind: "statement", Data: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
		after, err := j.read(int64(last), 10)
		if err != nil || len(after) != 1 || after[0].Seq != last+1 {
			t.Fatalf("append after reopening (last %d, %d frames read): %+v %v", last, len(recs), after, err)
		}
	})
}

// FuzzDecodePayload holds the journal's own frame decoder to
// encoding/json: whatever a payload holds, a frame it reads gives the
// record encoding/json would if its data is one JSON value (it does not
// check that), and frames encodeFrame makes are read.
func FuzzDecodePayload(f *testing.F) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	for i, p := range []pending{
		{Seq: 1, Time: at, Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)},
		{Seq: 1 << 40, Time: at.Truncate(time.Second), Kind: "session.start", Data: json.RawMessage(`"x"`)},
		{Seq: 7, Time: at, Kind: "k", Session: "we\"ird\\\x01é", Data: json.RawMessage(`[1, 2]`)},
	} {
		b, seqAt := encodeFrame(nil, &p)
		strconv.AppendInt(b[seqAt:seqAt], p.Seq, 10)
		payload := b[frameHeader:]
		got, err := decodePayload(payload, nil)
		if err != nil || got.Seq != p.Seq || !got.Time.Equal(p.Time) || got.Kind != p.Kind || got.Session != p.Session || string(got.Data) != string(p.Data) {
			f.Fatalf("frame %d did not round-trip: %+v %v", i, got, err)
		}
		f.Add(payload)
	}
	// Frames of the previous version, the time as text.
	f.Add(oldFramePayload(&pending{Seq: 3, Time: at, Kind: "statement", Session: "s", Data: json.RawMessage(`{"sql":"SELECT 1"}`)}))
	f.Add([]byte(`{"seq":4                  ,"time_ns":-5,"kind":"a","session":"","data":1}`))
	f.Add([]byte(`{"seq":5                  ,"time_ns":012,"kind":"a","session":"","data":1}`))
	f.Add([]byte(`{"seq":6                  ,"time_ns":99999999999999999999,"kind":"a","session":"","data":1}`))
	f.Add([]byte(`{"seq":01                 ,"time":"2026-01-02T03:04:05Z","kind":"a","session":"","data":1 }`))
	f.Add([]byte(`{"seq":2                  ,"time":"2026-01-02T03:04:05+01:00","kind":"a","session":"","data":{},"x":1}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		own, ok := decodeOwn(payload, &nameCache{})
		if !ok {
			return
		}
		sameAsFormatted(t, &own)
		if !json.Valid(own.Data) {
			return // the data is not scanned again (see decodeOwn)
		}
		var w struct {
			pending
			TimeNS *int64 `json:"time_ns"`
		}
		if err := json.Unmarshal(payload, &w); err != nil {
			t.Fatalf("read %q, which encoding/json refuses: %v", payload, err)
		}
		want := w.pending
		if w.TimeNS != nil {
			want.Time = time.Unix(0, *w.TimeNS).UTC()
		}
		if own.Seq != want.Seq || !own.Time.Equal(want.Time) || own.Time.Location().String() != want.Time.Location().String() ||
			own.Kind != want.Kind || own.Session != want.Session || string(own.Data) != string(want.Data) {
			t.Fatalf("decoded %q as %+v, encoding/json %+v", payload, own, want)
		}
	})
}

// FuzzRingRecovery feeds arbitrary bytes as the ring a killed daemon left
// (only root can write it, but a bug or a bad disk page could): opening
// the journal must not panic, keeps only whole, checksummed frames beyond
// the segments, in seq order, and appends go on after them.
func FuzzRingRecovery(f *testing.F) {
	const size = 4096
	// A real ring's bytes: three frames, then head and tail as left.
	seedDir := f.TempDir()
	j, err := openJournalRing(seedDir, 1<<30, 0, size)
	if err != nil || j.rg == nil {
		f.Skip("no ring here:", err)
	}
	for i := 1; i <= 3; i++ {
		_ = j.append(ringRecord(i))
	}
	// And two statements copied in raw (rawframe.go), for the start to
	// encode.
	for _, tc := range rawCases()[3:5] {
		j.appendRaw(1764500000e9, tc.kind, tc.sess, &tc.st, true)
	}
	body := append([]byte(nil), j.rg.buf...)
	head := j.rg.head()
	_ = j.close()
	f.Add(uint64(0), head, body)
	f.Add(uint64(0), head-3, body)
	f.Add(uint64(size-10), uint64(size+50), body)
	f.Add(uint64(5), uint64(1), body)
	f.Fuzz(func(t *testing.T, tail, head uint64, body []byte) {
		dir := t.TempDir()
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		path := ringPath(dir)
		mem := make([]byte, ringHeader+size)
		copy(mem, ringMagic)
		binary.LittleEndian.PutUint64(mem[offSize:], size)
		binary.LittleEndian.PutUint64(mem[offDev:], uint64(st.Dev))
		binary.LittleEndian.PutUint64(mem[offIno:], st.Ino)
		binary.LittleEndian.PutUint64(mem[offHead:], head)
		binary.LittleEndian.PutUint64(mem[offTail:], tail)
		copy(mem[ringHeader:], body)
		if err := os.WriteFile(path, mem, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(path) })
		j, err := openJournalRing(dir, 1<<30, 0, size)
		if err != nil {
			t.Fatal(err)
		}
		defer j.close()
		recs, err := j.read(0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(recs); i++ {
			if recs[i].Seq <= recs[i-1].Seq {
				t.Fatalf("recovered seqs out of order: %d after %d", recs[i].Seq, recs[i-1].Seq)
			}
		}
		last := j.lastSeq()
		if err := j.append(&pending{Kind: "statement", Data: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
		after, err := j.read(last, 10)
		if err != nil || len(after) != 1 || after[0].Seq != last+1 {
			t.Fatalf("append after recovery (last %d): %+v %v", last, after, err)
		}
	})
}

// sameAsFormatted fails t unless p's record, with the frame's bytes the
// decoder kept, hashes and stores as the same record formatted field by
// field: the frame's bytes are only a shortcut.
func sameAsFormatted(t *testing.T, p *pending) {
	t.Helper()
	r := Record{Daemon: "d", Seq: p.Seq, Time: p.Time, Kind: p.Kind, Session: p.Session, Data: p.Data, PrevHash: genesis, Hash: genesis, frame: p.frame}
	plain := r
	plain.frame = frameText{}
	if got, want := appendLine(nil, &r), appendLine(nil, &plain); string(got) != string(want) {
		t.Fatalf("line from the frame %q, formatted %q", got, want)
	}
	prev := make([]byte, sha256.Size)
	if got, want := hashLink(prev, &r), hashLink(prev, &plain); got != want {
		t.Fatalf("hash from the frame %x, formatted %x", got, want)
	}
}

// The record read from a frame takes its seq, time, kind and session
// bytes from the frame where they stand in the line and hash as they are,
// and is formatted where they do not (the line escapes <, > and &, leaves
// out an empty session; a frame of the previous version has the time as
// text): either way the same line and hash.
func TestFrameTextStandsIn(t *testing.T) {
	at := time.Unix(1764500000, 123456789)
	for _, tc := range []struct {
		name     string
		p        pending
		old      bool // the previous version's frame
		wantHead bool
	}{
		{"statement", pending{Seq: 5, Time: at, Kind: kindStatement, Session: "0f3c9a", Data: json.RawMessage(`{"sql":"SELECT 1"}`)}, false, true},
		{"largest seq", pending{Seq: 1<<63 - 1, Time: at, Kind: kindStatement, Session: "s", Data: json.RawMessage(`1`)}, false, true},
		{"before 1970", pending{Seq: 9, Time: time.Unix(-3, 5), Kind: "k", Session: "s", Data: json.RawMessage(`1`)}, false, true},
		{"at 1970", pending{Seq: 9, Time: time.Unix(0, 0), Kind: "k", Session: "s", Data: json.RawMessage(`1`)}, false, true},
		{"no session", pending{Seq: 6, Time: at, Kind: "credential.sweep", Data: json.RawMessage(`{}`)}, false, false},
		{"session the line escapes", pending{Seq: 7, Time: at, Kind: "k", Session: "a<b>&c", Data: json.RawMessage(`{}`)}, false, false},
		{"kind the line escapes", pending{Seq: 7, Time: at, Kind: "k&", Session: "s", Data: json.RawMessage(`{}`)}, false, false},
		{"escaped in the frame", pending{Seq: 8, Time: at, Kind: "k", Session: "we\"ird\x01é", Data: json.RawMessage(`{}`)}, false, false},
		{"previous version", pending{Seq: 3, Time: at, Kind: kindStatement, Session: "s", Data: json.RawMessage(`{}`)}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var payload []byte
			if tc.old {
				payload = oldFramePayload(&tc.p)
			} else {
				b, seqAt := encodeFrame(nil, &tc.p)
				strconv.AppendInt(b[seqAt:seqAt], tc.p.Seq, 10)
				payload = b[frameHeader:]
			}
			got, err := decodePayload(payload, nil)
			if err != nil || got.Seq != tc.p.Seq || !got.Time.Equal(tc.p.Time) || got.Kind != tc.p.Kind || got.Session != tc.p.Session {
				t.Fatalf("decoded %+v (%v), want %+v", got, err, tc.p)
			}
			if (got.frame.head != nil) != tc.wantHead {
				t.Fatalf("frame text kept for the line: %q, want it %v", got.frame.head, tc.wantHead)
			}
			sameAsFormatted(t, &got)
		})
	}
}

// A nameCache hands back each name as it is, whichever of its recent
// slots and map it comes from: names that share a slot (same length, same
// last and middle bytes), the empty name, and more names than the map
// keeps.
func TestNameCache(t *testing.T) {
	var c nameCache
	names := []string{"statement", "abcdefgh1", "zbcdefgh1", "statement", "", "s", "t", "s",
		"abcdefgh1", "session.start", "zbcdefgh1"}
	for i := 0; i < 3*namesKept; i++ {
		names = append(names, strconv.Itoa(i), "statement")
	}
	for i, n := range names {
		if got := c.get([]byte(n)); got != n {
			t.Fatalf("name %d: got %q, want %q", i, got, n)
		}
	}
	if len(c.m) > namesKept {
		t.Fatalf("the map holds %d names, more than %d", len(c.m), namesKept)
	}
}
