package pgwire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/internal/session"
)

// Result samples. With sampling on, each statement record carries the
// column names and the first rows of its result exactly as they were
// written to the client: the sampler reads DataRows and CopyData after
// every server stage has decided (so a masked value is recorded masked),
// and descriptions as the server sent them (names and types are not
// rewritten by any stage, and the masking stage consumes descriptions of
// its own asking that the client never sees).
//
// Cost: with sampling off the pipe has no sampler and nothing more is
// decoded. With it on, only the first rows of a result are rendered; the
// rest are counted by the pipe as before and only set the truncated flag.
// The rendered values go into one buffer kept from statement to statement,
// and the record gets them as substrings of one string made from it: one
// allocation per sampled statement, not one per value (a 10-row sample of
// five columns made 50, the sample's largest cost on the data path).

// maxSampleValue bounds one value in a sample (bytes of its rendering);
// with less than minSampleValue left under the byte cap, the sample ends
// (a cut value needs room for a few bytes and its ellipsis).
const (
	maxSampleValue = 256
	minSampleValue = 8
)

// rowDesc is what a RowDescription says of a result's columns.
type rowDesc struct {
	names   []string
	oids    []uint32
	formats []int16
}

// parseRowDesc reads a RowDescription body; nil when it is malformed.
func parseRowDesc(b []byte) *rowDesc {
	if len(b) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	d := &rowDesc{names: make([]string, 0, n), oids: make([]uint32, 0, n), formats: make([]int16, 0, n)}
	for i := 0; i < n; i++ {
		z := bytes.IndexByte(b, 0)
		if z < 0 || len(b) < z+1+18 {
			return nil
		}
		f := b[z+1:]
		d.names = append(d.names, string(b[:z]))
		d.oids = append(d.oids, binary.BigEndian.Uint32(f[6:]))
		d.formats = append(d.formats, int16(binary.BigEndian.Uint16(f[16:])))
		b = f[18:]
	}
	return d
}

// sampler builds the current statement's sample. Server side only, except
// where noted.
type sampler struct {
	maxRows, maxBytes int

	started bool     // the current result's description was looked up
	desc    *rowDesc // the current result's columns (nil: unknown)
	cols    []string // desc's names that fit the byte cap
	formats []int16  // the portal's result formats from its Bind (nil: desc's)
	copyFmt int8     // 0 none, 't' text COPY, 'b' binary COPY
	// The rows so far, flat: their values rendered one after the other
	// in text, where each value ends in text (offs; null marks SQL NULL),
	// and where each row ends in offs. Kept from one statement to the
	// next, so that sampling allocates nothing until take.
	text  []byte
	offs  []int
	null  []bool
	ends  []int
	used  int
	trunc bool

	// The last simple-protocol description and what it said: a session
	// that repeats a query gets the same RowDescription each time.
	lastT    []byte
	lastDesc *rowDesc
}

func newSampler(rows, bytes int) *sampler {
	if rows <= 0 || bytes <= 0 {
		return nil
	}
	return &sampler{maxRows: rows, maxBytes: bytes}
}

// result starts a result with description d (a simple Query's, or a
// portal's: formats are the portal's Bind result formats).
func (s *sampler) result(d *rowDesc, formats []int16) {
	s.desc, s.formats, s.started = d, formats, true
	if d == nil {
		return
	}
	// Names count against the cap too: a result of a thousand long
	// column names must not make a large record.
	s.cols = d.names
	for i, n := range d.names {
		if s.used+len(n) > s.maxBytes {
			s.cols, s.trunc = d.names[:i], true
			break
		}
		s.used += len(n)
	}
}

func (s *sampler) full() bool { return len(s.ends) >= s.maxRows || s.used >= s.maxBytes }

// format is column i's format code under Bind's rules: none means text, one
// applies to every column, else one per column.
func (s *sampler) format(i int) int16 {
	if s.formats != nil {
		switch len(s.formats) {
		case 0:
			return 0
		case 1:
			return s.formats[0]
		}
		if i < len(s.formats) {
			return s.formats[i]
		}
		return 0
	}
	if s.desc != nil && i < len(s.desc.formats) {
		return s.desc.formats[i]
	}
	return 0
}

