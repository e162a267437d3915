package compliance

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

func newKey(t *testing.T) (string, []age.Identity, string) {
	t.Helper()
	file, pub, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	return file, ids, pub
}

func TestSealOpen(t *testing.T) {
	_, ids, pub := newKey(t)
	_, otherIDs, _ := newKey(t)
	s, err := ParseRecipients("# the compliance officer\n" + pub + "\n")
	if err != nil {
		t.Fatal(err)
	}
	masked := "[redacted]"
	in := &Copy{Entries: []Entry{
		{Row: 0, Column: 1, Rule: "pii", Masked: &masked, Original: "ada@example.com"},
		{Row: 2, Column: 3, Rule: "cards", Masked: nil, Original: `\x0001`},
	}, Truncated: true}
	sealed, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "ada@example.com") || strings.Contains(string(sealed), "AGE-SECRET-KEY") {
		t.Fatal("the sealed copy holds plaintext or a key")
	}
	out, err := Open(sealed, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Entries) != 2 || out.Entries[0].Original != "ada@example.com" || *out.Entries[0].Masked != masked ||
		out.Entries[1].Masked != nil || !out.Truncated {
		t.Fatalf("round trip: %+v", out)
	}
	if _, err := Open(sealed, otherIDs); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("another key: %v, want ErrWrongKey", err)
	}
	if _, err := Open(sealed[:len(sealed)-1], ids); err == nil || errors.Is(err, ErrWrongKey) {
		t.Fatalf("a damaged copy: %v, want a decryption error", err)
	}
}

func TestParseRecipients(t *testing.T) {
	file, _, pub := newKey(t)
	secret := strings.TrimSpace(strings.Split(file, "\n")[1])
	for _, tc := range []struct {
		name, in, err string
	}{
		{"public key", pub, ""},
		{"private key refused", secret, "private key"},
		{"nothing", "# only a comment\n", "no recipient"},
		{"garbage", "age1notakey", "not an age public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipients(tc.in)
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("ParseRecipients: %v, want error containing %q", err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Fatal("the error repeats the private key")
			}
		})
	}
}

func TestLoadRecipientsFileRules(t *testing.T) {
	_, _, pub := newKey(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "recipient")
	if err := os.WriteFile(p, []byte(pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadRecipients(p)
	if os.Geteuid() == 0 {
		if err != nil {
			t.Fatalf("root-owned 0644 file: %v", err)
		}
	}
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadRecipients(p); err == nil || !strings.Contains(err.Error(), "others change it") {
		t.Fatalf("world-writable file: %v", err)
	}
}
