package mask

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"
)

// Strategy is how a sensitive value is replaced.
type Strategy string

// The strategies.
const (
	// Redact replaces the value with the rule's marker.
	Redact Strategy = "redact"
	// Partial keeps the last Keep letters and digits (at most half of them)
	// and stars the others; punctuation and spaces stay, so a card keeps its
	// grouping.
	Partial Strategy = "partial"
	// Hash replaces the value with [kind:16 letters], the 64 bits of a
	// keyed PRF (SipHash-2-4 under a key derived from the masking key):
	// equal values give equal results, so joins, DISTINCT and GROUP BY
	// still work, across restarts with the same key.
	Hash Strategy = "hash"
	// Null sends SQL NULL for a value masked whole; a found span inside a
	// larger value cannot be null and gets the marker.
	Null Strategy = "null"
	// Fake replaces the value with a made-up one of the same format, chosen
	// deterministically under the key (see fake).
	Fake Strategy = "fake"
)

func (s Strategy) valid() bool { return s.code() != badStrategy }

// strategyCode is a Strategy as a small number: the masking of every value
// switches on it, where comparing the strings cost more than some of the
// strategies themselves.
type strategyCode uint8

const (
	badStrategy strategyCode = iota
	sRedact
	sPartial
	sHash
	sNull
	sFake
)

func (s Strategy) code() strategyCode {
	switch s {
	case Redact:
		return sRedact
	case Partial:
		return sPartial
	case Hash:
		return sHash
	case Null:
		return sNull
	case Fake:
		return sFake
	}
	return badStrategy
}

// DefaultMarker is the redact marker when a rule gives none; "{kind}" in a
// marker is replaced by the detector's name (column for a column rule).
const DefaultMarker = "[redacted]"

// DefaultKeep is how many trailing characters partial keeps by default.
const DefaultKeep = 4

// MinKeyLen is the shortest masking key accepted.
const MinKeyLen = 32

// engine holds the keyed state; it is per Masker, used by one goroutine.
type engine struct {
	hash sipKey    // SipHash-2-4 under a key derived from the root key
	fake hash.Hash // HMAC-SHA256 under a key derived from the root key
	sum  [sha256.Size]byte
	kind [1]byte
	rng  rand.ChaCha8
}

// deriveKey separates the keys of the hash and fake strategies, so a hash
// output says nothing about the fake of the same value.
func deriveKey(root []byte, purpose string) []byte {
	m := hmac.New(sha256.New, root)
	m.Write([]byte("airlock mask v1 " + purpose))
	return m.Sum(nil)
}

func newEngine(root []byte) *engine {
	return &engine{
		// Its own purpose string: the HMAC-SHA256 key the hash strategy
		// had before is never reused under another function.
		hash: newSipKey(deriveKey(root, "hash siphash-2-4")),
		fake: hmac.New(sha256.New, deriveKey(root, "fake")),
	}
}

func appendMarker(dst []byte, marker string, k Kind) []byte {
	if i := strings.Index(marker, "{kind}"); i >= 0 {
		dst = append(dst, marker[:i]...)
		dst = append(dst, k.String()...)
		return append(dst, marker[i+len("{kind}"):]...)
	}
	return append(dst, marker...)
}

// appendHash writes [kind:xxxxxxxxxxxxxxxx], the 64 bits of the keyed
// SipHash-2-4 of v as 16 letters a-p. The kind is part of the output, not of the MAC input, so the
// same value found by a column rule and by a detector (an email column and
// an email inside concat()) hashes the same. Letters, not hex digits, and
// the brackets keep the result from ever looking like a card, a phone or,
// glued to its neighbours, a secret: masking it again changes nothing.
func (e *engine) appendHash(dst, v []byte, k Kind) []byte {
	h := e.hash.sum(v)
	// The sixteen letters are made eight at a time (each nibble of a
	// 32-bit half spread to a byte of its own, then 'a' added to every
	// byte), not in a loop of shifts and appends, which cost more than
	// the hash itself; the output is sized once and written in place.
	name := k.String()
	n := len(dst)
	dst = slices.Grow(dst, len(name)+19)[:n+len(name)+19]
	out := dst[n:]
	out[0] = '['
	p := 1 + copy(out[1:], name)
	out[p] = ':'
	binary.BigEndian.PutUint64(out[p+1:], nibbleLetters(uint32(h>>32)))
	binary.BigEndian.PutUint64(out[p+9:], nibbleLetters(uint32(h)))
	out[p+17] = ']'
	return dst
}

