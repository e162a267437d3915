package sqlclass

import "strings"

// The shape cache serves statements that differ from one seen before only
// in their numeric literals ("... WHERE aid = 48213" after "... WHERE aid
// = 17", as pgbench -S and many clients send them). Parsing such a text
// again costs tens of microseconds, almost all of it pg_query_go's
// protobuf round trip (packing the tree in C, unpacking it in Go), while
// what the classification says cannot depend on a number's value for the
// statements admitted here.
//
// It is narrow on purpose, because a shared answer for two texts is a
// guardrail bypass if the texts differ in anything that matters:
//   - the key keeps every byte of the text except numeric literals, found
//     by a small lexer that knows PostgreSQL's comments, strings (standard,
//     E'', U&'', dollar-quoted), quoted identifiers and parameters; on
//     anything it is not sure of (a number running into letters, exponents,
//     0x literals, underscores, a NUL, non-ASCII) it declines and the text
//     is parsed;
//   - only one plain SELECT, INSERT, UPDATE or DELETE statement is admitted,
//     with no nested statements, side effects, settings, roles, prepared
//     names or flags beyond FlagNoWhere and FlagDMLInCTE: the places where
//     a constant's value changes the answer (EXPLAIN (ANALYZE 0),
//     set_config(..., 0), BEGIN/SET options, secrets) are all outside;
//   - errors are never shared (their positions differ).
//
// FuzzShape and TestShapeMatchesParse check that a shape hit equals a full
// parse of the same text.

// shapeFlags are the only flags a shared statement may carry: both are
// structural (a missing WHERE; DML inside WITH).
const shapeFlags = FlagNoWhere | FlagDMLInCTE

// numberShape returns sql with each numeric literal replaced by "0", and
// whether it did so with certainty and replaced at least one.
func numberShape(sql string) (string, bool) {
	b, ok := appendNumberShape(nil, sql)
	return string(b), ok
}

// appendNumberShape is numberShape appending to dst (the classifier's
// lookups use a pooled buffer: a key string per statement was an
// allocation per query). It runs on every statement the text cache does
// not know, so the common bytes (letters, digits, blanks) are told apart
// by one table lookup each.
func appendNumberShape(dst []byte, sql string) ([]byte, bool) {
	b := dst
	last, replaced := 0, false
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch lexClass[c] {
		case lxOther:
			i++
		case lxStop:
			return dst, false // identifiers in other scripts, NUL: parse
		case lxIdent:
			if (c == 'e' || c == 'E') && i+1 < n && sql[i+1] == '\'' && !identChar(prev(sql, i)) {
				j, ok := skipQuoted(sql, i+1, '\'', true)
				if !ok {
					return dst, false
				}
				i = j
				continue
			}
			i++
			for i < n && identChar(sql[i]) {
				i++
			}
		case lxDigit, lxDot:
			if c == '.' && (i+1 >= n || sql[i+1] < '0' || sql[i+1] > '9') {
				i++
				continue
			}
			j := i
			for j < n && (identChar(sql[j]) || sql[j] == '.') {
				j++
			}
			if !plainNumber(sql[i:j]) {
				return dst, false
			}
			b = append(b, sql[last:i]...)
			b = append(b, '0')
			last, replaced, i = j, true, j
		case lxDash:
			if i+1 < n && sql[i+1] == '-' {
				j := strings.IndexByte(sql[i:], '\n')
				if j < 0 {
					i = n
				} else {
					i += j + 1
				}
				continue
			}
			i++
		case lxSlash:
			if i+1 < n && sql[i+1] == '*' {
				j, ok := skipComment(sql, i)
				if !ok {
					return dst, false
				}
				i = j
				continue
			}
			i++
		case lxQuote:
			j, ok := skipQuoted(sql, i, c, false)
			if !ok {
				return dst, false
			}
			i = j
		case lxDollar:
			j, ok := skipDollar(sql, i)
			if !ok {
				return dst, false
			}
			i = j
		}
	}
	if !replaced {
		return dst, false
	}
	return append(b, sql[last:]...), true
}

// Byte classes of appendNumberShape's lexer.
const (
	lxOther = iota // blanks, operators, punctuation: nothing to do
	lxStop         // NUL, non-ASCII: the lexer declines
	lxIdent        // starts an identifier or keyword (or an E'' string)
	lxDigit
	lxDot   // a number when a digit follows
	lxDash  // a comment when another follows
	lxSlash // a comment when '*' follows
	lxQuote // ' or "
	lxDollar
)

