package pgwire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

func TestRenderValue(t *testing.T) {
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	be64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	cases := []struct {
		name   string
		v      []byte
		oid    uint32
		format int16
		limit  int
		want   string
		cut    bool
	}{
		{"text as sent", []byte("ada@example.com"), oidText, 0, 256, "ada@example.com", false},
		{"text format ignores the type", []byte("42"), oidInt4, 0, 256, "42", false},
		{"text cut at a rune", []byte("ééééé"), oidText, 0, 6, "é…", true},
		{"binary text", []byte("x"), oidVarchar, 1, 256, "x", false},
		{"binary jsonb", append([]byte{1}, `{"a":1}`...), oidJSONB, 1, 256, `{"a":1}`, false},
		{"binary bool", []byte{1}, oidBool, 1, 256, "t", false},
		{"binary int2", []byte{0xff, 0xfe}, oidInt2, 1, 256, "-2", false},
		{"binary int4", be32(7), oidInt4, 1, 256, "7", false},
		{"binary int8", be64(math.MaxUint64), oidInt8, 1, 256, "-1", false},
		{"binary float8", be64(math.Float64bits(1.5)), oidFloat8, 1, 256, "1.5", false},
		{"binary float4", be32(math.Float32bits(0.25)), oidFloat4, 1, 256, "0.25", false},
		{"binary uuid", bytes.Repeat([]byte{0xab}, 16), oidUUID, 1, 256, "abababab-abab-abab-abab-abababababab", false},
		{"binary date", be32(math.MaxUint32), oidDate, 1, 256, "1999-12-31", false},
		{"binary date infinity", be32(math.MaxInt32), oidDate, 1, 256, "infinity", false},
		{"binary timestamp", be64(1_500_000), oidTimestamp, 1, 256, "2000-01-01 00:00:01.5", false},
		{"binary timestamptz", be64(0), oidTimestampTZ, 1, 256, "2000-01-01 00:00:00Z", false},
		{"binary numeric is hex", []byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 7}, 1700, 1, 256, `\x00010000000000000007`, false},
		{"binary int4 of a wrong size is hex", []byte{1, 2}, oidInt4, 1, 256, `\x0102`, false},
		{"binary hex cut", bytes.Repeat([]byte{0xff}, 100), oidBytea, 1, 13, `\xffffffff…`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Appended after what the buffer already holds, which stays.
			b, cut := appendRendered([]byte("prev"), c.v, c.oid, c.format, c.limit)
			got, ok := strings.CutPrefix(string(b), "prev")
			if !ok || got != c.want || cut != c.cut {
				t.Fatalf("appendRendered = %q (cut %v), want %q (cut %v)", b, cut, "prev"+c.want, c.cut)
			}
			if len(got) > c.limit {
				t.Fatalf("%q is longer than the limit %d", got, c.limit)
			}
		})
	}
}

// sampleOf is the cell values of a sample, NULL as "<null>".
func sampleOf(s *session.Sample) [][]string {
	var out [][]string
	for _, r := range s.Rows {
		var row []string
		for _, v := range r {
			if v == nil {
				row = append(row, "<null>")
			} else {
				row = append(row, *v)
			}
		}
		out = append(out, row)
	}
	return out
}

func lastStatement(t *testing.T, h *harness, sqlPart string) session.Statement {
	t.Helper()
	got := waitStatements(t, h, 1, func(s session.Statement) bool { return strings.Contains(s.SQL, sqlPart) })
	if len(got) == 0 {
		t.Fatalf("no statement containing %q recorded; have %+v", sqlPart, h.sink.statements())
	}
	return got[len(got)-1]
}

