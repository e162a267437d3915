package guard

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/airlockhq/airlock/internal/policy"
)

// batchNames behaves as the two maps it replaced (names parsed, names
// closed, each message for a name undoing the other's), in the array and
// past it.
func TestBatchNames(t *testing.T) {
	for _, tc := range []struct {
		name    string
		names   int // distinct names used
		ops     int
		seed    uint64
		wantMap bool
	}{
		{"one name", 1, 50, 1, false},
		{"fills the array", smallBatch, 200, 2, false},
		{"past the array", 3 * smallBatch, 500, 3, true},
		{"many", 200, 2000, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(tc.seed, 0))
			var got batchNames
			parsed := map[string]preparedStmt{}
			closed := map[string]bool{}
			for op := range tc.ops {
				name := strconv.Itoa(rng.IntN(tc.names))
				if name == "0" {
					name = "" // the unnamed statement
				}
				switch rng.IntN(3) {
				case 0:
					ps := preparedStmt{d: policy.Decision{Action: policy.Action(rng.IntN(3)), Rule: strconv.Itoa(op)}}
					got.parse([]byte(name), ps)
					parsed[name] = ps
					delete(closed, name)
				case 1:
					got.close([]byte(name))
					closed[name] = true
					delete(parsed, name)
				}
				ps, ok := got.parsed([]byte(name))
				want, wantOK := parsed[name]
				if ok != wantOK || ps.d != want.d {
					t.Fatalf("op %d: parsed(%q) = %+v, %v; want %+v, %v", op, name, ps.d, ok, want.d, wantOK)
				}
			}
			if (got.index != nil) != tc.wantMap {
				t.Fatalf("index built: %v, want %v", got.index != nil, tc.wantMap)
			}
			// What the batch leaves for the session: every name once.
			seen := map[string]bool{}
			for i := range got.len() {
				e := got.at(i)
				if seen[e.name] {
					t.Fatalf("%q listed twice", e.name)
				}
				seen[e.name] = true
				if e.closed != closed[e.name] {
					t.Fatalf("%q closed %v, want %v", e.name, e.closed, closed[e.name])
				}
				if !e.closed && e.ps.d != parsed[e.name].d {
					t.Fatalf("%q parsed as %+v, want %+v", e.name, e.ps.d, parsed[e.name].d)
				}
			}
			if len(seen) != len(parsed)+len(closed) {
				t.Fatalf("%d names listed, want %d", len(seen), len(parsed)+len(closed))
			}
		})
	}
}
