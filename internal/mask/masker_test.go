package mask

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var testKey = bytes.Repeat([]byte("k"), 32)

const policyYAML = `
key_file: /etc/airlock/mask.key
rules:
  - name: emails
    columns: [public.users.email]
    detectors: [email]
    strategy: hash
  - name: cards
    columns: ["*.payments.card_*"]
    detectors: [card]
    strategy: partial
    keep: 4
  - name: ssn
    columns: [ssn]
    detectors: [us_ssn]
    strategy: "null"
  - name: credentials
    detectors: [tokens, secret]
    scan: [public.tickets.body]
    strategy: redact
    marker: "[{kind}]"
  - name: phones
    columns: [public.users.phone]
    detectors: [phone]
    strategy: fake
    groups: [agents]
    except_groups: [dba]
    connections: [prod]
    processes: [agent]
`

func testPolicy(t testing.TB) Policy {
	t.Helper()
	var p Policy
	dec := yaml.NewDecoder(strings.NewReader(policyYAML))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("decode policy: %v", err)
	}
	return p
}

func testMasker(t testing.TB, s Subject) *Masker {
	t.Helper()
	rs, err := Compile(testPolicy(t), testKey)
	if err != nil {
		t.Fatal(err)
	}
	return rs.ForSubject(s)
}

var agent = Subject{Connection: "prod", Groups: []string{"agents"}, Process: "agent"}

func TestPolicyYAML(t *testing.T) {
	p := testPolicy(t)
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if err := (&Policy{KeyFile: "mask.key", Rules: p.Rules}).Validate(); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative key_file: %v", err)
	}
	if p.KeyFile != "/etc/airlock/mask.key" || len(p.Rules) != 5 {
		t.Fatalf("decoded %+v", p)
	}
	r := p.Rules[4]
	if r.Strategy != Fake || r.Groups[0] != "agents" || r.ExceptGroups[0] != "dba" || r.Connections[0] != "prod" || r.Processes[0] != "agent" {
		t.Errorf("phones rule decoded as %+v", r)
	}
	if p.Rules[1].Keep != 4 || p.Rules[3].Marker != "[{kind}]" || p.Rules[3].Scan[0] != "public.tickets.body" {
		t.Errorf("rules decoded as %+v", p.Rules)
	}
}

func TestColumnPlan(t *testing.T) {
	m := testMasker(t, agent)
	cases := []struct {
		src   Source
		whole string // rule masking it whole
		kinds string // detectors otherwise
	}{
		{Source{"public", "users", "email"}, "emails", ""},
		{Source{"PUBLIC", "Users", "EMAIL"}, "emails", ""}, // quoted identifiers still match
		{Source{"billing", "payments", "card_number"}, "cards", ""},
		{Source{"billing", "payments", "amount"}, "", ""},
		{Source{"hr", "people", "ssn"}, "ssn", ""},
		{Source{"public", "users", "phone"}, "phones", ""},
		{Source{"public", "users", "name"}, "", ""},
		{Source{"public", "tickets", "body"}, "", "pem_private_key,jwt,aws_access_key_id,aws_secret_access_key,github_token,gitlab_token,slack_token,secret"},
		{Source{}, "", "pem_private_key,jwt,aws_access_key_id,aws_secret_access_key,github_token,gitlab_token,slack_token,email,card,us_ssn,phone,secret"},
	}
	for _, c := range cases {
		col := m.Column(c.src)
		var whole, kinds string
		if col.whole > 0 {
			whole = m.rs.rules[col.whole-1].spec.Name
		}
		if col.plan != nil {
			kinds = col.plan.kinds.String()
		}
		if whole != c.whole || kinds != c.kinds {
			t.Errorf("Column(%+v): whole %q kinds %q, want %q %q", c.src, whole, kinds, c.whole, c.kinds)
		}
		if col.Masks() != (c.whole != "" || c.kinds != "") {
			t.Errorf("Column(%+v).Masks() = %v", c.src, col.Masks())
		}
	}
}

