package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// rawCases are statements whose raw frames must encode to exactly the
// frame the data path encodes: every field set and unset, text JSON
// escapes, invalid UTF-8, secrets to redact in the text, the error and
// the parameters, samples with and without columns (null and [] differ).
func rawCases() []struct {
	name       string
	kind, sess string
	st         session.Statement
} {
	sample := &session.Sample{Columns: []string{"a", "b<é>"}, OIDs: []uint32{23, 25}, Formats: []int16{0, 1, -1},
		Data: storedRows([]string{"1", "x"}, []string{"2", "y"}), Truncated: true}
	return []struct {
		name       string
		kind, sess string
		st         session.Statement
	}{
		{"pgbench", "statement", "0f3c9a", session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
			Tag: "SELECT 1", Rows: 1, Bytes: 40, Duration: 83 * time.Microsecond, Number: 12}},
		{"empty", "statement", "", session.Statement{}},
		{"escapes", "statement", "s", session.Statement{Protocol: "simple", SQL: "SELECT '<é\"\n\t>' \u2028 \x01 \xff\xfe & x"}},
		{"password", "statement", "s", session.Statement{Protocol: "simple", SQL: "ALTER ROLE r PASSWORD 'hunter2'",
			Error: "syntax error near 'hunter2' PASSWORD 'hunter3'", SQLState: "42601"}},
		{"params", "statement", "s", session.Statement{Protocol: "extended", SQL: "SELECT $1, $2", Name: "p1",
			Params: []string{"plain", "sk-abcdefghijklmnopqrstuvwxyz", ""}, Tag: "SELECT 1", Rows: -1, Bytes: 1 << 40,
			Duration: -time.Nanosecond}},
		{"params naming a secret", "statement", "s", session.Statement{Protocol: "extended", SQL: "UPDATE users SET password = $1",
			Params: []string{"hunter2"}}},
		{"no params, empty slice", "statement", "s", session.Statement{Protocol: "extended", SQL: "SELECT 1", Params: []string{}}},
		{"policy fields", "statement", "s", session.Statement{Protocol: "function", Class: "read", Decision: "approved",
			Rule: "r&d", Number: 1<<63 - 1, Rows: 1<<63 - 1}},
		{"sample", "statement", "s", session.Statement{Protocol: "simple", SQL: "SELECT a, b FROM t", Sample: sample}},
		{"sample, no columns", "statement", "s", session.Statement{Protocol: "simple", SQL: "SELECT", Sample: &session.Sample{}}},
		{"sample, empty columns", "statement", "s", session.Statement{Protocol: "simple", SQL: "SELECT",
			Sample: &session.Sample{Columns: []string{}, OIDs: []uint32{}, Formats: []int16{}, Data: []byte{}}}},
		{"kind and session the line escapes", "stat<ement>", "sé&\"", session.Statement{SQL: "SELECT 1"}},
	}
}

// dataPathFrame is the frame Writer.Record encoded for a statement
// before raw frames, numbered seq.
func dataPathFrame(at time.Time, kind, sess string, s *session.Statement, pol Policy, seq int64) []byte {
	st, plain := statementOf(s, pol)
	if s.Sample != nil {
		rs := sampleOf(s.Sample)
		st.Sample = &rs
	}
	b, seqAt := appendFrameHead(nil, at, kind, sess)
	b = append(appendStatementPlain(b, &st, plain), '}')
	appendInt(b[seqAt:seqAt], seq)
	checksum(b)
	return b
}

// rawFrame is s's raw frame, numbered seq as the journal numbers it.
func rawFrame(at time.Time, kind, sess string, s *session.Statement, record bool, seq int64) []byte {
	b := appendRawStatement(nil, at.UnixNano(), kind, sess, s, record)
	binary.LittleEndian.PutUint64(b[rawSeqAt:], uint64(seq))
	checksum(b)
	return b
}