var lexClass = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c == 0 || c >= 0x80:
			t[c] = lxStop
		case identStart(byte(c)):
			t[c] = lxIdent
		case c >= '0' && c <= '9':
			t[c] = lxDigit
		case c == '.':
			t[c] = lxDot
		case c == '-':
			t[c] = lxDash
		case c == '/':
			t[c] = lxSlash
		case c == '\'' || c == '"':
			t[c] = lxQuote
		case c == '$':
			t[c] = lxDollar
		}
	}
	return t
}()

// identChars are the bytes that continue an identifier.
var identChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = identStart(byte(c)) || (c >= '0' && c <= '9') || c == '$'
	}
	return t
}()

// skipComment returns the index after the /* comment opening at sql[i];
// comments nest in PostgreSQL.
func skipComment(sql string, i int) (int, bool) {
	depth, j, n := 1, i+2, len(sql)
	for j < n && depth > 0 {
		switch {
		case sql[j] == '/' && j+1 < n && sql[j+1] == '*':
			depth, j = depth+1, j+2
		case sql[j] == '*' && j+1 < n && sql[j+1] == '/':
			depth, j = depth-1, j+2
		default:
			j++
		}
	}
	return j, depth == 0
}

// skipDollar returns the index after what a '$' at sql[i] opens: a
// parameter ($1, kept), a dollar-quoted string ($$...$$, $tag$...$tag$),
// or just the '$' inside an identifier (a$1).
func skipDollar(sql string, i int) (int, bool) {
	n := len(sql)
	if identChar(prev(sql, i)) {
		return i + 1, true
	}
	j := i + 1
	for j < n && sql[j] >= '0' && sql[j] <= '9' {
		j++
	}
	if j > i+1 {
		return j, true
	}
	for j < n && (identStart(sql[j]) || (j > i+1 && sql[j] >= '0' && sql[j] <= '9')) {
		j++
	}
	if j >= n || sql[j] != '$' {
		return 0, false
	}
	tag := sql[i : j+1]
	end := strings.Index(sql[j+1:], tag)
	if end < 0 {
		return 0, false
	}
	return j + 1 + end + len(tag), true
}

// skipQuoted returns the index after the literal or identifier opening at
// sql[i] (quote q, doubled to escape; backslash escapes in E” strings).
func skipQuoted(sql string, i int, q byte, backslash bool) (int, bool) {
	for j := i + 1; j < len(sql); j++ {
		switch sql[j] {
		case '\\':
			if backslash {
				j++
			}
		case q:
			if j+1 < len(sql) && sql[j+1] == q {
				j++
				continue
			}
			return j + 1, true
		}
	}
	return 0, false
}

func prev(sql string, i int) byte {
	if i == 0 {
		return ' '
	}
	return sql[i-1]
}

func identStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func identChar(c byte) bool { return identChars[c] }

// plainNumber: digits with at most one '.', nothing else (no exponent, no
// 0x, no underscores, no trailing letters).
func plainNumber(s string) bool {
	dot := false
	digits := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

// shareable reports whether res, the classification of sql, may serve
// every text of sql's shape.
func shareable(res *Result, sql string) bool {
	if len(res.Statements) != 1 {
		return false
	}
	st := res.Statements[0]
	switch st.Command {
	case "SELECT", "INSERT", "UPDATE", "DELETE":
	default:
		return false
	}
	return (st.Kind == KindRead || st.Kind == KindWrite) && st.Flags&^shapeFlags == 0 &&
		len(st.Nested) == 0 && len(st.SideEffects) == 0 && len(st.Roles) == 0 && len(st.secretValues) == 0 &&
		st.Setting == "" && st.PreparedName == "" && st.Text == st.Redacted && st.Text == shapeText(sql)
}

// shapeText is a single statement's Text as the parser reports it, for
// the texts shareable admits (no leading comment: its Text would start
// after it, and shareable then declines).
func shapeText(sql string) string {
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(sql), ";"))
}

// shapeResult is the Result the shape cache keeps for key, the shape of
// a text classified as st: st with the shape's text, so that nothing of
// the first text's constants is shown for another's.
func shapeResult(st *Statement, key string) *Result { return withText(st, key, false) }

// fromShape is the Result for sql from the shared statement of its shape.
func fromShape(st *Statement, sql string) *Result { return withText(st, sql, true) }

// withText is a Result for sql whose one statement is st with sql's text,
// in one allocation for the Result, its statement and the list.
func withText(st *Statement, sql string, transient bool) *Result {
	x := &struct {
		r    Result
		st   Statement
		list [1]*Statement
	}{st: *st}
	x.st.Text = shapeText(sql)
	x.st.Redacted = x.st.Text
	x.list[0] = &x.st
	x.r = Result{SQL: sql, Statements: x.list[:], transient: transient}
	return &x.r
}