func TestColumns(t *testing.T) {
	m := testMasker(t, agent)
	_, any := m.Columns(nil, []Source{{"public", "users", "name"}, {"public", "orders", "total"}})
	if any {
		t.Error("a result of unnamed source columns needs no masking")
	}
	cols, any := m.Columns(nil, []Source{{"public", "users", "name"}, {"public", "users", "email"}})
	if !any || cols[0].Masks() || !cols[1].Masks() {
		t.Errorf("Columns: any %v, masks %v %v", any, cols[0].Masks(), cols[1].Masks())
	}
	if _, any := m.Columns(nil, []Source{{}}); !any {
		t.Error("a computed column goes through the detectors")
	}
}

func TestScope(t *testing.T) {
	rs, err := Compile(testPolicy(t), testKey)
	if err != nil {
		t.Fatal(err)
	}
	phone := Source{"public", "users", "phone"}
	for _, c := range []struct {
		name string
		s    Subject
		want bool
	}{
		{"agent", agent, true},
		{"agent who is also dba", Subject{"prod", []string{"agents", "dba"}, "agent"}, false},
		{"dba", Subject{"prod", []string{"dba"}, "agent"}, false},
		{"other connection", Subject{"staging", []string{"agents"}, "agent"}, false},
		{"other process class", Subject{"prod", []string{"agents"}, "person"}, false},
	} {
		if got := rs.ForSubject(c.s).Column(phone).Masks(); got != c.want {
			t.Errorf("%s: phone masked %v, want %v", c.name, got, c.want)
		}
	}
	if rs.ForSubject(Subject{}).Empty() {
		t.Error("rules without scope must apply to everyone")
	}
	if !rs.Masker(func(*Rule) bool { return false }).Empty() {
		t.Error("a masker with no rule in force must be Empty")
	}
}

func mask(t testing.TB, c Column, v string) (string, Result) {
	t.Helper()
	out, r := c.Mask(nil, []byte(v))
	return string(out), r
}

func TestMaskWholeColumns(t *testing.T) {
	m := testMasker(t, agent)
	email := m.Column(Source{"public", "users", "email"})
	h1, r := mask(t, email, "alice@corp.com")
	if r != Masked || !regexp.MustCompile(`^\[email:[a-p]{16}\]$`).MatchString(h1) {
		t.Fatalf("hash of an email = %q, %v", h1, r)
	}
	if h2, _ := mask(t, email, "alice@corp.com"); h2 != h1 {
		t.Errorf("hash not deterministic: %q vs %q", h1, h2)
	}
	if h3, _ := mask(t, email, "bob@corp.com"); h3 == h1 {
		t.Errorf("different values hash equal: %q", h3)
	}
	if h4, _ := mask(t, email, "not an email"); !strings.HasPrefix(h4, "[column:") {
		t.Errorf("a value no detector types gets the column prefix, got %q", h4)
	}
	// The same email inside a computed column hashes the same: joins work.
	got, _ := mask(t, m.Column(Source{}), "owner: alice@corp.com")
	if got != "owner: "+h1 {
		t.Errorf("computed column: %q, want %q", got, "owner: "+h1)
	}

	card := m.Column(Source{"billing", "payments", "card_number"})
	if got, _ := mask(t, card, "4111 1111 1111 1234"); got != "**** **** **** 1234" {
		t.Errorf("partial card = %q", got)
	}
	if got, r := mask(t, m.Column(Source{"hr", "people", "ssn"}), "536-22-8726"); r != Nulled || got != "" {
		t.Errorf("null strategy: %q %v", got, r)
	}
	phone := m.Column(Source{"public", "users", "phone"})
	f, _ := mask(t, phone, "+1 (415) 555-2671")
	if !regexp.MustCompile(`^\+1 \([2-9]\d\d\) 555-01\d\d$`).MatchString(f) {
		t.Errorf("fake phone = %q", f)
	}
	if got, r := mask(t, m.Column(Source{"public", "users", "name"}), "Alice"); r != Unchanged || got != "" {
		t.Errorf("unmasked column: %q %v", got, r)
	}
}