// TestResultSamples checks the sample each statement record carries: what
// the client got (a server stage's rewrite included), under both drivers,
// simple and extended protocols, text and binary formats, and the caps.
func TestResultSamples(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, driver := range []string{DriverGoroutines, DriverLoop} {
		t.Run(driver, func(t *testing.T) {
			h := newHarness(t, pg, func(o *Options) {
				o.Driver = driver
				o.SampleRows, o.SampleBytes = 3, 4096
				// Rewrites column 1 of every row: the sample must
				// show the rewrite, as the masking stage's would.
				o.Stages = func(*session.Session) Stages {
					return Stages{Server: []ServerStage{&maskStage{column: 1, with: []byte("***")}}}
				}
			})
			c := h.connect(ctx(t), t)

			// Simple protocol, text: cap of 3 rows, NULL kept apart.
			if _, err := c.Exec(ctx(t), "SELECT g AS n, 'secret'||g AS s, NULL::text AS z FROM generate_series(1, 5) g /*simple*/",
				pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			st := lastStatement(t, h, "/*simple*/")
			if st.Sample == nil {
				t.Fatal("no sample recorded")
			}
			if got := strings.Join(st.Sample.Columns, ","); got != "n,s,z" {
				t.Fatalf("columns %q", got)
			}
			want := [][]string{{"1", "***", "<null>"}, {"2", "***", "<null>"}, {"3", "***", "<null>"}}
			if got := sampleOf(st.Sample); !equalRows(got, want) || !st.Sample.Truncated {
				t.Fatalf("sample %v truncated=%v, want %v truncated", got, st.Sample.Truncated, want)
			}
			if st.Rows != 5 {
				t.Fatalf("rows %d, want 5 (the cap bounds the sample, not the count)", st.Rows)
			}

			// Extended protocol, binary results (pgx asks binary for
			// these types), twice: the second run is Bind+Execute only.
			for i := 0; i < 2; i++ {
				var n int32
				var s string
				var b bool
				if err := c.QueryRow(ctx(t), "SELECT $1::int4 AS i, 'plain'::text AS t, true AS b /*ext*/", 7).Scan(&n, &s, &b); err != nil {
					t.Fatal(err)
				}
				if s != "***" {
					t.Fatalf("the client got %q, the stage rewrites it to ***", s)
				}
			}
			got := waitStatements(t, h, 2, func(s session.Statement) bool { return strings.Contains(s.SQL, "/*ext*/") })
			if len(got) < 2 {
				t.Fatalf("%d extended statements recorded", len(got))
			}
			for _, st := range got {
				if st.Sample == nil {
					t.Fatal("no sample for an extended statement")
				}
				if c := strings.Join(st.Sample.Columns, ","); c != "i,t,b" {
					t.Fatalf("columns %q", c)
				}
				if r := sampleOf(st.Sample); !equalRows(r, [][]string{{"7", "***", "t"}}) || st.Sample.Truncated {
					t.Fatalf("sample %v truncated=%v", r, st.Sample.Truncated)
				}
			}

			// Statements without a result carry no sample; an empty
			// result carries its columns.
			if _, err := c.Exec(ctx(t), "SET application_name = 'x' /*set*/"); err != nil {
				t.Fatal(err)
			}
			if st := lastStatement(t, h, "/*set*/"); st.Sample != nil {
				t.Fatalf("SET has a sample: %+v", st.Sample)
			}
			if _, err := c.Exec(ctx(t), "SELECT 1 AS one WHERE false /*empty*/", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			if st := lastStatement(t, h, "/*empty*/"); st.Sample == nil || len(st.Sample.Rows) != 0 || st.Sample.Columns[0] != "one" {
				t.Fatalf("empty result sample: %+v", st.Sample)
			}

			// COPY TO STDOUT: each line is a row.
			var buf bytes.Buffer
			if _, err := c.PgConn().CopyTo(ctx(t), &buf, "COPY (SELECT g, 'c'||g FROM generate_series(1, 4) g) TO STDOUT /*copy*/"); err != nil {
				t.Fatal(err)
			}
			st = lastStatement(t, h, "/*copy*/")
			if st.Sample == nil || st.Sample.Columns[0] != "copy (text)" {
				t.Fatalf("copy sample: %+v", st.Sample)
			}
			if r := sampleOf(st.Sample); !equalRows(r, [][]string{{"1\tc1"}, {"2\tc2"}, {"3\tc3"}}) || !st.Sample.Truncated {
				t.Fatalf("copy sample %q truncated=%v", r, st.Sample.Truncated)
			}
		})
	}

	t.Run("byte cap", func(t *testing.T) {
		h := newHarness(t, pg, func(o *Options) { o.SampleRows, o.SampleBytes = 100, 300 })
		c := h.connect(ctx(t), t)
		if _, err := c.Exec(ctx(t), "SELECT repeat('x', 200) AS v FROM generate_series(1, 10) /*bytes*/", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		st := lastStatement(t, h, "/*bytes*/")
		if st.Sample == nil || !st.Sample.Truncated {
			t.Fatalf("sample %+v: want truncated", st.Sample)
		}
		size := 0
		for _, r := range sampleOf(st.Sample) {
			for _, v := range r {
				size += len(v)
			}
		}
		if size > 300 || len(st.Sample.Rows) == 0 || len(st.Sample.Rows) >= 10 {
			t.Fatalf("%d rows, %d bytes: want some rows within 300 bytes", len(st.Sample.Rows), size)
		}
	})

	t.Run("many long column names", func(t *testing.T) {
		h := newHarness(t, pg, func(o *Options) { o.SampleRows, o.SampleBytes = 10, 1000 })
		c := h.connect(ctx(t), t)
		var cols []string
		for i := 0; i < 500; i++ {
			cols = append(cols, fmt.Sprintf("1 AS %s%03d", strings.Repeat("c", 50), i))
		}
		if _, err := c.Exec(ctx(t), "SELECT "+strings.Join(cols, ", ")+" /*wide*/", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		st := lastStatement(t, h, "/*wide*/")
		if st.Sample == nil || !st.Sample.Truncated || len(st.Sample.Columns) == 0 || len(st.Sample.Columns) > 1000/53 {
			t.Fatalf("wide result: %d columns kept, truncated %v: want the names within 1000 bytes", len(st.Sample.Columns), st.Sample.Truncated)
		}
	})

	t.Run("off", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		c := h.connect(ctx(t), t)
		if _, err := c.Exec(ctx(t), "SELECT 1 AS v /*off*/"); err != nil {
			t.Fatal(err)
		}
		if st := lastStatement(t, h, "/*off*/"); st.Sample != nil {
			t.Fatalf("sampling off, yet a sample: %+v", st.Sample)
		}
	})
}

func equalRows(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if strings.Join(a[i], "\x00") != strings.Join(b[i], "\x00") || len(a[i]) != len(b[i]) {
			return false
		}
	}
	return true
}

// BenchmarkSampleCost is BenchmarkPipeRows's 1,000-row result with sampling
// off and on (the default caps), and a one-row result (pgbench -S's shape):
// what the sample adds per statement, and that rows past the cap cost
// nothing more.
func BenchmarkSampleCost(b *testing.B) {
	result := func(rows int) []byte {
		var stream []byte
		stream, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("id"), DataTypeOID: 23}, {Name: []byte("email"), DataTypeOID: 25}}}).Encode(stream)
		for i := 0; i < rows; i++ {
			stream, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte(strconv.Itoa(i)), []byte("someone@example.com")}}).Encode(stream)
		}
		stream, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT " + strconv.Itoa(rows))}).Encode(stream)
		stream, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(stream)
		return stream
	}
	for _, rows := range []int{1, 1000} {
		stream := result(rows)
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("rows=%d/sample=%v", rows, on), func(b *testing.B) {
				pl := newPipe(session.New(nil), Stages{}, 0)
				if on {
					pl.samp = newSampler(10, 4096)
				}
				r := bytes.NewReader(stream)
				p := newPump(r, io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
				b.SetBytes(int64(len(stream)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					r.Reset(stream)
					pl.push(pending{kind: 'Q', sql: "select"})
					_ = p.run()
					pl.out = pl.out[:0]
				}
			})
		}
	}
}

