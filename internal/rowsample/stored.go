// Package rowsample is the stored form of a statement's result sample: the
// rows exactly as the client got them, kept as wire bytes on the data path
// (the proxy copies them and renders nothing), and rendered as text only
// when a record is read (sessions show, replay, audit export).
//
// The stored rows are a sequence of rows, each a big-endian uint16 count
// of values and then each value: a uvarint tag, 0 for SQL NULL, else 1 +
// (n<<1 | cut), followed by the n bytes kept of the value as the client
// got it (cut: the sample's caps cut it there; it is rendered with a
// trailing "…"). Kept values are at most a few hundred bytes, so a tag is
// one or two bytes: the form is about as large as the rendered text would
// be as JSON, with nothing rendered or escaped to make it. A COPY TO STDOUT
// line is a row of one value.
package rowsample

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The caps on one value: a value is cut where its rendering would pass
// MaxValue bytes, or what is left of the sample's byte cap; with less than
// MinValue bytes left, the sample ends (a cut value needs room for a few
// bytes and its ellipsis).
const (
	MaxValue = 256
	MinValue = 8
)

// Keep is how many bytes of value v (of type oid, in format) a sample
// keeps so that its rendering is at most limit bytes, and whether that
// cuts it: the very prefix appendRendered(v, oid, format, limit) renders.
// Values of fixed-size binary types are never cut.
func Keep(v []byte, oid uint32, format int16, limit int) (int, bool) {
	if format != 1 || textOID(oid) {
		return textCut(v, limit)
	}
	switch {
	case oid == oidJSONB && len(v) > 0 && v[0] == 1:
		n, cut := textCut(v[1:], limit)
		return 1 + n, cut
	case fixedSize(oid, len(v)):
		return len(v), false
	}
	return hexCut(v, limit)
}

// fixedSize is whether a binary value of type oid and n bytes renders as
// its type's text form (appendRendered's cases that ignore the limit).
func fixedSize(oid uint32, n int) bool {
	switch oid {
	case oidBool:
		return n == 1
	case oidInt2:
		return n == 2
	case oidInt4, oidOID, oidFloat4, oidDate:
		return n == 4
	case oidInt8, oidFloat8, oidTimestamp, oidTimestampTZ:
		return n == 8
	case oidUUID:
		return n == 16
	}
	return false
}

// AppendValue appends a value the sample keeps: v (already cut to what
// Keep said) and whether it was cut.
func AppendValue(dst, v []byte, cut bool) []byte {
	tag := uint64(len(v)) << 1
	if cut {
		tag |= 1
	}
	return append(binary.AppendUvarint(dst, tag+1), v...)
}

// AppendNull appends SQL NULL.
func AppendNull(dst []byte) []byte { return append(dst, 0) }

// AppendCount appends a row's count of values.
func AppendCount(dst []byte, n int) []byte { return binary.BigEndian.AppendUint16(dst, uint16(n)) }

// Format is column i's format code under Bind's rules: none means text, one
// applies to every column, else one per column (text past the list).
func Format(formats []int16, i int) int16 {
	switch {
	case len(formats) == 0:
		return 0
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

func oidOf(oids []uint32, i int) uint32 {
	if i < len(oids) {
		return oids[i]
	}
	return 0
}

// ErrMalformed is a stored sample whose rows do not parse: its record was
// edited, since the proxy writes none such.
var ErrMalformed = errors.New("malformed stored sample")

// Render renders stored rows (columns of types oids, in formats by Bind's
// rules) as the sample's text rows, a nil value for SQL NULL. Never nil:
// no rows is an empty list.
func Render(data []byte, oids []uint32, formats []int16) ([][]*string, error) {
	rows := [][]*string{}
	var text []byte
	type cell struct {
		start, end int
		null       bool
	}
	var cells []cell
	var widths []int
	for p := 0; p < len(data); {
		if len(data)-p < 2 {
			return nil, fmt.Errorf("%w: row at byte %d has no value count", ErrMalformed, p)
		}
		n := int(binary.BigEndian.Uint16(data[p:]))
		p += 2
		for i := 0; i < n; i++ {
			tag, k := binary.Uvarint(data[p:])
			if k <= 0 {
				return nil, fmt.Errorf("%w: value %d of row %d has no tag", ErrMalformed, i, len(widths))
			}
			p += k
			if tag == 0 {
				cells = append(cells, cell{null: true})
				continue
			}
			tag--
			cut := tag&1 == 1
			if tag>>1 > uint64(len(data)-p) {
				return nil, fmt.Errorf("%w: value %d of row %d is longer than the rest", ErrMalformed, i, len(widths))
			}
			l := int(tag >> 1)
			v := data[p : p+l]
			p += l
			start := len(text)
			if cut {
				text = appendCut(text, v, oidOf(oids, i), Format(formats, i))
			} else {
				text, _ = appendRendered(text, v, oidOf(oids, i), Format(formats, i), math.MaxInt)
			}
			cells = append(cells, cell{start: start, end: len(text)})
		}
		widths = append(widths, n)
	}
	// One string holds every value: the rows are substrings of it.
	all := string(text)
	vals := make([]string, len(cells))
	ptrs := make([]*string, len(cells))
	for i, c := range cells {
		if !c.null {
			vals[i] = all[c.start:c.end]
			ptrs[i] = &vals[i]
		}
	}
	at := 0
	for _, w := range widths {
		rows = append(rows, ptrs[at:at+w:at+w])
		at += w
	}
	return rows, nil
}

// appendCut renders a value the caps cut, v being what was kept: as the
// cut rendering appendRendered made of the whole value.
func appendCut(dst, v []byte, oid uint32, format int16) []byte {
	switch {
	case format != 1 || textOID(oid):
	case oid == oidJSONB && len(v) > 0 && v[0] == 1:
		v = v[1:]
	default:
		dst, _ = appendHex(dst, v, math.MaxInt)
		return append(dst, ellipsis...)
	}
	return append(append(dst, v...), ellipsis...)
}
