package mask

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// found renders Detect's spans as "kind=text" for comparison.
func found(s string, set KindSet) []string {
	var out []string
	for _, sp := range Detect(nil, []byte(s), set) {
		out = append(out, sp.Kind.String()+"="+s[sp.Start:sp.End])
	}
	return out
}

type detCase struct {
	name string
	in   string
	want []string // "kind=text"; empty: nothing found
}

func runDetCases(t *testing.T, set KindSet, cases []detCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := found(c.in, set)
			if strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Errorf("Detect(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestEmail(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindEmail), []detCase{
		{"plain", "alice@corp.com", []string{"email=alice@corp.com"}},
		{"in text", "contact alice.smith+tag@corp-mail.co.uk today", []string{"email=alice.smith+tag@corp-mail.co.uk"}},
		{"upper", "ALICE@CORP.COM", []string{"email=ALICE@CORP.COM"}},
		{"sentence end", "mail bob@sub.domain.io.", []string{"email=bob@sub.domain.io"}},
		{"json", `{"e":"x_y@d.org","f":"z@q.net"}`, []string{"email=x_y@d.org", "email=z@q.net"}},
		{"glued prefix masked with it", "zzzalice@corp.com", []string{"email=zzzalice@corp.com"}},
		{"idna", "bob@xn--bcher-kva.de", []string{"email=bob@xn--bcher-kva.de"}},
		{"two", "a@b.io,c@d.io", []string{"email=a@b.io", "email=c@d.io"}},
		{"no tld", "alice@localhost", nil},
		{"one label", "user@host", nil},
		{"no local", "@corp.com", nil},
		{"empty label", "alice@.com", nil},
		{"one-letter tld", "alice@corp.c", nil},
		{"numeric tld", "alice@10.0.0.1", nil},
		{"reserved domain", "bob@example.com", nil},
		{"reserved subdomain", "bob@mail.example.org", nil},
		{"reserved tld", "x@mail.test", nil},
		{"dash label", "a@-corp.com", nil},
		{"dot before at", "alice.@corp.com", nil},
		{"at alone", "a @ b", nil},
	})
}

func TestPhone(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindPhone), []detCase{
		{"e164 spaced", "call +1 415 555 2671 now", []string{"phone=+1 415 555 2671"}},
		{"e164 compact", "+14155552671", []string{"phone=+14155552671"}},
		{"uk", "+44 20 7946 0958", []string{"phone=+44 20 7946 0958"}},
		{"fr", "tel: +33 1 23 45 67 89.", []string{"phone=+33 1 23 45 67 89"}},
		{"trunk in parens", "+49 (0)30 1234567", []string{"phone=+49 (0)30 1234567"}},
		{"nanp parens", "(415) 555-2671", []string{"phone=(415) 555-2671"}},
		{"nanp dashes", "call 415-555-2671", []string{"phone=415-555-2671"}},
		{"nanp dots", "415.555.2671", []string{"phone=415.555.2671"}},
		{"nanp with 1", "1-800-555-0199", []string{"phone=1-800-555-0199"}},
		{"plain ten digits", "4155552671", nil},
		{"amount", "total 4155552671.00", nil},
		{"short", "+123", nil},
		{"nanp area 1xx", "+1 123 555 2671", nil},
		{"nanp dashes area 1xx", "123-555-2671", nil},
		{"cc 0", "+0 415 555 2671", nil},
		{"compact too short", "+441234567", nil},
		{"too long", "+1234567890123456", nil},
		{"followed by a long number", "+44 20 7946 0958 12345678", []string{"phone=+44 20 7946 0958"}},
		{"date", "2024-05-01", nil},
		{"time", "12:30:45", nil},
		{"timestamp offset", "2024-01-01T10:00:00+01:00", nil},
		{"longer run", "415-555-26712", nil},
		{"version", "v1.415.555.2671", nil},
		{"mixed separators", "415-555.2671", nil},
		{"glued", "x+14155552671", nil},
	})
}

