// Package redact removes secrets from SQL text before it is recorded or shown
// to anyone but the person who typed it (audit records, approval requests,
// webhooks).
//
// A secret can sit in any string constant of a statement, not only right
// after PASSWORD: format('ALTER ROLE x PASSWORD %L', 'hunter2') inside a DO
// block, a dblink connection string, a value compared with a token column.
// So the unit of redaction is the whole constant, found by a lexer that knows
// PostgreSQL's quoting ('…' with doubled quotes, E'…' with backslash escapes,
// $tag$…$tag$, comments and quoted identifiers skipped), and the rule is
// deliberately broad: in a statement that names a secret, every constant
// goes; elsewhere, a constant that looks like a credential on its own goes.
package redact

import (
	"encoding/binary"
	"math/bits"
	"regexp"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// Marker replaces each redacted constant.
const Marker = "'<redacted>'"

var (
	// Words that make every constant of a statement suspect.
	secretWords = regexp.MustCompile(`(?i)passw|secret|token|api_?key|credential|private_?key|\bsconfig\b|\bpgp_sym`)
	// Constants that are credentials whatever the statement says.
	secretValue = regexp.MustCompile(`(?i)SCRAM-SHA-256\$|\bmd5[0-9a-f]{32}\b|eyJ[A-Za-z0-9_-]{8,}\.|-----BEGIN |\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{20,}|\bglpat-[A-Za-z0-9_-]{16,}|\bsk-[A-Za-z0-9]{20,}|\bxox[abpr]-|password\s*=|://[^:/@\s']*:[^@\s'<][^@\s']*@`)
)

// SQL returns sql with secret-bearing string constants replaced by Marker.
// Text without such constants is returned unchanged (and unallocated).
func SQL(sql string) string {
	if !suspect(sql) {
		return sql
	}
	return redactSuspect(sql)
}

// SQLPlain is SQL, and how many bytes at the start of the text it returns
// are known to be plain (PlainByte): at most all the plain bytes there are,
// maybe fewer. Audit records hold statement text in a JSON string, and
// looking for secrets and then for bytes to escape took two passes over the
// text, each missing the cache under load: this is one. Where a constant
// was redacted the text is new, and none of it is known plain.
func SQLPlain(sql string) (string, int) {
	i := 0
	for ; i+8 <= len(sql); i += 8 {
		x := binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(sql[i:]), 8))
		if !PlainWord(x) {
			break
		}
		// Its four pairs at even offsets (see pairs), tested at once:
		// most words have none (written out, as a call per word cost more).
		if pairBit(pairAt(x, 0))|pairBit(pairAt(x, 1))|pairBit(pairAt(x, 2))|pairBit(pairAt(x, 3)) != 0 && triggerInWord(sql, i, x) {
			return redacted(sql, i)
		}
	}
	plain := i
	if n := len(sql); i+8 > n && n >= 8 && PlainWord(binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(sql[n-8:]), 8))) {
		// Every word was plain, and so is the last one (overlapping
		// them): the tail is, without a look at each of its bytes.
		plain = n
	}
	for plain < len(sql) && PlainByte(sql[plain]) {
		plain++
	}
	if suspectFrom(sql, i) {
		return redacted(sql, plain)
	}
	return sql, plain
}

// redacted is SQLPlain's result for a suspect sql whose first plain bytes
// are plain.
func redacted(sql string, plain int) (string, int) {
	out := redactSuspect(sql)
	if len(out) != len(sql) || unsafe.StringData(out) != unsafe.StringData(sql) {
		return out, 0
	}
	return sql, plain
}

