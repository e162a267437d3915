package pgwire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/rowsample"
	"github.com/airlockhq/airlock/internal/session"
)

// rendered is a sample's rows as a record's reader renders them.
func rendered(t testing.TB, s *session.Sample) [][]*string {
	t.Helper()
	rows, err := rowsample.Render(s.Data, s.OIDs, s.Formats)
	if err != nil {
		t.Fatalf("the sample does not render: %v", err)
	}
	return rows
}

// sampleOf is the cell values of a sample as rendered, NULL as "<null>".
func sampleOf(t testing.TB, s *session.Sample) [][]string {
	t.Helper()
	var out [][]string
	for _, r := range rendered(t, s) {
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
			if got := sampleOf(t, st.Sample); !equalRows(got, want) || !st.Sample.Truncated {
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
				if r := sampleOf(t, st.Sample); !equalRows(r, [][]string{{"7", "***", "t"}}) || st.Sample.Truncated {
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
			if st := lastStatement(t, h, "/*empty*/"); st.Sample == nil || len(rendered(t, st.Sample)) != 0 || st.Sample.Columns[0] != "one" {
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
			if r := sampleOf(t, st.Sample); !equalRows(r, [][]string{{"1\tc1"}, {"2\tc2"}, {"3\tc3"}}) || !st.Sample.Truncated {
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
		for _, r := range sampleOf(t, st.Sample) {
			for _, v := range r {
				size += len(v)
			}
		}
		if size > 300 || len(rendered(t, st.Sample)) == 0 || len(rendered(t, st.Sample)) >= 10 {
			t.Fatalf("%d rows, %d bytes: want some rows within 300 bytes", len(rendered(t, st.Sample)), size)
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

// storedSize is what a sample's stored rows count against the byte cap:
// the bytes kept of each value, 4 for a NULL (package rowsample's form).
func storedSize(t testing.TB, data []byte) int {
	t.Helper()
	size := 0
	for p := 0; p < len(data); {
		n := int(binary.BigEndian.Uint16(data[p:]))
		p += 2
		for range n {
			tag, k := binary.Uvarint(data[p:])
			if k <= 0 {
				t.Fatalf("stored rows % x do not parse at %d", data, p)
			}
			p += k
			if tag == 0 {
				size += 4
				continue
			}
			l := int((tag - 1) >> 1)
			size += l
			p += l
		}
	}
	return size
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
			size += storedSize(t, sm.Data)
			rows := rendered(t, sm)
			if len(rows) > 3 || size > 256 {
				t.Fatalf("sample over its caps: %d rows, %d bytes", len(rows), size)
			}
			for _, r := range rows {
				for _, v := range r {
					if v != nil && len(*v) > rowsample.MaxValue {
						t.Fatalf("a value rendered as %d bytes, over %d", len(*v), rowsample.MaxValue)
					}
				}
			}
		}
	})
}

// The sampler keeps its buffer between statements only while it
// is small: a session that once sampled a large result does not hold that
// much memory while it idles, and the record it made is whole.
func TestSamplerKeepsLittle(t *testing.T) {
	for _, tt := range []struct {
		name  string
		rows  int
		value int // bytes of each of the result's values
		kept  bool
	}{
		{"small sample kept", 10, 20, true},
		{"large sample released", 40, 200, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sink := &capSink{}
			pl := newPipe(session.New(sink), Stages{}, 0)
			pl.samp = newSampler(100, 1<<20)
			client, _ := (&pgproto3.Query{String: "select v"}).Encode(nil)
			server, _ := (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25}}}).Encode(nil)
			val := bytes.Repeat([]byte("x"), tt.value)
			for range tt.rows {
				server, _ = (&pgproto3.DataRow{Values: [][]byte{val}}).Encode(server)
			}
			server, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT " + strconv.Itoa(tt.rows))}).Encode(server)
			server, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(server)
			// Twice: the sampler's buffer goes to the statement's
			// record, which gives back the one it had, so what the
			// sampler keeps shows from the second statement on.
			for range 2 {
				_ = newPump(bytes.NewReader(client), io.Discard, pl.fromClient, pl.clientTypes(), 1<<16, 0).run()
				_ = newPump(bytes.NewReader(server), io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0).run()
				pl.flush()
			}
			sts := sink.statements()
			if len(sts) != 2 {
				t.Fatalf("recorded %+v", sts)
			}
			for _, st := range sts {
				rows := rendered(t, st.Sample)
				if len(rows) != tt.rows {
					t.Fatalf("recorded %+v", st)
				}
				for _, row := range rows {
					if len(row) != 1 || row[0] == nil || *row[0] != string(val) {
						t.Fatalf("sample row %v, want %q", row, val)
					}
				}
			}
			if kept := cap(pl.samp.raw) > 0; kept != tt.kept || cap(pl.samp.raw) > maxKeptText {
				t.Fatalf("the sampler keeps %d bytes after a sample of %d (kept: %v, want %v, at most %d)",
					cap(pl.samp.raw), tt.rows*tt.value, kept, tt.kept, maxKeptText)
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
			if st.SQL != fmt.Sprintf("select %d", s) || st.Sample == nil || len(rendered(t, st.Sample)) != s%3 {
				t.Fatalf("%s: statement %d recorded as %q with sample %+v", rd.name, s, st.SQL, st.Sample)
			}
			for r, row := range rendered(t, st.Sample) {
				want := rd.val(s, r)
				if len(row) != 1 || (want == nil) != (row[0] == nil) || (want != nil && *row[0] != string(want)) {
					t.Errorf("%s: statement %d row %d is %v, want %q", rd.name, s, r, row, want)
				}
			}
		}
	}
}

// keptByKeep is the stored form of rows as the sampler is specified to keep
// them: every value through rowsample.Keep, under the caps, column i in
// format(i). The sampler skips the call for text values that fit; it must
// keep the same.
func keptByKeep(rows [][][]byte, oids []uint32, format func(int) int16, maxRows, maxBytes, used int) (raw []byte, trunc bool) {
	for r, row := range rows {
		if r >= maxRows || used >= maxBytes {
			return raw, true
		}
		start := len(raw)
		raw = rowsample.AppendCount(raw, 0)
		kept := 0
		for i, v := range row {
			if v == nil {
				raw, used, kept = rowsample.AppendNull(raw), used+4, kept+1
				continue
			}
			left := min(rowsample.MaxValue, maxBytes-used)
			if left < rowsample.MinValue {
				trunc = true
				break
			}
			var oid uint32
			if i < len(oids) {
				oid = oids[i]
			}
			k, cut := rowsample.Keep(v, oid, format(i), left)
			trunc = trunc || cut
			raw, used, kept = rowsample.AppendValue(raw, v[:k], cut), used+k, kept+1
		}
		if kept == 0 && len(row) > 0 {
			raw = raw[:start]
			continue
		}
		binary.BigEndian.PutUint16(raw[start:], uint16(kept))
	}
	return raw, trunc
}

// sampleRows runs rows (nil values are NULL) through a sampler whose
// result's description has columns of oids in descFormats (one a column)
// and whose portal's Bind asked bindFormats (nil: a simple query's result),
// and holds what it kept to keptByKeep.
func sampleRows(t testing.TB, rows [][][]byte, oids []uint32, descFormats, bindFormats []int16, maxRows, maxBytes int) {
	t.Helper()
	s := newSampler(maxRows, maxBytes)
	d := &rowDesc{oids: oids, formats: descFormats}
	for i := range oids {
		d.names = append(d.names, fmt.Sprint("c", i))
	}
	s.result(d, bindFormats)
	names := s.used
	for _, row := range rows {
		msg, _ := (&pgproto3.DataRow{Values: row}).Encode(nil)
		s.row(msg[5:])
	}
	format := func(i int) int16 {
		if bindFormats != nil {
			return rowsample.Format(bindFormats, i)
		}
		if i < len(descFormats) {
			return descFormats[i]
		}
		return 0
	}
	want, wantTrunc := keptByKeep(rows, oids, format, maxRows, maxBytes, names)
	if !bytes.Equal(s.raw, want) || s.trunc != wantTrunc {
		t.Fatalf("kept % x truncated %v, want % x truncated %v", s.raw, s.trunc, want, wantTrunc)
	}
	formats := bindFormats
	if formats == nil {
		formats = descFormats
	}
	if _, err := rowsample.Render(s.raw, oids, formats); err != nil {
		t.Fatalf("the kept rows do not render: %v", err)
	}
}

// The sampler keeps of each row exactly what Keep says, text or binary,
// whole or cut, under both caps.
func TestSamplerRowKeepsAsKeep(t *testing.T) {
	long := bytes.Repeat([]byte("é"), 200) // 400 bytes: cut at a rune
	text := [][][]byte{{[]byte("41000"), []byte("Person 41000"), nil, []byte("**** 1000")}, {[]byte("x"), long, []byte(""), nil}}
	// Just over a value's cap, and just over what the byte cap leaves
	// of a 100-byte sample after the names and the first value.
	edges := [][][]byte{{bytes.Repeat([]byte("v"), rowsample.MaxValue+1), []byte("y")}, {[]byte("x"), bytes.Repeat([]byte("w"), 100-4-1-3)}}
	// A bytea that fits the caps as bytes, not as its \x hex rendering.
	bin := [][][]byte{{{0, 0, 0, 7}, bytes.Repeat([]byte{0xab}, 200), []byte("text")}, {{0, 0, 0, 8}, nil, long}}
	textOIDs, binOIDs := []uint32{23, 25, 25, 25}, []uint32{23, 17, 25}
	for _, tc := range []struct {
		name              string
		rows              [][][]byte
		oids              []uint32
		desc, bind        []int16
		maxRows, maxBytes int
	}{
		{"text", text, textOIDs, []int16{0, 0, 0, 0}, nil, 10, 4096},
		{"text, empty Bind formats", text, textOIDs, []int16{0, 0, 0, 0}, []int16{}, 10, 4096},
		{"text, one zero Bind format", text, textOIDs, []int16{0, 0, 0, 0}, []int16{0}, 10, 4096},
		{"text, byte cap in the second row", text, textOIDs, []int16{0, 0, 0, 0}, nil, 10, 60},
		{"text, byte cap in the first row", text, textOIDs, []int16{0, 0, 0, 0}, nil, 10, 20},
		{"text, row cap", text, textOIDs, []int16{0, 0, 0, 0}, nil, 1, 4096},
		{"text, just over the caps", edges, textOIDs[1:3], []int16{0, 0}, nil, 10, 400},
		{"text, just over the byte cap", edges[1:], textOIDs[1:3], []int16{0, 0}, nil, 10, 100},
		{"binary, every column", bin, binOIDs, []int16{0, 0, 0}, []int16{1}, 10, 4096},
		{"binary, per column", bin, binOIDs, []int16{0, 0, 0}, []int16{1, 1, 0}, 10, 4096},
		{"binary, byte cap", bin, binOIDs, []int16{0, 0, 0}, []int16{1, 0}, 10, 150},
		{"binary in the description", bin, binOIDs, []int16{1, 1, 0}, nil, 10, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sampleRows(t, tc.rows, tc.oids, tc.desc, tc.bind, tc.maxRows, tc.maxBytes)
		})
	}
}

// FuzzSamplerRow holds the sampler to Keep for any values, types, formats
// and caps (a row's values are split from data at the 0xff bytes, "\x00" a
// NULL).
func FuzzSamplerRow(f *testing.F) {
	f.Add([]byte("41000\xffPerson 41000\xff\x00\xff**** 1000"), uint32(25), int16(0), false, uint16(4096))
	f.Add([]byte("\x00\x00\x00\x07\xffxyz"), uint32(23), int16(1), true, uint16(40))
	f.Add(bytes.Repeat([]byte("\xc3\xa9"), 300), uint32(17), int16(1), false, uint16(300))
	f.Fuzz(func(t *testing.T, data []byte, oid uint32, format int16, bind bool, maxBytes uint16) {
		var row [][]byte
		for _, v := range bytes.Split(data, []byte{0xff}) {
			if len(v) == 1 && v[0] == 0 {
				v = nil
			}
			row = append(row, v)
		}
		oids := make([]uint32, len(row))
		desc := make([]int16, len(row))
		for i := range oids {
			oids[i] = []uint32{oid, 25}[i%2]
			desc[i] = []int16{format, 0}[i%2]
		}
		var bindFormats []int16
		if bind {
			bindFormats = []int16{format}
		}
		sampleRows(t, [][][]byte{row, row}, oids, desc, bindFormats, 10, int(maxBytes)+1)
	})
}

// BenchmarkSamplerRows is the sampler's share of the masked script's
// statement (BenchmarkMaskedRowsTx): its 20 rows, as the client gets them,
// of which the default caps keep 10, and the statement's sample taken.
func BenchmarkSamplerRows(b *testing.B) {
	var bodies [][]byte
	for g := 41000; g < 41020; g++ {
		id := strconv.Itoa(g)
		msg, _ := (&pgproto3.DataRow{Values: [][]byte{[]byte(id), []byte("Person " + id), []byte("h:3f9a0c1e5b7d2a64"),
			[]byte("**** **** **** " + id[1:]), []byte([]string{"free", "pro", "team"}[g%3])}}).Encode(nil)
		bodies = append(bodies, msg[5:])
	}
	d := &rowDesc{names: []string{"id", "name", "email", "card", "plan"}, oids: []uint32{23, 25, 25, 25, 25}, formats: make([]int16, 5)}
	s := newSampler(10, 4096)
	var r stmtRec
	b.ReportAllocs()
	for b.Loop() {
		s.result(d, nil)
		for _, body := range bodies {
			s.row(body)
		}
		if sm := s.take(&r); sm == nil || len(sm.Data) == 0 {
			b.Fatal("nothing sampled")
		}
	}
}