// FuzzSampledStreams is FuzzSessionStreams with sampling on: whatever the
// server sends, samples stay within their caps and nothing panics.
func FuzzSampledStreams(f *testing.F) {
	for _, c := range clientSeeds() {
		for _, s := range serverSeeds() {
			f.Add(c, s)
		}
	}
	// An extended batch asking binary results, and its answers.
	var c, s []byte
	c, _ = (&pgproto3.Parse{Name: "s1", Query: "select $1::int4, 'x'::text"}).Encode(c)
	c, _ = (&pgproto3.Describe{ObjectType: 'S', Name: "s1"}).Encode(c)
	c, _ = (&pgproto3.Bind{PreparedStatement: "s1", ResultFormatCodes: []int16{1}}).Encode(c)
	c, _ = (&pgproto3.Execute{}).Encode(c)
	c, _ = (&pgproto3.Sync{}).Encode(c)
	s, _ = (&pgproto3.ParseComplete{}).Encode(s)
	s, _ = (&pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}}).Encode(s)
	s, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("i"), DataTypeOID: 23}, {Name: []byte("t"), DataTypeOID: 25}}}).Encode(s)
	s, _ = (&pgproto3.BindComplete{}).Encode(s)
	s, _ = (&pgproto3.DataRow{Values: [][]byte{{0, 0, 0, 7}, []byte("x")}}).Encode(s)
	s, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(s)
	s, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(s)
	f.Add(c, s)
	f.Fuzz(func(t *testing.T, client, server []byte) {
		sink := &capSink{}
		pl := newPipe(session.New(sink), Stages{}, 0)
		pl.samp = newSampler(3, 256)
		c2s := newPump(bytes.NewReader(client), io.Discard, pl.fromClient, pl.clientTypes(), 1<<16, 1<<16)
		c2s.space = func() error { return errStopped }
		_ = c2s.run()
		s2c := newPump(bytes.NewReader(server), io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
		_ = s2c.run()
		pl.abandon("fuzz")
		for _, st := range sink.statements() {
			sm := st.Sample
			if sm == nil {
				continue
			}
			size := 0
			for _, n := range sm.Columns {
				size += len(n)
			}
			for _, r := range sm.Rows {
				for _, v := range r {
					if v != nil {
						size += len(*v)
					}
				}
			}
			if len(sm.Rows) > 3 || size > 256 {
				t.Fatalf("sample over its caps: %d rows, %d bytes", len(sm.Rows), size)
			}
		}
	})
}

