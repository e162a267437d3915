package pgwire_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgmask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

type discardSink struct{}

// processCPU is the process's user and system CPU time in nanoseconds (the
// collector's included: its work is the data path's too).
func processCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func (discardSink) Record(session.Event) {}

// accountsCatalog resolves pgbench_accounts' columns (table 16400) to
// themselves: no masking rule names that table.
type accountsCatalog struct{}

func (accountsCatalog) Resolve(_ context.Context, _ string, attrs []pgmask.Attr) (map[pgmask.Attr][]mask.Source, error) {
	out := make(map[pgmask.Attr][]mask.Source, len(attrs))
	for _, a := range attrs {
		out[a] = []mask.Source{{Schema: "public", Table: "pgbench_accounts", Column: "abalance"}}
	}
	return out, nil
}

// Relations finds pgbench_accounts by name.
func (accountsCatalog) Relations(_ context.Context, _ string, names []string) (map[string][]pgmask.Relation, error) {
	out := map[string][]pgmask.Relation{}
	for _, n := range names {
		if n == "pgbench_accounts" || n == "public.pgbench_accounts" {
			out[n] = []pgmask.Relation{{Schema: "public", Name: "pgbench_accounts", Columns: map[string][]mask.Source{
				"abalance": {{Schema: "public", Table: "pgbench_accounts", Column: "abalance"}}}}}
		}
	}
	return out, nil
}

func encode(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// BenchmarkDaemonSelectTx is one pgbench -S transaction through the pipe
// with the stages the daemon wires for an agent's session: the guard (the
// built-in policy), masking with rules on other tables, the result sampler
// and the statement record to a sink that discards it. The pumps' reads
// and writes are in memory: what is left is the proxy's own work, and its
// allocations per transaction are each GC work on the data path.
func BenchmarkDaemonSelectTx(b *testing.B) {
	g := benchGuard(b)
	rs, err := mask.Compile(mask.Policy{Rules: []mask.Rule{
		{Name: "pii", Columns: []string{"public.users.email"}, Detectors: []string{"email"}, Strategy: "redact"},
	}}, bytes.Repeat([]byte("k"), 32))
	if err != nil {
		b.Fatal(err)
	}
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
	rd := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), TableOID: 16400,
		TableAttributeNumber: 3, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	result := []interface{ Encode([]byte) ([]byte, error) }{rd, &pgproto3.DataRow{Values: [][]byte{[]byte("0")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}
	bind := &pgproto3.Bind{PreparedStatement: "P0_1", Parameters: [][]byte{[]byte("12345")}}
	modes := []struct {
		name           string
		setup          [2][]byte // sent once before the loop (prepared: the Parse)
		client, server []byte
	}{
		{name: "simple",
			client: encode(&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 1000000;"}),
			server: encode(result...)},
		{name: "extended",
			client: encode(&pgproto3.Parse{Query: sql}, &pgproto3.Bind{Parameters: [][]byte{[]byte("12345")}},
				&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			server: encode(append([]interface{ Encode([]byte) ([]byte, error) }{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}}, result...)...)},
		{name: "prepared",
			setup: [2][]byte{encode(&pgproto3.Parse{Name: "P0_1", Query: sql}, &pgproto3.Sync{}),
				encode(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})},
			client: encode(bind, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			server: encode(append([]interface{ Encode([]byte) ([]byte, error) }{&pgproto3.BindComplete{}}, result...)...)},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			sess := session.New(discardSink{})
			sess.Origin.UID, sess.Origin.Class = 1000, session.ClassAgent
			sess.Person = identity.Person{Name: "alice", UID: 1000, Groups: []string{"eng"}}
			st := pgwire.ChainStages(g.Stages, func(s *session.Session) pgwire.Stages {
				ms := pgmask.New(rs.ForSubject(pgmask.Subject(s)), accountsCatalog{}, s, nil)
				ms.TrackLineage(g.Classifier) // as the daemon wires it
				return pgwire.Stages{Client: []pgwire.ClientStage{ms}, Server: []pgwire.ServerStage{ms}}
			})(sess)
			d := pgwire.NewTxDriver(sess, st, 10, 4096)
			if m.setup[0] != nil {
				d.Run(m.setup[0], m.setup[1])
			}
			d.Run(m.client, m.server) // the first resolves the columns and fills caches
			// pgbench -S sends a new aid inline each time: the simple
			// mode's text is rewritten in place, past the classifier's
			// text cache, as pgbench's would be.
			client := bytes.Clone(m.client)
			digits := bytes.LastIndex(client, []byte("1000000"))
			aid := 1000000
			before := sess.Stats.Statements.Load()
			b.ReportAllocs()
			for b.Loop() {
				if m.name == "simple" {
					aid = aid%8999999 + 1000000
					strconv.AppendInt(client[digits:digits], int64(aid), 10)
					aid++
				}
				d.Run(client, m.server)
			}
			if n := sess.Stats.Statements.Load() - before; n != int64(b.N) {
				b.Fatalf("%d statements recorded for %d transactions", n, b.N)
			}
		})
	}
}

// BenchmarkUnmaskedRows is a 1,000-row result of a table no masking rule
// names (pgbench_accounts) through the pipe as the daemon wires it for an
// agent (sampler on), with and without the masking stage: what masking
// configured elsewhere costs a large result it has nothing to do with.
func BenchmarkUnmaskedRows(b *testing.B) {
	rs, err := mask.Compile(mask.Policy{Rules: []mask.Rule{
		{Name: "pii", Columns: []string{"public.users.email"}, Detectors: []string{"email"}, Strategy: "hash"},
	}}, bytes.Repeat([]byte("k"), 32))
	if err != nil {
		b.Fatal(err)
	}
	msgs := []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("abalance"), TableOID: 16400, TableAttributeNumber: 3, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}}
	for i := 0; i < 1000; i++ {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte(strconv.Itoa(i))}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1000")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	server := encode(msgs...)
	client := encode(&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts LIMIT 1000"})
	for _, masking := range []bool{false, true} {
		b.Run(map[bool]string{false: "no-stage", true: "masking"}[masking], func(b *testing.B) {
			sess := session.New(discardSink{})
			sess.Origin.UID, sess.Origin.Class = 1000, session.ClassAgent
			var st pgwire.Stages
			if masking {
				ms := pgmask.New(rs.ForSubject(pgmask.Subject(sess)), accountsCatalog{}, sess, nil)
				st = pgwire.Stages{Client: []pgwire.ClientStage{ms}, Server: []pgwire.ServerStage{ms}}
			}
			d := pgwire.NewTxDriver(sess, st, 10, 4096)
			d.Run(client, server) // resolves the columns
			b.ReportAllocs()
			for b.Loop() {
				d.Run(client, server)
			}
		})
	}
}