// redactSuspect is SQL for a text that holds a trigger.
func redactSuspect(sql string) string {
	all := secretWords.MatchString(sql)
	if !all && !secretValue.MatchString(sql) {
		return sql
	}
	var b strings.Builder
	last := 0
	lex(sql, func(start, end int) {
		if !all && !secretValue.MatchString(sql[start:end]) {
			return
		}
		b.WriteString(sql[last:start])
		b.WriteString(Marker)
		last = end
	})
	if last == 0 {
		if all || !secretValue.MatchString(sql) {
			return sql
		}
		// A credential outside any constant (an unterminated quote, a
		// URL in a comment): the text cannot be trusted, keep none of it.
		return Marker
	}
	b.WriteString(sql[last:])
	return b.String()
}

// triggers are lower-case prefixes, one of which every match of secretWords
// or secretValue contains. Go's regexp is slow on case-folded alternations
// (tens of µs on a statement), and every recorded statement comes here.
var triggers = [...]string{
	"passw", "secret", "token", "api", "credential", "private", "sconfig", "pgp_sym",
	"scram-sha-256$", "md5", "eyj", "-----begin ", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
	"glpat-", "sk-", "xox", "://",
}

// byFirst lists the triggers by their first byte, in either case.
var byFirst = func() (m [256][]string) {
	for _, t := range triggers {
		c := t[0]
		m[c] = append(m[c], t)
		if c >= 'a' && c <= 'z' {
			m[c-'a'+'A'] = append(m[c-'a'+'A'], t)
		}
	}
	return m
}()

// pairs has a bit for each pair of bytes, as they stand in the text (in
// either case), that is a trigger's first two bytes or its second and
// third. Every trigger is at least three bytes long, so wherever one
// starts, one of those two pairs begins at an even offset: suspect looks
// at every other pair only, at one table look-up each, and most
// statements (pgbench's, an ORM's) have none of them.
var pairs = func() (bits [1 << 16 / 64]uint64) {
	cases := func(c byte) []byte {
		if c >= 'a' && c <= 'z' {
			return []byte{c, c - 'a' + 'A'}
		}
		return []byte{c}
	}
	for _, t := range triggers {
		if len(t) < 3 {
			panic("redact: trigger " + t + " is shorter than suspect's stride allows")
		}
		for at := 0; at < 2; at++ {
			for _, a := range cases(t[at]) {
				for _, b := range cases(t[at+1]) {
					k := uint16(a)<<8 | uint16(b)
					bits[k/64] |= 1 << (k % 64)
				}
			}
		}
	}
	return bits
}()

// suspect reports whether sql contains any trigger, in any case, without
// allocating. Every recorded statement passes here: it looks at every
// other pair of bytes (see pairs), which took half the CPU of looking at
// each pair lower-cased (BenchmarkSQLClean).
func suspect(sql string) bool { return suspectFrom(sql, 0) }

// suspectFrom is suspect for a trigger that ends past sql[from+1], from
// even (SQLPlain has looked at the pairs before).
func suspectFrom(sql string, from int) bool {
	for i := from; i+1 < len(sql); i += 2 {
		k := uint16(sql[i])<<8 | uint16(sql[i+1])
		if pairs[k/64]&(1<<(k%64)) == 0 {
			continue
		}
		// The pair is a trigger's first (starting at i) or its second
		// (starting at i-1), maybe not of the same trigger.
		if triggerAt(sql, i) || (i > 0 && triggerAt(sql, i-1)) {
			return true
		}
	}
	return false
}

// pairAt is the pair of bytes at byte 2*n of the little-endian word x, as
// pairs numbers it (first byte high).
func pairAt(x uint64, n int) uint16 { return bits.ReverseBytes16(uint16(x >> (16 * n))) }

func pairBit(k uint16) uint64 { return pairs[k/64] & (1 << (k % 64)) }

// triggerInWord is suspect's test for the pairs of the word x at sql[at]:
// whether a trigger starts at one of them or a byte before.
func triggerInWord(sql string, at int, x uint64) bool {
	for n := 0; n < 4; n++ {
		if pairBit(pairAt(x, n)) == 0 {
			continue
		}
		i := at + 2*n
		if triggerAt(sql, i) || (i > 0 && triggerAt(sql, i-1)) {
			return true
		}
	}
	return false
}