func TestCard(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindCard), []detCase{
		{"visa", "4111111111111111", []string{"card=4111111111111111"}},
		{"visa spaced", "card 4111 1111 1111 1111 exp 12/27", []string{"card=4111 1111 1111 1111"}},
		{"visa dashed", "4111-1111-1111-1111", []string{"card=4111-1111-1111-1111"}},
		{"visa dotted", "4111.1111.1111.1111", []string{"card=4111.1111.1111.1111"}},
		{"one digit per group", "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", []string{"card=4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"}},
		{"visa 13", "4222222222222", []string{"card=4222222222222"}},
		{"mastercard", "5555555555554444", []string{"card=5555555555554444"}},
		{"mastercard 2-series", "2223003122003222", []string{"card=2223003122003222"}},
		{"amex", "3782 822463 10005", []string{"card=3782 822463 10005"}},
		{"discover", "6011111111111117", []string{"card=6011111111111117"}},
		{"jcb", "3530111333300000", []string{"card=3530111333300000"}},
		{"diners", "30569309025904", []string{"card=30569309025904"}},
		{"followed by number", "4111 1111 1111 1111 2222", []string{"card=4111 1111 1111 1111"}},
		{"two cards", "4111111111111111,5555555555554444", []string{"card=4111111111111111", "card=5555555555554444"}},
		{"luhn fails", "4111111111111112", nil},
		{"luhn ok, no network", "1234567812345670", nil},
		{"luhn ok, wrong length for visa", "411111111111116", nil},
		{"mixed separators", "4111 1111-1111 1111", nil},
		{"twenty digits", "41111111111111110000", nil},
		{"glued to letters", "x4111111111111111", []string{"card=4111111111111111"}},
		{"letters after", "4111111111111111abc", []string{"card=4111111111111111"}},
		{"digits before", "04111111111111111", nil},
		{"twelve digits", "411111111116", nil},
	})
}

func TestSSN(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindSSN), []detCase{
		{"valid", "536-22-8726", []string{"us_ssn=536-22-8726"}},
		{"in text", "SSN: 219-09-9998.", []string{"us_ssn=219-09-9998"}},
		{"area 000", "000-12-3456", nil},
		{"area 666", "666-12-3456", nil},
		{"area 9xx", "900-12-3456", nil},
		{"group 00", "123-00-4567", nil},
		{"serial 0000", "123-45-0000", nil},
		{"woolworth", "078-05-1120", nil},
		{"no dashes", "536228726", nil},
		{"longer before", "1536-22-8726", nil},
		{"glued to letters", "id536-22-8726", []string{"us_ssn=536-22-8726"}},
		{"longer after", "536-22-87261", nil},
		{"spaces", "536 22 8726", nil},
		{"joined", "536-22-8726-1", nil},
	})
}

func TestIBAN(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindIBAN), []detCase{
		{"gb", "GB82WEST12345698765432", []string{"iban=GB82WEST12345698765432"}},
		{"gb spaced", "pay to GB82 WEST 1234 5698 7654 32 today", []string{"iban=GB82 WEST 1234 5698 7654 32"}},
		{"de", "DE89370400440532013000", []string{"iban=DE89370400440532013000"}},
		{"de spaced", "DE89 3704 0044 0532 0130 00", []string{"iban=DE89 3704 0044 0532 0130 00"}},
		{"fr", "FR1420041010050500013M02606", []string{"iban=FR1420041010050500013M02606"}},
		{"nl", "NL91ABNA0417164300", []string{"iban=NL91ABNA0417164300"}},
		{"be", "BE68539007547034", []string{"iban=BE68539007547034"}},
		{"ch", "CH9300762011623852957", []string{"iban=CH9300762011623852957"}},
		{"no", "NO9386011117947", []string{"iban=NO9386011117947"}},
		{"wrong checksum", "GB83WEST12345698765432", nil},
		{"digit changed", "DE89370400440532013001", nil},
		{"short", "DE8937040044053201300", nil},
		{"long", "GB82WEST1234569876543210", nil},
		{"unknown country", "XX82WEST12345698765432", nil},
		{"lower case", "gb82west12345698765432", nil},
		{"bad grouping", "GB82 WEST12 345698765432", nil},
	})
}