// nibbleLetters spreads x's eight nibbles to the bytes of the result, the
// most significant nibble in the most significant byte, each as a letter
// a-p.
func nibbleLetters(x uint32) uint64 {
	v := uint64(x)
	v = (v | v<<16) & 0x0000ffff0000ffff
	v = (v | v<<8) & 0x00ff00ff00ff00ff
	v = (v | v<<4) & 0x0f0f0f0f0f0f0f0f
	return v + 0x6161616161616161 // 'a' in every byte: no carry, each is at most 15
}

// appendPartial stars every letter, digit and non-ASCII character except
// the last keep of them, and never keeps more than half of them (a short
// value keeps less, so "a@b.io" does not come out whole).
func appendPartial(dst, v []byte, keep int) []byte {
	if allCount(v) {
		// Every character counts (a card's or an account's bare
		// number): the first star of them are starred.
		n := len(v)
		star := n - min(keep, n/2)
		for ; star > len(stars); star -= len(stars) {
			dst = append(dst, stars...)
		}
		dst = append(dst, stars[:star]...)
		return append(dst, v[n-min(keep, n/2):]...)
	}
	// Other ASCII (phones, grouped cards, most emails): one pass to
	// count, a copy, and stars written over the copy up to the last
	// character starred.
	n := 0
	for _, c := range v {
		if c >= utf8.RuneSelf {
			return appendPartialUTF8(dst, v, keep)
		}
		n += int(partialCounts[c])
	}
	star := n - min(keep, n/2)
	start := len(dst)
	dst = append(dst, v...)
	out := dst[start:]
	for i := 0; star > 0 && i < len(out); i++ {
		if partialCounts[out[i]] != 0 {
			out[i] = '*'
			star--
		}
	}
	return dst
}

const stars = "****************************************************************"

// allCount says whether partial counts every byte of v: looked up eight
// at a time and and-ed, with no branch per byte.
func allCount(v []byte) bool {
	acc := uint8(1)
	for len(v) >= 8 {
		acc &= partialAll[v[0]] & partialAll[v[1]] & partialAll[v[2]] & partialAll[v[3]] &
			partialAll[v[4]] & partialAll[v[5]] & partialAll[v[6]] & partialAll[v[7]]
		v = v[8:]
	}
	for _, c := range v {
		acc &= partialAll[c]
	}
	return acc == 1
}

// partialAll is partialCounts over every byte value (0 for non-ASCII).
var partialAll = func() (t [256]uint8) {
	copy(t[:], partialCounts[:])
	return t
}()

// partialCounts marks the ASCII characters partial counts (and stars):
// letters, digits, and stars themselves.
var partialCounts = func() (t [utf8.RuneSelf]uint8) {
	for c := range t {
		if isAlnum(byte(c)) || c == '*' {
			t[c] = 1
		}
	}
	return t
}()

func appendPartialUTF8(dst, v []byte, keep int) []byte {
	n := 0 // characters that count; stars too, so partial twice is partial once
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			if isAlnum(c) || c == '*' {
				n++
			}
			i++
			continue
		}
		_, sz := utf8.DecodeRune(v[i:])
		n++
		i += sz
	}
	star := n - min(keep, n/2)
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			if isAlnum(c) || c == '*' {
				if star > 0 {
					c = '*'
				}
				star--
			}
			dst = append(dst, c)
			i++
			continue
		}
		_, sz := utf8.DecodeRune(v[i:])
		if star > 0 {
			dst = append(dst, '*')
		} else {
			dst = append(dst, v[i:i+sz]...)
		}
		star--
		i += sz
	}
	return dst
}

