package audit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
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
