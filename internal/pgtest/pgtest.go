// Package pgtest starts a throwaway PostgreSQL server (Debian's postgresql
// package) for tests, on loopback or inside a testnet.Host namespace.
package pgtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/testnet"
)

// Options shapes the server.
type Options struct {
	Host *testnet.Host // nil: listen on 127.0.0.1
	Auth string        // pg_hba method for TCP: "scram-sha-256" (default) or "md5"
	SSL  bool          // enable TLS with a self-signed certificate
	Conf []string      // extra postgresql.conf lines
}

// Server is a running PostgreSQL server.
type Server struct {
	Addr          string // IP address it listens on
	Port          int
	AdminUser     string
	AdminPassword string
	Dir           string
	CACert        string // path of the server certificate (self-signed) when SSL
}

// BinDir finds Debian's server binaries, which are not on PATH.
func BinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		return "", fmt.Errorf("no PostgreSQL server found under /usr/lib/postgresql (apt-get install postgresql)")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

// Start runs a fresh cluster and stops it when t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	testnet.RequireRoot(t)
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("pgtest: no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	if opts.Auth == "" {
		opts.Auth = "scram-sha-256"
	}

	dir, err := os.MkdirTemp("", "airlock-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: dir, AdminUser: "postgres", AdminPassword: randHex(12)}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(s.AdminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(pwfile, uid, gid)
	data := filepath.Join(dir, "data")
	initdb := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"),
		"-D", data, "-U", s.AdminUser, "--pwfile", pwfile, "--auth-local=trust", "--auth-host="+opts.Auth,
		"--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v: %s", err, out)
	}
	_ = os.Remove(pwfile)

	if opts.Host != nil {
		s.Addr, s.Port = opts.Host.V4.String(), 5432
	} else {
		s.Addr, s.Port = "127.0.0.1", freePort(t)
	}
	listen := s.Addr
	if opts.Host != nil {
		listen = "*" // v4 and v6 inside the namespace
	}
	conf := []string{
		"listen_addresses = '" + listen + "'",
		"port = " + strconv.Itoa(s.Port),
		"unix_socket_directories = '" + dir + "'",
		"fsync = off", "synchronous_commit = off", "full_page_writes = off",
		"max_connections = 300", "password_encryption = '" + map[bool]string{true: "md5", false: "scram-sha-256"}[opts.Auth == "md5"] + "'",
		"log_min_messages = warning",
	}
	if opts.SSL {
		crt, key := filepath.Join(data, "server.crt"), filepath.Join(data, "server.key")
		writeSelfSigned(t, crt, key, s.Addr)
		_ = os.Chown(crt, uid, gid)
		_ = os.Chown(key, uid, gid)
		s.CACert = crt
		conf = append(conf, "ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'")
	}
	conf = append(conf, opts.Conf...)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("\n" + strings.Join(conf, "\n") + "\n")
	_ = f.Close()
	// initdb's pg_hba only trusts loopback for host lines; the namespace's
	// clients come from the veth peer, so allow every address with the method.
	hba := "local all all trust\nhost all all 0.0.0.0/0 " + opts.Auth + "\nhost all all ::/0 " + opts.Auth + "\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid)

	// The server's log goes to a file, shown only when the test fails.
	logFile := filepath.Join(dir, "server.log")
	args := []string{"-u", "postgres", "--", "sh", "-c", `exec "$0" -D "$1" 2>>"$2"`, filepath.Join(bin, "postgres"), data, logFile}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logFile); err == nil {
				t.Logf("pgtest: server log:\n%s", b)
			}
		}
	})
	if opts.Host != nil {
		opts.Host.Serve(t, "runuser", args...)
	} else {
		cmd := exec.Command("runuser", args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
			}
		})
	}
	// runuser does not pass signals on to the postmaster, so the server is
	// stopped with pg_ctl (fast shutdown) before its runuser is reaped
	// (cleanups run last-registered first).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, "runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"),
			"stop", "-D", data, "-m", "fast", "-w", "-t", "20").Run()
	})
	s.waitReady(t, bin)
	return s
}

func (s *Server) waitReady(t testing.TB, bin string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(s.Addr, strconv.Itoa(s.Port)), time.Second)
		if err == nil {
			_ = c.Close()
			out, err := exec.Command(filepath.Join(bin, "pg_isready"), "-h", s.Dir, "-p", strconv.Itoa(s.Port)).CombinedOutput()
			if err == nil {
				return
			}
			_ = out
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pgtest: server at %s:%d not ready within 30s", s.Addr, s.Port)
}

// URL returns a connection URL for user/password on database db.
func (s *Server) URL(user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password),
		Host: net.JoinHostPort(s.Addr, strconv.Itoa(s.Port)), Path: "/" + db}
	q := url.Values{"sslmode": {"disable"}}
	u.RawQuery = q.Encode()
	return u.String()
}

// AdminURL is URL for the superuser.
func (s *Server) AdminURL(db string) string { return s.URL(s.AdminUser, s.AdminPassword, db) }

// Psql runs SQL as the superuser over the unix socket and returns its
// unaligned, tuples-only output.
func (s *Server) Psql(t testing.TB, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Through stdin, not -c: several statements then run one by one, as
	// CREATE DATABASE needs, instead of in one implicit transaction.
	cmd := exec.CommandContext(ctx, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", s.Dir,
		"-p", strconv.Itoa(s.Port), "-U", s.AdminUser, "-d", db, "-f", "-")
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgtest: psql %q: %v: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeSelfSigned(t testing.TB, crtPath, keyPath, host string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}
