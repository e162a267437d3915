package pgmask

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// benchPolicyYAML is tests/bench/run.sh's airlock-mask rules: bench_people's
// email hashed, its card partially starred.
const benchPolicyYAML = `
rules:
  - name: pii
    columns: ["public.bench_people.email"]
    strategy: hash
  - name: cards
    columns: ["public.bench_people.card"]
    strategy: partial
    keep: 4
`

// Table OIDs of the benchmark's catalog.
const (
	oidPeople   = 16400 // bench_people (id, name, email, card, plan): two masked columns
	oidAccounts = 16500 // pgbench_accounts: no rule names it
	oidOther    = 16600 // another table shaped like bench_people, no rule
)

func benchStage(b testing.TB) *Stage {
	rs := compileRules(b, benchPolicyYAML)
	cat := fixedCatalog{}
	cols := []string{"id", "name", "email", "card", "plan"}
	for i, c := range cols {
		cat[Attr{oidPeople, int16(i + 1)}] = []mask.Source{{Schema: "public", Table: "bench_people", Column: c}}
		cat[Attr{oidOther, int16(i + 1)}] = []mask.Source{{Schema: "public", Table: "other_people", Column: c}}
	}
	for i, c := range []string{"aid", "bid", "abalance", "filler"} {
		cat[Attr{oidAccounts, int16(i + 1)}] = []mask.Source{{Schema: "public", Table: "pgbench_accounts", Column: c}}
	}
	s := New(rs.ForSubject(mask.Subject{Process: "agent"}), cat, session.New(nil), nil)
	s.TrackLineage(benchClassifier)
	return s
}

// benchClassifier is the daemon's shared classifier: the guard has
// classified each text before the stage sees it.
var benchClassifier = sqlclass.New(sqlclass.Options{})

// statement is one request and the server's answer to it, as the stage
// sees them (the server's answer includes the portal description the
// stage's own Describe asks for).
type statement struct {
	client []pgwire.ClientMsg
	server []pgwire.ServerMsg
	masked int // DataRows the stage must replace
}

func msgsOf(encoded ...[]byte) (out []pgwire.ServerMsg) {
	for _, m := range encoded {
		out = append(out, pgwire.ServerMsg{Type: m[0], Body: m[5:], Len: len(m) - 5})
	}
	return out
}

func clientOf(encoded ...[]byte) (out []pgwire.ClientMsg) {
	for _, m := range encoded {
		out = append(out, pgwire.ClientMsg{Type: m[0], Body: m[5:]})
	}
	return out
}

// peopleResult is 20 rows of bench_people's shape from table oid, in text
// or binary format (id as a binary int4, the text columns as their bytes:
// what pgx asks for).
func peopleResult(oid uint32, format int16, rows int) (desc []byte, data [][]byte) {
	var fields []pgproto3.FieldDescription
	for i, c := range []struct {
		name string
		typ  uint32
	}{{"id", 23}, {"name", 25}, {"email", 25}, {"card", 25}, {"plan", 25}} {
		fields = append(fields, pgproto3.FieldDescription{Name: []byte(c.name), TableOID: oid, TableAttributeNumber: uint16(i + 1),
			DataTypeOID: c.typ, DataTypeSize: -1, TypeModifier: -1, Format: format})
	}
	desc = enc(&pgproto3.RowDescription{Fields: fields})
	for g := 4711; g < 4711+rows; g++ {
		id := []byte(fmt.Sprint(g))
		if format == 1 {
			id = binary.BigEndian.AppendUint32(nil, uint32(g))
		}
		data = append(data, enc(&pgproto3.DataRow{Values: [][]byte{id, fmt.Appendf(nil, "Person %d", g),
			fmt.Appendf(nil, "user%d@corp-mail.com", g), fmt.Appendf(nil, "%d", 4000000000000000+g), []byte("pro")}}))
	}
	return desc, data
}

// simpleStatement: Query, then RowDescription, the rows, CommandComplete,
// ReadyForQuery.
func simpleStatement(sql string, desc []byte, rows [][]byte) statement {
	st := statement{client: clientOf(enc(&pgproto3.Query{String: sql}))}
	st.server = msgsOf(desc)
	st.server = append(st.server, msgsOf(rows...)...)
	st.server = append(st.server, msgsOf(enc(&pgproto3.CommandComplete{CommandTag: fmt.Appendf(nil, "SELECT %d", len(rows))}),
		enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}))...)
	return st
}