func TestIP(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindIPv4).With(KindIPv6), []detCase{
		{"v4", "10.1.2.3", []string{"ipv4=10.1.2.3"}},
		{"v4 with port", "host 172.16.254.1:5432", []string{"ipv4=172.16.254.1"}},
		{"v4 sentence", "from 8.8.8.8.", []string{"ipv4=8.8.8.8"}},
		{"v4 cidr", "10.1.0.0/16", []string{"ipv4=10.1.0.0"}},
		{"user agent version", "Chrome/126.0.0.0 Safari/537.36", nil},
		{"v6", "fe80::1ff:fe23:4567:890a", []string{"ipv6=fe80::1ff:fe23:4567:890a"}},
		{"v6 digit start", "via 2a00:1450:4007:80e::200e", []string{"ipv6=2a00:1450:4007:80e::200e"}},
		{"v6 mapped", "::ffff:10.0.0.1", []string{"ipv6=::ffff:10.0.0.1"}},
		{"v6 bracketed", "[2606:4700::1111]:443", []string{"ipv6=2606:4700::1111"}},
		{"v6 sentence", "addr 2606:4700::1111:", []string{"ipv6=2606:4700::1111"}},
		{"v4 octet too big", "256.1.1.1", nil},
		{"three parts", "1.2.3", nil},
		{"five parts", "1.2.3.4.5", nil},
		{"version", "v1.2.3.4", nil},
		{"doc range", "192.0.2.1", nil},
		{"loopback", "127.0.0.1", nil},
		{"leading zeros", "01.02.03.04", nil},
		{"time", "12:30:45", nil},
		{"c++", "std::vector", nil},
		{"v6 loopback", "::1", nil},
		{"v6 doc", "2001:db8::1", nil},
		{"mac", "00:1a:2b:3c:4d:5e", nil},
		{"one colon", "dead:beef", nil},
	})
}

func TestJWT(t *testing.T) {
	hs := b64(`{"alg":"HS256","typ":"JWT"}`) + "." + b64(`{"sub":"1234567890","name":"John Doe","iat":1516239022}`) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	none := b64(`{"alg":"none"}`) + "." + b64(`{"sub":"x"}`) + "."
	runDetCases(t, KindSet(0).With(KindJWT), []detCase{
		{"hs256", hs, []string{"jwt=" + hs}},
		{"bearer", "Authorization: Bearer " + hs + "\n", []string{"jwt=" + hs}},
		{"unsigned", none, []string{"jwt=" + none}},
		{"no alg", b64(`{"typ":"JWT"}`) + "." + b64(`{"sub":"x"}`) + ".sig", nil},
		{"not json", "eyJ" + b64("hello world") + "." + b64(`{"sub":"x"}`) + ".sig", nil},
		{"broken json", b64(`{"alg":"HS256"`) + "." + b64(`{"sub":"x"}`) + ".sig", nil},
		{"two parts", b64(`{"alg":"HS256"}`) + "." + b64(`{"sub":"x"}`), nil},
		{"five parts", b64(`{"alg":"RSA-OAEP"}`) + ".a.b.c.d", nil},
	})
}

