package mask

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
)

// ---- email ----

func isLocal(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

// emails finds addresses by their '@': the local part is taken as far left
// as the usual local characters go (so a value glued in front is masked with
// it), the domain needs at least two labels and an alphabetic (or IDNA) top
// level. Addresses at reserved domains (example.com/.net/.org and the
// .example, .invalid, .test, .localhost TLDs) are not personal data and
// are where the fake strategy puts its addresses.
func (d *detector) emails() {
	s := d.s
	from := 0
	for from < len(s) {
		k := bytes.IndexByte(s[from:], '@')
		if k < 0 {
			return
		}
		a := from + k
		from = a + 1
		l := a
		for l > 0 && isLocal(s[l-1]) {
			l--
		}
		for l < a && s[l] == '.' {
			l++
		}
		if l == a || s[a-1] == '.' {
			continue
		}
		e := domainEnd(s, a+1)
		if e == 0 || reservedDomain(s[a+1:e]) {
			continue
		}
		d.emit(l, e, KindEmail)
		from = e
	}
}

// wholeEmail says whether emails would find exactly one address in t, all
// of t, without collecting spans: that address can only start at t's
// start, so it is the one of t's first '@', with every character before it
// a local one (a later '@' has that one's domain, or other characters,
// before it). It runs for every value of a hashed or faked email column,
// so it reads t once. memo, when not nil, is the last domain accepted
// (and remembers the next): an email column's values share a few domains,
// and comparing the bytes costs less than checking the labels again.
func wholeEmail(t []byte, memo *domainMemo) bool {
	a := 0
	for a < len(t) && class[t[a]]&cMail != 0 {
		a++
	}
	if a == 0 || a == len(t) || t[a] != '@' || t[0] == '.' || t[a-1] == '.' {
		return false
	}
	d := t[a+1:]
	if memo != nil && memo.n > 0 && bytes.Equal(d, memo.b[:memo.n]) {
		return true
	}
	if !wholeDomain(d) {
		return false
	}
	if memo != nil && len(d) <= len(memo.b) {
		memo.n = copy(memo.b[:], d)
	}
	return true
}

// domainMemo is one domain wholeDomain accepted.
type domainMemo struct {
	b [64]byte
	n int
}

// wholeDomain says whether domainEnd(d, 0) == len(d) and d is not
// reserved: every dot-separated label of d is a valid one, there are at
// least two, and the last is a top level. Checked label by label in one
// pass rather than by walking domainEnd's longest prefix.
func wholeDomain(d []byte) bool {
	labels, ls, prev := 0, 0, 0
	for i := 0; i <= len(d); i++ {
		if i < len(d) && d[i] != '.' {
			if class[d[i]]&cLabel == 0 {
				return false
			}
			continue
		}
		if i == ls || i-ls > 63 || d[ls] == '-' || d[i-1] == '-' {
			return false
		}
		labels++
		if i < len(d) {
			prev, ls = ls, i+1
		}
	}
	return labels >= 2 && tld(d[ls:]) && !reservedLabels(d[prev:max(prev, ls-1)], d[ls:])
}

func domainEnd(s []byte, p int) int {
	j, labels, end := p, 0, 0
	for {
		ls := j
		for j < len(s) && (isAlnum(s[j]) || s[j] == '-') {
			j++
		}
		if j == ls || j-ls > 63 || s[ls] == '-' || s[j-1] == '-' {
			break
		}
		labels++
		if labels >= 2 && tld(s[ls:j]) {
			end = j
		}
		if j+1 < len(s) && s[j] == '.' && isAlnum(s[j+1]) {
			j++
			continue
		}
		break
	}
	return end
}

func tld(l []byte) bool {
	if len(l) >= 4 && (l[0]|0x20) == 'x' && (l[1]|0x20) == 'n' && l[2] == '-' && l[3] == '-' {
		return true
	}
	if len(l) < 2 {
		return false
	}
	for _, c := range l {
		if class[c]&(cUpper|cLower) == 0 {
			return false
		}
	}
	return true
}

// reservedDomain: example.com, .net and .org and their subdomains, and
// the .example, .invalid, .test and .localhost top levels. Decided by the
// last label's length first: one comparison for most domains.
func reservedDomain(dom []byte) bool {
	i := bytes.LastIndexByte(dom, '.')
	if i < 0 {
		return reservedLabels(nil, dom)
	}
	rest := dom[:i]
	return reservedLabels(rest[bytes.LastIndexByte(rest, '.')+1:], dom[i+1:])
}

// reservedLabels is reservedDomain for a domain whose last two labels are
// prev and last (prev empty when there is one label).
func reservedLabels(prev, last []byte) bool {
	switch len(last) {
	case 3:
		// Folded by setting bit 5: of the bytes a domain has, only a
		// letter's two cases land on a lower-case letter.
		switch string([]byte{last[0] | 0x20, last[1] | 0x20, last[2] | 0x20}) {
		case "com", "net", "org":
		default:
			return false
		}
		return len(prev) == len("example") && bytes.EqualFold(prev, []byte("example"))
	case 4:
		return bytes.EqualFold(last, []byte("test"))
	case 7:
		return bytes.EqualFold(last, []byte("example")) || bytes.EqualFold(last, []byte("invalid"))
	case 9:
		return bytes.EqualFold(last, []byte("localhost"))
	}
	return false
}

// ---- PEM private keys ----

var (
	pemBeginWord = []byte("BEGIN ")
	pemBegin     = []byte("-----BEGIN ")
	pemEnd       = []byte("-----END ")
	pemDash      = []byte("-----")
)

// pemKeys finds PEM blocks whose label ends in PRIVATE KEY (PKCS#1, PKCS#8,
// EC, OpenSSH, encrypted) or PRIVATE KEY BLOCK (PGP), from BEGIN to the
// matching END line; a block cut short is masked to the end of the value.
func (d *detector) pemKeys() {
	s := d.s
	from := 0
	for from < len(s) {
		// "BEGIN " rather than the dashes: values full of dates have dashes
		// everywhere, which would make the search stop at each one
		k := bytes.Index(s[from:], pemBeginWord)
		if k < 0 {
			return
		}
		b := from + k - 5
		ls := from + k + len(pemBeginWord)
		if b < 0 || !bytes.HasPrefix(s[b:], pemBegin) {
			from = ls
			continue
		}
		le := bytes.Index(s[ls:], pemDash)
		if le < 0 || le > 64 {
			from = ls
			continue
		}
		label := s[ls : ls+le]
		if !bytes.HasSuffix(label, []byte("PRIVATE KEY")) && !bytes.HasSuffix(label, []byte("PRIVATE KEY BLOCK")) {
			from = ls
			continue
		}
		end := len(s)
		for p := ls + le + len(pemDash); p < len(s); {
			m := bytes.Index(s[p:], pemEnd)
			if m < 0 {
				break
			}
			q := p + m + len(pemEnd)
			if bytes.HasPrefix(s[q:], label) && bytes.HasPrefix(s[q+len(label):], pemDash) {
				end = q + len(label) + len(pemDash)
				break
			}
			p = q
		}
		d.emit(b, end, KindPEMKey)
		from = end
	}
}

// ---- tokens with a known prefix ----

func runOf(s []byte, j int, ok func(byte) bool) int {
	for j < len(s) && ok(s[j]) {
		j++
	}
	return j
}

func isB64URL(c byte) bool  { return isAlnum(c) || c == '-' || c == '_' }
func isWordTok(c byte) bool { return isAlnum(c) || c == '_' }
func isDashTok(c byte) bool { return isAlnum(c) || c == '-' }

// prefixed finds tokens that announce themselves, each checked for its
// exact shape: AWS access key ids (AKIA/ASIA + 16 of A-Z0-9), GitHub
// (ghp_/gho_/ghu_/ghs_/ghr_ + 30-251 alphanumerics, github_pat_ + 40 or
// more), GitLab (glpat- + 20 or more), Slack (xoxb-/xoxa-/xoxp-/xoxr-/xoxs-
// + 10 or more with a digit), and JWTs.
func (d *detector) prefixed(i int) int {
	s, set := d.s, d.set
	r := s[i:]
	if i > 0 && (s[i-1] == '_' || s[i-1] == '-') {
		// inside a token of the same alphabet: looked at from its start,
		// which also keeps "github_pat_github_pat_..." linear
		return 0
	}
	switch s[i] {
	case 'A':
		if set.Has(KindAWSKeyID) && len(r) >= 20 && (bytes.HasPrefix(r, []byte("AKIA")) || bytes.HasPrefix(r, []byte("ASIA"))) {
			for _, c := range r[4:20] {
				if !isUpper(c) && !isDigit(c) {
					return 0
				}
			}
			if len(r) > 20 && isAlnum(r[20]) {
				return 0
			}
			return d.emit(i, i+20, KindAWSKeyID)
		}
	case 'e':
		if set.Has(KindJWT) && bytes.HasPrefix(r, []byte("eyJ")) {
			return d.jwt(i)
		}
	case 'g':
		if set.Has(KindGitHubToken) && len(r) > 4 && r[1] == 'h' && r[3] == '_' && bytes.IndexByte([]byte("pousr"), r[2]) >= 0 {
			e := runOf(s, i+4, isAlnum)
			if n := e - i - 4; n >= 30 && n <= 251 && (e == len(s) || s[e] != '_') {
				return d.emit(i, e, KindGitHubToken)
			}
			return 0
		}
		if set.Has(KindGitHubToken) && bytes.HasPrefix(r, []byte("github_pat_")) {
			e := runOf(s, i+11, isWordTok)
			if e-i-11 >= 40 {
				return d.emit(i, e, KindGitHubToken)
			}
			return 0
		}
		if set.Has(KindGitLabToken) && bytes.HasPrefix(r, []byte("glpat-")) {
			e := runOf(s, i+6, func(c byte) bool { return isB64URL(c) || c == '.' })
			for e > i+6 && s[e-1] == '.' {
				e--
			}
			if e-i-6 >= 20 {
				return d.emit(i, e, KindGitLabToken)
			}
			return 0
		}
	case 'x':
		if set.Has(KindSlackToken) && len(r) > 5 && r[1] == 'o' && r[2] == 'x' && r[4] == '-' && bytes.IndexByte([]byte("baprs"), r[3]) >= 0 {
			e := runOf(s, i+5, isDashTok)
			for e > i+5 && s[e-1] == '-' {
				e--
			}
			if e-i-5 >= 10 && bytes.ContainsAny(s[i+5:e], "0123456789") {
				return d.emit(i, e, KindSlackToken)
			}
			return 0
		}
	}
	return 0
}

// jwt finds header.payload.signature in base64url whose header decodes to
// a JSON object with an "alg" member (an unsigned token's signature is
// empty).
func (d *detector) jwt(i int) int {
	s := d.s
	h := runOf(s, i, isB64URL)
	if h >= len(s) || s[h] != '.' {
		return 0
	}
	p := runOf(s, h+1, isB64URL)
	if p == h+1 || p >= len(s) || s[p] != '.' {
		return 0
	}
	e := runOf(s, p+1, isB64URL)
	if e < len(s) && s[e] == '.' {
		return 0 // five parts: JWE or something else
	}
	var buf [768]byte
	dst := buf[:]
	if n := base64.RawURLEncoding.DecodedLen(h - i); n > len(dst) {
		dst = make([]byte, n)
	}
	n, err := base64.RawURLEncoding.Decode(dst, s[i:h])
	if err != nil {
		return 0
	}
	hdr := dst[:n]
	if !bytes.Contains(hdr, []byte(`"alg"`)) || !json.Valid(hdr) || bytes.TrimSpace(hdr)[0] != '{' {
		return 0
	}
	return d.emit(i, e, KindJWT)
}

// ---- high-entropy tokens ----

func isTok(c byte) bool { return class[c]&(cAlnum|cTok) != 0 }

// token looks at the base64/base64url/identifier token around the word
// starting at s[i] (once per token): a 40-character one near an AWS access
// key id or assigned to a name with "secret" in it is an AWS secret key; otherwise it is a
// generic secret if highEntropy says so.
func (d *detector) token(i int) int {
	s := d.s
	if i < d.tokEnd {
		return 0
	}
	if w := runOf(s, i, isAlnum); w-i < secretMin && (w == len(s) || !isTok(s[w]) && s[w] != '=') && (i == 0 || !isTok(s[i-1])) {
		return 0 // a lone short word: the common case, settled without the token scan
	}
	t := i
	for t > d.tokEnd && isTok(s[t-1]) {
		t--
	}
	e := runOf(s, i, isTok)
	d.tokEnd = e
	for t < e && !isAlnum(s[t]) && s[t] != '+' && s[t] != '/' {
		t++
	}
	for e > t && !isAlnum(s[e-1]) && s[e-1] != '+' && s[e-1] != '/' {
		e--
	}
	pe := e
	for pe < len(s) && pe-e < 2 && s[pe] == '=' {
		pe++
	}
	v := s[t:e]
	if d.set.Has(KindAWSSecret) && len(v) == 40 && awsSecretShape(v) && awsContext(s, t, e) {
		return d.emit(t, pe, KindAWSSecret)
	}
	if d.set.Has(KindSecret) && highEntropy(v) {
		return d.emit(t, pe, KindSecret)
	}
	return 0
}

func awsSecretShape(v []byte) bool {
	var up, lo, dg bool
	for _, c := range v {
		switch {
		case isUpper(c):
			up = true
		case c-'a' < 26:
			lo = true
		case isDigit(c):
			dg = true
		case c == '+' || c == '/':
		default:
			return false
		}
	}
	return up && lo && dg
}

// awsContext: an access key id within 256 bytes, or an assignment to a
// name containing "secret" (any case) right before: aws_secret_access_key =
// ..., "SecretAccessKey": "...".
func awsContext(s []byte, t, e int) bool {
	lo, hi := max(0, t-256), min(len(s), e+256)
	w := s[lo:hi]
	if bytes.Contains(w, []byte("AKIA")) || bytes.Contains(w, []byte("ASIA")) {
		return true
	}
	j := t
	skip := func() {
		for j > 0 && j > t-16 && (s[j-1] == ' ' || s[j-1] == '"' || s[j-1] == '\'' || s[j-1] == '\t') {
			j--
		}
	}
	skip()
	if j == 0 || s[j-1] != '=' && s[j-1] != ':' {
		return false
	}
	j--
	skip()
	end := j
	for j > 0 && end-j < 64 && (isAlnum(s[j-1]) || s[j-1] == '_' || s[j-1] == '-' || s[j-1] == '.') {
		j--
	}
	name := s[j:end]
	for k := 0; k+6 <= len(name); k++ {
		if bytes.EqualFold(name[k:k+6], []byte("secret")) {
			return true
		}
	}
	return false
}

// Generic secrets: 20 to 256 characters of base64/base64url/identifier
// alphabet, with upper case, lower case and digits all present, and a
// Shannon entropy (bits per character, over the token's own characters)
// close to what random characters of that length give. Requiring mixed
// case keeps hex digests (MD5, SHA-*), UUIDs and lower-case slugs out;
// the entropy floor keeps identifiers such as AbstractServiceFactory2 out.
// Hex-only or single-case secrets are therefore not found by this detector
// (mask their columns, or use the prefixed detectors); nor are base64 blobs
// longer than 256 characters (images, certificates).
const (
	secretMin = 20
	secretMax = 256
)

// entropyFloor[L] is the entropy a token of length L must reach: the
// expected number of distinct symbols when drawing L from 62, minus a margin
// found by measuring random tokens (see TestSecretThreshold).
var entropyFloor = func() (t [secretMax + 1]float64) {
	for l := secretMin; l <= secretMax; l++ {
		distinct := 62 * (1 - math.Pow(61.0/62.0, float64(l)))
		t[l] = math.Log2(distinct) - entropyMargin
	}
	return t
}()

const entropyMargin = 0.7

func highEntropy(v []byte) bool {
	l := len(v)
	if l < secretMin || l > secretMax {
		return false
	}
	// classes first: digests and UUIDs (no upper case) stop here cheaply
	var seen uint8
	for _, c := range v {
		seen |= class[c]
	}
	if seen&cAlnum != cAlnum {
		return false
	}
	var cnt [128]uint16
	for _, c := range v {
		if c >= 128 {
			return false
		}
		cnt[c]++
	}
	if (cnt['+'] != 0 || cnt['/'] != 0) && (cnt['-'] != 0 || cnt['_'] != 0) {
		return false // two base64 alphabets at once: a path or a name, not one encoding
	}
	if wordy(v)*10 >= l*6 {
		return false
	}
	return shannon(&cnt, l) >= entropyFloor[l]
}

// wordy counts the characters that sit in word-like runs (an optional
// capital then three or more lower-case letters, one a vowel): identifiers
// and names are mostly made of them, random characters rarely (a lower-case
// letter follows another with odds 26/62).
func wordy(v []byte) int {
	n := 0
	for i := 0; i < len(v); {
		j := i
		if isUpper(v[j]) {
			j++
		}
		k := j
		for k < len(v) && v[k]-'a' < 26 {
			k++
		}
		if k-j >= 3 && bytes.ContainsAny(v[j:k], "aeiouy") {
			n += k - i
			i = k
			continue
		}
		i = max(k, i+1)
	}
	return n
}

func shannon(cnt *[128]uint16, l int) float64 {
	h := 0.0
	inv := 1 / float64(l)
	for _, n := range cnt {
		if n != 0 {
			p := float64(n) * inv
			h -= p * math.Log2(p)
		}
	}
	return h
}
