package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestPumpFraming checks that the pump forwards streams unchanged however
// the reads are cut, and hands the decoder whole bodies of every size.
func TestPumpFraming(t *testing.T) {
	big := bytes.Repeat([]byte("q"), 3*bigBuf+17)
	stream := encodeAll(
		&pgproto3.Query{String: "select 1"},
		&pgproto3.CopyData{Data: big},                     // streamed, never held whole
		&pgproto3.Query{String: string(big[:bigBuf-100])}, // decoded within a big buffer
		&pgproto3.Query{String: string(big)},              // decoded from its own allocation
		&pgproto3.Sync{},
		&pgproto3.Terminate{},
	)
	readers := []struct {
		name string
		r    func() io.Reader
	}{
		{"whole", func() io.Reader { return bytes.NewReader(stream) }},
		{"one byte", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) }},
		{"half", func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) }},
		{"data with EOF", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) }},
	}
	for _, rc := range readers {
		t.Run(rc.name, func(t *testing.T) {
			var out bytes.Buffer
			var seen []string
			p := newPump(rc.r(), &out, onErr(func(typ byte, n int, body []byte) error {
				if typ == 'Q' {
					var q pgproto3.Query
					if err := q.Decode(body); err != nil {
						t.Fatalf("decode: %v", err)
					}
					seen = append(seen, "Q"+itoa(len(q.String)))
				} else {
					seen = append(seen, string(typ)+itoa(n))
				}
				if typ == 'X' {
					return errClientTerminate
				}
				return nil
			}), "Q", 1<<22, 1<<22)
			if err := p.run(); !errors.Is(err, errClientTerminate) {
				t.Fatalf("run: %v", err)
			}
			if !bytes.Equal(out.Bytes(), stream) {
				t.Fatalf("forwarded %d bytes, want the %d-byte stream unchanged", out.Len(), len(stream))
			}
			want := []string{"Q8", "d" + itoa(len(big)+4), "Q" + itoa(bigBuf-100), "Q" + itoa(len(big)), "S4", "X4"}
			if len(seen) != len(want) {
				t.Fatalf("seen %v, want %v", seen, want)
			}
			for i := range want {
				if seen[i] != want[i] {
					t.Fatalf("seen %v, want %v", seen, want)
				}
			}
			if p.big != nil {
				t.Fatal("pump kept a big buffer after the stream ended")
			}
		})
	}
}

func TestPumpLimits(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"too long", []byte{'Q', 0, 1, 0, 5}, errTooLong{65537, 65536}},
		{"bad length", []byte{'Q', 0, 0, 0, 3}, errBadLength},
		{"clean end", encodeAll(&pgproto3.Sync{}), io.EOF},
		{"cut mid-message", []byte{'Q', 0, 0, 0, 9, 's'}, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPump(bytes.NewReader(tc.in), io.Discard, onErr(func(byte, int, []byte) error { return nil }), "Q", 1<<16, 1<<16)
			if err := p.run(); !errors.Is(err, tc.want) && err != tc.want {
				t.Fatalf("run: %v, want %v", err, tc.want)
			}
		})
	}
}

// onErr adapts a callback that can only stop the pump.
func onErr(f func(typ byte, n int, body []byte) error) func(byte, int, []byte) act {
	return func(typ byte, n int, body []byte) act { return act{err: f(typ, n, body)} }
}

// countingIO counts the calls a pump makes on each side.
type countingIO struct {
	r      io.Reader
	w      bytes.Buffer
	reads  int
	writes int
}

func (c *countingIO) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }
func (c *countingIO) Write(p []byte) (int, error) {
	c.writes++
	return c.w.Write(p)
}

// TestPumpDecodedResultReads: a result whose rows a stage decodes and
// rewrites is read in big reads and written once per read, not 512 bytes
// at a time (a read and a write each) once the first read cut a row in two.
func TestPumpDecodedResultReads(t *testing.T) {
	msgs := []pgproto3.BackendMessage{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25, Format: 0}}}}
	for i := 0; i < 60; i++ {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte{'a' + byte(i%26)}, 90)}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 60")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	var stream []byte
	for _, m := range msgs {
		stream, _ = m.Encode(stream)
	}
	for _, tc := range []struct {
		name    string
		replace bool
	}{{"forwarded", false}, {"replaced", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := &countingIO{r: bytes.NewReader(stream)}
			p := newPump(c, c, func(typ byte, n int, body []byte) act {
				if typ == 'D' && tc.replace {
					out := append([]byte{'D', 0, 0, 0, 0}, body...)
					binary.BigEndian.PutUint32(out[1:], uint32(n))
					return act{kind: actReplace, out: out}
				}
				return act{}
			}, "TD", 1<<20, 0)
			if err := p.run(); !errors.Is(err, io.EOF) {
				t.Fatalf("run: %v", err)
			}
			if !bytes.Equal(c.w.Bytes(), stream) {
				t.Fatalf("forwarded %d bytes, want the %d-byte stream unchanged", c.w.Len(), len(stream))
			}
			// 512 bytes, then the rest into the big buffer, then EOF.
			if c.reads > 3 || c.writes > 2 {
				t.Fatalf("%d-byte result took %d reads and %d writes, want at most 3 and 2", len(stream), c.reads, c.writes)
			}
		})
	}
}

// Arguments are recorded as rendered, in order, whatever their number, with
// the caps applied.
func TestFormatParams(t *testing.T) {
	long := bytes.Repeat([]byte("é"), maxParamShown) // 2 bytes a rune: cut on a rune boundary
	many := make([][]byte, 7)
	for i := range many {
		many[i] = []byte(strconv.Itoa(i))
	}
	tests := []struct {
		name    string
		values  [][]byte
		formats []int16
		want    []string
	}{
		{"none", nil, nil, nil},
		{"text and null", [][]byte{[]byte("12345"), nil, {}}, nil, []string{"12345", "<null>", ""}},
		{"binary", [][]byte{{0, 0, 0, 7}, make([]byte, maxBinShown+1)}, []int16{1}, []string{`\x00000007`, fmt.Sprintf("<binary %d bytes>", maxBinShown+1)}},
		{"per-argument formats", [][]byte{{1}, []byte("x")}, []int16{1, 0}, []string{`\x01`, "x"}},
		{"long text", [][]byte{long}, nil, []string{string(long[:maxParamShown]) + fmt.Sprintf("…<%d bytes>", len(long))}},
		{"many", many, nil, []string{"0", "1", "2", "3", "4", "5", "6"}},
	}
	var buf []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p paramList
			var size int
			p, buf, size = formatParams(buf[:0], tc.values, tc.formats)
			got := p.appendTo(nil)
			if !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
				t.Fatalf("params %q, want %q", got, tc.want)
			}
			want := 0
			for _, s := range tc.want {
				want += len(s) + 16
			}
			if size != want {
				t.Errorf("size %d, want %d", size, want)
			}
		})
	}
	// The total cap: past maxParamsShown bytes, arguments are not kept.
	big := [][]byte{bytes.Repeat([]byte("a"), maxParamShown), bytes.Repeat([]byte("b"), maxParamShown),
		bytes.Repeat([]byte("c"), maxParamShown), bytes.Repeat([]byte("d"), maxParamShown), []byte("e")}
	p, _, _ := formatParams(nil, big, nil)
	if got := p.appendTo(nil); len(got) != 5 || got[4] != "<not kept>" {
		t.Errorf("past the cap: %d params, last %q", len(got), got[len(got)-1])
	}
}
