package session

import (
	"strings"
	"testing"
	"time"
)

func TestNewIDForm(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := NewID()
		if len(id) != 16 || strings.Trim(id, idAlphabet) != "" {
			t.Fatalf("id %q: want 16 characters of %s", id, idAlphabet)
		}
		if seen[id] {
			t.Fatalf("id %q made twice", id)
		}
		seen[id] = true
	}
}

// TestNewIDOrder: ids sort by the second they were made in (within the
// 2^20 s cycle), whatever their random part.
func TestNewIDOrder(t *testing.T) {
	base := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	cycle := time.Duration(1<<idTimeBits) * time.Second
	for _, tc := range []struct {
		name   string
		a, b   time.Time
		before bool // a's ids sort before b's
	}{
		{"next second", base, base.Add(time.Second), true},
		{"an hour later", base, base.Add(time.Hour), true},
		{"16 s later (the low time bits)", base.Truncate(16 * time.Second), base.Truncate(16 * time.Second).Add(15 * time.Second), true},
		{"a day later", base, base.Add(24 * time.Hour), true},
		{"one cycle later: same prefix", base, base.Add(cycle), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 200; i++ {
				x, y := newID(tc.a), newID(tc.b)
				if tc.before && x >= y {
					t.Fatalf("%s (at %s) does not sort before %s (at %s)", x, tc.a, y, tc.b)
				}
				if !tc.before && x[:4] != y[:4] {
					t.Fatalf("%s and %s: want the same time prefix", x, y)
				}
			}
		})
	}
}

// TestNewIDRandomPart: the 60 bits after the time vary (a fixed or
// low-entropy part would make ids of one second clash).
func TestNewIDRandomPart(t *testing.T) {
	now := time.Now()
	var first [16]map[byte]bool
	for i := range first {
		first[i] = map[byte]bool{}
	}
	for i := 0; i < 2000; i++ {
		id := newID(now)
		for k := 0; k < 16; k++ {
			first[k][id[k]] = true
		}
	}
	for k := 0; k < 4; k++ {
		if len(first[k]) != 1 {
			t.Errorf("character %d of ids made in one second varies (%d values): it is the time", k, len(first[k]))
		}
	}
	for k := 4; k < 16; k++ {
		if len(first[k]) < 16 {
			t.Errorf("character %d took %d values in 2000 ids: want the random part's 32", k, len(first[k]))
		}
	}
}

// TestNewIDAnyClock: whatever the clock says (before 1970, far ahead, the
// zero time), an id is 16 characters of the alphabet, which is what a
// role name (a prefix and the id) and application_name take unquoted.
func TestNewIDAnyClock(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   time.Time
	}{
		{"zero time", time.Time{}},
		{"before 1970", time.Unix(-1, 0)},
		{"the epoch", time.Unix(0, 0)},
		{"past 2106", time.Unix(1<<33, 0)},
		{"now", time.Now()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 100 {
				id := newID(tc.at)
				if len(id) != 16 || strings.Trim(id, idAlphabet) != "" {
					t.Fatalf("id %q at %s: want 16 characters of %s", id, tc.at, idAlphabet)
				}
			}
		})
	}
}
