package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/airlockhq/airlock/internal/session"
)

// Raw statement frames. A statement's record is the one written at the
// rate of the traffic, and its redaction and JSON encoding were most of
// Writer.Record's cost on the data path. So where the ring has room, the
// data path copies the statement's fields into the ring as they are, in
// a compact binary frame, and the journal's drain (the shipper's thread,
// or openRing for the frames a killed daemon left) turns each into the
// frame that would have been encoded on the data path: the same redaction,
// the same encoder, the same seq, a new checksum. Segments, kept frames
// and everything after them hold only encoded frames, byte for byte as
// before; a raw frame (unredacted text) lives only in the ring, a root
// 0600 file on tmpfs, that is memory.
//
// Payload (little-endian): rawVersion; the seq (8 bytes, filled under the
// journal's lock as an encoded frame's padded digits are); the time (Unix
// ns); strings (4-byte length, bytes): kind, session, protocol, sql, name,
// tag, sqlstate, error, class, decision, rule; the parameter count (4
// bytes), a byte saying whether they are recorded and, if so, each;
// rows, bytes, duration (ns), number (8 bytes each); a byte of sample
// flags (rawSample, rawColumns, rawTruncated) and, with a sample, its
// columns (a count and strings, if not nil), OIDs (a count and 4 bytes
// each), formats (a count and 2 bytes each) and data (a string).
const (
	// rawVersion is a raw frame's first byte: an encoded frame's is '{'.
	rawVersion = 0xA1
	rawSeqAt   = frameHeader + 1 // the seq's place in a raw frame
	rawFixed   = 1 + 8 + 8       // version, seq, time

	rawSample    = 1 << 0
	rawColumns   = 1 << 1 // the columns are not nil (null and [] differ in JSON)
	rawTruncated = 1 << 2
)

// isRaw is whether a frame's payload is a raw statement frame.
func isRaw(payload []byte) bool { return len(payload) > 0 && payload[0] == rawVersion }

// rawStatementSize is the size of the raw frame, header included, that
// appendRawStatement writes for s.
func rawStatementSize(kind, sess string, s *session.Statement, record bool) int {
	n := frameHeader + rawFixed + 11*4 + len(kind) + len(sess) + len(s.Protocol) + len(s.SQL) + len(s.Name) +
		len(s.Tag) + len(s.SQLState) + len(s.Error) + len(s.Class) + len(s.Decision) + len(s.Rule) +
		4 + 1 + 4*8 + 1
	if record {
		for _, p := range s.Params {
			n += 4 + len(p)
		}
	}
	if sm := s.Sample; sm != nil {
		if sm.Columns != nil {
			n += 4
			for _, c := range sm.Columns {
				n += 4 + len(c)
			}
		}
		n += 4 + 4*len(sm.OIDs) + 4 + 2*len(sm.Formats) + 4 + len(sm.Data)
	}
	return n
}

// appendRawStatement appends s's raw frame to b (which has the room
// rawStatementSize says): the header's room, and the seq's, to be filled
// by numberLocked.
func appendRawStatement(b []byte, ns int64, kind, sess string, s *session.Statement, record bool) []byte {
	le := binary.LittleEndian
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, rawVersion, 0, 0, 0, 0, 0, 0, 0, 0)
	b = le.AppendUint64(b, uint64(ns))
	for _, str := range [...]string{kind, sess, s.Protocol, s.SQL, s.Name, s.Tag, s.SQLState, s.Error, s.Class, s.Decision, s.Rule} {
		b = appendRawString(b, str)
	}
	b = le.AppendUint32(b, uint32(len(s.Params)))
	if record {
		b = append(b, 1)
		for _, p := range s.Params {
			b = appendRawString(b, p)
		}
	} else {
		b = append(b, 0)
	}
	b = le.AppendUint64(b, uint64(s.Rows))
	b = le.AppendUint64(b, uint64(s.Bytes))
	b = le.AppendUint64(b, uint64(s.Duration))
	b = le.AppendUint64(b, uint64(s.Number))
	sm := s.Sample
	if sm == nil {
		return append(b, 0)
	}
	flags := byte(rawSample)
	if sm.Columns != nil {
		flags |= rawColumns
	}
	if sm.Truncated {
		flags |= rawTruncated
	}
	b = append(b, flags)
	if sm.Columns != nil {
		b = le.AppendUint32(b, uint32(len(sm.Columns)))
		for _, c := range sm.Columns {
			b = appendRawString(b, c)
		}
	}
	b = le.AppendUint32(b, uint32(len(sm.OIDs)))
	for _, o := range sm.OIDs {
		b = le.AppendUint32(b, o)
	}
	b = le.AppendUint32(b, uint32(len(sm.Formats)))
	for _, f := range sm.Formats {
		b = le.AppendUint16(b, uint16(f))
	}
	b = le.AppendUint32(b, uint32(len(sm.Data)))
	return append(b, sm.Data...)
}

