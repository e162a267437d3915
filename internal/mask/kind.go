package mask

import (
	"fmt"
	"strings"
)

// Kind is what a detector found. The zero Kind is "no detector": a value
// masked whole because of its column.
type Kind uint8

// The detectors, in priority order: when spans found by two detectors
// overlap, the union is masked as the kind of the longer one, and on equal
// length as the kind listed first here.
const (
	KindNone Kind = iota
	KindPEMKey
	KindJWT
	KindAWSKeyID
	KindAWSSecret
	KindGitHubToken
	KindGitLabToken
	KindSlackToken
	KindEmail
	KindCard
	KindIBAN
	KindSSN
	KindPhone
	KindIPv4
	KindIPv6
	KindSecret // generic high-entropy secret
	numKinds
)

var kindNames = [numKinds]string{
	KindNone:        "column",
	KindPEMKey:      "pem_private_key",
	KindJWT:         "jwt",
	KindAWSKeyID:    "aws_access_key_id",
	KindAWSSecret:   "aws_secret_access_key",
	KindGitHubToken: "github_token",
	KindGitLabToken: "gitlab_token",
	KindSlackToken:  "slack_token",
	KindEmail:       "email",
	KindCard:        "card",
	KindIBAN:        "iban",
	KindSSN:         "us_ssn",
	KindPhone:       "phone",
	KindIPv4:        "ipv4",
	KindIPv6:        "ipv6",
	KindSecret:      "secret",
}

// String is the name used in policies and counters.
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind reads a detector name as written in a policy. "ip" and
// "aws_keys" name two detectors each and are expanded by ParseKinds.
func ParseKind(name string) (Kind, bool) {
	for k := KindPEMKey; k < numKinds; k++ {
		if kindNames[k] == name {
			return k, true
		}
	}
	return KindNone, false
}

// aliases name several detectors at once in a policy.
var aliases = map[string]KindSet{
	"ip":       KindSet(0).With(KindIPv4).With(KindIPv6),
	"aws_keys": KindSet(0).With(KindAWSKeyID).With(KindAWSSecret),
	"tokens": KindSet(0).With(KindGitHubToken).With(KindGitLabToken).With(KindSlackToken).
		With(KindJWT).With(KindAWSKeyID).With(KindAWSSecret).With(KindPEMKey),
	"all": AllKinds,
}

// DetectorNames lists every name a policy may use in detectors.
func DetectorNames() []string {
	names := make([]string, 0, int(numKinds)+len(aliases))
	for k := KindPEMKey; k < numKinds; k++ {
		names = append(names, kindNames[k])
	}
	return append(names, "ip", "aws_keys", "tokens", "all")
}

// KindSet is a set of detectors.
type KindSet uint32

// AllKinds enables every detector.
const AllKinds KindSet = (1<<numKinds - 1) &^ 1

// With returns s plus k.
func (s KindSet) With(k Kind) KindSet { return s | 1<<k }

// Has says whether k is in s.
func (s KindSet) Has(k Kind) bool { return s&(1<<k) != 0 }

// String lists the names, for logs and errors.
func (s KindSet) String() string {
	var b strings.Builder
	for k := KindPEMKey; k < numKinds; k++ {
		if s.Has(k) {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(kindNames[k])
		}
	}
	return b.String()
}

// ParseKinds reads detector names (and the aliases ip, aws_keys, tokens,
// all).
func ParseKinds(names []string) (KindSet, error) {
	var s KindSet
	for _, n := range names {
		if k, ok := ParseKind(n); ok {
			s = s.With(k)
			continue
		}
		if a, ok := aliases[n]; ok {
			s |= a
			continue
		}
		return 0, fmt.Errorf("%q is not a detector (known: %s)", n, strings.Join(DetectorNames(), ", "))
	}
	return s, nil
}