// seed keys the fake generator with the value.
func (e *engine) seed(v []byte, k Kind) {
	e.fake.Reset()
	e.kind[0] = byte(k) // a field: a fresh slice would escape through the interface
	e.fake.Write(e.kind[:])
	e.fake.Write(v)
	e.rng.Seed([32]byte(e.fake.Sum(e.sum[:0])))
}

func (e *engine) digit() byte        { return '0' + byte(e.rng.Uint64()%10) }
func (e *engine) lower() byte        { return 'a' + byte(e.rng.Uint64()%26) }
func (e *engine) intn(n int) int     { return int(e.rng.Uint64() % uint64(n)) }
func (e *engine) nonzero() byte      { return '1' + byte(e.rng.Uint64()%9) }
func (e *engine) from(a string) byte { return a[e.rng.Uint64()%uint64(len(a))] }

// appendFake writes a made-up value of kind k in v's format, the same for
// the same value and key:
//   - email: u + 10 letters/digits @example.com (a reserved domain the email
//     detector ignores, so masking again changes nothing);
//   - card: the same length and grouping, starting with 9 (no network
//     issues cards there, so the card detector ignores it) and passing Luhn;
//   - US SSN: area 9xx, which the SSA never issues;
//   - phone: the same layout and country code; North American numbers get
//     555-01xx, the range reserved for fiction;
//   - IBAN: the same country, layout and character classes, valid check
//     digits (a fake IBAN is an IBAN: masking again changes it again);
//   - IPv4: an address in a documentation range (192.0.2.0/24,
//     198.51.100.0/24, 203.0.113.0/24); IPv6: in 2001:db8::/32;
//   - credentials (JWT, keys, tokens, secrets): the marker, since a fake
//     credential of the same format is of no use to anyone and looks real;
//   - anything else (a column masked whole): letters stay letters of the
//     same case, digits stay digits (a leading non-zero digit stays
//     non-zero, so numbers still parse), other ASCII stays, non-ASCII
//     characters become letters.
func (e *engine) appendFake(dst, v []byte, k Kind, marker string) []byte {
	switch k {
	case KindPEMKey, KindJWT, KindAWSKeyID, KindAWSSecret, KindGitHubToken, KindGitLabToken, KindSlackToken, KindSecret:
		return appendMarker(dst, marker, k)
	}
	e.seed(v, k)
	switch k {
	case KindEmail:
		dst = append(dst, 'u')
		for range 10 {
			dst = append(dst, e.from("abcdefghijklmnopqrstuvwxyz0123456789"))
		}
		return append(dst, "@example.com"...)
	case KindCard:
		return e.fakeCard(dst, v)
	case KindSSN:
		dst = append(dst, '9', e.digit(), e.digit(), '-', e.nonzero(), e.digit(), '-', e.nonzero(), e.digit(), e.digit(), e.digit())
		return dst
	case KindPhone:
		return e.fakePhone(dst, v)
	case KindIBAN:
		return e.fakeIBAN(dst, v)
	case KindIPv4:
		nets := [3][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}
		n := nets[e.intn(3)]
		return netip.AddrFrom4([4]byte{n[0], n[1], n[2], byte(1 + e.intn(254))}).AppendTo(dst)
	case KindIPv6:
		var a [16]byte
		a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
		for i := 4; i < 16; i++ {
			a[i] = byte(e.rng.Uint64())
		}
		return netip.AddrFrom16(a).AppendTo(dst)
	}
	return e.fakeGeneric(dst, v)
}

