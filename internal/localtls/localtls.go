// Package localtls gives the proxies a server certificate for their client
// leg. Clients on this machine that insist on TLS (sslmode=require) only need
// encryption, not a verified name, so a self-signed certificate created at
// first start is enough; clients that verify can be pointed at proxy.crt.
package localtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const (
	certFile = "proxy.crt"
	keyFile  = "proxy.key"
	validity = 10 * 365 * 24 * time.Hour
)

// LoadOrCreate returns a server tls.Config built from dir/proxy.crt and
// dir/proxy.key, creating both (ECDSA P-256, self-signed, SANs localhost,
// 127.0.0.1, ::1 and names) when neither exists. dir must be owned by root
// and not writable by group or others: whoever can replace the key can read
// every client's traffic.
func LoadOrCreate(dir string, names ...string) (*tls.Config, error) {
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	crtPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	_, crtErr := os.Stat(crtPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case errors.Is(crtErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		if err := create(crtPath, keyPath, names); err != nil {
			return nil, err
		}
	case crtErr != nil:
		return nil, fmt.Errorf("localtls: stat %s: %w", crtPath, crtErr)
	case keyErr != nil:
		return nil, fmt.Errorf("localtls: stat %s: %w", keyPath, keyErr)
	}
	if err := checkKeyFile(keyPath); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(crtPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("localtls: load %s and %s: %w", crtPath, keyPath, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// PostgreSQL 17's direct SSL negotiation requires this ALPN protocol;
		// the classic SSLRequest path ignores it.
		NextProtos: []string{"postgresql"},
	}, nil
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("localtls: certificate directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("localtls: %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("localtls: cannot read the owner of %s", dir)
	}
	if st.Uid != 0 {
		return fmt.Errorf("localtls: %s is owned by uid %d, want root", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("localtls: %s is writable by group or others (mode %v)", dir, fi.Mode().Perm())
	}
	return nil
}

func checkKeyFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("localtls: key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("localtls: %s is readable by group or others (mode %v); want 0600", path, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		return fmt.Errorf("localtls: %s is owned by uid %d, want root", path, st.Uid)
	}
	return nil
}

func create(crtPath, keyPath string, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("localtls: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return fmt.Errorf("localtls: serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Airlock local proxy"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // lets a client use proxy.crt itself as its root
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, n := range names {
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("localtls: create certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("localtls: encode key: %w", err)
	}
	// Key first and the certificate last: a crash in between leaves no
	// certificate, so the next start does not pair a new key with an old one
	// silently; it reports the lone key instead.
	if err := writeAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeAtomic(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("localtls: write %s: %w", path, err)
	}
	return nil
}