func (s *sampler) oid(i int) uint32 {
	if s.desc != nil && i < len(s.desc.oids) {
		return s.desc.oids[i]
	}
	return 0
}

// row samples one DataRow body as sent to the client.
func (s *sampler) row(body []byte) {
	if s.full() {
		s.trunc = true
		return
	}
	if body == nil {
		// Larger than the pump decodes: it went out unseen.
		s.trunc = true
		return
	}
	if len(body) < 2 {
		return
	}
	n := int(binary.BigEndian.Uint16(body))
	p := 2
	start := len(s.offs)
	for i := 0; i < n; i++ {
		if p+4 > len(body) {
			break
		}
		l := int(int32(binary.BigEndian.Uint32(body[p:])))
		p += 4
		if l < 0 {
			s.offs, s.null = append(s.offs, len(s.text)), append(s.null, true)
			s.used += 4
			continue
		}
		if p+l > len(body) {
			break
		}
		v := body[p : p+l]
		p += l
		left := min(maxSampleValue, s.maxBytes-s.used)
		if left < minSampleValue {
			s.trunc = true
			break
		}
		at := len(s.text)
		var cut bool
		s.text, cut = appendRendered(s.text, v, s.oid(i), s.format(i), left)
		if cut {
			s.trunc = true
		}
		s.used += len(s.text) - at
		s.offs, s.null = append(s.offs, len(s.text)), append(s.null, false)
	}
	if len(s.offs) > start || n == 0 {
		s.ends = append(s.ends, len(s.offs))
	}
}

// copyStart notes a COPY TO STDOUT: its rows are CopyData lines.
func (s *sampler) copyStart(body []byte) {
	s.started = true
	s.copyFmt = 't'
	if len(body) > 0 && body[0] == 1 {
		s.copyFmt = 'b'
	}
}

// copyRow samples one CopyData of a COPY TO STDOUT as one value.
func (s *sampler) copyRow(body []byte) {
	if s.copyFmt == 0 {
		return
	}
	left := min(maxSampleValue, s.maxBytes-s.used)
	if s.full() || body == nil || left < minSampleValue {
		s.trunc = true
		return
	}
	at := len(s.text)
	var cut bool
	if s.copyFmt == 'b' {
		s.text, cut = appendHex(s.text, body, left)
	} else {
		s.text, cut = appendText(s.text, bytes.TrimSuffix(body, []byte{'\n'}), left)
	}
	if cut {
		s.trunc = true
	}
	s.used += len(s.text) - at
	s.offs, s.null = append(s.offs, len(s.text)), append(s.null, false)
	s.ends = append(s.ends, len(s.offs))
}

// Column names of a COPY's sample.
var (
	copyText   = []string{"copy (text)"}
	copyBinary = []string{"copy (binary)"}
)

// take puts the statement's sample in r's memory, returns it and starts
// afresh; nil when the statement returned no result.
func (s *sampler) take(r *stmtRec) *session.Sample {
	var out *session.Sample
	switch {
	case s.copyFmt != 0:
		cols := copyText
		if s.copyFmt == 'b' {
			cols = copyBinary
		}
		out = r.sample(cols, s)
	case s.desc != nil || len(s.ends) > 0:
		var cols []string
		if s.desc != nil {
			cols = s.cols
		}
		out = r.sample(cols, s)
	}
	s.reset()
	return out
}

// maxKeptText bounds the rendering buffer a session keeps between
// statements: an idle session must not hold a large sample's worth of
// memory (audit.sample_bytes may be 1 MiB); a larger one is made again by
// the next statement that needs it.
const maxKeptText = 1024

func (s *sampler) reset() {
	text := s.text[:0]
	if cap(text) > maxKeptText {
		text = nil
	}
	*s = sampler{maxRows: s.maxRows, maxBytes: s.maxBytes, lastT: s.lastT, lastDesc: s.lastDesc,
		text: text, offs: s.offs[:0], null: s.null[:0], ends: s.ends[:0]}
}

