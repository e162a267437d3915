// Package compliance keeps the compliance copy of masked values: the
// originals of what masking replaced, encrypted with age to a compliance
// officer's public key. The daemon only ever holds the public key, so what
// it writes into the audit record can be read only by whoever holds the
// private key, with `airlock audit reveal` on their own machine.
package compliance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
)

// Entry is one masked value: where it was, what the client got, and what
// the server sent.
type Entry struct {
	Row    int    `json:"row"`    // the row of the statement's result, from 0
	Column int    `json:"column"` // the column, from 0
	Rule   string `json:"rule"`   // the masking rule (or detectors) that replaced it
	// Masked is what the client got; nil when it was sent NULL.
	Masked *string `json:"masked"`
	// Original is the value as the server sent it: text, or \x hex for a
	// binary value that has no text form.
	Original string `json:"original"`
}

// Copy is the plaintext of one statement's compliance copy.
type Copy struct {
	Entries []Entry `json:"entries"`
	// Truncated: more values were masked than the copy keeps
	// (masking.compliance.max_bytes).
	Truncated bool `json:"truncated,omitempty"`
}

// Sealer encrypts copies to the configured recipients.
type Sealer struct {
	recipients []age.Recipient
	names      []string
}

// ParseRecipients reads age public keys (age1…, or age1pq1… for the
// post-quantum hybrid), one per line; '#' lines are comments. A private key
// is refused: the daemon must never hold one.
func ParseRecipients(text string) (*Sealer, error) {
	var names []string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(l), "AGE-SECRET-KEY-") || strings.HasPrefix(strings.ToUpper(l), "AGE-PLUGIN-") {
			return nil, errors.New("this is an age private key (identity); give its public key (age1…, `age-keygen -y KEYFILE` prints it) and keep the private key off this machine")
		}
		names = append(names, l)
	}
	if len(names) == 0 {
		return nil, errors.New("no recipient: want an age public key (age1…)")
	}
	rs, err := age.ParseRecipients(strings.NewReader(strings.Join(names, "\n")))
	if err != nil {
		return nil, fmt.Errorf("not an age public key (age1…): %v", err)
	}
	return &Sealer{recipients: rs, names: names}, nil
}

// LoadRecipients reads the recipients from a file. The file must be owned by
// root and writable by nobody else: whoever can change it chooses who can
// read the originals.
func LoadRecipients(path string) (*Sealer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("compliance recipient file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("compliance recipient file: %w", err)
	}
	if err := rootOnlyWrite(fi); err != nil {
		return nil, fmt.Errorf("compliance recipient file %s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("compliance recipient file: %w", err)
	}
	s, err := ParseRecipients(string(b))
	if err != nil {
		return nil, fmt.Errorf("compliance recipient file %s: %w", path, err)
	}
	return s, nil
}

// Recipients names the public keys copies are encrypted to.
func (s *Sealer) Recipients() []string { return append([]string(nil), s.names...) }

// Seal encrypts c: an age file (binary, not armored) holding c as JSON.
func (s *Sealer) Seal(c *Copy) ([]byte, error) {
	plain, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode compliance copy: %w", err)
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, s.recipients...)
	if err != nil {
		return nil, fmt.Errorf("encrypt compliance copy: %w", err)
	}
	if _, err := w.Write(plain); err != nil {
		return nil, fmt.Errorf("encrypt compliance copy: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encrypt compliance copy: %w", err)
	}
	clear(plain)
	return buf.Bytes(), nil
}

// ErrWrongKey is returned by Open when no identity given opens the copy.
var ErrWrongKey = errors.New("the identity does not open this compliance copy: it was encrypted to another public key")

// Open decrypts a sealed copy with ids.
func Open(sealed []byte, ids []age.Identity) (*Copy, error) {
	r, err := age.Decrypt(bytes.NewReader(sealed), ids...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, ErrWrongKey
		}
		return nil, fmt.Errorf("decrypt compliance copy: %w", err)
	}
	plain, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decrypt compliance copy: %w", err)
	}
	var c Copy
	if err := json.Unmarshal(plain, &c); err != nil {
		return nil, fmt.Errorf("decode compliance copy: %w", err)
	}
	return &c, nil
}

// LoadIdentities reads an age identity file (AGE-SECRET-KEY-1…, as
// age-keygen or `airlock audit compliance-key` write it).
func LoadIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read identity file: %w", err)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %v (want an age identity file: AGE-SECRET-KEY-1…)", path, err)
	}
	return ids, nil
}

// NewIdentity makes a new X25519 key pair: the identity file's text (with
// its public key as a comment, as age-keygen writes it) and the public key.
func NewIdentity() (file, recipient string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", fmt.Errorf("generate compliance key: %w", err)
	}
	pub := id.Recipient().String()
	return "# public key: " + pub + "\n" + id.String() + "\n", pub, nil
}