// preparedStatement: a named statement run again. libpq's PQexecPrepared
// sends Bind, Describe, Execute, Sync, and the server answers
// BindComplete, the portal's description (which the stage reads too), the
// rows, CommandComplete, ReadyForQuery; pgx sends no Describe, and the
// description the server sends is the one the stage asks for.
func preparedStatement(desc []byte, rows [][]byte, format int16, clientDescribes bool) statement {
	st := statement{client: clientOf(
		enc(&pgproto3.Bind{PreparedStatement: "P0_1", Parameters: [][]byte{[]byte("41")}, ResultFormatCodes: []int16{format}}))}
	if clientDescribes {
		st.client = append(st.client, clientOf(enc(&pgproto3.Describe{ObjectType: 'P'}))...)
	}
	st.client = append(st.client, clientOf(enc(&pgproto3.Execute{}), enc(&pgproto3.Sync{}))...)
	st.server = msgsOf(enc(&pgproto3.BindComplete{}), desc)
	st.server = append(st.server, msgsOf(rows...)...)
	st.server = append(st.server, msgsOf(enc(&pgproto3.CommandComplete{CommandTag: fmt.Appendf(nil, "SELECT %d", len(rows))}),
		enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}))...)
	return st
}

func accountsResult() (desc []byte, rows [][]byte) {
	desc = enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), TableOID: oidAccounts,
		TableAttributeNumber: 3, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}})
	return desc, [][]byte{enc(&pgproto3.DataRow{Values: [][]byte{[]byte("0")}})}
}

// TestDescriptionsInTurn: with every description kept by its bytes,
// statements in turn (masked, then not, in text and binary, simple and
// prepared) each get their own decision, every time: the masked results'
// rows are all rewritten and carry no original, the others go untouched.
func TestDescriptionsInTurn(t *testing.T) {
	pd, prows := peopleResult(oidPeople, 0, 20)
	pdb, prowsb := peopleResult(oidPeople, 1, 20)
	od, orows := peopleResult(oidOther, 0, 20)
	odb, orowsb := peopleResult(oidOther, 1, 20)
	ad, arows := accountsResult()
	stmts := []statement{
		simpleStatement("SELECT * FROM bench_people", pd, prows),
		simpleStatement("SELECT * FROM other_people", od, orows),
		preparedStatement(pdb, prowsb, 1, true),
		preparedStatement(odb, orowsb, 1, false),
		preparedStatement(pdb, prowsb, 1, false),
		preparedStatement(odb, orowsb, 1, true),
		simpleStatement("SELECT abalance FROM pgbench_accounts WHERE aid = 41", ad, arows),
	}
	s := benchStage(t)
	for round := range 3 {
		for k := range stmts {
			st := &stmts[k]
			for i := range st.client {
				s.Client(&st.client[i])
			}
			masked := k == 0 || k == 2 || k == 4
			for i := range st.server {
				m := &st.server[i]
				v := s.Server(m)
				if m.Type != 'D' {
					continue
				}
				if masked != (v.Action == pgwire.Replace) {
					t.Fatalf("round %d, statement %d: row %d: %v", round, k, i, v.Action)
				}
				if masked && (bytes.Contains(v.Msgs, []byte("@corp-mail.com")) || bytes.Contains(v.Msgs, []byte("400000000000"))) {
					t.Fatalf("round %d, statement %d: unmasked value in %q", round, k, v.Msgs)
				}
			}
		}
	}
}

