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
	params  []string
	columns []string
	oids    []uint32
	formats []int16
}

// The readers of a raw frame's fields: each reads at i in p and returns
// the offset after it, or -1 if p ends first (and -1 stays -1, so a
// frame is checked once, at the end). Plain functions of locals: a
// reader kept in a struct of the decoder's was loaded, stored and
// write-barriered at every field, a third of decoding a frame.
func rawU8(p []byte, i int) (byte, int) {
	if i < 0 || i >= len(p) {
		return 0, -1
	}
	return p[i], i + 1
}

func rawU32(p []byte, i int) (uint32, int) {
	if i < 0 || len(p)-i < 4 {
		return 0, -1
	}
	return binary.LittleEndian.Uint32(p[i:]), i + 4
}

func rawU64(p []byte, i int) (uint64, int) {
	if i < 0 || len(p)-i < 8 {
		return 0, -1
	}
	return binary.LittleEndian.Uint64(p[i:]), i + 8
}

// rawBytes reads a length and that many bytes.
func rawBytes(p []byte, i int) ([]byte, int) {
	n, i := rawU32(p, i)
	if i < 0 || uint64(n) > uint64(len(p)-i) {
		return nil, -1
	}
	return p[i : i+int(n) : i+int(n)], i + int(n)
}

func rawStr(p []byte, i int) (string, int) {
	b, i := rawBytes(p, i)
	if len(b) == 0 {
		return "", i
	}
	return unsafe.String(&b[0], len(b)), i
}

// rawCount reads a count of items of at least each bytes apiece: never
// more than the rest of the frame could hold, whatever the frame says
// (it is read from a file root could have edited).
func rawCount(p []byte, i, each int) (int, int) {
	n, i := rawU32(p, i)
	if i < 0 || uint64(n)*uint64(each) > uint64(len(p)-i) {
		return 0, -1
	}
	return int(n), i
}

var errRawShort = errors.New("raw audit frame: truncated, or a count or length past its end")

// decode reads the payload of a raw frame into d.r. Every length and
// count is checked against what is left of the payload, and the payload
// must end where the record does.
func (d *rawDecoder) decode(p []byte) error {
	r := &d.r
	*r = rawStatement{}
	if !isRaw(p) {
		return errors.New("raw audit frame: not one")
	}
	i := 1
	var u uint64
	u, i = rawU64(p, i)
	r.seq = int64(u)
	if i > 0 && r.seq < 1 {
		// Not a seq the journal gives; nor one its padded slot holds.
		return fmt.Errorf("raw audit frame: seq %d", r.seq)
	}
	u, i = rawU64(p, i)
	r.ns = int64(u)
	s := &r.st
	r.kind, i = rawStr(p, i)
	r.sess, i = rawStr(p, i)
	s.Protocol, i = rawStr(p, i)
	s.SQL, i = rawStr(p, i)
	s.Name, i = rawStr(p, i)
	s.Tag, i = rawStr(p, i)
	s.SQLState, i = rawStr(p, i)
	s.Error, i = rawStr(p, i)
	s.Class, i = rawStr(p, i)
	s.Decision, i = rawStr(p, i)
	s.Rule, i = rawStr(p, i)
	var pc uint32
	pc, i = rawU32(p, i)
	r.paramCount = int(pc)
	var rec byte
	rec, i = rawU8(p, i)
	switch {
	case i < 0:
		return errRawShort
	case rec == 1:
		r.recorded = true
		if uint64(pc)*4 > uint64(len(p)-i) {
			return errRawShort
		}
		d.params = d.params[:0]
		for k := 0; k < r.paramCount && i >= 0; k++ {
			var v string
			v, i = rawStr(p, i)
			d.params = append(d.params, v)
		}
		s.Params = d.params
	case rec != 0:
		return fmt.Errorf("raw audit frame: parameters flag %d", rec)
	}
	u, i = rawU64(p, i)
	s.Rows = int64(u)
	u, i = rawU64(p, i)
	s.Bytes = int64(u)
	u, i = rawU64(p, i)
	s.Duration = time.Duration(u)
	u, i = rawU64(p, i)
	s.Number = int64(u)
	var flags byte
	flags, i = rawU8(p, i)
	if i < 0 {
		return errRawShort
	}
	if flags&^(rawSample|rawColumns|rawTruncated) != 0 || (flags&rawSample == 0 && flags != 0) {
		return fmt.Errorf("raw audit frame: sample flags %#x", flags)
	}
	if flags&rawSample != 0 {
		i = d.decodeSample(p, i, &r.sample, flags)
		s.Sample = &r.sample
	}
	if i < 0 {
		return errRawShort
	}
	if i != len(p) {
		return fmt.Errorf("raw audit frame: %d bytes past the record", len(p)-i)
	}
	return nil
}

// decodeSample reads a sample's fields at i in p (see rawU8).
func (d *rawDecoder) decodeSample(p []byte, i int, sm *session.Sample, flags byte) int {
	sm.Truncated = flags&rawTruncated != 0
	var n int
	if flags&rawColumns != 0 {
		n, i = rawCount(p, i, 4)
		if d.columns == nil {
			d.columns = make([]string, 0, 4) // not nil: [] and null differ
		}
		d.columns = d.columns[:0]
		for k := 0; k < n && i >= 0; k++ {
			var c string
			c, i = rawStr(p, i)
			d.columns = append(d.columns, c)
		}
		sm.Columns = d.columns
	}
	n, i = rawCount(p, i, 4)
	d.oids = d.oids[:0]
	for k := 0; k < n; k, i = k+1, i+4 {
		d.oids = append(d.oids, binary.LittleEndian.Uint32(p[i:]))
	}
	sm.OIDs = d.oids
	n, i = rawCount(p, i, 2)
	d.formats = d.formats[:0]
	for k := 0; k < n; k, i = k+1, i+2 {
		d.formats = append(d.formats, int16(binary.LittleEndian.Uint16(p[i:])))
	}
	sm.Formats = d.formats
	sm.Data, i = rawBytes(p, i)
	return i
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
		seq, _ := frameSeq(raw[frameHeader:]) // 0 if none: the frame's own is not written
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
