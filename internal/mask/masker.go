package mask

import (
	"bytes"
	"sync/atomic"
)

// Source is where a result column comes from, as the caller resolved
// RowDescription's table OID and attribute number in the catalog. The zero
// Source is "no source": an expression, a function result, a cast.
type Source struct {
	Schema, Table, Column string
}

// Known says whether the column has a source.
func (s Source) Known() bool { return s.Table != "" || s.Column != "" }

// Result says what Mask did.
type Result uint8

const (
	// Unchanged: forward the original value; nothing was appended.
	Unchanged Result = iota
	// Masked: the masked value was appended to dst; send it instead.
	Masked
	// Nulled: send SQL NULL (length -1) instead of the value.
	Nulled
)

// plan is which detectors run on a column and which rule each one's finds
// fall under.
type plan struct {
	kinds   KindSet
	rule    [numKinds]int16
	settles bool // every rule in the plan redacts, hashes or nulls
}

func (m *Masker) settle(p *plan) {
	p.settles = true
	for k := KindPEMKey; k < numKinds; k++ {
		if p.kinds.Has(k) {
			switch m.rs.rules[p.rule[k]].strat {
			case sPartial, sFake:
				p.settles = false
			}
		}
	}
}

// Masker applies the rules in force for one session. Column is cheap but
// not free (pattern matching): call it once per RowDescription field and
// keep the Column. Mask and Text reuse scratch space and must be called from
// one goroutine at a time, and so must Publish; Counts may be called from
// any goroutine, and counts what was masked up to the last Publish.
type Masker struct {
	rs       *RuleSet
	active   []int // indexes into rs.rules, in policy order
	computed plan
	counts   []atomic.Uint64 // rule × kind, as published
	// What Mask and Text masked since the last Publish, rule × kind: a
	// plain add per value, where an atomic one cost more than some of
	// the strategies (a locked instruction per value).
	pending []uint64
	unpub   bool
	eng     *engine
	spans   []Span
	tmp     []byte
	domain  domainMemo // wholeKind's last email domain
}

// ForSubject returns a Masker with the rules that apply to s.
func (rs *RuleSet) ForSubject(s Subject) *Masker {
	return rs.Masker(func(r *Rule) bool { return r.Applies(s) })
}

// Masker returns a Masker with the rules for which in returns true (the
// caller's scoping decision).
func (rs *RuleSet) Masker(in func(*Rule) bool) *Masker {
	m := &Masker{rs: rs, counts: make([]atomic.Uint64, len(rs.rules)*int(numKinds)),
		pending: make([]uint64, len(rs.rules)*int(numKinds))}
	if len(rs.key) > 0 {
		m.eng = newEngine(rs.key)
	}
	var sel [numKinds]bool
	for i := range rs.rules {
		r := &rs.rules[i]
		if !in(&r.spec) {
			continue
		}
		m.active = append(m.active, i)
		for k := KindPEMKey; k < numKinds; k++ {
			if r.kinds.Has(k) && !sel[k] {
				sel[k] = true
				m.computed.kinds = m.computed.kinds.With(k)
				m.computed.rule[k] = int16(i)
			}
		}
	}
	m.settle(&m.computed)
	return m
}

// Empty says no rule is in force: the session needs no masking stage.
func (m *Masker) Empty() bool { return len(m.active) == 0 }

// NamesColumns says whether a rule in force names source columns (columns
// or scan): output whose columns cannot be traced to their sources (COPY)
// cannot be masked by such rules.
func (m *Masker) NamesColumns() bool {
	for _, i := range m.active {
		if len(m.rs.rules[i].columns) > 0 || len(m.rs.rules[i].scan) > 0 {
			return true
		}
	}
	return false
}

// WholeColumns says whether a rule in force masks named columns whole
// (a columns: list): only then can a query launder a value no detector
// recognises, so only then are statements' lineages checked.
func (m *Masker) WholeColumns() bool {
	for _, i := range m.active {
		if len(m.rs.rules[i].columns) > 0 {
			return true
		}
	}
	return false
}