// stmtRec is the memory of one statement event: the pipe reuses it once
// the sinks have had the event (session.Sink: they keep none of it), so
// that recording a statement allocates nothing.
type stmtRec struct {
	st     session.Statement
	params []string
	smp    session.Sample
	vals   []string
	ptrs   []*string
	rows   [][]*string
}

// paramsOf is p's arguments in r's memory.
func (r *stmtRec) paramsOf(p *paramList) []string {
	if p.n == 0 {
		return nil
	}
	r.params = p.appendTo(r.params[:0])
	return r.params
}

// sample copies s's rows into r's sample. Sample's rows are pointers (nil
// for NULL) into r.vals, each row a slice of r.ptrs. The values are
// substrings of one string holding all of them: a sink that keeps a value
// (Statement.Clone) keeps an immutable string, as before, only one that
// shares its memory with its neighbours.
func (r *stmtRec) sample(cols []string, s *sampler) *session.Sample {
	all := string(s.text)
	r.vals = r.vals[:0]
	r.ptrs = r.ptrs[:0]
	start := 0
	for _, end := range s.offs {
		r.vals = append(r.vals, all[start:end])
		start = end
	}
	for i := range r.vals {
		if s.null[i] {
			r.ptrs = append(r.ptrs, nil)
		} else {
			r.ptrs = append(r.ptrs, &r.vals[i])
		}
	}
	if r.rows == nil {
		r.rows = make([][]*string, 0, len(s.ends)) // never nil: an empty result has rows []
	}
	r.rows = r.rows[:0]
	start = 0
	for _, end := range s.ends {
		r.rows = append(r.rows, r.ptrs[start:end:end])
		start = end
	}
	r.smp = session.Sample{Columns: cols, Rows: r.rows, Truncated: s.trunc}
	return &r.smp
}

// describe reads a RowDescription (a simple Query's, or the answer to a
// Describe), reusing the last one's reading when the bytes repeat
// (descriptions are never changed once read: samples, statements and
// portals share them).
func (s *sampler) describe(body []byte) *rowDesc {
	if s.lastDesc != nil && bytes.Equal(body, s.lastT) {
		return s.lastDesc
	}
	d := parseRowDesc(body)
	if len(body) <= 4096 {
		s.lastT, s.lastDesc = append(s.lastT[:0], body...), d
	}
	return d
}

// Type OIDs the sampler renders from the binary format.
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidXML         = 142
	oidFloat4      = 700
	oidFloat8      = 701
	oidBPChar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTimestamp   = 1114
	oidTimestampTZ = 1184
	oidUUID        = 2950
	oidJSONB       = 3802
)

var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// appendRendered appends one result value as a sample shows it, at most
// limit bytes (cut reports that it was shortened). Text-format values are
// kept as the client got them; binary values of common types are rendered
// as their text form would read, any other binary value as \x hex.
func appendRendered(dst, v []byte, oid uint32, format int16, limit int) ([]byte, bool) {
	if format != 1 {
		return appendText(dst, v, limit)
	}
	switch oid {
	case oidText, oidVarchar, oidBPChar, oidName, oidJSON, oidXML, oidChar:
		return appendText(dst, v, limit)
	case oidJSONB:
		if len(v) > 0 && v[0] == 1 {
			return appendText(dst, v[1:], limit)
		}
	case oidBool:
		if len(v) == 1 {
			if v[0] != 0 {
				return append(dst, 't'), false
			}
			return append(dst, 'f'), false
		}
	case oidInt2:
		if len(v) == 2 {
			return strconv.AppendInt(dst, int64(int16(binary.BigEndian.Uint16(v))), 10), false
		}
	case oidInt4:
		if len(v) == 4 {
			return strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(v))), 10), false
		}
	case oidOID:
		if len(v) == 4 {
			return strconv.AppendUint(dst, uint64(binary.BigEndian.Uint32(v)), 10), false
		}
	case oidInt8:
		if len(v) == 8 {
			return strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(v)), 10), false
		}
	case oidFloat4:
		if len(v) == 4 {
			return strconv.AppendFloat(dst, float64(math.Float32frombits(binary.BigEndian.Uint32(v))), 'g', -1, 32), false
		}
	case oidFloat8:
		if len(v) == 8 {
			return strconv.AppendFloat(dst, math.Float64frombits(binary.BigEndian.Uint64(v)), 'g', -1, 64), false
		}
	case oidUUID:
		if len(v) == 16 {
			dst = hex.AppendEncode(dst, v[:4])
			for _, part := range [][]byte{v[4:6], v[6:8], v[8:10], v[10:]} {
				dst = hex.AppendEncode(append(dst, '-'), part)
			}
			return dst, false
		}
	case oidDate:
		if len(v) == 4 {
			d := int32(binary.BigEndian.Uint32(v))
			switch d {
			case math.MaxInt32:
				return append(dst, "infinity"...), false
			case math.MinInt32:
				return append(dst, "-infinity"...), false
			}
			return pgEpoch.AddDate(0, 0, int(d)).AppendFormat(dst, "2006-01-02"), false
		}
	case oidTimestamp, oidTimestampTZ:
		if len(v) == 8 {
			us := int64(binary.BigEndian.Uint64(v))
			switch us {
			case math.MaxInt64:
				return append(dst, "infinity"...), false
			case math.MinInt64:
				return append(dst, "-infinity"...), false
			}
			t := pgEpoch.Add(time.Duration(us/1e6) * time.Second).Add(time.Duration(us%1e6) * time.Microsecond)
			if oid == oidTimestampTZ {
				return t.AppendFormat(dst, "2006-01-02 15:04:05.999999Z07:00"), false
			}
			return t.AppendFormat(dst, "2006-01-02 15:04:05.999999"), false
		}
	}
	return appendHex(dst, v, limit)
}

