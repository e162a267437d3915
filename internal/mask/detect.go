package mask

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// Span is a sensitive value found inside a larger one: s[Start:End].
type Span struct {
	Start, End int
	Kind       Kind
}

// Detect appends to dst the sensitive values the detectors in set find in s,
// sorted and non-overlapping (overlapping finds are merged, the longer one's
// kind winning). It allocates nothing beyond growing dst, and a value with
// none of the bytes a detector needs (digits, '@', ':', '-', '_', or the
// AKIA/ASIA/eyJ prefixes) is rejected in one word-at-a-time pass.
func Detect(dst []Span, s []byte, set KindSet) []Span {
	set &= AllKinds
	if set == 0 || len(s) == 0 || !mayMatch(s, set) {
		return dst
	}
	if set.Has(KindIPv6) && bytes.IndexByte(s, ':') < 0 {
		// An IPv6 address has at least two colons: without one, the
		// hex-word probe at every word start need not run. (memchr is a
		// fraction of the probes it saves.)
		set &^= KindSet(0).With(KindIPv6)
	}
	d := detector{s: s, set: set, out: dst}
	d.run()
	return normalize(d.out, len(dst))
}

// Byte classes.
const (
	cDigit = 1 << iota
	cUpper
	cLower
	cHex   // 0-9 a-f A-F
	cTok   // + / _ - : may continue a token (base64, base64url, identifiers)
	cLocal // may appear in an email's local part besides letters and digits
	cMail  // what isLocal accepts: letters, digits and . _ % + -
	cLabel // may appear in a domain label: letters, digits and -
	cAlnum = cDigit | cUpper | cLower
)

var class = func() (t [256]uint8) {
	for c := '0'; c <= '9'; c++ {
		t[c] |= cDigit | cHex
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] |= cUpper
		t[c+32] |= cLower
	}
	for _, c := range "abcdefABCDEF" {
		t[c] |= cHex
	}
	for _, c := range "+/_-" {
		t[c] |= cTok
	}
	for _, c := range ".!#$%&'*+/=?^_`{|}~-" {
		t[c] |= cLocal
	}
	for c := range t {
		if t[c]&cAlnum != 0 {
			t[c] |= cMail | cLabel
		}
	}
	for _, c := range "._%+-" {
		t[c] |= cMail
	}
	t['-'] |= cLabel
	return t
}()

func isDigit(c byte) bool { return c-'0' < 10 }
func isUpper(c byte) bool { return c-'A' < 26 }
func isAlnum(c byte) bool { return class[c]&cAlnum != 0 }

const lo8 = 0x0101010101010101
const hi8 = 0x8080808080808080

// zeroBytes is non-zero when some byte of x is zero.
func zeroBytes(x uint64) uint64 { return (x - lo8) &^ x & hi8 }

// betweenBytes is non-zero when some byte b of x has m < b < n (m ≤ 127,
// n ≤ 128).
func betweenBytes(x uint64, m, n uint64) uint64 {
	return (lo8*(127+n) - (x & (lo8 * 127))) &^ x & ((x & (lo8 * 127)) + lo8*(127-m)) & hi8
}

// triggers is non-zero when x holds a digit, ':' or '@' ('-' and '_' are
// looked for with IndexByte, which is faster than two more tests here).
func triggers(x uint64) uint64 {
	return betweenBytes(x, '0'-1, ':'+1) | zeroBytes(x^(lo8*'@'))
}

// mayMatch is the fast reject: every detector needs a digit, '@', ':', '-'
// or '_' somewhere in the value, except an all-letter AWS key id and a JWT
// whose parts hold no digit, which are looked for by their prefix. It
// reads 32 bytes per step, eight at a time in registers.
func mayMatch(s []byte, set KindSet) bool {
	i := 0
	for ; i+32 <= len(s); i += 32 {
		b := s[i : i+32 : i+32]
		if triggers(binary.LittleEndian.Uint64(b[0:]))|triggers(binary.LittleEndian.Uint64(b[8:]))|
			triggers(binary.LittleEndian.Uint64(b[16:]))|triggers(binary.LittleEndian.Uint64(b[24:])) != 0 {
			return true
		}
	}
	for ; i+8 <= len(s); i += 8 {
		if triggers(binary.LittleEndian.Uint64(s[i:])) != 0 {
			return true
		}
	}
	for ; i < len(s); i++ {
		c := s[i]
		if c >= '0' && c <= ':' || c == '@' {
			return true
		}
	}
	if bytes.IndexByte(s, '-') >= 0 || bytes.IndexByte(s, '_') >= 0 {
		return true
	}
	if set.Has(KindAWSKeyID) {
		// AKIA and ASIA share "IA": one search instead of two
		for k := 2; k < len(s); {
			j := bytes.Index(s[k:], []byte("IA"))
			if j < 0 {
				break
			}
			k += j
			if s[k-2] == 'A' && (s[k-1] == 'K' || s[k-1] == 'S') {
				return true
			}
			k++
		}
	}
	return set.Has(KindJWT) && bytes.Contains(s, []byte("eyJ"))
}

