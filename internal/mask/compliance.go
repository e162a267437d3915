package mask

import "strings"

// Compliance configures the compliance copy (masking.compliance): the
// original values masking replaced, encrypted with age to Recipient (or the
// keys in RecipientFile) and written into the audit record, readable only
// with the private key (`airlock audit reveal`). The daemon never holds
// that key.
type Compliance struct {
	Recipient     string `yaml:"recipient"`      // an age public key, age1…
	RecipientFile string `yaml:"recipient_file"` // or a file of them, owned by root, writable by nobody else
	// MaxBytes bounds the originals kept per statement (default 65536);
	// past it the copy is marked truncated.
	MaxBytes int `yaml:"max_bytes"`
}

// DefaultComplianceMaxBytes is masking.compliance.max_bytes's default.
const DefaultComplianceMaxBytes = 64 << 10

// Limit is MaxBytes or its default.
func (c *Compliance) Limit() int {
	if c.MaxBytes > 0 {
		return c.MaxBytes
	}
	return DefaultComplianceMaxBytes
}

// RuleName names what masks values of the column: the rule masking it
// whole, or the rules whose detectors read it, comma-separated.
func (c Column) RuleName() string {
	if c.m == nil {
		return ""
	}
	if c.whole > 0 {
		return c.m.rs.rules[c.whole-1].spec.Name
	}
	if c.plan == nil {
		return ""
	}
	var names []string
	for k := KindPEMKey; k < numKinds; k++ {
		if !c.plan.kinds.Has(k) {
			continue
		}
		n := c.m.rs.rules[c.plan.rule[k]].spec.Name
		found := false
		for _, x := range names {
			found = found || x == n
		}
		if !found {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}