// appendText appends v as text, cut at a rune boundary to at most limit
// bytes (an ellipsis, counted, marks the cut).
func appendText(dst, v []byte, limit int) ([]byte, bool) {
	if len(v) <= limit {
		return append(dst, v...), false
	}
	const ell = "…"
	cut := max(limit-len(ell), 0)
	for cut > 0 && cut < len(v) && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return append(append(dst, v[:cut]...), ell...), true
}

// appendHex appends v as \x hex (PostgreSQL's bytea output), cut to limit
// bytes.
func appendHex(dst, v []byte, limit int) ([]byte, bool) {
	n := (limit - 2 - len("…")) / 2
	if 2+2*len(v) <= limit {
		n = len(v)
	}
	if n < 0 {
		n = 0
	}
	dst = hex.AppendEncode(append(dst, `\x`...), v[:n])
	if n < len(v) {
		return append(dst, "…"...), true
	}
	return dst, false
}

// sampleDesc takes a RowDescription as the server sent it; mu held. The
// answer to a Describe is kept with its statement or portal (a portal's rows
// may come long after, or the statement be executed many times); a simple
// Query's starts its result.
func (pl *pipe) sampleDesc(body []byte) {
	f := pl.front()
	if f == nil || body == nil {
		return
	}
	switch f.kind {
	case 'D':
		d := pl.samp.describe(body)
		switch f.ctype {
		case 'S':
			if st, ok := pl.stmts.get(f.name); ok {
				st.desc = d
				pl.stmts.set(f.name, st)
			}
		case 'P':
			if b, ok := pl.portals.get(f.name); ok {
				b.desc = d
				pl.portals.set(f.name, b)
			}
		}
	case 'Q':
		pl.samp.reset()
		pl.samp.result(pl.samp.describe(body), nil)
	}
}

// sampleOut samples a message on its way to the client.
func (pl *pipe) sampleOut(typ byte, body []byte) {
	s := pl.samp
	switch typ {
	case 'D':
		if !s.started && !s.full() {
			// The first row of an Execute: its portal says what the
			// columns are and in which formats they come.
			pl.mu.Lock()
			if f := pl.front(); f != nil && f.kind == 'E' {
				b, _ := pl.portals.get(f.name)
				formats := b.formats
				if formats == nil {
					formats = []int16{}
				}
				s.result(b.desc, formats)
			}
			pl.mu.Unlock()
			s.started = true
		}
		s.row(body)
	case 'H':
		s.copyStart(body)
	case 'd':
		s.copyRow(body)
	}
}
