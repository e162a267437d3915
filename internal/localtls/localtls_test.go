package localtls

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/airlockhq/airlock/internal/testnet"
)

func TestLoadOrCreate(t *testing.T) {
	testnet.RequireRoot(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadOrCreate(dir, "db.internal", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", fi.Mode().Perm())
	}
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "db.internal", "127.0.0.1", "::1", "10.1.2.3"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("certificate does not cover %s: %v", name, err)
		}
	}

	// A second start reuses the same certificate.
	cfg2, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg2.Certificates[0].Certificate[0]) != string(cfg.Certificates[0].Certificate[0]) {
		t.Fatal("certificate regenerated on second start")
	}

	// A client that trusts proxy.crt completes a handshake for localhost.
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(filepath.Join(dir, certFile))
	pool.AppendCertsFromPEM(pem)
	a, b := net.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- tls.Server(a, cfg2).Handshake() }()
	if err := tls.Client(b, &tls.Config{RootCAs: pool, ServerName: "localhost"}).Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	testnet.RequireRoot(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"group writable dir", func(t *testing.T, dir string) { _ = os.Chmod(dir, 0o775) }},
		{"non-root dir", func(t *testing.T, dir string) { _ = os.Chown(dir, 65534, 65534) }},
		{"readable key", func(t *testing.T, dir string) {
			if _, err := LoadOrCreate(dir); err != nil {
				t.Fatal(err)
			}
			_ = os.Chmod(filepath.Join(dir, keyFile), 0o644)
		}},
		{"lone key", func(t *testing.T, dir string) {
			_ = os.WriteFile(filepath.Join(dir, keyFile), []byte("x"), 0o600)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_ = os.Chmod(dir, 0o700)
			tc.setup(t, dir)
			if _, err := LoadOrCreate(dir); err == nil {
				t.Fatal("LoadOrCreate succeeded, want an error")
			}
		})
	}
	if _, err := LoadOrCreate(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing dir accepted")
	}
}