// The sampler keeps its rendering buffer between statements only while it
// is small: a session that once sampled a large result does not hold that
// much memory while it idles, and the record it made is whole.
func TestSamplerKeepsLittle(t *testing.T) {
	for _, tt := range []struct {
		name  string
		value int // bytes of each of the result's values
		kept  bool
	}{
		{"small sample kept", 20, true},
		{"large sample released", 200, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sink := &capSink{}
			pl := newPipe(session.New(sink), Stages{}, 0)
			pl.samp = newSampler(10, 1<<20)
			client, _ := (&pgproto3.Query{String: "select v"}).Encode(nil)
			server, _ := (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25}}}).Encode(nil)
			val := bytes.Repeat([]byte("x"), tt.value)
			for range 10 {
				server, _ = (&pgproto3.DataRow{Values: [][]byte{val}}).Encode(server)
			}
			server, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 10")}).Encode(server)
			server, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(server)
			_ = newPump(bytes.NewReader(client), io.Discard, pl.fromClient, pl.clientTypes(), 1<<16, 0).run()
			_ = newPump(bytes.NewReader(server), io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0).run()
			pl.flush()
			sts := sink.statements()
			if len(sts) != 1 || sts[0].Sample == nil || len(sts[0].Sample.Rows) != 10 {
				t.Fatalf("recorded %+v", sts)
			}
			for _, row := range sts[0].Sample.Rows {
				if len(row) != 1 || row[0] == nil || *row[0] != string(val) {
					t.Fatalf("sample row %v, want %q", row, val)
				}
			}
			if kept := cap(pl.samp.text) > 0; kept != tt.kept || cap(pl.samp.text) > maxKeptText {
				t.Fatalf("the sampler keeps %d bytes after a sample of %d (kept: %v, want %v, at most %d)",
					cap(pl.samp.text), 10*tt.value, kept, tt.kept, maxKeptText)
			}
		})
	}
}

// Statement events' memory is reused from one flush to the next (see
// session.Sink): each event must still carry its own statement's sample,
// when many answers come in one read (more statements than records kept),
// across rounds, with NULLs and empty results.
func TestStatementMemoryReused(t *testing.T) {
	const n = maxRecs + 4
	rounds := []struct {
		name string
		val  func(stmt, row int) []byte // nil: NULL
	}{
		{"first", func(s, r int) []byte { return []byte(fmt.Sprintf("a%d.%d", s, r)) }},
		{"second", func(s, r int) []byte {
			if r == 1 {
				return nil
			}
			return []byte(fmt.Sprintf("second-%d-%d", s, r))
		}},
	}
	sink := &capSink{}
	pl := newPipe(session.New(sink), Stages{}, 0)
	pl.samp = newSampler(10, 4096)
	for _, rd := range rounds {
		var client, server []byte
		for s := 0; s < n; s++ {
			client, _ = (&pgproto3.Query{String: fmt.Sprintf("select %d", s)}).Encode(client)
			server, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25}}}).Encode(server)
			for r := 0; r < s%3; r++ {
				server, _ = (&pgproto3.DataRow{Values: [][]byte{rd.val(s, r)}}).Encode(server)
			}
			server, _ = (&pgproto3.CommandComplete{CommandTag: []byte(fmt.Sprintf("SELECT %d", s%3))}).Encode(server)
			server, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(server)
		}
		_ = newPump(bytes.NewReader(client), io.Discard, pl.fromClient, pl.clientTypes(), 1<<16, 0).run()
		_ = newPump(bytes.NewReader(server), io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0).run()
		pl.flush()
	}
	// Checked at the end: a sink that kept the pipe's memory would see
	// the first round overwritten by the second.
	all := sink.statements()
	if len(all) != n*len(rounds) {
		t.Fatalf("%d statements recorded, want %d", len(all), n*len(rounds))
	}
	for i, rd := range rounds {
		got := all[i*n : (i+1)*n]
		if len(got) != n {
			t.Fatalf("%s: %d statements recorded, want %d", rd.name, len(got), n)
		}
		for s, st := range got {
			if st.SQL != fmt.Sprintf("select %d", s) || st.Sample == nil || len(st.Sample.Rows) != s%3 {
				t.Fatalf("%s: statement %d recorded as %q with sample %+v", rd.name, s, st.SQL, st.Sample)
			}
			for r, row := range st.Sample.Rows {
				want := rd.val(s, r)
				if len(row) != 1 || (want == nil) != (row[0] == nil) || (want != nil && *row[0] != string(want)) {
					t.Errorf("%s: statement %d row %d is %v, want %q", rd.name, s, r, row, want)
				}
			}
		}
	}
}
