package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/rowsample"
	"github.com/airlockhq/airlock/internal/session"
)

// storedRows is rows of text values in rowsample's stored form; a value
// "<null>" is SQL NULL.
func storedRows(rows ...[]string) []byte {
	var b []byte
	for _, r := range rows {
		b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
		for _, v := range r {
			if v == "<null>" {
				b = rowsample.AppendNull(b)
				continue
			}
			b = rowsample.AppendValue(b, []byte(v), false)
		}
	}
	return b
}

// The stored form goes through the hand encoder too: its bytes must be
// encoding/json's.
func TestAppendStoredSampleMatchesEncodingJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    ResultSample
	}{
		{"empty result", ResultSample{Columns: []string{"one"}, OIDs: []uint32{23}}},
		{"no columns", ResultSample{Columns: []string{}}},
		{"text rows", ResultSample{Columns: []string{"id", "e<m>"}, OIDs: []uint32{23, 25}, Data: storedRows([]string{"1", "a&b"}, []string{"2", "<null>"}), Truncated: true}},
		{"binary", ResultSample{Columns: []string{"i"}, OIDs: []uint32{4294967295}, Formats: []int16{1, -1}, Data: []byte{0, 1, 0, 0, 0, 4, 0, 0, 0, 7}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := Statement{Protocol: "simple", SQL: "select", Sample: &tc.s, Number: 3}
			want, err := json.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			if got := appendStatement(nil, &st); string(got) != string(want) {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
		})
	}
}