// peopleCatalog resolves bench_people's columns (table 16500, attributes 1–5
// in the order id, name, email, card, plan), as the bench's catalog would.
type peopleCatalog struct{}

var peopleCols = []string{"id", "name", "email", "card", "plan"}

func (peopleCatalog) Resolve(_ context.Context, _ string, attrs []pgmask.Attr) (map[pgmask.Attr][]mask.Source, error) {
	out := make(map[pgmask.Attr][]mask.Source, len(attrs))
	for _, a := range attrs {
		if a.Table == 16500 && a.Num >= 1 && int(a.Num) <= len(peopleCols) {
			out[a] = []mask.Source{{Schema: "public", Table: "bench_people", Column: peopleCols[a.Num-1]}}
		}
	}
	return out, nil
}

// Relations finds bench_people by name, as the catalog would.
func (peopleCatalog) Relations(_ context.Context, _ string, names []string) (map[string][]pgmask.Relation, error) {
	out := map[string][]pgmask.Relation{}
	for _, n := range names {
		if n != "bench_people" && n != "public.bench_people" {
			continue
		}
		rel := pgmask.Relation{Schema: "public", Name: "bench_people", Columns: map[string][]mask.Source{}}
		for _, c := range peopleCols {
			rel.Columns[c] = []mask.Source{{Schema: "public", Table: "bench_people", Column: c}}
		}
		out[n] = []pgmask.Relation{rel}
	}
	return out, nil
}