// NamedRule is the first rule in force whose columns: pattern can name a
// column written as src in a statement, where an empty part matches
// anything: an unqualified relation (no Schema) may be in any schema, and
// an empty Column stands for every column of the relation (a whole-row
// reference). ok is false when no rule can name it.
func (m *Masker) NamedRule(src Source) (rule string, ok bool) {
	names := [3]string{src.Column, src.Table, src.Schema}
	for _, i := range m.active {
		for _, p := range m.rs.rules[i].columns {
			match := true
			for k, g := range p.seg {
				if names[k] != "" && !glob(g, names[k]) {
					match = false
					break
				}
			}
			if match {
				return m.rs.rules[i].spec.Name, true
			}
		}
	}
	return "", false
}

// Column is the masking decision for one result column.
type Column struct {
	m     *Masker
	whole int // 1 + index of the rule masking the column whole; 0: none
	plan  *plan
	json  bool
}

// Column decides how a column with source src is masked: whole by the
// first column rule matching it; else by the detectors of the rules whose
// scan patterns match it; a column without a source goes through every
// detector in force. A column with a source that no rule names is not
// masked: Masks is false, and its values need not even be looked at.
func (m *Masker) Column(src Source) Column {
	if !src.Known() {
		if m.computed.kinds == 0 {
			return Column{}
		}
		return Column{m: m, plan: &m.computed}
	}
	for _, i := range m.active {
		for _, p := range m.rs.rules[i].columns {
			if p.match(src) {
				return Column{m: m, whole: i + 1}
			}
		}
	}
	var pl *plan
	for _, i := range m.active {
		r := &m.rs.rules[i]
		for _, p := range r.scan {
			if !p.match(src) {
				continue
			}
			if pl == nil {
				pl = &plan{}
			}
			for k := KindPEMKey; k < numKinds; k++ {
				if r.kinds.Has(k) && !pl.kinds.Has(k) {
					pl.kinds = pl.kinds.With(k)
					pl.rule[k] = int16(i)
				}
			}
			break
		}
	}
	if pl == nil {
		return Column{}
	}
	m.settle(pl)
	return Column{m: m, plan: pl}
}

// Columns decides every field of a RowDescription at once, appending to
// dst. any is false when no field can change: the result's DataRows can
// then be forwarded without being decoded.
func (m *Masker) Columns(dst []Column, srcs []Source) (cols []Column, any bool) {
	for _, s := range srcs {
		c := m.Column(s)
		any = any || c.Masks()
		dst = append(dst, c)
	}
	return dst, any
}

// Masks says whether values of the column can change.
func (c Column) Masks() bool { return c.whole > 0 || c.plan != nil }

// Whole says whether the column is masked whole (every value changes), as
// opposed to read by detectors.
func (c Column) Whole() bool { return c.whole > 0 }

// JSON returns c for a json or jsonb column: replacements that land
// outside a JSON string, and whole values, are written as JSON strings so
// the document stays valid.
func (c Column) JSON() Column {
	c.json = true
	return c
}

// Mask masks one text-format value, appending the result to dst (which
// must not overlap v). With Unchanged nothing is appended and the original
// value goes out as it is; no allocation happens then.
func (c Column) Mask(dst, v []byte) ([]byte, Result) {
	if c.whole > 0 {
		return c.m.maskWhole(dst, v, c.whole-1, c.json)
	}
	if c.plan == nil {
		return dst, Unchanged
	}
	return c.m.maskSpans(dst, v, c.plan, c.json)
}

// Text masks free text that is not a column value (NOTICE and ERROR
// fields, NOTIFY payloads, audit samples) with every detector in force.
func (m *Masker) Text(dst, v []byte) ([]byte, Result) {
	if m.computed.kinds == 0 {
		return dst, Unchanged
	}
	return m.maskSpans(dst, v, &m.computed, false)
}

// PostgreSQL type OIDs whose binary format is the text itself.
const (
	oidName    = 19
	oidText    = 25
	oidJSON    = 114
	oidUnknown = 705
	oidBPChar  = 1042
	oidVarchar = 1043
	oidJSONB   = 3802
)

// BinaryAsText says whether a binary-format value of the type is the same
// bytes as its text format: text, varchar, bpchar, name, unknown and json.
// jsonb is its text after a version byte; MaskBinary handles it too.
func BinaryAsText(oid uint32) bool {
	switch oid {
	case oidName, oidText, oidJSON, oidUnknown, oidBPChar, oidVarchar:
		return true
	}
	return false
}