type detector struct {
	s      []byte
	set    KindSet
	out    []Span
	tokEnd int // the high-entropy token detector has looked at s[:tokEnd]
}

func (d *detector) emit(start, end int, k Kind) int {
	d.out = append(d.out, Span{start, end, k})
	return end
}

func (d *detector) run() {
	if d.set.Has(KindEmail) {
		d.emails()
	}
	if d.set.Has(KindPEMKey) {
		d.pemKeys()
	}
	s := d.s
	n := len(s)
	// Detectors start at word starts, and at digits right after a letter
	// (cards and SSNs glued to text, as 'x' || card_number makes them).
	for i := 0; i < n; {
		if !isAlnum(s[i]) || i > 0 && isAlnum(s[i-1]) && !letterDigit(s, i) {
			i++
			continue
		}
		var end int
		if i > 0 && isAlnum(s[i-1]) {
			end = d.glued(i)
		} else {
			end = d.word(i)
		}
		if end > i {
			i = end
			continue
		}
		for i++; i < n && isAlnum(s[i]) && !letterDigit(s, i); i++ {
		}
	}
}

func letterDigit(s []byte, i int) bool { return isDigit(s[i]) && !isDigit(s[i-1]) }

// glued tries the detectors that may find a value glued to letters before
// it (cards and SSNs) at the digits s[i:].
func (d *detector) glued(i int) int {
	s := d.s
	j := i + 1
	for j < len(s) && isDigit(s[j]) {
		j++
	}
	run := j - i
	if run < 3 {
		return 0 // hex digests and ids: the common case
	}
	var next byte
	if j < len(s) {
		next = s[j]
	}
	if d.set.Has(KindCard) && (run >= 13 || run >= 4 && (next == ' ' || next == '-' || next == '.')) {
		if e := d.card(i); e > 0 {
			return e
		}
	}
	if d.set.Has(KindSSN) && run == 3 && next == '-' {
		return d.ssn(i)
	}
	return 0
}

// word tries the detectors that can start at the word beginning at s[i]; it
// returns the end of what it found, or 0.
func (d *detector) word(i int) int {
	s, set := d.s, d.set
	c := s[i]
	if isDigit(c) {
		// Look at the digit run and what follows once, and call only the
		// detectors that can start with such a run: most numbers in a
		// result (ids, amounts, dates) are turned away here.
		j := i + 1
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		run := j - i
		var next, prev byte
		if j < len(s) {
			next = s[j]
		}
		if i > 0 {
			prev = s[i-1]
		}
		sep := next == '-' || next == '.'
		if set.Has(KindPhone) && (prev == '+' || prev == '(' || run == 3 && sep || run == 1 && c == '1' && sep) {
			if e := d.phone(i); e > 0 {
				return e
			}
		}
		if set.Has(KindCard) && (run >= 13 || (next == ' ' || sep) && (run >= 4 || prev != ' ' && prev != '-' && prev != '.')) {
			if e := d.card(i); e > 0 {
				return e
			}
		}
		if set.Has(KindSSN) && run == 3 && next == '-' {
			if e := d.ssn(i); e > 0 {
				return e
			}
		}
		if set.Has(KindIPv4) && run <= 3 && next == '.' {
			if e := d.ipv4(i); e > 0 {
				return e
			}
		}
	} else {
		if set.Has(KindIBAN) && isUpper(c) {
			if e := d.iban(i); e > 0 {
				return e
			}
		}
		if e := d.prefixed(i); e > 0 {
			return e
		}
	}
	if set.Has(KindIPv6) && (class[c]&cHex != 0) {
		// an address has a ':' after at most four hex digits, or starts with "::"
		h := i + 1
		for h < len(s) && h-i <= 4 && class[s[h]]&cHex != 0 {
			h++
		}
		if h < len(s) && s[h] == ':' || i >= 2 && s[i-1] == ':' && s[i-2] == ':' {
			if e := d.ipv6(i); e > 0 {
				return e
			}
		}
	}
	if set.Has(KindSecret) || set.Has(KindAWSSecret) {
		if e := d.token(i); e > 0 {
			return e
		}
	}
	return 0
}

// normalize sorts out[base:] and merges overlapping spans.
func normalize(out []Span, base int) []Span {
	sp := out[base:]
	if len(sp) < 2 {
		return out
	}
	slices.SortFunc(sp, func(a, b Span) int { return a.Start - b.Start })
	w := 0
	for _, x := range sp[1:] {
		cur := &sp[w]
		if x.Start < cur.End {
			if x.End-x.Start > cur.End-cur.Start || x.End-x.Start == cur.End-cur.Start && x.Kind < cur.Kind {
				cur.Kind = x.Kind
			}
			cur.End = max(cur.End, x.End)
			continue
		}
		w++
		sp[w] = x
	}
	return out[:base+w+1]
}
