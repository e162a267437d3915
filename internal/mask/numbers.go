package mask

import (
	"net/netip"
	"unsafe"
)

// leftFree says whether a number may start at s[p]: the byte before is not
// part of a word, nor a '-' or '.' that joins it to a preceding number
// (so "12-415-555-2671" and "1.2.3.4.5" are not split into finds).
func leftFree(s []byte, p int) bool {
	if p == 0 {
		return true
	}
	c := s[p-1]
	if isAlnum(c) {
		return false
	}
	return !((c == '-' || c == '.') && p >= 2 && isDigit(s[p-2]))
}

// rightFree is leftFree's mirror for a number ending before s[p].
func rightFree(s []byte, p int) bool {
	if p >= len(s) {
		return true
	}
	c := s[p]
	if isAlnum(c) {
		return false
	}
	return !((c == '-' || c == '.') && p+1 < len(s) && isDigit(s[p+1]))
}

// ---- payment cards ----

// cardRange is an issuer prefix range and the lengths its cards have.
type cardRange struct {
	lo, hi   int // prefix of width digits
	width    int
	min, max int
}

// cardRanges are the major networks' IIN ranges. A number outside them
// (first digit 0, 1, 7, 8 or 9, or an unassigned range) is not a card, which
// keeps order numbers and ids that happen to pass Luhn out.
var cardRanges = []cardRange{
	{4, 4, 1, 13, 13},       // Visa
	{4, 4, 1, 16, 16},       // Visa
	{4, 4, 1, 19, 19},       // Visa
	{51, 55, 2, 16, 16},     // Mastercard
	{2221, 2720, 4, 16, 16}, // Mastercard 2-series
	{2200, 2204, 4, 16, 16}, // Mir
	{34, 34, 2, 15, 15},     // American Express
	{37, 37, 2, 15, 15},     // American Express
	{300, 305, 3, 14, 19},   // Diners Club
	{3095, 3095, 4, 14, 19}, // Diners Club
	{36, 36, 2, 14, 19},     // Diners Club
	{38, 39, 2, 14, 19},     // Diners Club
	{3528, 3589, 4, 16, 19}, // JCB
	{6011, 6011, 4, 16, 19}, // Discover
	{644, 649, 3, 16, 19},   // Discover
	{65, 65, 2, 16, 19},     // Discover, RuPay
	{62, 62, 2, 16, 19},     // UnionPay
	{60, 60, 2, 16, 19},     // RuPay
	{50, 50, 2, 13, 19},     // Maestro
	{56, 59, 2, 13, 19},     // Maestro
	{63, 69, 2, 13, 19},     // Maestro and others
	{6, 6, 1, 16, 19},       // the rest of 6: Maestro, domestic schemes
}

func cardIIN(d []byte) bool {
	for _, r := range cardRanges {
		if len(d) < r.min || len(d) > r.max {
			continue
		}
		p := 0
		for _, c := range d[:r.width] {
			p = p*10 + int(c-'0')
		}
		if p >= r.lo && p <= r.hi {
			return true
		}
	}
	return false
}

func luhn(d []byte) bool {
	sum := 0
	dbl := false
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i] - '0')
		if dbl {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
		dbl = !dbl
	}
	return sum%10 == 0
}

// card finds 13-19 digits, optionally grouped by single spaces, dashes or
// dots (one kind per number), that pass Luhn and fall in a network's IIN range.
// Every group boundary is tried, longest first, so a card followed by
// another number separated the same way is still found.
func (d *detector) card(i int) int {
	s := d.s
	if i > 0 && isDigit(s[i-1]) {
		return 0 // letters may touch a card: 'x' || number must not hide it
	}
	var digits [19]byte
	var ends [20]int // ends[k] is the index after the digit that makes k+1 digits, at group ends
	var at [20]bool
	n := 0
	var sep byte
	j := i
	for j < len(s) {
		c := s[j]
		if isDigit(c) {
			if n == 19 {
				n++ // too long to be a card unless it ends at an earlier group
				break
			}
			digits[n] = c
			n++
			j++
			continue
		}
		// group end
		at[n-1], ends[n-1] = true, j
		if (c == ' ' || c == '-' || c == '.') && (sep == 0 || sep == c) && j+1 < len(s) && isDigit(s[j+1]) {
			sep = c
			j++
			continue
		}
		break
	}
	if n <= 19 && j == len(s) {
		at[n-1], ends[n-1] = true, j
	}
	if n > 19 {
		n = 19 // the last group runs past 19 digits: only earlier group ends count
	}
	for k := n; k >= 13; k-- {
		if !at[k-1] {
			continue
		}
		e := ends[k-1]
		if e < len(s) && isDigit(s[e]) {
			continue
		}
		if luhn(digits[:k]) && cardIIN(digits[:k]) {
			return d.emit(i, e, KindCard)
		}
	}
	return 0
}