func TestMaskComputed(t *testing.T) {
	m := testMasker(t, agent)
	c := m.Column(Source{})
	jwt := b64(`{"alg":"HS256"}`) + "." + b64(`{"sub":"x"}`) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	in := "card 4111-1111-1111-1111, ssn 536-22-8726, token " + jwt + " end"
	got, r := mask(t, c, in)
	want := "card ****-****-****-1111, ssn [redacted], token [jwt] end"
	if r != Masked || got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got, r := mask(t, c, "nothing to see here, order 12345 on 2024-05-01"); r != Unchanged || got != "" {
		t.Errorf("clean value: %q %v", got, r)
	}
	// Free text outside results.
	out, r := m.Text(nil, []byte(`Key (email)=(alice@corp.com) already exists.`))
	if r != Masked || bytes.Contains(out, []byte("alice")) {
		t.Errorf("Text: %q %v", out, r)
	}
	if got := m.Counts(); len(got) != 0 {
		t.Errorf("counts before Publish: %+v", got)
	}
	m.Publish()
	counts := map[string]uint64{}
	for _, n := range m.Counts() {
		counts[n.Rule+"/"+n.Detector+"/"+string(n.Strategy)] = n.Values
	}
	wantCounts := map[string]uint64{"cards/card/partial": 1, "ssn/us_ssn/null": 1, "credentials/jwt/redact": 1, "emails/email/hash": 1}
	if len(counts) != len(wantCounts) {
		t.Errorf("counts %v, want %v", counts, wantCounts)
	}
	for k, v := range wantCounts {
		if counts[k] != v {
			t.Errorf("count %s = %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
}

func TestScanColumn(t *testing.T) {
	m := testMasker(t, agent)
	body := m.Column(Source{"public", "tickets", "body"})
	got, _ := mask(t, body, "my key is AKIAIOSFODNN7EXAMPLE, mail me at alice@corp.com")
	// Only the credentials rule scans tickets.body: the email stays.
	if got != "my key is [aws_access_key_id], mail me at alice@corp.com" {
		t.Errorf("scan column: %q", got)
	}
}

func TestKeySeparation(t *testing.T) {
	p := Policy{Rules: []Rule{{Name: "h", Detectors: []string{"all"}, Strategy: Hash}, {Name: "f", Columns: []string{"f"}, Strategy: Fake}}}
	out := func(key []byte, src Source, v string) string {
		rs, err := Compile(p, key)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := mask(t, rs.ForSubject(Subject{}).Column(src), v)
		return got
	}
	k2 := bytes.Repeat([]byte("j"), 32)
	if a, b := out(testKey, Source{}, "alice@corp.com"), out(k2, Source{}, "alice@corp.com"); a == b {
		t.Errorf("hash equal under two keys: %q", a)
	}
	if a, b := out(testKey, Source{Column: "f"}, "alice@corp.com"), out(k2, Source{Column: "f"}, "alice@corp.com"); a == b {
		t.Errorf("fake equal under two keys: %q", a)
	}
	if _, err := Compile(p, []byte("short")); err == nil {
		t.Error("a short key must be refused")
	}
	if _, err := Compile(Policy{Rules: []Rule{{Name: "r", Columns: []string{"x"}, Strategy: Redact}}}, nil); err != nil {
		t.Errorf("redact needs no key: %v", err)
	}
}

func TestFakeFormats(t *testing.T) {
	p := Policy{Rules: []Rule{{Name: "f", Columns: []string{"*"}, Strategy: Fake}}}
	rs, err := Compile(p, testKey)
	if err != nil {
		t.Fatal(err)
	}
	m := rs.ForSubject(Subject{})
	col := m.Column(Source{"s", "t", "c"})
	cases := []struct {
		in   string
		re   string
		kind Kind // what Detect must find in the fake (KindNone: nothing)
	}{
		{"alice@corp.com", `^u[a-z0-9]{10}@example\.com$`, KindNone},
		{"4111 1111 1111 1111", `^9\d{3} \d{4} \d{4} \d{4}$`, KindNone},
		{"378282246310005", `^9\d{14}$`, KindNone},
		{"536-22-8726", `^9\d\d-[1-9]\d-[1-9]\d{3}$`, KindNone},
		{"+44 20 7946 0958", `^\+44 [1-9]\d \d{4} \d{4}$`, KindPhone},
		{"415-555-2671", `^[2-9]\d\d-555-01\d\d$`, KindPhone},
		{"DE89 3704 0044 0532 0130 00", `^DE\d\d \d{4} \d{4} \d{4} \d{4} \d\d$`, KindIBAN},
		{"GB82WEST12345698765432", `^GB\d\d[A-Z]{4}\d{14}$`, KindIBAN},
		{"10.20.30.40", `^(192\.0\.2|198\.51\.100|203\.0\.113)\.\d+$`, KindNone},
		{"2a00:1450:4007:80e::200e", `^2001:db8:`, KindNone},
		{"Alice Smith-Jones 42", `^[A-Z][a-z]{4} [A-Z][a-z]{4}-[A-Z][a-z]{4} [1-9]\d$`, KindNone},
		{"José", `^[A-Z][a-z]{3}$`, KindNone},
		{"AKIAIOSFODNN7EXAMPLE", `^\[redacted\]$`, KindNone},
	}
	for _, c := range cases {
		got, r := mask(t, col, c.in)
		if r != Masked || !regexp.MustCompile(c.re).MatchString(got) {
			t.Errorf("fake(%q) = %q, want %s", c.in, got, c.re)
			continue
		}
		if again, _ := mask(t, col, c.in); again != got {
			t.Errorf("fake(%q) not deterministic: %q then %q", c.in, got, again)
		}
		sp := Detect(nil, []byte(got), AllKinds)
		switch {
		case c.kind == KindNone && len(sp) != 0:
			t.Errorf("fake(%q) = %q is found again as %v", c.in, got, sp)
		case c.kind != KindNone && (len(sp) != 1 || sp[0].Kind != c.kind || sp[0].End-sp[0].Start != len(got)):
			t.Errorf("fake(%q) = %q should still be a %s, Detect: %v", c.in, got, c.kind, sp)
		}
		if strings.Contains(c.in, "4111") || strings.HasPrefix(c.in, "3782") {
			var d []byte
			for _, ch := range []byte(got) {
				if isDigit(ch) {
					d = append(d, ch)
				}
			}
			if !luhn(d) {
				t.Errorf("fake card %q fails Luhn", got)
			}
		}
	}
}

func TestPartial(t *testing.T) {
	for _, c := range []struct {
		in   string
		keep int
		want string
	}{
		{"4111-1111-1111-1234", 4, "****-****-****-1234"},
		{"alice@corp.com", 3, "*****@****.com"},
		{"abc", 4, "**c"},
		{"a@b.io", 4, "*@*.io"},
		{"Zoë Dupré", 2, "*** ***ré"},
		{"", 4, ""},
	} {
		if got := string(appendPartial(nil, []byte(c.in), c.keep)); got != c.want {
			t.Errorf("partial(%q, %d) = %q, want %q", c.in, c.keep, got, c.want)
		}
		// partial is idempotent
		once := appendPartial(nil, []byte(c.in), c.keep)
		if twice := appendPartial(nil, once, c.keep); !bytes.Equal(once, twice) {
			t.Errorf("partial twice: %q then %q", once, twice)
		}
	}
}

func TestBinary(t *testing.T) {
	p := Policy{Rules: []Rule{{Name: "all", Detectors: []string{"all"}, Strategy: Redact}}}
	rs, _ := Compile(p, nil)
	m := rs.ForSubject(Subject{})
	c := m.Column(Source{})
	out, r, ok := c.MaskBinary(oidVarchar, nil, []byte("mail alice@corp.com"))
	if !ok || r != Masked || string(out) != "mail [redacted]" {
		t.Errorf("varchar: %q %v %v", out, r, ok)
	}
	doc := `{"card": 4111111111111111, "note": "mail alice@corp.com", "ip": "10.1.2.3"}`
	out, r, ok = c.MaskBinary(oidJSONB, nil, append([]byte{1}, doc...))
	want := `{"card": "[redacted]", "note": "mail [redacted]", "ip": "[redacted]"}`
	if !ok || r != Masked || out[0] != 1 || string(out[1:]) != want {
		t.Errorf("jsonb: %q %v %v\nwant %q", out, r, ok, want)
	}
	if !json.Valid(out[1:]) {
		t.Errorf("masked jsonb is not JSON: %q", out[1:])
	}
	out, r, ok = c.MaskBinary(oidJSONB, []byte("pre"), []byte("\x01{}"))
	if !ok || r != Unchanged || string(out) != "pre" {
		t.Errorf("clean jsonb: %q %v %v", out, r, ok)
	}
	if _, _, ok := c.MaskBinary(23, nil, []byte{0, 0, 0, 1}); ok {
		t.Error("int4 binary must be left to the caller")
	}
	// A JSON column masked whole stays a JSON string.
	rs2, _ := Compile(Policy{Rules: []Rule{{Name: "doc", Columns: []string{"doc"}, Strategy: Redact}}}, nil)
	out, _ = rs2.ForSubject(Subject{}).Column(Source{Column: "doc"}).JSON().Mask(nil, []byte(doc))
	if string(out) != `"[redacted]"` {
		t.Errorf("whole json: %q", out)
	}
}

func TestPolicyErrors(t *testing.T) {
	ok := Rule{Name: "r", Columns: []string{"t.c"}, Strategy: Redact}
	with := func(f func(*Rule)) []Rule { r := ok; f(&r); return []Rule{r} }
	cases := []struct {
		name  string
		rules []Rule
		path  string
		msg   string
	}{
		{"no name", with(func(r *Rule) { r.Name = "" }), "rules[0].name", "needs a name"},
		{"duplicate", []Rule{ok, ok}, "rules[1].name", "earlier rule"},
		{"nothing to mask", with(func(r *Rule) { r.Columns = nil }), "rules[0].columns", "columns, detectors or both"},
		{"bad pattern", with(func(r *Rule) { r.Columns = []string{"a.b.c.d"} }), "rules[0].columns[0]", "more than three parts"},
		{"empty part", with(func(r *Rule) { r.Columns = []string{"a..c"} }), "rules[0].columns[0]", "empty part"},
		{"unknown detector", with(func(r *Rule) { r.Detectors = []string{"passport"} }), "rules[0].detectors", `"passport" is not a detector`},
		{"scan without detectors", with(func(r *Rule) { r.Scan = []string{"t.body"} }), "rules[0].scan", "give detectors"},
		{"no strategy", with(func(r *Rule) { r.Strategy = "" }), "rules[0].strategy", "missing"},
		{"bad strategy", with(func(r *Rule) { r.Strategy = "shuffle" }), "rules[0].strategy", "not one of"},
		{"keep without partial", with(func(r *Rule) { r.Keep = 2 }), "rules[0].keep", "only the partial"},
		{"keep range", with(func(r *Rule) { r.Strategy = Partial; r.Keep = -1 }), "rules[0].keep", "out of range"},
		{"marker quote", with(func(r *Rule) { r.Marker = `"x"` }), "rules[0].marker", "without quotes"},
		{"marker detected", with(func(r *Rule) { r.Marker = "bob@corp.com" }), "rules[0].marker", "looks like a email"},
	}
	cases = append(cases,
		struct {
			name  string
			rules []Rule
			path  string
			msg   string
		}{"hash without key", with(func(r *Rule) { r.Strategy = Hash }), "key_file", "needs a key"})
	for _, c := range cases {
		err := (&Policy{Rules: c.rules}).Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Path != c.path || !strings.Contains(fe.Msg, c.msg) {
			t.Errorf("%s: got %v, want %s: …%s…", c.name, err, c.path, c.msg)
		}
	}
}

// TestNoAllocWhenClean: values with nothing to mask cost no allocation,
// neither for a column no rule names nor for one the detectors scan.
func TestNoAllocWhenClean(t *testing.T) {
	m := testMasker(t, agent)
	computed := m.Column(Source{})
	plain := m.Column(Source{"public", "users", "name"})
	clean := []byte("Order 12345 shipped on 2024-05-01 to Springfield, 3 items, total 129.95 USD; ref ab-77_x")
	dst := make([]byte, 0, 256)
	for name, c := range map[string]Column{"computed": computed, "unmasked": plain} {
		if n := testing.AllocsPerRun(200, func() {
			if _, r := c.Mask(dst, clean); r != Unchanged {
				t.Fatal("masked a clean value")
			}
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per clean value", name, n)
		}
	}
	dirty := []byte("card 4111 1111 1111 1111 for alice@corp.com")
	if n := testing.AllocsPerRun(200, func() { computed.Mask(dst[:0], dirty) }); n > 0 {
		t.Logf("%.1f allocations per masked value (hash and partial)", n)
	}
}

// TestSettles: with redact, a fragment that a marker turns into a value of
// its own is masked too, so the output has nothing left to find.
func TestSettles(t *testing.T) {
	rs, err := Compile(Policy{Rules: []Rule{{Name: "all", Detectors: []string{"all"}, Strategy: Redact}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := rs.ForSubject(Subject{}).Column(Source{})
	for _, in := range []string{"::0.1.0.0::02", "::2..0.0.0.1", "mail a@b.io,c@d.io"} {
		out, r := c.Mask(nil, []byte(in))
		if r != Masked {
			t.Errorf("%q: %v", in, r)
			continue
		}
		if sp := Detect(nil, out, AllKinds); len(sp) != 0 {
			t.Errorf("%q -> %q still holds %v", in, out, sp)
		}
	}
}

// TestCountsWhileMasking: the session record may read the counters while
// the relay masks (run with -race).
func TestCountsWhileMasking(t *testing.T) {
	m := testMasker(t, agent)
	c := m.Column(Source{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			_ = m.Counts()
		}
	}()
	for i := 0; i < 200; i++ {
		c.Mask(nil, []byte("card 4111 1111 1111 1111"))
		if i%7 == 0 {
			m.Publish()
		}
	}
	m.Publish()
	<-done
	got := m.Counts()
	if len(got) != 1 || got[0].Rule != "cards" || got[0].Detector != "card" || got[0].Values != 200 {
		t.Errorf("Counts = %+v, want cards/card 200", got)
	}
}

// TestWholeKind: what a value masked whole is taken for (the label of its
// hash, the format of its fake), with and without the email shortcut.
func TestWholeKind(t *testing.T) {
	m := fuzzMasker(t, Hash)
	for _, tt := range []struct {
		v    string
		want Kind
	}{
		{"alice.w@corp-mail.com", KindEmail},
		{"  alice.w@corp-mail.com\n", KindEmail},
		{"alice@example.com", KindNone},   // reserved: not found at all
		{"mail alice@corp.com", KindNone}, // an email inside text
		{"alice@corp.com, bob@corp.com", KindNone},
		{"alice@corp.com 4111 1111 1111 1111", KindNone},
		{"4111 1111 1111 1111", KindCard},
		{"4111111111111111", KindCard},
		{" 4000000000004711 ", KindNone}, // fails Luhn
		{"4111111111111112", KindNone},   // fails Luhn
		{"411111111111", KindNone},       // too short for a card
		{"+44 20 7946 0958", KindPhone},
		{"@@@", KindNone},
		{"Alice Zephyrine", KindNone},
		// In turn on one Masker, which remembers the last domain
		// accepted: the same domain, then near misses of it.
		{"bob@corp-mail.com", KindEmail},
		{"carol@corp-mail.com", KindEmail},
		{"carol@corp-mail.com.", KindNone},
		{"carol@corp-mail.co", KindEmail},
		{"carol@corp-mail.c", KindNone},
		{"carol@corp-mail.com@corp-mail.com", KindEmail}, // as the detectors read it
		{".carol@corp-mail.com", KindNone},
		{"carol@sub.corp-mail.com", KindEmail},
		// Spaces, ASCII and not, around a value are trimmed; a byte
		// that only looks like one (0x85 alone, 0x7f) is not.
		{"\u00a0carol@corp-mail.com", KindEmail},
		{"carol@corp-mail.com\u2003", KindEmail},
		{"\u0085carol@corp-mail.com\u3000", KindEmail},
		{"\tcarol@corp-mail.com", KindEmail},
		{"4111111111111111\u00a0", KindCard},
		{"\x85carol@corp-mail.com", KindNone},
		{"carol@corp-mail.com\x7f", KindNone},
		{"\x7f4111111111111111", KindNone},
	} {
		if got := m.wholeKind([]byte(tt.v)); got != tt.want {
			t.Errorf("wholeKind(%q) = %s, want %s", tt.v, got, tt.want)
		}
		if got := wholeKindAll([]byte(tt.v)); got != tt.want {
			t.Errorf("every detector on %q: %s, want %s", tt.v, got, tt.want)
		}
	}
}
