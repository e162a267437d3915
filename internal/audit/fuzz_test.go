package audit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
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