// MaskBinary masks a binary-format value of type oid. ok is false for the
// types it does not handle (integers, numeric, dates, arrays, composites,
// domains over them, extension types such as citext): the caller must not
// forward such a value when c.Masks(): it should have asked for the text
// format in Bind, or send NULL.
func (c Column) MaskBinary(oid uint32, dst, v []byte) (out []byte, r Result, ok bool) {
	switch {
	case BinaryAsText(oid):
		if oid == oidJSON {
			c = c.JSON()
		}
		out, r = c.Mask(dst, v)
		return out, r, true
	case oid == oidJSONB:
		if len(v) == 0 || v[0] != 1 {
			return dst, Unchanged, false
		}
		n := len(dst)
		out, r = c.JSON().Mask(append(dst, 1), v[1:])
		if r != Masked {
			return dst[:n], r, true
		}
		return out, r, true
	}
	return dst, Unchanged, false
}

func (m *Masker) count(rule int, k Kind) {
	m.pending[rule*int(numKinds)+int(k)]++
	m.unpub = true
}

// Publish makes what was masked since the last call visible to Counts.
// Call it from the goroutine that masks, before the masked values can
// reach anyone (the PostgreSQL stage: before every write to the client)
// and when the session ends: so one atomic add per counter per write, not
// one per value.
func (m *Masker) Publish() {
	if !m.unpub {
		return
	}
	for i, n := range m.pending {
		if n != 0 {
			m.counts[i].Add(n)
			m.pending[i] = 0
		}
	}
	m.unpub = false
}

func (m *Masker) maskWhole(dst, v []byte, ri int, json bool) ([]byte, Result) {
	r := &m.rs.rules[ri]
	m.count(ri, KindNone)
	switch {
	case r.strat == sNull:
		return dst, Nulled
	case json:
		return m.maskWholeJSON(dst, v, r), Masked
	}
	switch r.strat {
	case sRedact:
		dst = appendMarker(dst, r.marker, KindNone)
	case sPartial:
		dst = appendPartial(dst, v, r.keep)
	case sHash:
		dst = m.eng.appendHash(dst, v, m.wholeKind(v))
	case sFake:
		dst = m.eng.appendFake(dst, v, m.wholeKind(v), r.marker)
	}
	return dst, Masked
}

// maskWholeJSON is maskWhole for a json or jsonb value: the masked value
// as a JSON string; partial and fake, which keep the value's format (of a
// JSON document, not of a value they know), give the marker.
func (m *Masker) maskWholeJSON(dst, v []byte, r *compiled) []byte {
	dst = append(dst, '"')
	switch r.strat {
	case sHash:
		dst = m.eng.appendHash(dst, v, m.wholeKind(v))
	default:
		dst = appendMarker(dst, r.marker, KindNone)
	}
	return append(dst, '"')
}

// wholeKind is what the whole value is, if one detector finds exactly it
// (spaces around allowed); KindNone otherwise.
func (m *Masker) wholeKind(v []byte) Kind {
	t := v
	if n := len(v); n == 0 || !asciiGraphic(v[0]) || !asciiGraphic(v[n-1]) {
		// Only a value that may start or end with a space (ASCII or
		// not) needs trimming: most start and end with a printable
		// ASCII character, and TrimSpace is a call and two scans.
		t = bytes.TrimSpace(v)
	}
	if wholeEmail(t, &m.domain) {
		// An email column, hashed or faked, is the common case: when the
		// email detector alone finds exactly the whole value, every
		// detector together would too, since whatever else they found lies
		// inside it and merges into it, and none that ranks before email
		// can span the whole of it (their alphabets have no '@', and a PEM
		// block has spaces). The other detectors need not run.
		return KindEmail
	}
	if len(t) >= 13 && len(t) <= 19 && allDigits(t) {
		// A card column's bare number: every detector together would
		// only try the card detector at its start (no phone starts with a
		// run that long, nothing else reads a value of digits alone).
		d := detector{s: t, out: m.spans[:0]}
		e := d.card(0)
		m.spans = d.out[:0]
		if e == len(t) {
			return KindCard
		}
	}
	sp := Detect(m.spans[:0], t, AllKinds)
	m.spans = sp[:0]
	if len(sp) == 1 && sp[0].Start == 0 && sp[0].End == len(t) {
		return sp[0].Kind
	}
	return KindNone
}

