package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/airlockhq/airlock/internal/rowsample"
)

// appendSample encodes a statement's sample, from its leading comma, as
// encoding/json would (appendStatement's part). The stored form's rows
// are base64 of the wire bytes: no value is rendered or escaped here.
func appendSample(b []byte, s *ResultSample) []byte {
	b = append(b, `,"sample":{"columns":`...)
	b = appendStrings(b, s.Columns)
	b = append(b, `,"rows":`...)
	if s.Rows == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, r := range s.Rows {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendNullableStrings(b, r)
		}
		b = append(b, ']')
	}
	if s.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	if len(s.OIDs) > 0 {
		b = append(b, `,"oids":[`...)
		for i, o := range s.OIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendUint(b, uint64(o))
		}
		b = append(b, ']')
	}
	if len(s.Formats) > 0 {
		b = append(b, `,"formats":[`...)
		for i, f := range s.Formats {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendInt(b, int64(f))
		}
		b = append(b, ']')
	}
	if len(s.Data) > 0 {
		b = append(b, `,"data":"`...)
		b = appendBase64(b, s.Data)
		b = append(b, '"')
	}
	return append(b, '}')
}

// base64Pairs is standard base64's two characters for each 12 bits.
var base64Pairs = func() (t [1 << 12]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// appendBase64 appends src in standard base64 with padding, as
// encoding/json writes a []byte: four table look-ups and one store per six
// bytes where encoding/base64 makes eight look-ups and stores (it was a
// third of recording a 10-row sample, BenchmarkWriterRecordSample).
func appendBase64(dst, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	// Twelve bytes at a time with vector instructions where there are
	// (base64_amd64.go), then the rest, or all of it elsewhere, six bytes
	// at a time, read as eight (the last two are the next round's),
	// written as eight characters in one store.
	i, o := appendBase64Blocks(out, src)
	for ; len(src)-i >= 8 && len(out)-o >= 8; i, o = i+6, o+8 {
		v := binary.BigEndian.Uint64(src[i:])
		binary.LittleEndian.PutUint64(out[o:], uint64(base64Pairs[v>>52])|uint64(base64Pairs[v>>40&0xfff])<<16|
			uint64(base64Pairs[v>>28&0xfff])<<32|uint64(base64Pairs[v>>16&0xfff])<<48)
	}
	base64.StdEncoding.Encode(out[o:], src[i:]) // the last few bytes, padded
	return dst[:len(dst)+n]
}

// Stored is whether s is in the stored form (see ResultSample): its rows
// are still wire bytes.
func (s *ResultSample) Stored() bool { return s != nil && s.Rows == nil }

// Render turns a stored sample into the rendered form, in place: the rows
// as text, exactly as samples were rendered when the proxy rendered them
// (docs/AUDIT.md, Result samples). A rendered sample, or none, is left as
// it is. A stored sample that does not parse (its record was edited) is an
// error, and s is left as it was.
func (s *ResultSample) Render() error {
	if !s.Stored() {
		return nil
	}
	rows, err := rowsample.Render(s.Data, s.OIDs, s.Formats)
	if err != nil {
		return fmt.Errorf("render the result sample: %w", err)
	}
	s.Rows, s.OIDs, s.Formats, s.Data = rows, nil, nil, nil
	return nil
}

// sampleKey is how a statement record with a sample reads, wherever its
// sample is: in a JSON string, the quotes would be escaped.
var sampleKey = []byte(`"sample":`)

// RenderSample rewrites the data of a statement record whose sample is
// stored with the sample rendered: what export, sessions show and replay
// hand out (the airlock.audit/1 shape). Other records are left as they
// are. The rewritten data is no longer the bytes the chain hashed, so
// those are kept in HashedData (verify reads the store, never this). On
// error r is left as it was.
func RenderSample(r *Record) error {
	if r.Kind != "statement" || !bytes.Contains(r.Data, sampleKey) {
		return nil
	}
	var st Statement
	if err := json.Unmarshal(r.Data, &st); err != nil {
		return fmt.Errorf("seq %d: decode the statement: %w", r.Seq, err)
	}
	if !st.Sample.Stored() {
		return nil
	}
	if err := st.Sample.Render(); err != nil {
		return fmt.Errorf("seq %d: %w", r.Seq, err)
	}
	d, err := encodeData(st)
	if err != nil {
		return fmt.Errorf("seq %d: encode the statement: %w", r.Seq, err)
	}
	r.HashedData, r.Data = r.Data, d
	return nil
}
