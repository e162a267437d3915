package audit

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/airlockhq/airlock/internal/session"
)

// fullCols is what colsOf gave when it decoded the whole SessionStart:
// the columns verify compared stores written before against.
func fullCols(data []byte) (indexCols, bool) {
	var st SessionStart
	if json.Unmarshal(data, &st) != nil {
		return indexCols{uid: -1, pid: -1}, false
	}
	return indexCols{person: st.Person.Name, uid: int64(st.Person.UID), pid: int64(st.Process.PID), exe: st.Process.Exe, connection: st.Connection}, true
}

func startData(t testing.TB, s *session.Session) []byte {
	t.Helper()
	_, data, err := fromEvent(session.Event{Kind: session.KindSessionStart, Start: s}, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := encodeData(data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestColsOf(t *testing.T) {
	odd := fakeSession(nil, 4294967295, "o'brien \"x\" \u00e9\u2028", "/opt/a b/\\bin\x01")
	odd.Connection = "prod\u0000eu"
	for _, tc := range []struct {
		name string
		kind string
		data []byte
		want indexCols
	}{
		{"recorded start", kindStart, startData(t, fakeSession(nil, 1001, "alice", "/usr/bin/psql")),
			indexCols{person: "alice", uid: 1001, pid: 4242, exe: "/usr/bin/psql", connection: "prod"}},
		{"recorded start, odd text and the largest uid", kindStart, startData(t, odd),
			indexCols{person: odd.Person.Name, uid: 4294967295, pid: 4242, exe: odd.Origin.Exe, connection: odd.Connection}},
		{"not a start", kindStatement, []byte(`{"person":{"name":"alice","uid":1}}`), indexCols{uid: -1, pid: -1}},
		{"not JSON", kindStart, []byte(`{"person":`), indexCols{uid: -1, pid: -1}},
		{"uid out of range", kindStart, []byte(`{"person":{"name":"alice","uid":-1}}`), indexCols{uid: -1, pid: -1}},
		{"a later key wins", kindStart, []byte(`{"connection":"a","connection":"b","process":{"pid":1},"process":{"exe":"/x"}}`),
			indexCols{uid: 0, pid: 1, exe: "/x", connection: "b"}},
		{"keys match whatever their case", kindStart, []byte(`{"CONNECTION":"c","Person":{"NAME":"bob","Uid":7}}`),
			indexCols{person: "bob", uid: 7, connection: "c"}},
		{"null person", kindStart, []byte(`{"person":null,"connection":"c"}`), indexCols{connection: "c"}},
		// Only a store edit makes such a start (the daemon's always decode
		// whole, FuzzStartColsFromSession), and verify names it by its
		// hash before it compares columns; rows are written and checked
		// through colsOf alike.
		{"another field does not decode", kindStart, []byte(`{"person":{"name":"a","uid":1},"process":{"pid":2,"cmdline":5},"started":"x"}`),
			indexCols{person: "a", uid: 1, pid: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := colsOf(tc.kind, tc.data)
			if got != tc.want {
				t.Errorf("colsOf = %+v, want %+v", got, tc.want)
			}
			if tc.kind != kindStart {
				return
			}
			if full, ok := fullCols(tc.data); ok && full != got {
				t.Errorf("colsOf = %+v, decoding the whole start gives %+v", got, full)
			}
		})
	}
}

// FuzzColsOf: for any start record that decodes as a SessionStart,
// colsOf gives the columns decoding all of it gives, so that verify judges
// the rows of stores written before it decoded only part alike.
func FuzzColsOf(f *testing.F) {
	f.Add(startData(f, fakeSession(nil, 1001, "alice", "/usr/bin/psql")))
	f.Add([]byte(`{"connection":"a","connection":"b","process":{"pid":1},"process":{"exe":"/x"}}`))
	f.Add([]byte(`{"CONNECTION":"c","Person":{"NAME":"bob","Uid":7},"ancestry":[{"pid":1}]}`))
	f.Add([]byte(`{"person":null,"process":{"pid":4294967295,"cmdline":["a","b"]},"started":"2026-12-01T05:00:00Z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got := colsOf(kindStart, data)
		if full, ok := fullCols(data); ok && full != got {
			t.Fatalf("colsOf(%q) = %+v, decoding the whole start gives %+v", data, got, full)
		}
	})
}

// FuzzStartColsFromSession: the agent writes its own executable path,
// command line and process name (any bytes but NUL), and its parents'. The
// start record the daemon makes of them decodes whole, and its index
// columns are the session's own uid, pid, person and connection: no
// process text hides the session from its person's `airlock sessions`
// (a start that does not decode is indexed under uid -1) or files it
// under another uid.
func FuzzStartColsFromSession(f *testing.F) {
	f.Add("/usr/bin/psql", "psql", "-c", "/bin/sh", uint32(1001), uint32(4242))
	f.Add("/tmp/x\xff\xfe", "a\"b\\c", `","person":{"name":"root","uid":0},"x":"`, "\u2028\x00", uint32(0), uint32(1))
	f.Add(`/p","uid":0,"exe":"/bin/ok`, "\x7f\x1b", `}}{"person":{"uid":0}}`, "\xed\xa0\x80", uint32(4294967295), uint32(4294967295))
	f.Fuzz(func(t *testing.T, exe, comm, arg, parent string, uid, pid uint32) {
		s := fakeSession(nil, uid, "alice", exe)
		s.Origin.Comm, s.Origin.PID = comm, pid
		s.Origin.Cmdline = []string{exe, arg}
		s.Origin.Parents = []session.Proc{{PID: 1, Exe: parent, Cmdline: []string{parent, arg}}}
		data := startData(t, s)
		full, ok := fullCols(data)
		if !ok {
			t.Fatalf("the start record of exe %q, comm %q, arg %q does not decode: %s", exe, comm, arg, data)
		}
		got := colsOf(kindStart, data)
		if got != full {
			t.Fatalf("colsOf = %+v, decoding the whole start gives %+v", got, full)
		}
		if got.uid != int64(uid) || got.pid != int64(pid) || got.person != "alice" || got.connection != s.Connection {
			t.Fatalf("exe %q, arg %q: columns %+v, want uid %d, pid %d, alice, %s", exe, arg, got, uid, pid, s.Connection)
		}
		if utf8.ValidString(exe) && got.exe != exe {
			t.Fatalf("exe %q indexed as %q", exe, got.exe)
		}
	})
}
