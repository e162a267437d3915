package mask

import (
	"bytes"
	"testing"
	"unicode/utf8"
)

func FuzzDetect(f *testing.F) {
	jwt := b64(`{"alg":"HS256"}`) + "." + b64(`{"sub":"x"}`) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	for _, s := range []string{
		"", "alice@corp.com", "4111 1111 1111 1111", "536-22-8726", "+44 20 7946 0958", "(415) 555-2671",
		"GB82 WEST 1234 5698 7654 32", "10.1.2.3", "::ffff:10.0.0.1", "fe80::1:", jwt,
		"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----",
		"AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ghp_" + randToken(nil, base62, 36),
		"glpat-aaaaaaaaaaaaaaaaaaaa1", "xoxb-123456789012-abc", "key=aB3dE5gH7jK9mN1pQ2sT4vW6yZ8",
		`{"card": 4111111111111111, "e": "a@b.io"}`, "a@b.io,c@d.io", "@@@..--__::", "+1 (", "eyJ.eyJ.",
		" user4711@corp-mail.com ", "4000000000000002", "5555555555554444", "1234567890123", "a@example.com", "x.y+z@mail.co.uk.", "a@b.io 10.1.2.3", "4111111111111111@corp.com",
	} {
		f.Add([]byte(s))
	}
	redact := fuzzMasker(f, Redact)
	partial := fuzzMasker(f, Partial)
	hash := fuzzMasker(f, Hash)
	null := fuzzMasker(f, Null)
	fake := fuzzMasker(f, Fake)
	f.Fuzz(func(t *testing.T, s []byte) {
		orig := bytes.Clone(s)
		sp := Detect(nil, s, AllKinds)
		checkSpans(t, s, sp)
		// The word-at-a-time prefilter never hides a find.
		d := detector{s: s, set: AllKinds}
		d.run()
		if full := normalize(d.out, 0); len(full) != len(sp) {
			t.Fatalf("prefilter changed the result: %v vs %v", sp, full)
		}
		for k := KindPEMKey; k < numKinds; k++ {
			one := Detect(nil, s, KindSet(0).With(k))
			checkSpans(t, s, one)
			for _, x := range one {
				if x.Kind != k {
					t.Fatalf("detector %s alone found a %s", k, x.Kind)
				}
			}
		}
		// Partial may leave a detectable tail (the last digits of an address),
		// so it is only run here; the others mask once for good.
		if out, _ := partial.Column(Source{}).Mask(nil, s); len(sp) == 0 && len(out) != 0 {
			t.Fatalf("partial changed a value with nothing found: %q", out)
		}
		// Masking once is enough: masking the result again changes nothing.
		for name, m := range map[string]*Masker{"redact": redact, "hash": hash, "null": null} {
			c := m.Column(Source{})
			once, r := c.Mask(nil, s)
			if r == Unchanged {
				if len(sp) != 0 {
					t.Fatalf("%s: spans %v but unchanged", name, sp)
				}
				continue
			}
			if again, r2 := c.Mask(nil, once); r2 == Nulled || r2 == Masked && !bytes.Equal(again, once) {
				t.Fatalf("%s: not idempotent: %q -> %q -> %q", name, s, once, again)
			}
		}
		// Fakes never panic and are deterministic.
		c := fake.Column(Source{})
		a, _ := c.Mask(nil, s)
		b, _ := c.Mask(nil, s)
		if !bytes.Equal(a, b) {
			t.Fatalf("fake not deterministic: %q vs %q", a, b)
		}
		w := fake.Column(Source{Column: "c"})
		a, _ = w.Mask(nil, s)
		b, _ = w.Mask(nil, s)
		if !bytes.Equal(a, b) {
			t.Fatalf("whole fake not deterministic: %q vs %q", a, b)
		}
		// The whole value's kind (hash and fake of a column) is what every
		// detector together says, shortcut or not.
		if got, want := fake.wholeKind(s), wholeKindAll(s); got != want {
			t.Fatalf("whole kind of %q: %s, every detector: %s", s, got, want)
		}
		if !bytes.Equal(s, orig) {
			t.Fatal("input modified")
		}
	})
}

