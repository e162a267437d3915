package pgwire

import (
	"bytes"
	"encoding/binary"

	"github.com/airlockhq/airlock/internal/rowsample"
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
// decoded. With it on, the first rows of a result are copied as the wire
// bytes they were (package rowsample's stored form: each value's bytes
// behind a one- or two-byte tag), with each column's type and format;
// nothing is rendered or escaped on the data path, only when the record
// is read. The rest of the rows are counted by the pipe as before
// and only set the truncated flag. The bytes go into one buffer kept from
// statement to statement and handed to the statement's record in exchange
// for the record's last one: sampling allocates nothing per statement.

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
	binary  bool     // some column may come in the binary format
	desc    *rowDesc // the current result's columns (nil: unknown)
	cols    []string // desc's names that fit the byte cap
	formats []int16  // the portal's result formats from its Bind (nil: desc's)
	copyFmt int8     // 0 none, 't' text COPY, 'b' binary COPY
	// The rows so far in rowsample's stored form, rows of them, the
	// widest of width values. Kept from one statement to the next.
	raw   []byte
	rows  int
	width int
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
	s.binary = !allText(formats) || formats == nil && d != nil && !allText(d.formats)
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

// allText is whether formats, by Bind's rules, make every column text.
func allText(formats []int16) bool {
	for _, f := range formats {
		if f != 0 {
			return false
		}
	}
	return true
}

func (s *sampler) full() bool { return s.rows >= s.maxRows || s.used >= s.maxBytes }

// format is column i's format code: the portal's Bind's, else the
// description's.
func (s *sampler) format(i int) int16 {
	if s.formats != nil {
		return rowsample.Format(s.formats, i)
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
	// The row is built in a local: the sampler's fields are stores the
	// compiler cannot keep in registers across the appends.
	raw, used := s.raw, s.used
	start := len(raw)
	raw = rowsample.AppendCount(raw, 0)
	kept := 0
	for i := 0; i < n; i++ {
		if p+4 > len(body) {
			break
		}
		l := int(int32(binary.BigEndian.Uint32(body[p:])))
		p += 4
		if l < 0 {
			raw = rowsample.AppendNull(raw)
			used += 4
			kept++
			continue
		}
		if p+l > len(body) {
			break
		}
		v := body[p : p+l]
		p += l
		left := min(rowsample.MaxValue, s.maxBytes-used)
		if left < rowsample.MinValue {
			s.trunc = true
			break
		}
		// A text value that fits is kept whole (what Keep says of it):
		// most values of most results, without the call.
		k, cut := l, false
		if s.binary || l > left {
			k, cut = rowsample.Keep(v, s.oid(i), s.format(i), left)
			s.trunc = s.trunc || cut
		}
		raw = rowsample.AppendValue(raw, v[:k], cut)
		used += k
		kept++
	}
	s.used = used
	if kept == 0 && n > 0 {
		s.raw = raw[:start]
		return
	}
	binary.BigEndian.PutUint16(raw[start:], uint16(kept))
	s.raw = raw
	s.rows++
	s.width = max(s.width, kept)
}

// copyStart notes a COPY TO STDOUT: its rows are CopyData lines.
func (s *sampler) copyStart(body []byte) {
	s.started = true
	s.copyFmt = 't'
	if len(body) > 0 && body[0] == 1 {
		s.copyFmt = 'b'
	}
}

// copyRow samples one CopyData of a COPY TO STDOUT as a row of one value:
// a text line without its newline, a binary one as bytes (rendered \x hex).
func (s *sampler) copyRow(body []byte) {
	if s.copyFmt == 0 {
		return
	}
	left := min(rowsample.MaxValue, s.maxBytes-s.used)
	if s.full() || body == nil || left < rowsample.MinValue {
		s.trunc = true
		return
	}
	v := body
	if s.copyFmt == 't' {
		v = bytes.TrimSuffix(body, []byte{'\n'})
	}
	k, cut := rowsample.Keep(v, 0, copyFormat(s.copyFmt), left)
	if cut {
		s.trunc = true
	}
	s.raw = rowsample.AppendValue(rowsample.AppendCount(s.raw, 1), v[:k], cut)
	s.used += k
	s.rows++
	s.width = 1
}

func copyFormat(f int8) int16 {
	if f == 'b' {
		return 1
	}
	return 0
}

// Column names and formats of a COPY's sample.
var (
	copyText     = []string{"copy (text)"}
	copyBinary   = []string{"copy (binary)"}
	copyBinaryFm = []int16{1}
)

// take puts the statement's sample in r's memory, returns it and starts
// afresh; nil when the statement returned no result.
func (s *sampler) take(r *stmtRec) *session.Sample {
	var out *session.Sample
	switch {
	case s.copyFmt == 't':
		out = r.sample(copyText, nil, nil, s)
	case s.copyFmt == 'b':
		out = r.sample(copyBinary, nil, copyBinaryFm, s)
	case s.desc != nil:
		formats := s.formats
		if formats == nil {
			formats = s.desc.formats
		}
		out = r.sample(s.cols, s.desc.oids, formats, s)
	case s.rows > 0:
		out = r.sample(nil, nil, s.formats, s)
	}
	s.reset()
	return out
}

// maxKeptText bounds the buffer a session keeps between statements: an
// idle session must not hold a large sample's worth of memory
// (audit.sample_bytes may be 1 MiB); a larger one is made again by the
// next statement that needs it. A sample of the default caps' ten rows
// of a few short columns fits, with room to grow (append doubles).
const maxKeptText = 4096

func (s *sampler) reset() {
	raw := s.raw[:0]
	if cap(raw) > maxKeptText {
		raw = nil
	}
	*s = sampler{maxRows: s.maxRows, maxBytes: s.maxBytes, lastT: s.lastT, lastDesc: s.lastDesc, raw: raw}
}

// stmtRec is the memory of one statement event: the pipe reuses it once
// the sinks have had the event (session.Sink: they keep none of it), so
// that recording a statement allocates nothing.
type stmtRec struct {
	st     session.Statement
	params []string
	smp    session.Sample
	raw    []byte
}

// paramsOf is p's arguments in r's memory.
func (r *stmtRec) paramsOf(p *paramList) []string {
	if p.n == 0 {
		return nil
	}
	r.params = p.appendTo(r.params[:0])
	return r.params
}

// sample makes r's sample of s's rows, columns, oids and formats (Bind's
// rules), trimmed to the widest row (a long list of a result whose rows
// the caps cut short would only make the record larger). The rows' buffer
// moves to r, and r's last one to s: no copy.
func (r *stmtRec) sample(cols []string, oids []uint32, formats []int16, s *sampler) *session.Sample {
	if len(oids) > s.width {
		oids = oids[:s.width]
	}
	if len(formats) > 1 && len(formats) > s.width {
		formats = formats[:s.width]
	}
	text := true
	for _, f := range formats {
		text = text && f == 0
	}
	if text {
		formats = nil
	}
	r.raw, s.raw = s.raw, r.raw[:0]
	r.smp = session.Sample{Columns: cols, OIDs: oids, Formats: formats, Data: r.raw, Truncated: s.trunc}
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