func appendRawString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// rawStatement is a raw frame decoded. Its strings and data are the
// frame's own bytes (no copies): valid only as long as the frame is.
type rawStatement struct {
	seq, ns    int64
	kind, sess string
	st         session.Statement
	sample     session.Sample
	paramCount int
	recorded   bool
}

// rawDecoder decodes raw frames, reusing its record and slices from one
// to the next (a record decoded on the stack escaped to the heap, an
// allocation a statement): the drain's, used under the journal's fileMu.
type rawDecoder struct {
	r       rawStatement
	p       []byte // what is left of the payload
	bad     error  // the first thing found wrong; reads after it give zeros
	params  []string
	columns []string
	oids    []uint32
	formats []int16
}

var errRawShort = errors.New("raw audit frame: truncated")

// take returns the next n bytes, or nil once the payload is found short
// (bad says so: the decoder reads on to the end, checking once).
func (d *rawDecoder) take(n int) []byte {
	if n < 0 || n > len(d.p) {
		if d.bad == nil {
			d.bad = errRawShort
		}
		d.p = nil
		return nil
	}
	b := d.p[:n:n]
	d.p = d.p[n:]
	return b
}

func (d *rawDecoder) u8() byte {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *rawDecoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *rawDecoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// count reads a count of items of at least each bytes apiece: never more
// than the rest of the frame could hold, whatever the frame says (it is
// read from a file root could have edited).
func (d *rawDecoder) count(each int) int {
	n := d.u32()
	if uint64(n)*uint64(each) > uint64(len(d.p)) {
		if d.bad == nil {
			d.bad = fmt.Errorf("raw audit frame: %d items cannot fit in %d bytes", n, len(d.p))
		}
		d.p = nil
		return 0
	}
	return int(n)
}

func (d *rawDecoder) str() string {
	b := d.take(int(min(d.u32(), 1<<31-1)))
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// decode reads the payload of a raw frame into d.r. Every length is
// checked against what is left of the payload, and the payload must end
// where the record does.
func (d *rawDecoder) decode(payload []byte) error {
	r := &d.r
	*r = rawStatement{}
	if !isRaw(payload) {
		return errors.New("raw audit frame: not one")
	}
	d.p, d.bad = payload[1:], nil
	r.seq, r.ns = int64(d.u64()), int64(d.u64())
	s := &r.st
	r.kind, r.sess = d.str(), d.str()
	s.Protocol, s.SQL, s.Name = d.str(), d.str(), d.str()
	s.Tag, s.SQLState, s.Error = d.str(), d.str(), d.str()
	s.Class, s.Decision, s.Rule = d.str(), d.str(), d.str()
	pc := d.u32()
	r.paramCount = int(min(pc, 1<<31-1))
	switch rec := d.u8(); rec {
	case 0:
	case 1:
		r.recorded = true
		if uint64(pc)*4 > uint64(len(d.p)) {
			return fmt.Errorf("raw audit frame: %d parameters cannot fit in %d bytes", pc, len(d.p))
		}
		d.params = d.params[:0]
		for i := 0; i < r.paramCount && d.bad == nil; i++ {
			d.params = append(d.params, d.str())
		}
		s.Params = d.params
	default:
		if d.bad == nil {
			return fmt.Errorf("raw audit frame: parameters flag %d", rec)
		}
	}
	s.Rows, s.Bytes = int64(d.u64()), int64(d.u64())
	s.Duration, s.Number = time.Duration(d.u64()), int64(d.u64())
	flags := d.u8()
	if flags&^(rawSample|rawColumns|rawTruncated) != 0 || (flags&rawSample == 0 && flags != 0) {
		return fmt.Errorf("raw audit frame: sample flags %#x", flags)
	}
	if flags&rawSample != 0 {
		d.decodeSample(&r.sample, flags)
		s.Sample = &r.sample
	}
	if d.bad != nil {
		return d.bad
	}
	if len(d.p) != 0 {
		return fmt.Errorf("raw audit frame: %d bytes past the record", len(d.p))
	}
	return nil
}

func (d *rawDecoder) decodeSample(sm *session.Sample, flags byte) {
	sm.Truncated = flags&rawTruncated != 0
	if flags&rawColumns != 0 {
		n := d.count(4)
		if d.columns == nil {
			d.columns = make([]string, 0, 4) // not nil: [] and null differ
		}
		d.columns = d.columns[:0]
		for i := 0; i < n && d.bad == nil; i++ {
			d.columns = append(d.columns, d.str())
		}
		sm.Columns = d.columns
	}
	n := d.count(4)
	b := d.take(4 * n)
	d.oids = d.oids[:0]
	for i := 0; i < n && d.bad == nil; i++ {
		d.oids = append(d.oids, binary.LittleEndian.Uint32(b[4*i:]))
	}
	sm.OIDs = d.oids
	n = d.count(2)
	b = d.take(2 * n)
	d.formats = d.formats[:0]
	for i := 0; i < n && d.bad == nil; i++ {
		d.formats = append(d.formats, int16(binary.LittleEndian.Uint16(b[2*i:])))
	}
	sm.Formats = d.formats
	sm.Data = d.take(d.count(1))
}

// appendEncoded appends to dst the encoded frame for the raw frame raw
// (header included): exactly the frame Writer.Record encodes for the
// same statement, with raw's seq. A raw frame that does not decode (its
// file edited) becomes an audit.alert record of the same seq saying so:
// its text is never copied, and the seqs stay whole.
func (d *rawDecoder) appendEncoded(dst, raw []byte) []byte {
	err := d.decode(raw[frameHeader:])
	r := &d.r
	at := len(dst)
	var fr []byte
	var seqAt int
	if err != nil {
		seq, _ := frameSeq(raw[frameHeader:])
		fr, seqAt = appendFrameHead(dst[at:], time.Now().UTC(), KindAlert, "")
		data, _ := encodeData(AlertData{Message: fmt.Sprintf("audit journal ring: statement record %d could not be read back (%v)", seq, err)})
		fr = append(append(fr, data...), '}')
		r.seq = seq
	} else {
		st, plain := statementOfCount(&r.st, r.paramCount, r.recorded)
		if r.st.Sample != nil {
			rs := sampleOf(r.st.Sample)
			st.Sample = &rs
		}
		fr, seqAt = appendFrameHead(dst[at:], time.Unix(0, r.ns).UTC(), r.kind, r.sess)
		fr = append(appendStatementPlain(fr, &st, plain), '}')
	}
	appendInt(fr[seqAt:seqAt], r.seq)
	checksum(fr)
	if len(fr) > 0 && cap(dst) > at && &fr[0] == &dst[:at+1][at] {
		return dst[:at+len(fr)] // encoded in place
	}
	return append(dst, fr...)
}

// appendRaw journals s's record as a raw frame, copied into the ring at
// head under mu (as appendInRing encodes one); false if it was not (no
// ring, the journal closed or at its bound, less contiguous room than
// the frame): the caller then encodes it.
func (j *journal) appendRaw(ns int64, kind, sess string, s *session.Statement, record bool) bool {
	n := rawStatementSize(kind, sess, s, record)
	_, _, _, ok := j.appendInRing(func(room []byte) ([]byte, int) {
		if n > cap(room) {
			return nil, 0
		}
		return appendRawStatement(room, ns, kind, sess, s, record), rawSeqAt
	})
	return ok
}