// wholeKindAll is wholeKind without its shortcut: every detector runs.
func wholeKindAll(v []byte) Kind {
	t := bytes.TrimSpace(v)
	sp := Detect(nil, t, AllKinds)
	if len(sp) == 1 && sp[0].Start == 0 && sp[0].End == len(t) {
		return sp[0].Kind
	}
	return KindNone
}

func fuzzMasker(tb testing.TB, s Strategy) *Masker {
	rules := []Rule{{Name: "d", Detectors: []string{"all"}, Strategy: s}}
	if s == Fake {
		rules = append(rules, Rule{Name: "c", Columns: []string{"c"}, Strategy: s})
	}
	rs, err := Compile(Policy{Rules: rules}, testKey)
	if err != nil {
		tb.Fatal(err)
	}
	return rs.ForSubject(Subject{})
}

func checkSpans(t *testing.T, s []byte, sp []Span) {
	t.Helper()
	prev := 0
	for _, x := range sp {
		if x.Start < prev || x.End <= x.Start || x.End > len(s) || x.Kind == KindNone || x.Kind >= numKinds {
			t.Fatalf("bad span %+v after %d in %d bytes: %v", x, prev, len(s), sp)
		}
		prev = x.End
	}
}

// reservedDomainList is reservedDomain as a list of suffixes, the
// reference the label switch is checked against.
func reservedDomainList(dom []byte) bool {
	for _, suf := range []string{".example.com", ".example.net", ".example.org", ".example", ".invalid", ".test", ".localhost"} {
		if len(dom) >= len(suf) && bytes.EqualFold(dom[len(dom)-len(suf):], []byte(suf)) ||
			len(dom) == len(suf)-1 && bytes.EqualFold(dom, []byte(suf[1:])) {
			return true
		}
	}
	return false
}

// FuzzShortcuts: the ASCII fast paths give what the general code gives:
// partial's ASCII pass against its UTF-8 loop (which handles ASCII too),
// the reserved-domain switch against the suffix list on the domains the
// email detector passes it (letters, digits, '-' and '.').
func FuzzShortcuts(f *testing.F) {
	for _, s := range []string{"4111 1111 1111 1111", "a@b.io", "***1", "Zoë Ünal", "", "corp.example.COM", "x.localhost",
		"example.org", "examplexcom", "a.b.test", "invalid", "mail.example.net.", "sub.Example.Org",
		"user41000@corp-mail.com", "a@b.example.com", "a.@b.com", ".a@b.com", "a@b..com", "a@-b.com", "a@b.c0m", "a@b.xn--p1ai", "a@b@c.com", "a@b.com."} {
		f.Add([]byte(s), uint8(4))
	}
	f.Fuzz(func(t *testing.T, v []byte, keep uint8) {
		if got, want := appendPartial([]byte("x"), v, int(keep)), appendPartialUTF8([]byte("x"), v, int(keep)); !bytes.Equal(got, want) {
			t.Fatalf("partial(%q, %d) = %q, want %q", v, keep, got, want)
		}
		dom := bytes.Map(func(r rune) rune {
			if r < utf8.RuneSelf && (isAlnum(byte(r)) || r == '-' || r == '.') {
				return r
			}
			return '.'
		}, v)
		if got, want := reservedDomain(dom), reservedDomainList(dom); got != want {
			t.Fatalf("reservedDomain(%q) = %v, want %v", dom, got, want)
		}
		// wholeEmail's one pass against the email detector itself.
		sp := Detect(nil, v, KindSet(0).With(KindEmail))
		want := len(sp) == 1 && sp[0].Start == 0 && sp[0].End == len(v)
		if got := wholeEmail(v, nil); got != want {
			t.Fatalf("wholeEmail(%q) = %v, the email detector finds %v", v, got, sp)
		}
		// The memo of a domain accepted before changes no answer: after
		// v's own (v again), and after another address's.
		var memo domainMemo
		for _, first := range [][]byte{v, []byte("u@corp-mail.com"), append([]byte("u"), v[bytes.IndexByte(v, '@')+1:]...)} {
			memo = domainMemo{}
			wholeEmail(first, &memo)
			if got := wholeEmail(v, &memo); got != want {
				t.Fatalf("wholeEmail(%q) after %q = %v, the email detector finds %v", v, first, got, sp)
			}
		}
	})
}