// asciiGraphic says whether c is a printable ASCII character other than
// the space. Every space TrimSpace removes is 0x09-0x0d, 0x20 or a rune
// of several bytes, all at least 0x80: a value whose first and last bytes
// are such characters has none to remove.
func asciiGraphic(c byte) bool { return c > ' ' && c < 0x7f }

func (m *Masker) maskSpans(dst, v []byte, p *plan, json bool) ([]byte, Result) {
	sp := Detect(m.spans[:0], v, p.kinds)
	if len(sp) == 0 {
		m.spans = sp[:0]
		return dst, Unchanged
	}
	start := len(dst)
	dst = m.replace(dst, v, sp, p, json)
	// A replacement can make a leftover fragment look like a value of its
	// own (a marker gives it a word boundary it did not have). Where every
	// strategy in the plan settles (redact, hash, null), mask the output
	// again until nothing is found, so masking twice is masking once. The
	// replaced text shrinks each round; three rounds are plenty, and then
	// the value is masked whole.
	if p.settles {
		for round := 0; ; round++ {
			sp = Detect(m.spans[:0], dst[start:], p.kinds)
			if len(sp) == 0 {
				break
			}
			if round == 3 {
				ri := int(p.rule[sp[0].Kind])
				dst = appendMarker(dst[:start], m.rs.rules[ri].marker, sp[0].Kind)
				break
			}
			m.tmp = append(m.tmp[:0], dst[start:]...)
			dst = m.replace(dst[:start], m.tmp, sp, p, json)
		}
	}
	m.spans = sp[:0]
	return dst, Masked
}

// replace appends v with the spans sp replaced by their rules' strategies.
func (m *Masker) replace(dst, v []byte, sp []Span, p *plan, json bool) []byte {
	var quoted []bool // for JSON: which spans sit inside a string
	if json {
		quoted = inJSONString(v, sp)
	}
	prev := 0
	for i, s := range sp {
		dst = append(dst, v[prev:s.Start]...)
		ri := int(p.rule[s.Kind])
		r := &m.rs.rules[ri]
		m.count(ri, s.Kind)
		q := json && !quoted[i]
		start := len(dst)
		if q {
			dst = append(dst, '"')
		}
		val := v[s.Start:s.End]
		switch r.strat {
		case sRedact, sNull:
			dst = appendMarker(dst, r.marker, s.Kind)
		case sPartial:
			dst = appendPartial(dst, val, r.keep)
		case sHash:
			dst = m.eng.appendHash(dst, val, s.Kind)
		case sFake:
			dst = m.eng.appendFake(dst, val, s.Kind, r.marker)
		}
		if q {
			if allDigits(dst[start+1:]) {
				// a number stays a bare JSON number
				copy(dst[start:], dst[start+1:])
				dst = dst[:len(dst)-1]
			} else {
				dst = append(dst, '"')
			}
		}
		prev = s.End
	}
	return append(dst, v[prev:]...)
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return len(b) > 0
}

// inJSONString reports for each span whether it starts inside a JSON
// string of the document v.
func inJSONString(v []byte, sp []Span) []bool {
	out := make([]bool, len(sp))
	in, esc := false, false
	k := 0
	for i := 0; i < len(v) && k < len(sp); i++ {
		for k < len(sp) && sp[k].Start == i {
			out[k] = in
			k++
		}
		c := v[i]
		switch {
		case esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		}
	}
	return out
}

// Count is how many values one rule masked with one detector ("column" for
// values masked whole).
type Count struct {
	Rule     string   `json:"rule"`
	Detector string   `json:"detector"`
	Strategy Strategy `json:"strategy"`
	Values   uint64   `json:"values"`
}

// Counts returns the non-zero counters, by rule then detector, as of the
// last Publish.
func (m *Masker) Counts() []Count {
	var out []Count
	for ri := range m.rs.rules {
		for k := KindNone; k < numKinds; k++ {
			if n := m.counts[ri*int(numKinds)+int(k)].Load(); n > 0 {
				r := &m.rs.rules[ri].spec
				out = append(out, Count{Rule: r.Name, Detector: k.String(), Strategy: r.Strategy, Values: n})
			}
		}
	}
	return out
}