// A raw frame, encoded by the drain, is the very frame the data path
// encoded: same redaction, same bytes, same seq.
func TestRawFrameEncodesAsTheDataPathDid(t *testing.T) {
	at := time.Unix(1764500000, 123456789).UTC()
	var dec rawDecoder
	for _, tc := range rawCases() {
		for _, record := range []bool{false, true} {
			t.Run(tc.name+"/params "+strconv.FormatBool(record), func(t *testing.T) {
				const seq = 4711
				raw := rawFrame(at, tc.kind, tc.sess, &tc.st, record, seq)
				if n := rawStatementSize(tc.kind, tc.sess, &tc.st, record); n != len(raw) {
					t.Fatalf("rawStatementSize %d, frame %d bytes", n, len(raw))
				}
				if got, ok := frameSeq(raw[frameHeader:]); !ok || got != seq {
					t.Fatalf("frameSeq %d %v", got, ok)
				}
				want := dataPathFrame(at, tc.kind, tc.sess, &tc.st, Policy{RecordParams: record}, seq)
				prefix := []byte("frames before it")
				got := dec.appendEncoded(append([]byte(nil), prefix...), raw)
				if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want) {
					t.Fatalf("encoded from the raw frame:\n%q\nthe data path's:\n%q", got, want)
				}
				p, err := decodePayload(want[frameHeader:], nil)
				if err != nil || p.Seq != seq {
					t.Fatalf("decoded %+v, %v", p, err)
				}
			})
		}
	}
}

// Damaged raw frames (cut short anywhere, a count or length past the
// frame, bad flags, bytes left over) are refused by the decoder, and the
// drain turns one into an alert record of the same seq that holds none
// of its text.
func TestRawFrameDamaged(t *testing.T) {
	at := time.Unix(1764500000, 0)
	s := session.Statement{Protocol: "extended", SQL: "ALTER ROLE r PASSWORD 'hunter2'", Params: []string{"hunter2"},
		Sample: &session.Sample{Columns: []string{"c"}, OIDs: []uint32{25}, Formats: []int16{1}, Data: []byte("hunter2")}}
	good := rawFrame(at, "statement", "s", &s, true, 77)
	var dec rawDecoder
	if err := dec.decode(good[frameHeader:]); err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{}
	for n := frameHeader + 9; n < len(good); n++ {
		bad["cut at "+strconv.Itoa(n)] = good[:n]
	}
	bad["a byte more"] = append(append([]byte(nil), good...), 0)
	huge := func(at int) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint32(b[at:], 0xffffffff)
		return b
	}
	bad["kind's length"] = huge(frameHeader + rawFixed)
	paramsAt := frameHeader + rawFixed + 11*4 + len("statement") + len("s") + len(s.Protocol) + len(s.SQL)
	bad["parameter count"] = huge(paramsAt)
	flag := append([]byte(nil), good...)
	flag[paramsAt+4] = 2
	bad["parameters flag"] = flag
	sampleAt := paramsAt + 4 + 1 + 4 + len("hunter2") + 4*8
	sf := append([]byte(nil), good...)
	sf[sampleAt] = rawColumns
	bad["columns without a sample"] = sf
	bad["column count"] = huge(sampleAt + 1)
	bad["oid count"] = huge(sampleAt + 1 + 4 + 4 + 1)
	for name, b := range bad {
		t.Run(name, func(t *testing.T) {
			b := append([]byte(nil), b...)
			checksum(b)
			if err := dec.decode(b[frameHeader:]); err == nil {
				t.Fatalf("decoded %+v", dec.r)
			}
			enc := dec.appendEncoded(nil, b)
			if bytes.Contains(enc, []byte("hunter")) {
				t.Fatalf("raw text in the record: %q", enc)
			}
			p, err := decodePayload(enc[frameHeader:], nil)
			if err != nil || p.Kind != KindAlert || p.Seq != 77 {
				t.Fatalf("decoded %+v, %v", p, err)
			}
		})
	}
}

// statementWriter is a Writer recording statements into j, raw or not,
// as Record does (only what a statement's record needs of it).
func statementWriter(j *journal, raw bool, pol Policy) *Writer {
	return &Writer{j: j, inRing: j.rg != nil, noRaw: !raw, opts: Options{Policy: pol},
		kick: make(chan struct{}, 1), log: slog.New(slog.DiscardHandler)}
}