// ---- US social security numbers ----

// ssn finds AAA-GG-SSSS with the ranges the SSA never issues left out: area
// 000, 666 and 900-999, group 00, serial 0000, and numbers known to be
// public examples. Nine digits with no dashes are not looked at: too many
// plain numbers have nine digits.
func (d *detector) ssn(i int) int {
	s := d.s
	if i+11 > len(s) || i > 0 && (isDigit(s[i-1]) || s[i-1] == '-' && i > 1 && isDigit(s[i-2])) ||
		i+11 < len(s) && (isDigit(s[i+11]) || s[i+11] == '-' && i+12 < len(s) && isDigit(s[i+12])) {
		return 0
	}
	v := s[i : i+11]
	for k, c := range v {
		if k == 3 || k == 6 {
			if c != '-' {
				return 0
			}
		} else if !isDigit(c) {
			return 0
		}
	}
	area := int(v[0]-'0')*100 + int(v[1]-'0')*10 + int(v[2]-'0')
	if area == 0 || area == 666 || area >= 900 {
		return 0
	}
	if v[4] == '0' && v[5] == '0' || v[7] == '0' && v[8] == '0' && v[9] == '0' && v[10] == '0' {
		return 0
	}
	switch string(v) {
	case "078-05-1120", "219-09-9999", "123-45-6789":
		return 0
	}
	return d.emit(i, i+11, KindSSN)
}

// ---- phone numbers ----

// Country calling codes: the one- and two-digit codes in use, and the
// first two digits of the three-digit ones.
var (
	cc2 = map[int]bool{20: true, 27: true, 30: true, 31: true, 32: true, 33: true, 34: true, 36: true, 39: true,
		40: true, 41: true, 43: true, 44: true, 45: true, 46: true, 47: true, 48: true, 49: true,
		51: true, 52: true, 53: true, 54: true, 55: true, 56: true, 57: true, 58: true,
		60: true, 61: true, 62: true, 63: true, 64: true, 65: true, 66: true, 81: true, 82: true, 84: true, 86: true,
		90: true, 91: true, 92: true, 93: true, 94: true, 95: true, 98: true}
	cc3 = map[int]bool{21: true, 22: true, 23: true, 24: true, 25: true, 26: true, 29: true, 35: true, 37: true,
		38: true, 42: true, 50: true, 59: true, 67: true, 68: true, 69: true, 80: true, 85: true, 87: true, 88: true,
		96: true, 97: true, 99: true}
)

func countryCode(d []byte) bool {
	if d[0] == '1' || d[0] == '7' {
		return true
	}
	two := int(d[0]-'0')*10 + int(d[1]-'0')
	return cc2[two] || cc3[two]
}

// nanp checks a ten-digit North American number: area code and exchange
// start with 2-9.
func nanp(d []byte) bool { return len(d) == 10 && d[0] >= '2' && d[3] >= '2' }

// phone finds international numbers written with a leading '+' (E.164: a
// country code in use, 8-15 digits; 10-15 when written without separators)
// and North American numbers written with their usual punctuation:
// (415) 555-2671, 415-555-2671, 415.555.2671, 1-415-555-2671. Plain digit
// runs without '+' or punctuation are left alone: they are more often
// amounts and ids than phone numbers.
func (d *detector) phone(i int) int {
	s := d.s
	if i > 0 && s[i-1] == '+' {
		if e := d.e164(i - 1); e > 0 {
			return e
		}
	}
	start := i
	if i > 0 && s[i-1] == '(' {
		start = i - 1
	}
	return d.nanpFormat(start)
}

