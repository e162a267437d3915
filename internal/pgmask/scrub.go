package pgmask

import (
	"bytes"

	"github.com/airlockhq/airlock/internal/mask"
)

// scrubMarker replaces the values an error or notice text quotes.
const scrubMarker = mask.DefaultMarker

// scrubValues withholds what a server text quotes, for a statement that
// reads a masked column: `invalid input syntax for type integer: "Alice"`,
// `Key (email)=(a@b) already exists`, `Failing row contains (1, Alice)`,
// a context quoting the SQL a function ran. Everything from the first
// opening (a quote, ")=(", "contains (") to the last closing (a quote, or
// the last ")" after such a parenthesis) becomes the marker: a value may
// itself hold quotes and parentheses, so nothing between the outermost
// ones is kept. What comes before stays, so the message keeps its
// shape ("invalid input syntax for type integer: "[redacted]"").
// ok is false when there was nothing to withhold.
func scrubValues(v []byte) ([]byte, bool) {
	start, open := -1, byte(0)
	if i := bytes.IndexAny(v, `"'`); i >= 0 {
		start, open = i, v[i]
	}
	paren := false
	for _, p := range []string{")=(", "contains ("} {
		if i := bytes.Index(v, []byte(p)); i >= 0 && (start < 0 || i+len(p)-1 < start) {
			start, open, paren = i+len(p)-1, '(', true
		}
	}
	if start < 0 {
		return nil, false
	}
	end := bytes.LastIndexAny(v, `"'`)
	if paren {
		if j := bytes.LastIndexByte(v, ')'); j > end {
			end = j
		}
	}
	out := make([]byte, 0, start+1+len(scrubMarker)+len(v)-max(end, start))
	out = append(out, v[:start+1]...)
	out = append(out, scrubMarker...)
	if end > start {
		out = append(out, v[end:]...)
	} else {
		// Opened and never closed: the rest is withheld, and closed.
		closer := open
		if open == '(' {
			closer = ')'
		}
		out = append(out, closer)
	}
	return out, true
}

// derivedValue masks a computed value of a tainted statement whole: a
// text-like type gets the marker (json a JSON string of it), any other
// type is sent NULL.
func (s *Stage) derivedValue(f *field, dst []byte) ([]byte, mask.Result) {
	s.derived.Add(1)
	switch {
	case f.oid == oidJSON || f.oid == oidJSONB && f.format == 0:
		return append(append(append(dst, '"'), scrubMarker...), '"'), mask.Masked
	case f.oid == oidJSONB:
		return append(append(append(dst, 1, '"'), scrubMarker...), '"'), mask.Masked
	case f.format == 0 && f.text, f.format == 1 && mask.BinaryAsText(f.oid):
		return append(dst, scrubMarker...), mask.Masked
	}
	return dst, mask.Nulled
}