// triggerAt is whether a trigger starts at sql[at], in any case.
func triggerAt(sql string, at int) bool {
	for _, t := range byFirst[sql[at]] {
		if len(sql)-at < len(t) {
			continue
		}
		j := 1
		for j < len(t) && lowerTab[sql[at+j]] == t[j] {
			j++
		}
		if j == len(t) {
			return true
		}
	}
	return false
}

// lowerTab lower-cases ASCII letters and keeps every other byte.
var lowerTab = func() (t [256]byte) {
	for c := range t {
		t[c] = lower(byte(c))
	}
	return t
}()

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// lex calls constant for the byte range of each string constant in sql,
// including its quotes and prefix. An unterminated constant runs to the end.
func lex(sql string, constant func(start, end int)) {
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			// Block comments nest in PostgreSQL.
			depth := 0
			for i < n {
				if i+1 < n && sql[i] == '/' && sql[i+1] == '*' {
					depth++
					i += 2
				} else if i+1 < n && sql[i] == '*' && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == '"':
			i++
			for i < n {
				if sql[i] == '"' {
					if i+1 < n && sql[i+1] == '"' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < n && sql[i+1] == '\'' && !identChar(sql, i-1)):
			start := i
			backslash := c != '\''
			if backslash {
				i++
			}
			i++
			for i < n {
				if backslash && sql[i] == '\\' {
					i += 2
					continue
				}
				if sql[i] == '\'' {
					if i+1 < n && sql[i+1] == '\'' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
			if i > n {
				i = n
			}
			constant(start, i)
		case c == '$' && !identChar(sql, i-1):
			tagEnd := i + 1
			for tagEnd < n && isTagChar(sql[tagEnd], tagEnd == i+1) {
				tagEnd++
			}
			if tagEnd >= n || sql[tagEnd] != '$' {
				i++ // a parameter ($1) or a lone dollar
				continue
			}
			tag := sql[i : tagEnd+1]
			start := i
			body := tagEnd + 1
			if k := strings.Index(sql[body:], tag); k >= 0 {
				i = body + k + len(tag)
			} else {
				i = n
			}
			constant(start, i)
		default:
			i++
		}
	}
}

// identChar reports whether sql[i] continues an identifier, so that the
// quote or dollar after it is not a constant's start (E in "somE'…'" is a
// name's end, $ in "a$b" belongs to the name).
func identChar(sql string, i int) bool {
	if i < 0 {
		return false
	}
	c := sql[i]
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isTagChar(c byte, first bool) bool {
	if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 {
		return true
	}
	return !first && c >= '0' && c <= '9'
}

// The plain bytes are the printable ASCII ones but " \ < > &: those a JSON
// string holds as they are, encoding/json's way (which escapes < > & for
// HTML). Audit records are JSON, and SQLPlain finds them as it looks for
// secrets.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// PlainWord is whether all 8 bytes of x are plain. One expression, small
// enough to be inlined (the call per word was a fifth of the audit
// encoder's scan): " (0x22) and & (0x26) are the only bytes that are 0x26
// with bit 2 set, < (0x3c) and > (0x3e) the only ones that are 0x3e with
// bit 1 set. Each term's top bits are set where a byte is one of the bytes
// it looks for (and may be above it, never where there is none), so their
// union is empty only for a plain word.
func PlainWord(x uint64) bool {
	q := x | lsb*4 ^ lsb*0x26
	a := x | lsb*2 ^ lsb*0x3e
	s := x ^ lsb*'\\'
	return (x|(x-lsb*0x20)&^x|(q-lsb)&^q|(a-lsb)&^a|(s-lsb)&^s)&msb == 0
}

// PlainByte is whether c is plain, without a table, which under load is
// out of cache when a string's last few bytes come to it.
func PlainByte(c byte) bool {
	return c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
}