// The same statements, recorded raw and encoded by the drain, or encoded
// on the data path as before, leave the very same segments, byte for
// byte, whether the ring is drained often or not, wraps, or has too
// little room before its end for a raw frame (which is then encoded on
// the data path).
func TestRawFramesLeaveTheSameSegments(t *testing.T) {
	if ringPath(t.TempDir()) == "" {
		t.Skip("no tmpfs for the ring")
	}
	for _, tc := range []struct {
		name       string
		ring       uint64
		drainEvery int
	}{
		{"default ring, drained at the end", ringDefault, 0},
		{"default ring, drained often", ringDefault, 7},
		{"small ring, wraps", 16384, 3},
		{"small odd ring", 8192 + 13, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := map[bool]map[string][]byte{}
			for _, raw := range []bool{true, false} {
				dir := filepath.Join(t.TempDir(), "journal")
				j, err := openJournalRing(dir, 1<<30, 0, tc.ring)
				if err != nil || j.rg == nil {
					t.Fatalf("open: %v %q", err, j.notes)
				}
				w := statementWriter(j, raw, Policy{RecordParams: true})
				cases := rawCases()
				for i := 0; i < 400; i++ {
					c := cases[i%len(cases)]
					st := c.st
					if i%5 == 0 {
						st.SQL += strings.Repeat(" -- é", i%900)
					}
					w.Record(session.Event{Kind: session.Kind(c.kind), Session: c.sess, Time: time.Unix(1764500000, int64(i)), Statement: &st})
					if tc.drainEvery > 0 && i%tc.drainEvery == 0 {
						if err := j.drain(); err != nil {
							t.Fatal(err)
						}
					}
				}
				closeJournal(t, j)
				segs[raw] = readSegments(t, dir)
			}
			if len(segs[true]) == 0 || len(segs[true]) != len(segs[false]) {
				t.Fatalf("%d segments from raw frames, %d from encoded ones", len(segs[true]), len(segs[false]))
			}
			for name, b := range segs[false] {
				if !bytes.Equal(segs[true][name], b) {
					t.Fatalf("segment %s differs: %d bytes from raw frames, %d from encoded ones", name, len(segs[true][name]), len(b))
				}
			}
		})
	}
}

func readSegments(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(n)] = b
	}
	return out
}