func (d *detector) e164(p int) int {
	s := d.s
	if p > 0 && (isAlnum(s[p-1]) || s[p-1] == '+') {
		return 0
	}
	var digits [15]byte
	var ends [15]int
	var at [15]bool
	n, seps, open := 0, 0, 0
	j := p + 1
	long := false
	for j < len(s) {
		c := s[j]
		if isDigit(c) {
			if n == 15 {
				long = true // past any phone number: only earlier group ends count
				break
			}
			digits[n] = c
			n++
			j++
			continue
		}
		at[n-1], ends[n-1] = true, j
		// up to two separator bytes between groups: " ", "-", ".", "(", ") "
		k := j
		for k < len(s) && k-j < 2 {
			c := s[k]
			if c == ' ' || c == '-' || c == '.' {
				k++
			} else if c == '(' && open == 0 {
				open++
				k++
			} else if c == ')' && open == 1 && k == j {
				open--
				k++
			} else {
				break
			}
		}
		if k == j || k >= len(s) || !isDigit(s[k]) {
			break
		}
		seps++
		j = k
	}
	if j == len(s) && n > 0 && !long {
		at[n-1], ends[n-1] = true, j
	}
	minDigits := 8
	if seps == 0 {
		minDigits = 10
	}
	for k := n; k >= minDigits; k-- {
		if !at[k-1] || !rightFree(s, ends[k-1]) {
			continue
		}
		dd := digits[:k]
		if !countryCode(dd) {
			continue
		}
		if dd[0] == '1' && !nanp(dd[1:]) {
			continue
		}
		return d.emit(p, ends[k-1], KindPhone)
	}
	return 0
}

func (d *detector) nanpFormat(p int) int {
	s := d.s
	if !leftFree(s, p) {
		return 0
	}
	j := p
	var digits [10]byte
	n := 0
	take := func(k int) bool {
		if j+k > len(s) {
			return false
		}
		for _, c := range s[j : j+k] {
			if !isDigit(c) {
				return false
			}
			digits[n] = c
			n++
		}
		j += k
		return true
	}
	var sep byte
	if s[j] == '(' {
		j++
		if !take(3) || j >= len(s) || s[j] != ')' {
			return 0
		}
		j++
		if j < len(s) && s[j] == ' ' {
			j++
		}
		if !take(3) || j >= len(s) || (s[j] != '-' && s[j] != '.') {
			return 0
		}
		j++
	} else {
		if j+1 < len(s) && s[j] == '1' && (s[j+1] == '-' || s[j+1] == '.') {
			sep = s[j+1]
			j += 2
		}
		if !take(3) || j >= len(s) || (s[j] != '-' && s[j] != '.') || sep != 0 && s[j] != sep {
			return 0
		}
		sep = s[j]
		j++
		if !take(3) || j >= len(s) || s[j] != sep {
			return 0
		}
		j++
	}
	if !take(4) || !rightFree(s, j) || !nanp(digits[:]) {
		return 0
	}
	return d.emit(p, j, KindPhone)
}

// ---- IP addresses ----

// ipv4 finds dotted quads (no leading zeros). The documentation ranges
// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), x.0.0.0 and loopback
// are not sensitive and are left alone, which also makes the fake strategy's
// documentation addresses stable when masked again.
func (d *detector) ipv4(i int) int {
	s := d.s
	if !leftFree(s, i) {
		return 0
	}
	var a [4]byte
	j := i
	for k := 0; k < 4; k++ {
		if k > 0 {
			if j >= len(s) || s[j] != '.' {
				return 0
			}
			j++
		}
		v, l := 0, 0
		for j < len(s) && isDigit(s[j]) && l < 4 {
			v = v*10 + int(s[j]-'0')
			j++
			l++
		}
		if l == 0 || l > 3 || v > 255 || l > 1 && s[j-l] == '0' {
			return 0
		}
		a[k] = byte(v)
	}
	if !rightFree(s, j) {
		return 0
	}
	if a[1] == 0 && a[2] == 0 && a[3] == 0 || !sensitiveAddr(netip.AddrFrom4(a)) {
		return 0 // x.0.0.0 is a network, and in user agents a version (Chrome/126.0.0.0)
	}
	return d.emit(i, j, KindIPv4)
}

