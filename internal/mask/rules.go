package mask

import (
	"fmt"
	"strings"
)

// Policy is the masking: section of the configuration.
type Policy struct {
	// KeyFile holds the masking key (at least 32 bytes; hash and fake need
	// it). It must be owned by root and readable by nobody else; the daemon
	// reads it and passes the bytes to Compile.
	KeyFile string `yaml:"key_file"`
	Rules   []Rule `yaml:"rules"`
	// Compliance, when set, keeps an encrypted copy of the originals.
	Compliance *Compliance `yaml:"compliance"`
}

// Rule says what to mask, how, and for whom. See the package documentation
// for the schema.
type Rule struct {
	Name      string   `yaml:"name"`
	Columns   []string `yaml:"columns"`   // source columns masked whole
	Detectors []string `yaml:"detectors"` // detectors run on computed columns and on Scan columns
	Scan      []string `yaml:"scan"`      // source columns of free text the detectors also run on
	Strategy  Strategy `yaml:"strategy"`
	Keep      int      `yaml:"keep"`   // partial: characters kept at the end (default 4)
	Marker    string   `yaml:"marker"` // redact, and null or fake where they cannot apply (default [redacted])

	// Scope, evaluated by the caller (Applies): empty means everyone.
	Connections  []string `yaml:"connections"`
	Groups       []string `yaml:"groups"`
	ExceptGroups []string `yaml:"except_groups"`
	Processes    []string `yaml:"processes"`
}

// Subject is who a session belongs to, for scoping rules.
type Subject struct {
	Connection string   // the configured connection's name
	Groups     []string // the person's groups
	Process    string   // the process class of the session's origin
}