func TestPEM(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	ec := strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})))
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	cut := key[:len(key)/2]
	set := KindSet(0).With(KindPEMKey)
	runDetCases(t, set, []detCase{
		{"pkcs8", key, []string{"pem_private_key=" + key}},
		{"ec in text", "key:\n" + ec + "\nend", []string{"pem_private_key=" + ec}},
		{"json escaped", strings.ReplaceAll(key, "\n", `\n`), []string{"pem_private_key=" + strings.ReplaceAll(key, "\n", `\n`)}},
		{"cut short", "x " + cut, []string{"pem_private_key=" + cut}},
		{"openssh header", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----", []string{"pem_private_key=-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"}},
		{"public key", pubPEM, nil},
		{"certificate", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", nil},
	})
}

func TestPrefixedTokens(t *testing.T) {
	alnum := func(n int, seed uint64) string {
		const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
		r := rand.New(rand.NewPCG(seed, seed))
		b := make([]byte, n)
		for i := range b {
			b[i] = a[r.IntN(len(a))]
		}
		return string(b)
	}
	ghp := "ghp_" + alnum(36, 1)
	pat := "github_pat_" + alnum(22, 2) + "_" + alnum(59, 3)
	glpat := "glpat-" + alnum(20, 4)
	slack := "xoxb-123456789012-1234567890123-" + alnum(24, 5)
	set := KindSet(0).With(KindAWSKeyID).With(KindAWSSecret).With(KindGitHubToken).With(KindGitLabToken).With(KindSlackToken)
	runDetCases(t, set, []detCase{
		{"aws key id", "AKIAIOSFODNN7EXAMPLE", []string{"aws_access_key_id=AKIAIOSFODNN7EXAMPLE"}},
		{"aws session key id", "id=ASIAY34FZKBOKMUTVV7A;", []string{"aws_access_key_id=ASIAY34FZKBOKMUTVV7A"}},
		{"aws pair", "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", []string{"aws_access_key_id=AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}},
		{"aws secret by name", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", []string{"aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}},
		{"aws secret json", `{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}`, []string{"aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}},
		{"aws secret alone", "value wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", nil},
		{"aws secret word not assigned", "my secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", nil},
		{"aws key id short", "AKIAIOSFODNN7EXAMPL", nil},
		{"aws key id long", "AKIAIOSFODNN7EXAMPLEX", nil},
		{"aws key id lower", "akiaiosfodnn7example", nil},
		{"aws other prefix", "AKIBIOSFODNN7EXAMPLE", nil},
		{"github classic", "token=" + ghp, []string{"github_token=" + ghp}},
		{"github fine-grained", pat, []string{"github_token=" + pat}},
		{"github short", "ghp_abc123", nil},
		{"github bad type", "ghx_" + alnum(36, 1), nil},
		{"gitlab", glpat, []string{"gitlab_token=" + glpat}},
		{"gitlab short", "glpat-abc", nil},
		{"slack", slack, []string{"slack_token=" + slack}},
		{"slack bad type", "xoxq-123456789012-1234567890123", nil},
		{"slack no digit", "xoxb-abcdefghijklmnop", nil},
	})
}

func randToken(r *rand.Rand, alphabet string, n int) string {
	if r == nil {
		r = rand.New(rand.NewPCG(1, 1))
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

const (
	base62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b64std = base62 + "+/"
)

func TestSecretNegatives(t *testing.T) {
	runDetCases(t, KindSet(0).With(KindSecret), []detCase{
		{"uuid", "550e8400-e29b-41d4-a716-446655440000", nil},
		{"uuid upper", "550E8400-E29B-41D4-A716-446655440000", nil},
		{"md5", "9e107d9d372bb6826bd81d3542a419d6", nil},
		{"sha1", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", nil},
		{"sha256", "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592", nil},
		{"sha256 upper", "D7A8FBB307D7809469CA9ABCB0082E4F8D5651E46D3CDB762D02D0BF37C9E592", nil},
		{"java class", "AbstractSingletonProxyFactoryBean", nil},
		{"camel with digits", "getUserAccountSettings2024", nil},
		{"handler", "ProcessAccount2024Handler", nil},
		{"formatter", "ISO8601DateFormatter", nil},
		{"path", "/usr/local/lib/python3.11/site-packages/Django/Core", nil},
		{"kebab", "my-Service-name-v2-production-Eu-West-1", nil},
		{"snake", "Customer_Order_Line_Item_2024_Archive", nil},
		{"prose", "The quick brown fox jumps over the lazy dog 42 times", nil},
		{"short random", "aB3dE5gH7jK9mN1pQ", nil},
		{"base32 id", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", nil},
		{"ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAV", nil},
		{"long blob", randToken(rand.New(rand.NewPCG(9, 9)), b64std, 400), nil},
	})
}

func TestSecretPositives(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	set := KindSet(0).With(KindSecret)
	for _, alpha := range []struct{ name, a string }{{"base62", base62}, {"base64", b64std}, {"base64url", base62 + "-_"}} {
		for _, n := range []int{20, 24, 32, 40, 64, 128, 256} {
			hit, total := 0, 0
			for k := 0; k < 500; k++ {
				tok := randToken(r, alpha.a, n)
				if !hasMixed(tok) || strings.ContainsAny(tok[:1]+tok[len(tok)-1:], "+/-_") {
					continue // not a candidate by design (documented), or trimmed
				}
				total++
				if sp := Detect(nil, []byte("key: "+tok+"\n"), set); len(sp) == 1 && sp[0].Kind == KindSecret && sp[0].End-sp[0].Start == n {
					hit++
				}
			}
			min := 0.99
			if n < 24 {
				min = 0.90
			}
			t.Logf("%s len %d: %d/%d detected", alpha.name, n, hit, total)
			if float64(hit) < min*float64(total) {
				t.Errorf("%s len %d: %d/%d random tokens detected, want ≥ %.0f%%", alpha.name, n, hit, total, min*100)
			}
		}
	}
}

func hasMixed(s string) bool {
	return strings.ContainsAny(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") && strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyz") && strings.ContainsAny(s, "0123456789")
}

// TestMixed checks detectors together: each finds its own and overlaps are
// merged.
func TestMixed(t *testing.T) {
	jwt := b64(`{"alg":"HS256"}`) + "." + b64(`{"sub":"x"}`) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	in := fmt.Sprintf("user alice@corp.com paid with 4111-1111-1111-1111 from 10.2.3.4, ssn 536-22-8726, iban DE89370400440532013000, tel +44 20 7946 0958, token %s, key AKIAIOSFODNN7EXAMPLE", jwt)
	want := []string{"email=alice@corp.com", "card=4111-1111-1111-1111", "ipv4=10.2.3.4", "us_ssn=536-22-8726",
		"iban=DE89370400440532013000", "phone=+44 20 7946 0958", "jwt=" + jwt, "aws_access_key_id=AKIAIOSFODNN7EXAMPLE"}
	if got := found(in, AllKinds); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// Only the enabled detectors run.
	if got := found(in, KindSet(0).With(KindSSN)); strings.Join(got, "|") != "us_ssn=536-22-8726" {
		t.Errorf("SSN only: %q", got)
	}
}

func TestNormalize(t *testing.T) {
	sp := []Span{{10, 20, KindSecret}, {0, 5, KindEmail}, {12, 30, KindJWT}, {30, 31, KindCard}}
	got := normalize(sp, 0)
	want := []Span{{0, 5, KindEmail}, {10, 30, KindJWT}, {30, 31, KindCard}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("normalize = %v, want %v", got, want)
	}
}

// TestMayMatch checks the word-at-a-time prefilter against a byte loop.
func TestMayMatch(t *testing.T) {
	naive := func(s []byte) bool {
		for _, c := range s {
			if c >= '0' && c <= ':' || c == '@' || c == '-' || c == '_' {
				return true
			}
		}
		return false
	}
	set := AllKinds &^ KindSet(0).With(KindAWSKeyID).With(KindJWT)
	buf := make([]byte, 16)
	for pos := 0; pos < 16; pos++ {
		for b := 0; b < 256; b++ {
			for i := range buf {
				buf[i] = 'x'
			}
			buf[pos] = byte(b)
			if got, want := mayMatch(buf, set), naive(buf); got != want {
				t.Fatalf("byte %#x at %d: mayMatch %v, want %v", b, pos, got, want)
			}
		}
	}
	for _, s := range []string{"AKIAAAAAAAAAAAAAAAAA", "xASIABCDEFGHIJKLMNOPQ", "eyJhbGciOiJub25lIn0", "IAKIA"} {
		if !mayMatch([]byte(s), AllKinds) {
			t.Errorf("mayMatch(%q) = false: digit-free AWS key ids and JWTs must pass", s)
		}
	}
	for _, s := range []string{"IA", "AIA", "AKI", "KIA ASI eyj"} {
		if mayMatch([]byte(s), AllKinds) {
			t.Errorf("mayMatch(%q) = true", s)
		}
	}
	r := rand.New(rand.NewPCG(3, 3))
	for k := 0; k < 20000; k++ {
		n := r.IntN(40)
		s := make([]byte, n)
		for i := range s {
			s[i] = byte(r.IntN(256))
			if r.IntN(4) > 0 {
				s[i] = "abcXYZ .,;!\x80\xff"[r.IntN(13)]
			}
		}
		if got, want := mayMatch(s, set), naive(s); got != want {
			t.Fatalf("%q: mayMatch %v, want %v", s, got, want)
		}
	}
}

// TestLinear: adversarial repetitions take time linear in their length
// (a quadratic scan would take seconds on 1 MB).
func TestLinear(t *testing.T) {
	for _, unit := range []string{"eyJa_", "github_pat_", "glpat-", "xoxb-1", "a@", "a.", "-----BEGIN A PRIVATE KEY-----", "-----END B-----",
		"4111 ", "+1 ", "1.", "f:", "GB82 ", "aB3_", "AKIA", "::", "(415) "} {
		s := []byte(strings.Repeat(unit, 1<<20/len(unit)))
		// must not hang (the test binary's timeout would catch it), and what
		// it finds must be well formed
		checkSpans(t, s, Detect(nil, s, AllKinds))
	}
}

// TestPostgresShapes: the text PostgreSQL produces for computed columns
// and side channels, with what each must yield.
func TestPostgresShapes(t *testing.T) {
	const card, email = "4111111111111111", "alice@corp.com"
	for _, c := range []struct {
		name, in string
		want     []Kind
	}{
		{"row_to_json", `{"id":1,"email":"alice@corp.com","card":"4111111111111111"}`, []Kind{KindEmail, KindCard}},
		{"json_agg", `[{"email":"alice@corp.com"}, {"email":"bob@corp.io"}]`, []Kind{KindEmail, KindEmail}},
		{"string_agg", "alice@corp.com, bob@corp.io", []Kind{KindEmail, KindEmail}},
		{"array_agg", "{alice@corp.com,bob@corp.io}", []Kind{KindEmail, KindEmail}},
		{"record", `(1,alice@corp.com,"4111 1111 1111 1111")`, []Kind{KindEmail, KindCard}},
		{"hstore", `"email"=>"alice@corp.com", "card"=>"4111-1111-1111-1111"`, []Kind{KindEmail, KindCard}},
		{"copy text", "1\talice@corp.com\t4111111111111111\t\\N\n", []Kind{KindEmail, KindCard}},
		{"copy csv", `1,"alice@corp.com","4111 1111 1111 1111"`, []Kind{KindEmail, KindCard}},
		{"upper", "ALICE@CORP.COM", []Kind{KindEmail}},
		{"concat glued", "x" + card + "y", []Kind{KindCard}},
		{"concat with email", "id:" + email, []Kind{KindEmail}},
		{"bigint cast", card, []Kind{KindCard}},
		{"numeric cast", card + ".00", []Kind{KindCard}},
		{"unique violation detail", "Key (email)=(alice@corp.com) already exists.", []Kind{KindEmail}},
		{"fk detail", `Key (card)=(4111111111111111) is not present in table "cards".`, []Kind{KindCard}},
		{"notify payload", `{"op":"insert","ssn":"536-22-8726","ip":"10.20.30.40"}`, []Kind{KindSSN, KindIPv4}},
		{"inet", "10.20.30.40/32", []Kind{KindIPv4}},
		{"format()", "card=4111 1111 1111 1111; phone=+1 415 555 2671", []Kind{KindCard, KindPhone}},
	} {
		var got []Kind
		for _, sp := range Detect(nil, []byte(c.in), AllKinds) {
			got = append(got, sp.Kind)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %q found %v, want %v", c.name, c.in, got, c.want)
		}
	}
}
