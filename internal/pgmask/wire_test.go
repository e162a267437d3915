package pgmask

import (
	"errors"
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
		enc(&pgproto3.Describe{ObjectType: 'P', Name: "p1"}),
		enc(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}),
		enc(&pgproto3.Describe{ObjectType: 'P'}),
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
		f.Add(m[0], m[5:])
	}
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		switch typ {
		case 'B', 'E', 'D':
			checkPortal(t, typ, body)
		}
	})
}

var errNotPortal = errors.New("not a portal")

func checkPortal(t *testing.T, typ byte, body []byte) {
	t.Helper()
	var want string
	var err error
	var got []byte
	var ok bool
	switch typ {
	case 'B':
		var b pgproto3.Bind
		err, want = b.Decode(body), b.DestinationPortal
		got, ok = bindPortal(body)
	case 'D':
		// A statement's Describe names no portal: refused like a
		// malformed one.
		var d pgproto3.Describe
		if err, want = d.Decode(body), d.Name; err == nil && d.ObjectType != 'P' {
			err = errNotPortal
		}
		got, ok = describedPortal(body)
	default:
		var e pgproto3.Execute
		err, want = e.Decode(body), e.Portal
		got, ok = executePortal(body)
	}
	if ok != (err == nil) || ok && string(got) != want {
		t.Fatalf("%c %q: got %q, %v; pgproto3: %q, %v", typ, body, got, ok, want, err)
	}
}