// Applies says whether the rule is in force for s: s's connection and
// process class are listed (or the lists are empty), one of its groups is
// in Groups (or Groups is empty), and none is in ExceptGroups.
func (r *Rule) Applies(s Subject) bool {
	if len(r.Connections) > 0 && !contains(r.Connections, s.Connection) {
		return false
	}
	if len(r.Processes) > 0 && !contains(r.Processes, s.Process) {
		return false
	}
	if len(r.Groups) > 0 && !intersects(r.Groups, s.Groups) {
		return false
	}
	return !intersects(r.ExceptGroups, s.Groups)
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func intersects(a, b []string) bool {
	for _, x := range b {
		if contains(a, x) {
			return true
		}
	}
	return false
}

// FieldError is a problem with one key of the policy; Path is relative to
// the masking section ("rules[2].strategy"), for the configuration loader
// to turn into file:line:key.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// pattern is a compiled column pattern: up to three segments matched from
// the right (column, table, schema), each a glob where * is any run.
type pattern struct {
	seg []string // column first
}

func parsePattern(s string) (pattern, error) {
	if s == "" {
		return pattern{}, fmt.Errorf("empty column pattern")
	}
	parts := strings.Split(s, ".")
	if len(parts) > 3 {
		return pattern{}, fmt.Errorf("%q has more than three parts (write column, table.column or schema.table.column)", s)
	}
	p := pattern{}
	for i := len(parts) - 1; i >= 0; i-- {
		if parts[i] == "" {
			return pattern{}, fmt.Errorf("%q has an empty part", s)
		}
		p.seg = append(p.seg, strings.ToLower(parts[i]))
	}
	return p, nil
}

func (p pattern) match(src Source) bool {
	names := [3]string{src.Column, src.Table, src.Schema}
	for i, g := range p.seg {
		if !glob(g, names[i]) {
			return false
		}
	}
	return true
}

// glob matches s against g (lower case) ignoring ASCII case; * matches
// any run of characters.
func glob(g, s string) bool {
	// iterative matcher with one backtrack point per star
	gi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case gi < len(g) && g[gi] == '*':
			star, mark = gi, si
			gi++
		case gi < len(g) && g[gi] == lowerASCII(s[si]):
			gi++
			si++
		case star >= 0:
			gi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for gi < len(g) && g[gi] == '*' {
		gi++
	}
	return gi == len(g)
}

func lowerASCII(c byte) byte {
	if isUpper(c) {
		return c + 32
	}
	return c
}

type compiled struct {
	spec    Rule
	strat   strategyCode // spec.Strategy, compared per masked value
	columns []pattern
	scan    []pattern
	kinds   KindSet
	keep    int
	marker  string
}

// Validate checks the policy without reading the key (for `airlockd
// check`): the rules, and that key_file is an absolute path when a rule
// hashes or fakes.
func (p *Policy) Validate() error {
	rules, err := compileRules(p.Rules)
	if err != nil {
		return err
	}
	for i, r := range rules {
		if r.spec.Strategy != Hash && r.spec.Strategy != Fake {
			continue
		}
		if p.KeyFile == "" {
			return &FieldError{Path: "key_file", Msg: fmt.Sprintf("rules[%d] uses the %s strategy, which needs a key: give a root-only file of at least %d random bytes", i, r.spec.Strategy, MinKeyLen)}
		}
		if !strings.HasPrefix(p.KeyFile, "/") {
			return &FieldError{Path: "key_file", Msg: fmt.Sprintf("%q must be an absolute path", p.KeyFile)}
		}
		break
	}
	return nil
}

func compileRules(rules []Rule) ([]compiled, error) {
	out := make([]compiled, 0, len(rules))
	names := map[string]bool{}
	for i, r := range rules {
		at := func(key, msg string) error {
			return &FieldError{Path: fmt.Sprintf("rules[%d].%s", i, key), Msg: msg}
		}
		if r.Name == "" {
			return nil, at("name", "every rule needs a name (it labels the masked-value counters)")
		}
		if names[r.Name] {
			return nil, at("name", fmt.Sprintf("%q is used by an earlier rule", r.Name))
		}
		names[r.Name] = true
		c := compiled{spec: r, strat: r.Strategy.code(), keep: DefaultKeep, marker: DefaultMarker}
		if len(r.Columns) == 0 && len(r.Detectors) == 0 {
			return nil, at("columns", "a rule needs columns, detectors or both")
		}
		for k, s := range r.Columns {
			p, err := parsePattern(s)
			if err != nil {
				return nil, at(fmt.Sprintf("columns[%d]", k), err.Error())
			}
			c.columns = append(c.columns, p)
		}
		if len(r.Scan) > 0 && len(r.Detectors) == 0 {
			return nil, at("scan", "scan lists columns for the detectors: give detectors too")
		}
		for k, s := range r.Scan {
			p, err := parsePattern(s)
			if err != nil {
				return nil, at(fmt.Sprintf("scan[%d]", k), err.Error())
			}
			c.scan = append(c.scan, p)
		}
		ks, err := ParseKinds(r.Detectors)
		if err != nil {
			return nil, at("detectors", err.Error())
		}
		c.kinds = ks
		if r.Strategy == "" {
			return nil, at("strategy", "missing (one of redact, partial, hash, null, fake)")
		}
		if !r.Strategy.valid() {
			return nil, at("strategy", fmt.Sprintf("%q is not one of redact, partial, hash, null, fake", r.Strategy))
		}
		if r.Keep < 0 || r.Keep > 64 {
			return nil, at("keep", fmt.Sprintf("%d is out of range 0-64", r.Keep))
		}
		if r.Keep != 0 {
			if r.Strategy != Partial {
				return nil, at("keep", "only the partial strategy keeps characters")
			}
			c.keep = r.Keep
		}
		if r.Marker != "" {
			if err := checkMarker(r.Marker); err != nil {
				return nil, at("marker", err.Error())
			}
			c.marker = r.Marker
		}
		out = append(out, c)
	}
	return out, nil
}

// checkMarker keeps markers safe to put anywhere a value goes (inside JSON
// strings, CSV and COPY text fields, SQL literals echoed back) and stable:
// no detector may find anything in them.
func checkMarker(m string) error {
	if len(m) > 64 {
		return fmt.Errorf("longer than 64 bytes")
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if c < 0x20 || c > 0x7e || strings.IndexByte("\"'\\,", c) >= 0 {
			return fmt.Errorf("%q: use printable ASCII without quotes, backslashes or commas", m)
		}
	}
	for k := KindNone; k < numKinds; k++ {
		v := appendMarker(nil, m, k)
		if sp := Detect(nil, v, AllKinds); len(sp) > 0 {
			return fmt.Errorf("%q looks like a %s itself", v, sp[0].Kind)
		}
	}
	return nil
}

// RuleSet is a compiled policy with its key: immutable, shared by all
// sessions.
type RuleSet struct {
	rules []compiled
	key   []byte
}

// Compile validates p and binds it to the masking key, which must be at
// least MinKeyLen bytes when a rule hashes or fakes.
func Compile(p Policy, key []byte) (*RuleSet, error) {
	rules, err := compileRules(p.Rules)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		if (r.spec.Strategy == Hash || r.spec.Strategy == Fake) && len(key) < MinKeyLen {
			return nil, fmt.Errorf("masking key: %d bytes, the %s strategy needs at least %d (e.g. head -c 32 /dev/urandom > key_file, owned by root, mode 0600)", len(key), r.spec.Strategy, MinKeyLen)
		}
	}
	return &RuleSet{rules: rules, key: append([]byte(nil), key...)}, nil
}

// Rules returns the rules as written.
func (rs *RuleSet) Rules() []Rule {
	out := make([]Rule, len(rs.rules))
	for i, r := range rs.rules {
		out[i] = r.spec
	}
	return out
}
