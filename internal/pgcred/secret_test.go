package pgcred

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/testnet"
)

func TestReadSecretFile(t *testing.T) {
	testnet.RequireRoot(t)
	const content = "hunter2-secret-7c1"
	tests := []struct {
		name    string
		data    string
		mode    os.FileMode
		uid     int
		dir     bool
		want    string
		wantErr []string // substrings of the error; nil: success
	}{
		{"0600 root, newline trimmed", content + "\n", 0o600, 0, false, content, nil},
		{"0400 root, CRLF trimmed", content + "\r\n", 0o400, 0, false, content, nil},
		{"no newline", content, 0o600, 0, false, content, nil},
		{"inner spaces kept", " a b \n", 0o600, 0, false, " a b ", nil},
		{"0644 refused", content + "\n", 0o644, 0, false, "", []string{"chmod 600", "0644"}},
		{"0640 refused", content + "\n", 0o640, 0, false, "", []string{"chmod 600"}},
		{"empty refused", "", 0o600, 0, false, "", []string{"empty"}},
		{"only a newline refused", "\n", 0o600, 0, false, "", []string{"empty"}},
		{"not owned by root refused", content + "\n", 0o600, 65534, false, "", []string{"chown root", "65534"}},
		{"directory refused", "", 0o700, 0, true, "", []string{"not a regular file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "secret")
			if tt.dir {
				if err := os.Mkdir(p, tt.mode); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(p, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, tt.uid, tt.uid); err != nil {
				t.Fatal(err)
			}
			got, err := ReadSecretFile(p)
			if tt.wantErr == nil {
				if err != nil || got != tt.want {
					t.Fatalf("ReadSecretFile = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadSecretFile accepted it: %q", got)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), content) {
				t.Errorf("error carries the secret: %v", err)
			}
		})
	}
	if _, err := ReadSecretFile(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing file: %v", err)
	}
}