// A record as stored reads, through RenderSample, as the export schema
// has it: the rendered form, byte for byte what the proxy wrote when it
// rendered samples itself; records of that time, and records of other
// kinds, are handed out as they are.
func TestRenderSample(t *testing.T) {
	v := func(s string) *string { return &s }
	rendered := func(s ResultSample) []byte {
		return appendStatement(nil, &Statement{Protocol: "extended", SQL: `select "x" <> 1`, Tag: "SELECT 2", Rows: 2, Sample: &s, Number: 7})
	}
	for _, tc := range []struct {
		name string
		kind string
		data []byte
		want []byte
	}{
		{"stored text", "statement",
			rendered(ResultSample{Columns: []string{"id", "email"}, OIDs: []uint32{23, 25}, Truncated: true,
				Data: storedRows([]string{"1", "[redacted]"}, []string{"2", "<null>"})}),
			rendered(ResultSample{Columns: []string{"id", "email"}, Rows: [][]*string{{v("1"), v("[redacted]")}, {v("2"), nil}}, Truncated: true})},
		{"stored binary", "statement",
			rendered(ResultSample{Columns: []string{"n", "b"}, OIDs: []uint32{23, 17}, Formats: []int16{1},
				Data: rowsample.AppendValue(rowsample.AppendValue(rowsample.AppendCount(nil, 2), []byte{0xff, 0xff, 0xff, 0xfe}, false), []byte{0xab, 0xcd}, true)}),
			rendered(ResultSample{Columns: []string{"n", "b"}, Rows: [][]*string{{v("-2"), v(`\xabcd…`)}}})},
		{"stored empty result", "statement",
			rendered(ResultSample{Columns: []string{"one"}, OIDs: []uint32{23}}),
			rendered(ResultSample{Columns: []string{"one"}, Rows: [][]*string{}})},
		{"rendered before", "statement",
			rendered(ResultSample{Columns: []string{"a"}, Rows: [][]*string{{v("x")}}}),
			rendered(ResultSample{Columns: []string{"a"}, Rows: [][]*string{{v("x")}}})},
		{"no sample", "statement",
			appendStatement(nil, &Statement{Protocol: "simple", SQL: `select '"sample":'`}),
			appendStatement(nil, &Statement{Protocol: "simple", SQL: `select '"sample":'`})},
		{"other kind", "session.end", []byte(`{"reason":"client_quit","sample":null}`), []byte(`{"reason":"client_quit","sample":null}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Record{Kind: tc.kind, Seq: 9, Data: tc.data}
			if err := RenderSample(&r); err != nil {
				t.Fatal(err)
			}
			if string(r.Data) != string(tc.want) {
				t.Fatalf("got  %s\nwant %s", r.Data, tc.want)
			}
			// What was hashed stays with a rewritten record, and only
			// with one.
			changed := string(tc.data) != string(tc.want)
			if changed && string(r.HashedData) != string(tc.data) || !changed && r.HashedData != nil {
				t.Fatalf("hashed_data %q, the data as stored %q", r.HashedData, tc.data)
			}
		})
	}
}

// An edited stored sample is an error for that record, which is left as
// it was, and the error names no value.
func TestRenderSampleMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"no value count", []byte{0}},
		{"no tag", []byte{0, 1}},
		{"longer than the rest", append([]byte{0, 1, 1 + 9<<1}, "secret"...)},
		{"cut longer than the rest", append([]byte{0, 1, 1 + (9<<1 | 1)}, "secret"...)},
		{"a tag past 64 bits", append([]byte{0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "secret"...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := appendStatement(nil, &Statement{Protocol: "simple", SQL: "select", Sample: &ResultSample{Columns: []string{"v"}, Data: tc.data}})
			r := Record{Kind: "statement", Seq: 4, Data: data}
			err := RenderSample(&r)
			if !errors.Is(err, rowsample.ErrMalformed) {
				t.Fatalf("RenderSample = %v, want a malformed sample", err)
			}
			if string(r.Data) != string(data) {
				t.Fatalf("the record was changed: %s", r.Data)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("the error %q shows a value", err)
			}
		})
	}
}

// FuzzRenderSample feeds RenderSample statement records whose stored
// sample is anything at all (someone with access to the store edited it):
// an error or a rendering, never a panic, and what renders encodes as the
// export shape.
func FuzzRenderSample(f *testing.F) {
	f.Add(storedRows([]string{"1", "x"}, []string{"<null>"}), []byte{0, 1}, uint32(23))
	f.Add(rowsample.AppendValue(rowsample.AppendCount(nil, 1), []byte{0xab, 0xcd}, true), []byte{1}, uint32(17))
	f.Add(rowsample.AppendValue(rowsample.AppendCount(nil, 1), []byte{1}, false), []byte{1}, uint32(3802))
	f.Add([]byte{0, 0, 0, 0}, []byte(nil), uint32(0))
	f.Fuzz(func(t *testing.T, data, formats []byte, oid uint32) {
		var fm []int16
		for _, c := range formats {
			fm = append(fm, int16(c%3))
		}
		st := Statement{Protocol: "simple", SQL: "select", Sample: &ResultSample{Columns: []string{"a", "b"}, OIDs: []uint32{oid, 25}, Formats: fm, Data: data}}
		r := Record{Kind: "statement", Data: appendStatement(nil, &st)}
		if err := RenderSample(&r); err != nil {
			return
		}
		var got Statement
		if err := json.Unmarshal(r.Data, &got); err != nil {
			t.Fatalf("rendered record does not decode: %v", err)
		}
		if got.Sample == nil || got.Sample.Rows == nil || got.Sample.Data != nil || got.Sample.OIDs != nil {
			t.Fatalf("not the rendered form: %s", r.Data)
		}
	})
}

// FuzzAppendBase64 holds the sample's base64 to encoding/base64's (what
// encoding/json writes of a []byte).
func FuzzAppendBase64(f *testing.F) {
	for _, s := range []string{"", "a", "ab", "abc", "abcd", "\x00\xff\xfe\x80\x7f"} {
		f.Add([]byte("prefix"), []byte(s))
	}
	f.Fuzz(func(t *testing.T, prefix, src []byte) {
		want := base64.StdEncoding.AppendEncode(bytes.Clone(prefix), src)
		if got := appendBase64(bytes.Clone(prefix), src); !bytes.Equal(got, want) {
			t.Fatalf("appendBase64(% x) = %q, encoding/base64 %q", src, got, want)
		}
	})
}

// appendBase64 writes what encoding/base64 writes, with the vector encoder
// and without it: every byte value in every place of a group, every length
// about the vector blocks' edges, and a large random input.
func TestAppendBase64(t *testing.T) {
	every := make([]byte, 3*256)
	for i := range 256 {
		every[i], every[256+(i+85)%256], every[512+(i+170)%256] = byte(i), byte(i), byte(i)
	}
	random := make([]byte, 4099)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	cases := []struct {
		name string
		src  []byte
	}{{"empty", nil}, {"every byte", every}, {"random", random}}
	for n := 1; n <= 64; n++ {
		cases = append(cases, struct {
			name string
			src  []byte
		}{fmt.Sprintf("length %d", n), every[:n]})
	}
	simd := base64SIMD
	defer func() { base64SIMD = simd }()
	for _, vec := range []bool{false, simd} {
		base64SIMD = vec
		for _, tc := range cases {
			want := base64.StdEncoding.AppendEncode([]byte("p"), tc.src)
			if got := appendBase64([]byte("p"), tc.src); !bytes.Equal(got, want) {
				t.Errorf("vector %v, %s: got %q, want %q", vec, tc.name, got, want)
			}
		}
	}
}

func BenchmarkAppendBase64(b *testing.B) {
	src := storedRows([]string{"41000", "Person 41000", "h:3f9a0c1e5b7d2a64", "**** **** **** 1000", "pro"})
	for range 3 {
		src = append(src, src...)
	}
	for _, tc := range []struct {
		name string
		enc  func([]byte, []byte) []byte
	}{{"std", base64.StdEncoding.AppendEncode}, {"pairs", appendBase64}} {
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 0, 2*len(src))
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				buf = tc.enc(buf[:0], src)
			}
		})
	}
}

// BenchmarkWriterRecordSample is BenchmarkWriterRecord's statement with a
// 10-row sample of five columns (BenchmarkMaskedRowsTx's rows, masked): the
// data path's cost of recording a sample.
func BenchmarkWriterRecordSample(b *testing.B) {
	w := benchWriter(b, 0)
	var rows [][]string
	for g := 41000; g < 41010; g++ {
		id := strconv.Itoa(g)
		rows = append(rows, []string{id, "Person " + id, "h:3f9a0c1e5b7d2a64", "**** **** **** " + id[1:], "pro"})
	}
	ev := session.Event{Kind: session.KindStatement, Session: session.NewID(), Time: time.Now(),
		Statement: &session.Statement{Protocol: "simple", SQL: "SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN 41000 AND 41000 + 19;",
			Tag: "SELECT 20", Rows: 20, Bytes: 1400, Duration: 300 * time.Microsecond,
			Sample: &session.Sample{Columns: []string{"id", "name", "email", "card", "plan"}, OIDs: []uint32{23, 25, 25, 25, 25},
				Data: storedRows(rows...), Truncated: true}}}
	w.Record(ev)
	recordLoop(b, w, ev)
}

// On both stores: a sample is stored as wire bytes, reads rendered, and a
// statement recorded with a rendered sample (as before the stored form)
// reads as it was; the chain verifies over the bytes as stored.
func TestStoredSampleThroughTheStore(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			spec, pw := sk.open(t)
			w, cancel, done := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancel(); <-done }()
			s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
			s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
			data := rowsample.AppendValue(rowsample.AppendValue(rowsample.AppendCount(nil, 2), []byte{0, 0, 0, 42}, false), []byte("a\"<b>\n"), false)
			data = rowsample.AppendNull(rowsample.AppendNull(rowsample.AppendCount(data, 2)))
			s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "extended", SQL: "SELECT n, t FROM x /*new*/",
				Tag: "SELECT 2", Rows: 2, Sample: &session.Sample{Columns: []string{"n", "t"}, OIDs: []uint32{23, 25}, Formats: []int16{1}, Data: data}}})
			v := "old"
			w.append("statement", s.ID, time.Now(), Statement{Protocol: "simple", SQL: "SELECT 'old' /*old*/", Tag: "SELECT 1", Rows: 1,
				Sample: &ResultSample{Columns: []string{"c"}, Rows: [][]*string{{&v}}}})
			s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
			ctx := context.Background()
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			d, err := w.Store().Session(ctx, s.ID, nil)
			if err != nil || d == nil {
				t.Fatalf("session: %v", err)
			}
			got := map[string]string{}
			for _, r := range d.Records {
				if r.Kind != "statement" {
					continue
				}
				stored := string(r.Data)
				if err := RenderSample(&r); err != nil {
					t.Fatal(err)
				}
				// An export's record checks against its chain link
				// without the store: by hashed_data where data was
				// rendered.
				hashed := r
				if r.HashedData != nil {
					hashed.Data = r.HashedData
				}
				if h := hashRecord(r.PrevHash, &hashed); h != r.Hash {
					t.Errorf("the record as handed out does not hash to its link: %s, want %s", h, r.Hash)
				}
				var st Statement
				if err := json.Unmarshal(r.Data, &st); err != nil {
					t.Fatal(err)
				}
				key := strings.Trim(st.SQL[strings.Index(st.SQL, "/*"):], "/*")
				got[key] = string(r.Data)
				switch key {
				case "new":
					if !strings.Contains(stored, `"rows":null`) || !strings.Contains(stored, `"data":"`) || strings.Contains(stored, `"42"`) {
						t.Errorf("not stored as wire bytes: %s", stored)
					}
					want := appendStatement(nil, &Statement{Protocol: "extended", SQL: st.SQL, Tag: "SELECT 2", Rows: 2, DurationUS: st.DurationUS, Number: st.Number,
						Sample: &ResultSample{Columns: []string{"n", "t"}, Rows: [][]*string{{ptr("42"), ptr("a\"<b>\n")}, {nil, nil}}}})
					if string(r.Data) != string(want) {
						t.Errorf("read as\n%s\nwant\n%s", r.Data, want)
					}
				case "old":
					if string(r.Data) != stored {
						t.Errorf("a rendered sample changed in reading: %s, stored %s", r.Data, stored)
					}
				}
			}
			if len(got) != 2 {
				t.Fatalf("statements read: %v", got)
			}
			rep, err := Verify(ctx, w.Store(), "", nil)
			if err != nil || !rep.OK {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}
