package pgmask

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func wireSeeds() [][]byte {
	return [][]byte{
		enc(&pgproto3.Bind{}),
		enc(&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", ParameterFormatCodes: []int16{1, 0},
			Parameters: [][]byte{[]byte("41"), nil}, ResultFormatCodes: []int16{1}}),
		enc(&pgproto3.Execute{Portal: "p1", MaxRows: 10}),
		enc(&pgproto3.Execute{}),
	}
}

// TestWirePortals: the in-place walks accept what pgproto3 decodes, refuse
// what it refuses, and find the same portal, on whole and cut messages.
func TestWirePortals(t *testing.T) {
	for _, m := range wireSeeds() {
		for cut := 5; cut <= len(m); cut++ {
			checkPortal(t, m[0], m[5:cut])
		}
	}
}

func FuzzWirePortals(f *testing.F) {
	for _, m := range wireSeeds() {
		f.Add(m[0] == 'B', m[5:])
	}
	f.Fuzz(func(t *testing.T, bind bool, body []byte) {
		typ := byte('E')
		if bind {
			typ = 'B'
		}
		checkPortal(t, typ, body)
	})
}

func checkPortal(t *testing.T, typ byte, body []byte) {
	t.Helper()
	var want string
	var err error
	var got []byte
	var ok bool
	if typ == 'B' {
		var b pgproto3.Bind
		err, want = b.Decode(body), b.DestinationPortal
		got, ok = bindPortal(body)
	} else {
		var e pgproto3.Execute
		err, want = e.Decode(body), e.Portal
		got, ok = executePortal(body)
	}
	if ok != (err == nil) || ok && string(got) != want {
		t.Fatalf("%c %q: got %q, %v; pgproto3: %q, %v", typ, body, got, ok, want, err)
	}
}
