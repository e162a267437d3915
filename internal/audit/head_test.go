package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The head note survives a write cut short: the slot being written is
// spoiled, the other still holds the head before it; a head file of the
// previous layout is read until the first write replaces it.
func TestHeadNote(t *testing.T) {
	h1 := headFile{Seq: 7, Hash: strings.Repeat("a", 64)}
	h2 := headFile{Seq: 9, Hash: strings.Repeat("b", 64)}
	h3 := headFile{Seq: 12, Hash: strings.Repeat("c", 64)}
	legacy := `{"seq":5,"hash":"` + strings.Repeat("d", 64) + `"}`
	spoil := func(off int) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("#garbage#"), int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name    string
		start   string // file content before; "" none
		writes  []headFile
		damage  func(t *testing.T, path string)
		want    int64 // seq read back
		wantErr bool
	}{
		{"no file", "", nil, nil, 0, false},
		// A kill between creating the file and writing its first slot.
		{"created, never written", "", nil, func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, 0, false},
		{"created, size but no data", strings.Repeat("\x00", headSlot), nil, nil, 0, false},
		{"previous layout", legacy, nil, nil, 5, false},
		{"previous layout, then a write", legacy, []headFile{h1}, nil, 7, false},
		{"previous layout, first write cut short", legacy, []headFile{h1}, spoil(headSlot + 20), 5, false},
		{"one write", "", []headFile{h1}, nil, 7, false},
		{"three writes", "", []headFile{h1, h2, h3}, nil, 12, false},
		{"last write cut short (slot 0)", "", []headFile{h1, h2, h3}, spoil(20), 9, false},
		{"last write cut short (slot 1)", "", []headFile{h1, h2}, spoil(headSlot + 20), 7, false},
		{"checksum damaged", "", []headFile{h1, h2}, spoil(headSlot + headPayload), 7, false},
		{"both slots damaged", "", []headFile{h1, h2}, func(t *testing.T, path string) { spoil(0)(t, path); spoil(headSlot)(t, path) }, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "head")
			if tc.start != "" {
				if err := os.WriteFile(path, []byte(tc.start), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, hn, err := readHead(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, hf := range tc.writes {
				if err := hn.write(hf); err != nil {
					t.Fatal(err)
				}
			}
			if tc.damage != nil {
				tc.damage(t, path)
			}
			got, hn2, err := readHead(path)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("read %+v from a head file with no good slot", got)
				}
				return
			}
			if err != nil || got.Seq != tc.want {
				t.Fatalf("read seq %d (%v), want %d", got.Seq, err, tc.want)
			}
			// Writing on goes to the other slot: the head just read
			// stays until the next one is down.
			next := headFile{Seq: tc.want + 1, Hash: strings.Repeat("e", 64)}
			if err := hn2.write(next); err != nil {
				t.Fatal(err)
			}
			if again, _, err := readHead(path); err != nil || again.Seq != next.Seq {
				t.Fatalf("after writing on: %+v %v", again, err)
			}
		})
	}
}
