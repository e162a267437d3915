package audit

import (
	"encoding/binary"
	"encoding/json"
	"reflect"
	"unicode/utf8"
	"unsafe"

	"github.com/airlockhq/airlock/internal/redact"
)

// Statement records are the one kind written at the rate of the traffic:
// they are encoded by hand, to the very bytes encoding/json would produce
// (a test holds the two together), at a fraction of its cost. Any other
// kind, and a Statement whose fields changed since this encoder was
// written, goes through encoding/json.

// statementFields are the fields appendStatement knows, with their tags.
var statementFields = []string{
	"Protocol protocol", "SQL sql", "Name name,omitempty", "Params params,omitempty",
	"ParamCount param_count,omitempty", "Tag tag,omitempty", "SQLState sqlstate,omitempty",
	"Error error,omitempty", "Rows rows", "Bytes bytes", "DurationUS duration_us",
	"Class class,omitempty", "Decision decision,omitempty", "Rule rule,omitempty", "Sample sample,omitempty",
	"Number number,omitempty",
}

var sampleFields = []string{"Columns columns", "Rows rows", "Truncated truncated,omitempty",
	"OIDs oids,omitempty", "Formats formats,omitempty", "Data data,omitempty"}

// fastStatement is whether Statement (and ResultSample) still have exactly
// the fields appendStatement encodes.
var fastStatement = sameFields(reflect.TypeOf(Statement{}), statementFields) &&
	sameFields(reflect.TypeOf(ResultSample{}), sampleFields)

func sameFields(t reflect.Type, want []string) bool {
	if t.NumField() != len(want) {
		return false
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Name+" "+f.Tag.Get("json") != want[i] {
			return false
		}
	}
	return true
}

// encodeData encodes a record's data.
func encodeData(data any) ([]byte, error) {
	if st, ok := data.(Statement); ok && fastStatement {
		return appendStatement(make([]byte, 0, 128+len(st.SQL)), &st), nil
	}
	return json.Marshal(data)
}

func appendStatement(b []byte, st *Statement) []byte { return appendStatementPlain(b, st, 0) }

// appendStatementPlain is appendStatement for a statement whose text's
// first sqlPlain bytes are known plain (redact.SQLPlain): they are copied
// without being looked at again.
func appendStatementPlain(b []byte, st *Statement, sqlPlain int) []byte {
	b = append(b, `{"protocol":`...)
	b = appendString(b, st.Protocol)
	b = append(b, `,"sql":`...)
	b = appendStringPlain(b, st.SQL, sqlPlain)
	if st.Name != "" {
		b = append(b, `,"name":`...)
		b = appendString(b, st.Name)
	}
	if len(st.Params) > 0 {
		b = append(b, `,"params":`...)
		b = appendStrings(b, st.Params)
	}
	if st.ParamCount != 0 {
		b = append(b, `,"param_count":`...)
		b = appendInt(b, int64(st.ParamCount))
	}
	b = appendOpt(b, `,"tag":`, st.Tag)
	b = appendOpt(b, `,"sqlstate":`, st.SQLState)
	b = appendOpt(b, `,"error":`, st.Error)
	b = append(b, `,"rows":`...)
	b = appendInt(b, st.Rows)
	b = append(b, `,"bytes":`...)
	b = appendInt(b, st.Bytes)
	b = append(b, `,"duration_us":`...)
	b = appendInt(b, st.DurationUS)
	b = appendOpt(b, `,"class":`, st.Class)
	b = appendOpt(b, `,"decision":`, st.Decision)
	b = appendOpt(b, `,"rule":`, st.Rule)
	if s := st.Sample; s != nil {
		b = appendSample(b, s)
	}
	if st.Number != 0 {
		b = append(b, `,"number":`...)
		b = appendInt(b, st.Number)
	}
	return append(b, '}')
}

func appendOpt(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, key...)
	return appendString(b, v)
}

// appendStrings encodes a string slice; nil is null, as encoding/json has it.
func appendStrings(b []byte, ss []string) []byte { return appendList(b, ss, appendString) }

// appendNullableStrings encodes a row of a result sample: a nil slice and
// a nil value (SQL NULL) are both null, as encoding/json has them.
func appendNullableStrings(b []byte, ss []*string) []byte {
	return appendList(b, ss, func(b []byte, s *string) []byte {
		if s == nil {
			return append(b, "null"...)
		}
		return appendString(b, *s)
	})
}

func appendList[T any](b []byte, xs []T, one func([]byte, T) []byte) []byte {
	if xs == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, x := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		b = one(b, x)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// plainASCII marks the ASCII bytes a JSON string holds as they are.
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// plainPrefix is how many bytes at the start of s a JSON string holds as
// they are. Eight at a time: statement text is most of a record's bytes,
// and a table look-up and a branch per byte were a sixth of encoding it.
func plainPrefix(s string) int {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if !redact.PlainWord(binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s[i:]), 8))) {
			break
		}
	}
	for ; i < len(s) && redact.PlainByte(s[i]); i++ {
	}
	return i
}

// allPlain is whether every byte of s is plain (redact.PlainByte). Most
// strings of a record are short (the protocol, the tag, a column's name,
// the kind, the session id) and plain: their bytes are looked at as one
// or two words, overlapping where the length is not a multiple of eight,
// where plainPrefix took the last few a byte and a call at a time.
func allPlain(s string) bool {
	n := len(s)
	if n < 4 {
		for i := 0; i < n; i++ {
			if !redact.PlainByte(s[i]) {
				return false
			}
		}
		return true
	}
	p := unsafe.StringData(s)
	if n < 8 {
		lo := binary.LittleEndian.Uint32(unsafe.Slice(p, 4))
		hi := binary.LittleEndian.Uint32(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(p), n-4)), 4))
		return redact.PlainWord(uint64(lo) | uint64(hi)<<32)
	}
	for i := 0; i < n-8; i += 8 {
		if !redact.PlainWord(binary.LittleEndian.Uint64(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(p), i)), 8))) {
			return false
		}
	}
	return redact.PlainWord(binary.LittleEndian.Uint64(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(p), n-8)), 8)))
}

// appendString quotes s as encoding/json does by default: <, > and & as
// \u escapes, control characters escaped, invalid UTF-8 as U+FFFD, and
// U+2028 and U+2029 escaped.
func appendString(b []byte, s string) []byte { return appendStringPlain(b, s, 0) }

// appendStringPlain is appendString for an s whose first plain bytes are
// plain (redact.PlainByte; at most len(s)). A count too high would let the
// text out of its JSON string: it comes from the one scan that judged them.
func appendStringPlain(b []byte, s string, plain int) []byte {
	// The first plain bytes are known plain: only the rest is looked at
	// (a text the redaction scan found not all plain is not scanned again
	// from its start).
	if plain == len(s) || allPlain(s[plain:]) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	b = append(b, '"')
	start := 0
	for i := plain; i < len(s); {
		if n := plainPrefix(s[i:]); n > 0 {
			i += n
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if plainASCII[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += n
			continue
		}
		i += n
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