// rawFramesInRing counts the raw frames in the ring file at path
// between its tail and head, as a killed daemon left them.
func rawFramesInRing(t *testing.T, path string) int {
	t.Helper()
	mem, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := &ring{mem: mem, buf: mem[ringHeader:], size: uint64(len(mem) - ringHeader)}
	n := 0
	var scratch []byte
	if err := r.walk(r.tail(), r.head(), true, &scratch, func(_ uint64, frame []byte) error {
		if isRaw(frame[frameHeader:]) {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// Unredacted text copied raw into the ring goes no further: once shipped,
// no segment, block, store file or log line holds a password that was in
// a statement's text, error or parameters; the ring held it until then
// (so the test did go through raw frames).
func TestRawFrameSecretsStayInTheRing(t *testing.T) {
	state := t.TempDir()
	if ringPath(filepath.Join(state, "audit", "journal")) == "" {
		t.Skip("no tmpfs for the ring")
	}
	var logs bytes.Buffer
	ctx := context.Background()
	w, err := Open(ctx, Options{StateDir: state, CommitInterval: time.Hour, Policy: Policy{RecordParams: true},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	const secret = "Sup3rSekrit"
	for i := 0; i < 50; i++ {
		w.Record(session.Event{Kind: session.KindStatement, Session: "s", Time: time.Unix(1764500000, int64(i)),
			Statement: &session.Statement{Protocol: "extended", SQL: "ALTER ROLE r" + strconv.Itoa(i) + " PASSWORD '" + secret + "'",
				Params: []string{secret}, Error: "near PASSWORD '" + secret + "'", Number: int64(i + 1)}})
	}
	ring, err := os.ReadFile(w.j.rg.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ring, []byte(secret)) || rawFramesInRing(t, w.j.rg.path) != 50 {
		t.Fatalf("the statements did not go into the ring raw (%d raw frames)", rawFramesInRing(t, w.j.rg.path))
	}
	if err := w.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	all, err := w.store.Scan(ctx, "", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var recs []Record
	for _, r := range all {
		if r.Kind == "statement" {
			recs = append(recs, r)
		}
	}
	if len(recs) != 50 {
		t.Fatalf("%d statements stored", len(recs))
	}
	if err := errors.Join(w.j.close(), w.store.Close()); err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(state, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the password", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatalf("the log holds the password: %s", logs.String())
	}
	for _, r := range recs {
		var st Statement
		if err := json.Unmarshal(r.Data, &st); err != nil || bytes.Contains(r.Data, []byte(secret)) ||
			!strings.Contains(st.SQL, redacted) || !strings.Contains(st.Error, redacted) ||
			len(st.Params) != 1 || st.Params[0] != redacted || st.ParamCount != 1 {
			t.Fatalf("seq %d: %s (%v)", r.Seq, r.Data, err)
		}
	}
}

// FuzzRawFrame feeds the raw decoder what a root attacker could leave in
// the ring: it never reads past the frame; what it decodes encodes back
// to the same bytes; and the drain's frame for it, decoded or not, is a
// valid record frame of the same seq.
func FuzzRawFrame(f *testing.F) {
	at := time.Unix(1764500000, 5)
	for _, tc := range rawCases() {
		f.Add(rawFrame(at, tc.kind, tc.sess, &tc.st, true, 9)[frameHeader:])
		f.Add(rawFrame(at, tc.kind, tc.sess, &tc.st, false, 9)[frameHeader:])
	}
	f.Add([]byte{rawVersion})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if !isRaw(payload) || len(payload) > 1<<20 {
			return
		}
		frame := append(make([]byte, frameHeader), payload...)
		checksum(frame)
		var dec rawDecoder
		if err := dec.decode(frame[frameHeader:]); err == nil {
			r := dec.r
			again := rawFrame(time.Unix(0, r.ns), r.kind, r.sess, &r.st, r.recorded, r.seq)
			if !r.recorded {
				// The count of parameters not recorded is not a field of
				// r.st: it stands after the strings.
				s := &r.st
				at := frameHeader + rawFixed + 11*4
				for _, str := range []string{r.kind, r.sess, s.Protocol, s.SQL, s.Name, s.Tag, s.SQLState, s.Error, s.Class, s.Decision, s.Rule} {
					at += len(str)
				}
				binary.LittleEndian.PutUint32(again[at:], uint32(r.paramCount))
			}
			if !bytes.Equal(again[frameHeader:], payload) {
				t.Fatalf("decoded %+v; encodes back as\n%q, was\n%q", r, again[frameHeader:], payload)
			}
		}
		enc := dec.appendEncoded(nil, frame)
		if binary.BigEndian.Uint32(enc) != uint32(len(enc)-frameHeader) {
			t.Fatalf("frame length %d for %d bytes", binary.BigEndian.Uint32(enc), len(enc)-frameHeader)
		}
		p, err := decodePayload(enc[frameHeader:], nil)
		if err != nil || !json.Valid(p.Data) {
			t.Fatalf("drain's frame %q: %v", enc, err)
		}
		if want, _ := frameSeq(payload); p.Seq != want {
			t.Fatalf("seq %d, the raw frame's %d", p.Seq, want)
		}
	})
}

// BenchmarkRawFrame is a pgbench -S statement's record (with its one-row
// sample) copied raw ("raw": what the data path does now, numbering and
// checksum included), turned into its encoded frame by the drain
// ("drain"), and encoded as the data path did before ("encoded"), each
// into a buffer in cache.
func BenchmarkRawFrame(b *testing.B) {
	at := time.Now()
	s := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1",
		Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond,
		Sample: &session.Sample{Columns: []string{"abalance"}, OIDs: []uint32{23}, Data: storedRows([]string{"-4821"})}}
	buf := make([]byte, 0, 4096)
	raw := rawFrame(at, "statement", "0f3c9a2b7d", s, false, 1)
	b.Run("raw", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			buf = appendRawStatement(buf[:0], at.UnixNano(), "statement", "0f3c9a2b7d", s, false)
			binary.LittleEndian.PutUint64(buf[rawSeqAt:], uint64(i))
			checksum(buf)
		}
	})
	b.Run("drain", func(b *testing.B) {
		var dec rawDecoder
		for i := 0; i < b.N; i++ {
			buf = dec.appendEncoded(buf[:0], raw)
		}
	})
	b.Run("encoded", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			st, plain := statementOf(s, Policy{})
			rs := sampleOf(s.Sample)
			st.Sample = &rs
			var seqAt int
			buf, seqAt = appendFrameHead(buf, at, "statement", "0f3c9a2b7d")
			buf = append(appendStatementPlain(buf, &st, plain), '}')
			appendInt(buf[seqAt:seqAt], int64(i))
			checksum(buf)
		}
	})
}