func (e *engine) fakeGeneric(dst, v []byte) []byte {
	for i := 0; i < len(v); {
		c := v[i]
		switch {
		case isDigit(c):
			if c != '0' && (i == 0 || !isDigit(v[i-1])) {
				dst = append(dst, e.nonzero())
			} else {
				dst = append(dst, e.digit())
			}
		case c-'a' < 26:
			dst = append(dst, e.lower())
		case isUpper(c):
			dst = append(dst, e.lower()-32)
		case c < utf8.RuneSelf:
			dst = append(dst, c)
		default:
			_, sz := utf8.DecodeRune(v[i:])
			dst = append(dst, e.lower())
			i += sz
			continue
		}
		i++
	}
	return dst
}

func (e *engine) fakeCard(dst, v []byte) []byte {
	start := len(dst)
	var pos [19]int
	n := 0
	for _, c := range v {
		if isDigit(c) && n < len(pos) {
			pos[n] = len(dst)
			n++
			if n == 1 {
				c = '9'
			} else {
				c = e.digit()
			}
		}
		dst = append(dst, c)
	}
	if n < 2 {
		return dst
	}
	// choose the last digit so the number passes Luhn
	out := dst[start:]
	last := pos[n-1] - start
	for d := byte('0'); d <= '9'; d++ {
		out[last] = d
		var digits [19]byte
		for i := 0; i < n; i++ {
			digits[i] = out[pos[i]-start]
		}
		if luhn(digits[:n]) {
			break
		}
	}
	return dst
}

func (e *engine) fakePhone(dst, v []byte) []byte {
	// keep the country code of an international number
	keep := 0
	if len(v) > 0 && v[0] == '+' {
		var d [3]byte
		n := 0
		for _, c := range v[1:] {
			if isDigit(c) && n < 3 {
				d[n] = c
				n++
			}
		}
		switch {
		case n > 0 && (d[0] == '1' || d[0] == '7'):
			keep = 1
		case n > 1 && cc2[int(d[0]-'0')*10+int(d[1]-'0')]:
			keep = 2
		default:
			keep = 3
		}
	}
	var digits [15]byte
	total := 0
	for _, c := range v {
		if isDigit(c) && total < len(digits) {
			digits[total] = c
			total++
		}
	}
	nat := digits[keep:total]
	if len(v) > 0 && v[0] == '+' && keep == 1 && digits[0] == '1' || len(v) > 0 && v[0] != '+' {
		// North American: NPA NXX XXXX, with a leading 1 kept if written.
		off := len(nat) - 10
		if off >= 0 {
			nat[off] = '2' + byte(e.intn(8))
			nat[off+1], nat[off+2] = e.digit(), e.digit()
			copy(nat[off+3:], "55501")
			nat[off+8], nat[off+9] = e.digit(), e.digit()
		}
	} else {
		for i := range nat {
			nat[i] = e.digit()
		}
		if len(nat) > 0 {
			nat[0] = e.nonzero()
		}
	}
	k := 0
	for _, c := range v {
		if isDigit(c) && k < total {
			c = digits[k]
			k++
		}
		dst = append(dst, c)
	}
	return dst
}

func (e *engine) fakeIBAN(dst, v []byte) []byte {
	start := len(dst)
	var chars [34]byte
	n := 0
	for _, c := range v {
		if c == ' ' {
			dst = append(dst, c)
			continue
		}
		switch {
		case n < 2 || n >= 34:
		case n < 4:
			c = '0'
		case isDigit(c):
			c = e.digit()
		case isUpper(c):
			c = e.lower() - 32
		}
		if n < 34 {
			chars[n] = c
		}
		n++
		dst = append(dst, c)
	}
	if n < 5 || n > 34 {
		return dst
	}
	check := 98 - ibanMod97(chars[:n])
	out := dst[start:]
	// the check digits are the third and fourth non-space characters
	k := 0
	for i := range out {
		if out[i] == ' ' {
			continue
		}
		if k == 2 {
			out[i] = '0' + byte(check/10)
		} else if k == 3 {
			out[i] = '0' + byte(check%10)
			break
		}
		k++
	}
	return dst
}