var docPrefixes = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

func sensitiveAddr(a netip.Addr) bool {
	if a.IsUnspecified() || a.IsLoopback() {
		return false
	}
	for _, p := range docPrefixes {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// ipv6 finds IPv6 addresses (netip's parser decides), including ones
// starting with "::" and ones ending in a dotted quad.
func (d *detector) ipv6(i int) int {
	s := d.s
	start := i
	if i >= 2 && s[i-1] == ':' && s[i-2] == ':' {
		start = i - 2
	}
	if start > 0 {
		if c := s[start-1]; isAlnum(c) || c == ':' || c == '.' {
			return 0
		}
	}
	j, colons := i, 0
	for j < len(s) && j-start < 46 {
		c := s[j]
		if class[c]&cHex != 0 || c == '.' && j > i && isDigit(s[j-1]) && j+1 < len(s) && isDigit(s[j+1]) {
			j++
		} else if c == ':' {
			colons++
			j++
		} else {
			break
		}
	}
	if start < i {
		colons += 2
	}
	// a sentence may end the address with '.' or ':'
	for j > i && (s[j-1] == '.' || s[j-1] == ':' && (j-2 < start || s[j-2] != ':')) {
		if s[j-1] == ':' {
			colons--
		}
		j--
	}
	if colons < 2 || j < len(s) && isAlnum(s[j]) {
		return 0
	}
	if !ipv6Shape(s[start:j]) {
		return 0 // checked first: netip's errors allocate
	}
	// netip does not keep the string (no zone: '%' is never in the run),
	// so a no-copy view is safe and keeps the scan allocation-free.
	a, err := netip.ParseAddr(unsafe.String(&s[start], j-start))
	if err != nil || !a.Is6() || !sensitiveAddr(a) {
		return 0
	}
	return d.emit(start, j, KindIPv6)
}

// ---- IBAN ----

// ibanLen is each country's IBAN length (SWIFT IBAN registry).
var ibanLen = map[[2]byte]int{
	{'A', 'D'}: 24, {'A', 'E'}: 23, {'A', 'L'}: 28, {'A', 'T'}: 20, {'A', 'Z'}: 28, {'B', 'A'}: 20,
	{'B', 'E'}: 16, {'B', 'G'}: 22, {'B', 'H'}: 22, {'B', 'I'}: 27, {'B', 'R'}: 29, {'B', 'Y'}: 28,
	{'C', 'H'}: 21, {'C', 'R'}: 22, {'C', 'Y'}: 28, {'C', 'Z'}: 24, {'D', 'E'}: 22, {'D', 'J'}: 27,
	{'D', 'K'}: 18, {'D', 'O'}: 28, {'E', 'E'}: 20, {'E', 'G'}: 29, {'E', 'S'}: 24, {'F', 'I'}: 18,
	{'F', 'K'}: 18, {'F', 'O'}: 18, {'F', 'R'}: 27, {'G', 'B'}: 22, {'G', 'E'}: 22, {'G', 'I'}: 23,
	{'G', 'L'}: 18, {'G', 'R'}: 27, {'G', 'T'}: 28, {'H', 'N'}: 28, {'H', 'R'}: 21, {'H', 'U'}: 28,
	{'I', 'E'}: 22, {'I', 'L'}: 23, {'I', 'Q'}: 23, {'I', 'S'}: 26, {'I', 'T'}: 27, {'J', 'O'}: 30,
	{'K', 'W'}: 30, {'K', 'Z'}: 20, {'L', 'B'}: 28, {'L', 'C'}: 32, {'L', 'I'}: 21, {'L', 'T'}: 20,
	{'L', 'U'}: 20, {'L', 'V'}: 21, {'L', 'Y'}: 25, {'M', 'C'}: 27, {'M', 'D'}: 24, {'M', 'E'}: 22,
	{'M', 'K'}: 19, {'M', 'N'}: 20, {'M', 'R'}: 27, {'M', 'T'}: 31, {'M', 'U'}: 30, {'N', 'I'}: 28,
	{'N', 'L'}: 18, {'N', 'O'}: 15, {'O', 'M'}: 23, {'P', 'K'}: 24, {'P', 'L'}: 28, {'P', 'S'}: 29,
	{'P', 'T'}: 25, {'Q', 'A'}: 29, {'R', 'O'}: 24, {'R', 'S'}: 22, {'R', 'U'}: 33, {'S', 'A'}: 24,
	{'S', 'C'}: 31, {'S', 'D'}: 18, {'S', 'E'}: 24, {'S', 'I'}: 19, {'S', 'K'}: 24, {'S', 'M'}: 27,
	{'S', 'O'}: 23, {'S', 'T'}: 25, {'S', 'V'}: 28, {'T', 'L'}: 23, {'T', 'N'}: 24, {'T', 'R'}: 26,
	{'U', 'A'}: 29, {'V', 'A'}: 22, {'V', 'G'}: 24, {'X', 'K'}: 20, {'Y', 'E'}: 30,
}

// ibanMod97 is the remainder of the IBAN's number (first four characters
// moved to the end, letters as 10-35) divided by 97.
func ibanMod97(v []byte) int {
	r := 0
	add := func(c byte) {
		if isDigit(c) {
			r = (r*10 + int(c-'0')) % 97
		} else {
			x := int(c-'A') + 10
			r = (r*100 + x) % 97
		}
	}
	for _, c := range v[4:] {
		add(c)
	}
	for _, c := range v[:4] {
		add(c)
	}
	return r
}

// iban finds IBANs written compact or in groups of four separated by
// single spaces: the country's length and the mod-97 check must hold.
func (d *detector) iban(i int) int {
	s := d.s
	if i+4 > len(s) || !isUpper(s[i+1]) || !isDigit(s[i+2]) || !isDigit(s[i+3]) || !leftFree(s, i) {
		return 0
	}
	want := ibanLen[[2]byte{s[i], s[i+1]}]
	if want == 0 {
		return 0
	}
	var v [34]byte
	n, j := 0, i
	spaced := i+4 < len(s) && s[i+4] == ' '
	for n < want && j < len(s) {
		c := s[j]
		if spaced && n > 0 && n%4 == 0 {
			if c != ' ' {
				return 0
			}
			j++
			if j >= len(s) {
				return 0
			}
			c = s[j]
		}
		if !isDigit(c) && !isUpper(c) {
			return 0
		}
		v[n] = c
		n++
		j++
	}
	if n != want || j < len(s) && isAlnum(s[j]) || ibanMod97(v[:n]) != 1 {
		return 0
	}
	return d.emit(i, j, KindIBAN)
}

// ipv6Shape checks the textual form: groups of one to four hex digits
// separated by ':', at most one "::", eight groups (fewer with "::"), an
// optional dotted quad at the end counting for two.
func ipv6Shape(b []byte) bool {
	groups, double, i := 0, false, 0
	if len(b) >= 2 && b[0] == ':' && b[1] == ':' {
		double, i = true, 2
		if len(b) == 2 {
			return true
		}
	}
	for i < len(b) {
		j := i
		for j < len(b) && j-i < 5 && class[b[j]]&cHex != 0 {
			j++
		}
		if j < len(b) && b[j] == '.' {
			dots := 0
			for _, c := range b[i:] {
				if c == '.' {
					dots++
				} else if !isDigit(c) {
					return false
				}
			}
			if dots != 3 {
				return false
			}
			groups += 2
			break
		}
		if j == i || j-i > 4 {
			return false
		}
		groups++
		i = j
		if i == len(b) {
			break
		}
		if b[i] != ':' {
			return false
		}
		i++
		if i < len(b) && b[i] == ':' {
			if double {
				return false
			}
			double = true
			i++
		} else if i == len(b) {
			return false
		}
	}
	if double {
		return groups <= 7
	}
	return groups == 8
}