// threadCPU is the CPU time of the calling thread.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStatement is the stage's whole work for one statement: the
// request, then every message of its answer. "masked" is the benchmark's
// masked workload (tests/bench/run.sh: 20 bench_people rows, email hashed
// and card starred: 40 values), in text (simple protocol) and binary
// (a prepared statement, pgx's formats); "fastpath" is a result no rule
// touches: pgbench -S's one row, 20 rows of a table no rule names, and
// three statements in turn (their descriptions alternate). Besides ns/op,
// cpu-ns/op is the benchmark thread's own CPU time per statement, which a
// busy machine does not inflate.
func BenchmarkStatement(b *testing.B) {
	pd, prows := peopleResult(oidPeople, 0, 20)
	pdb, prowsb := peopleResult(oidPeople, 1, 20)
	od, orows := peopleResult(oidOther, 0, 20)
	ad, arows := accountsResult()
	od1, orows1 := peopleResult(oidOther, 0, 1)
	people := "SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 4711 AND 4730"
	mixed := []statement{
		simpleStatement("SELECT abalance FROM pgbench_accounts WHERE aid = 41", ad, arows),
		simpleStatement("SELECT * FROM other_people WHERE id = 4711", od1, orows1),
		simpleStatement("SELECT id, name, email, card, plan FROM other_people LIMIT 20", od, orows),
	}
	for _, tt := range []struct {
		name  string
		stmts []statement
	}{
		{"masked/simple-text-20rows", []statement{simpleStatement(people, pd, prows)}},
		{"masked/prepared-binary-20rows", []statement{preparedStatement(pdb, prowsb, 1, true)}},
		{"masked/prepared-binary-20rows-pgx", []statement{preparedStatement(pdb, prowsb, 1, false)}},
		{"fastpath/simple-1row", []statement{simpleStatement("SELECT abalance FROM pgbench_accounts WHERE aid = 41", ad, arows)}},
		{"fastpath/prepared-1row", []statement{preparedStatement(ad, arows, 0, true)}},
		{"fastpath/prepared-1row-pgx", []statement{preparedStatement(ad, arows, 0, false)}},
		{"fastpath/simple-20rows", []statement{simpleStatement("SELECT id, name, email, card, plan FROM other_people LIMIT 20", od, orows)}},
		{"fastpath/3-statements-in-turn", mixed},
	} {
		for i := range tt.stmts {
			if tt.name[:6] == "masked" {
				tt.stmts[i].masked = 20
			}
		}
		b.Run(tt.name, func(b *testing.B) {
			s := benchStage(b)
			run := func(st *statement) {
				for i := range st.client {
					s.Client(&st.client[i])
				}
				replaced := 0
				for i := range st.server {
					v := s.Server(&st.server[i])
					switch {
					case v.Action == pgwire.Forward:
					case st.server[i].Type == 'D':
						replaced++
					case st.server[i].Type != 'T':
						b.Fatalf("message %c not forwarded", st.server[i].Type)
					}
				}
				if replaced != st.masked {
					b.Fatalf("%d rows replaced, want %d", replaced, st.masked)
				}
			}
			for i := range tt.stmts {
				run(&tt.stmts[i]) // decide each description once, as a session does
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cpu := threadCPU()
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				run(&tt.stmts[n%len(tt.stmts)])
				n++
			}
			if used := threadCPU() - cpu; n > 0 {
				b.ReportMetric(float64(used.Nanoseconds())/float64(n), "cpu-ns/op")
			}
		})
	}
}

// TestTwoPortals: the stage's Describe goes before whatever follows a Bind
// that the client does not describe itself, and each portal's rows are
// masked by that portal's own description: Bind p1 (bench_people, binary),
// Bind p2 (another table, text), the client's Describe of p2, Execute p1,
// Execute p2, Sync.
func TestTwoPortals(t *testing.T) {
	pdb, prowsb := peopleResult(oidPeople, 1, 3)
	od, orows := peopleResult(oidOther, 0, 3)
	bind := func(portal string, format int16) []byte {
		return enc(&pgproto3.Bind{DestinationPortal: portal, PreparedStatement: "s", ResultFormatCodes: []int16{format}})
	}
	client := clientOf(bind("p1", 1), bind("p2", 0), enc(&pgproto3.Describe{ObjectType: 'P', Name: "p2"}),
		enc(&pgproto3.Execute{Portal: "p1"}), enc(&pgproto3.Execute{Portal: "p2"}), enc(&pgproto3.Sync{}))
	s := benchStage(t)
	var sent []byte // what goes to the server
	for i := range client {
		m := &client[i]
		v := s.Client(m)
		if v.Action == pgwire.Replace {
			sent = append(sent, v.Msgs...)
			continue
		}
		sent = append(sent, m.Type, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(sent[len(sent)-4:], uint32(len(m.Body)+4))
		sent = append(sent, m.Body...)
	}
	var types []string
	for b := sent; len(b) >= 5; b = b[1+binary.BigEndian.Uint32(b[1:]):] {
		types = append(types, string(b[0]))
		if b[0] == 'D' {
			types[len(types)-1] += "(" + string(b[5:len(b[:1+binary.BigEndian.Uint32(b[1:])])-1]) + ")"
		}
	}
	if got, want := fmt.Sprint(types), "[B D(Pp1) B D(Pp2) E E S]"; got != want {
		t.Fatalf("sent %s, want %s", got, want)
	}
	complete := enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 3")})
	server := msgsOf(enc(&pgproto3.BindComplete{}), pdb, enc(&pgproto3.BindComplete{}), od)
	server = append(server, msgsOf(prowsb...)...)
	server = append(server, msgsOf(complete)...)
	server = append(server, msgsOf(orows...)...)
	server = append(server, msgsOf(complete, enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}))...)
	var got []string
	for i := range server {
		m := &server[i]
		switch v := s.Server(m); {
		case v.Action == pgwire.Forward:
			got = append(got, string(m.Type))
		case len(v.Msgs) == 0:
			got = append(got, "-") // consumed
		default:
			if bytes.Contains(v.Msgs, []byte("@corp-mail.com")) {
				t.Fatalf("unmasked value in %q", v.Msgs)
			}
			got = append(got, string(m.Type)+"*") // masked
		}
	}
	if got, want := fmt.Sprint(got), "[2 - 2 T D* D* D* C D D D C Z]"; got != want {
		t.Fatalf("answers %s, want %s", got, want)
	}
}