// BenchmarkMaskedRowsTx is the bench's masked script (`SELECT id, name,
// email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + 19`,
// simple protocol) through the pipe as the daemon wires it: 20 rows, email
// masked by keyed hash and card by partial (40 masked values), with and
// without the masking stage and the result sample, the statement record
// going to a sink that discards it. What one transaction costs the proxy
// beyond reading and writing its sockets. The daemon cases add the guard
// (the built-in policy) before masking, as the daemon wires an agent's
// session, and a new id in the text each time, as pgbench sends it: past
// the classifier's text cache, and a new statement text to keep.
func BenchmarkMaskedRowsTx(b *testing.B) {
	rs, err := mask.Compile(mask.Policy{Rules: []mask.Rule{
		{Name: "pii", Columns: []string{"public.bench_people.email"}, Strategy: "hash"},
		{Name: "cards", Columns: []string{"public.bench_people.card"}, Strategy: "partial", Keep: 4},
	}}, bytes.Repeat([]byte("k"), 32))
	if err != nil {
		b.Fatal(err)
	}
	types := []uint32{23, 25, 25, 25, 25}
	rd := &pgproto3.RowDescription{}
	for i, n := range peopleCols {
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(n), TableOID: 16500,
			TableAttributeNumber: uint16(i + 1), DataTypeOID: types[i], DataTypeSize: -1, TypeModifier: -1})
	}
	msgs := []interface{ Encode([]byte) ([]byte, error) }{rd}
	for g := 41000; g < 41020; g++ {
		id := strconv.Itoa(g)
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte(id), []byte("Person " + id),
			[]byte("user" + id + "@corp-mail.com"), []byte(strconv.Itoa(4000000000000000 + g)),
			[]byte([]string{"free", "pro", "team"}[g%3])}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 20")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	server := encode(msgs...)
	client := encode(&pgproto3.Query{String: "SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 41000 AND 41000 + 19;"})
	g := benchGuard(b)
	for _, c := range []struct {
		name           string
		masking, guard bool
		sample         int
	}{{"plain/no-sample", false, false, 0}, {"plain/sample", false, false, 10}, {"masked/no-sample", true, false, 0},
		{"masked/sample", true, false, 10}, {"daemon/no-sample", true, true, 0}, {"daemon/sample", true, true, 10}} {
		b.Run(c.name, func(b *testing.B) {
			sess := session.New(discardSink{})
			sess.Origin.UID, sess.Origin.Class = 1000, session.ClassAgent
			sess.Person = identity.Person{Name: "alice", UID: 1000, Groups: []string{"eng"}}
			var st pgwire.Stages
			if c.masking {
				ms := pgmask.New(rs.ForSubject(pgmask.Subject(sess)), peopleCatalog{}, sess, nil)
				// As the daemon wires it: the guard's classifier.
				ms.TrackLineage(g.Classifier)
				st = pgwire.Stages{Client: []pgwire.ClientStage{ms}, Server: []pgwire.ServerStage{ms}}
			}
			if c.guard {
				st = pgwire.ChainStages(g.Stages, func(*session.Session) pgwire.Stages { return st })(sess)
			}
			d := pgwire.NewTxDriver(sess, st, c.sample, 4096)
			// The server's bytes are masked in place: each run gets them afresh.
			srv := bytes.Clone(server)
			d.Run(client, srv) // resolves the columns
			cl := bytes.Clone(client)
			digits := bytes.Index(cl, []byte("41000 AND 41000"))
			before := sess.Stats.Statements.Load()
			b.ReportAllocs()
			cpu := processCPU()
			a := 0
			for b.Loop() {
				copy(srv, server)
				if c.guard {
					// Five digits in place, both bounds, as pgbench's :a.
					a = (a + 7919) % 90000
					var nb [8]byte
					id := strconv.AppendInt(nb[:0], int64(10000+a), 10)
					copy(cl[digits:], id)
					copy(cl[digits+len("41000 AND "):], id)
				}
				d.Run(cl, srv)
			}
			// CPU time, not the wall clock: other work on the machine
			// stretches ns/op, not this.
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			if n := sess.Stats.Statements.Load() - before; n != int64(b.N) {
				b.Fatalf("%d statements recorded for %d transactions", n, b.N)
			}
		})
	}
}

// benchGuard is the guard the daemon wires for an agent's session: the
// built-in policy (an empty policy file) and a fresh classifier.
func benchGuard(b *testing.B) *guard.Guard {
	b.Helper()
	pol := filepath.Join(b.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	store, err := policy.NewStore(pol)
	if err != nil {
		b.Fatal(err)
	}
	return &guard.Guard{Connection: "bench", Policies: store, Classifier: sqlclass.New(sqlclass.Options{})}
}