// TestRowRewrite: a row whose masked values keep their length (partial) is
// masked in place and forwarded (Row answers nil); one with a value whose
// length changes (hash, null) is replaced by a row re-encoded around it,
// its length recomputed and every other value as it was. The keyed hash
// gives the same letters for the same value each time.
func TestRowRewrite(t *testing.T) {
	for _, tt := range []struct {
		name, policy string
		inPlace      bool
		email        func(t *testing.T, v []byte)
	}{
		{"partial in place", `
rules:
  - name: cards
    columns: ["public.bench_people.card"]
    strategy: partial
    keep: 4
`, true, func(t *testing.T, v []byte) {
			if string(v) != "user4711@corp-mail.com" {
				t.Errorf("email %q changed", v)
			}
		}},
		{"hash and partial replaced", benchPolicyYAML, false, func(t *testing.T, v []byte) {
			if !bytes.HasPrefix(v, []byte("[email:")) || len(v) != len("[email:]")+16 {
				t.Errorf("email %q not hashed", v)
			}
		}},
		{"null and partial replaced", `
rules:
  - name: pii
    columns: ["public.bench_people.email"]
    strategy: "null"
  - name: cards
    columns: ["public.bench_people.card"]
    strategy: partial
    keep: 4
`, false, func(t *testing.T, v []byte) {
			if v != nil {
				t.Errorf("email %q not NULL", v)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var pol mask.Policy
			if err := yamlStrict(tt.policy, &pol); err != nil {
				t.Fatal(err)
			}
			rs, err := mask.Compile(pol, bytes.Repeat([]byte("k"), 32))
			if err != nil {
				t.Fatal(err)
			}
			cat := fixedCatalog{}
			for i, c := range []string{"id", "name", "email", "card", "plan"} {
				cat[Attr{oidPeople, int16(i + 1)}] = []mask.Source{{Schema: "public", Table: "bench_people", Column: c}}
			}
			s := New(rs.ForSubject(mask.Subject{Process: "agent"}), cat, session.New(nil), nil)
			desc, rows := peopleResult(oidPeople, 0, 1)
			q := clientOf(enc(&pgproto3.Query{String: "SELECT * FROM bench_people"}))
			var firsts [][]byte
			for round := 0; round < 2; round++ {
				s.Client(&q[0])
				d := msgsOf(desc)
				s.Server(&d[0])
				row := bytes.Clone(rows[0])
				m := msgsOf(row)[0]
				out := s.Row(&m)
				if got := out == nil; got != tt.inPlace {
					t.Fatalf("forwarded in place: %v, want %v", got, tt.inPlace)
				}
				if out == nil {
					out = row // the server's bytes, as masked in place
				}
				if n := int(binary.BigEndian.Uint32(out[1:])); out[0] != 'D' || n+1 != len(out) {
					t.Fatalf("not one DataRow: %q", out)
				}
				var dr pgproto3.DataRow
				if err := dr.Decode(out[5:]); err != nil || len(dr.Values) != 5 {
					t.Fatalf("row %q: %v", out, err)
				}
				if string(dr.Values[0]) != "4711" || string(dr.Values[1]) != "Person 4711" || string(dr.Values[4]) != "pro" {
					t.Errorf("unmasked values changed: %q", dr.Values)
				}
				if string(dr.Values[3]) != "************4711" {
					t.Errorf("card %q, want ************4711", dr.Values[3])
				}
				tt.email(t, dr.Values[2])
				firsts = append(firsts, bytes.Clone(out))
				done := msgsOf(enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}), enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}))
				for i := range done {
					s.Server(&done[i])
				}
			}
			if !bytes.Equal(firsts[0], firsts[1]) {
				t.Errorf("the same row masked twice differs: %q, %q", firsts[0], firsts[1])
			}
		})
	}
}
