package pgrefuse

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func selfSigned(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// refuser listens on loopback and refuses every connection with code/msg.
func refuser(t *testing.T, tlsConf *tls.Config, code, msg string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = Refuse(context.Background(), c, tlsConf, code, msg)
			}()
		}
	}()
	return l.Addr().String()
}

// Real clients (pgx, psql) see the SQLSTATE and the message, whether they
// ask for TLS, insist on it, or negotiate it directly.
func TestRefuseRealClients(t *testing.T) {
	const msg = "too many sessions for uid 1000 (proxy.max_sessions_per_uid 2): close some and retry"
	addr := refuser(t, selfSigned(t), TooManyConnections, msg)
	host, port, _ := net.SplitHostPort(addr)
	for _, mode := range []string{"disable", "prefer", "require"} {
		for _, neg := range []string{"postgres", "direct"} {
			if neg == "direct" && mode != "require" {
				continue // direct negotiation needs sslmode=require
			}
			t.Run("pgx sslmode="+mode+" sslnegotiation="+neg, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := pgx.Connect(ctx, "postgres://agent@"+addr+"/app?sslmode="+mode+"&sslnegotiation="+neg)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != TooManyConnections || pe.Message != msg || pe.Severity != "FATAL" {
					t.Fatalf("connect: %v, want FATAL %s %q", err, TooManyConnections, msg)
				}
			})
		}
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("psql not found (CI=true: tests/deps.sh installs it): %v", err)
		}
		t.Skip("psql not installed")
	}
	for _, mode := range []string{"disable", "require"} {
		t.Run("psql sslmode="+mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, psql, "-X", "-w", "-c", "select 1")
			cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=agent", "PGDATABASE=app", "PGSSLMODE="+mode, "PGCONNECT_TIMEOUT=5")
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), msg) {
				t.Fatalf("psql: %v\n%s\nwant the refusal %q", err, out, msg)
			}
		})
	}
}

func TestRefuseCancelAndGarbage(t *testing.T) {
	addr := refuser(t, nil, UnableToConnect, "target db has not resolved yet")
	tests := []struct {
		name    string
		payload []byte
		want    string // "" for no answer
	}{
		{"cancel request", packet(codeCancel, make([]byte, 8)), ""},
		{"bad length", []byte{0, 0, 0, 3, 0, 0, 0, 0}, "E"},
		{"GSSENC then startup", append(packet(codeGSSENC, nil), packet(3<<16, []byte("user\x00a\x00\x00"))...), "NE"},
		{"SSL without TLS, then startup", append(packet(codeSSL, nil), packet(3<<16, []byte("user\x00a\x00\x00"))...), "NE"},
		{"too many requests", bytes.Repeat(packet(codeGSSENC, nil), 5), "NNNNE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tc.payload); err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(c)
			if !bytes.HasPrefix(got, []byte(strings.TrimSuffix(tc.want, "E"))) {
				t.Fatalf("answer %q, want %q", got, tc.want)
			}
			rest := got[len(strings.TrimSuffix(tc.want, "E")):]
			if !strings.HasSuffix(tc.want, "E") {
				if len(rest) != 0 {
					t.Fatalf("answer %q, want none", got)
				}
				return
			}
			checkError(t, rest, UnableToConnect)
		})
	}
}

func packet(code uint32, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, body...)
}

func checkError(t testing.TB, b []byte, code string) {
	t.Helper()
	if len(b) < 5 || b[0] != 'E' || int(binary.BigEndian.Uint32(b[1:5]))+1 != len(b) {
		t.Fatalf("not one ErrorResponse: %q", b)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(b[5:]); err != nil || er.Code != code || er.Severity != "FATAL" {
		t.Fatalf("ErrorResponse %+v (%v), want FATAL %s", er, err, code)
	}
}

// FuzzRefuse: whatever a client sends, Refuse returns, and what it writes
// is some 'N' answers and then at most one FATAL ErrorResponse.
func FuzzRefuse(f *testing.F) {
	f.Add(packet(3<<16, []byte("user\x00a\x00\x00")))
	f.Add(append(packet(codeSSL, nil), packet(3<<16, nil)...))
	f.Add(packet(codeCancel, make([]byte, 8)))
	f.Add([]byte{0x16, 3, 1, 0, 5})
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &bufConn{r: bytes.NewReader(in)}
		_ = Refuse(context.Background(), c, nil, UnableToConnect, "refused")
		out := bytes.TrimLeft(c.w.Bytes(), "N")
		if len(out) > 0 {
			checkError(t, out, UnableToConnect)
		}
	})
}

// bufConn is a net.Conn over fixed input, for the fuzz target.
type bufConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *bufConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *bufConn) Write(b []byte) (int, error)      { return c.w.Write(b) }
func (c *bufConn) Close() error                     { return nil }
func (c *bufConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *bufConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bufConn) SetDeadline(time.Time) error      { return nil }
func (c *bufConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bufConn) SetWriteDeadline(time.Time) error { return nil }

func TestIsCancelRequest(t *testing.T) {
	cancel := packet(codeCancel, make([]byte, 8))
	startup := packet(3<<16, []byte("user\x00a\x00\x00"))
	tests := []struct {
		name  string
		parts [][]byte // written with a pause between
		want  bool
	}{
		{"cancel", [][]byte{cancel}, true},
		{"cancel in two parts", [][]byte{cancel[:3], cancel[3:]}, true},
		{"startup", [][]byte{startup}, false},
		{"SSLRequest", [][]byte{packet(codeSSL, nil)}, false},
		{"silence", nil, false},
		{"short then close", [][]byte{cancel[:5]}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			go func() {
				for _, p := range tc.parts {
					_, _ = c.Write(p)
					time.Sleep(50 * time.Millisecond)
				}
				if tc.name == "short then close" {
					_ = c.Close()
				}
			}()
			if got := IsCancelRequest(s, 500*time.Millisecond); got != tc.want {
				t.Fatalf("IsCancelRequest = %v, want %v", got, tc.want)
			}
			// Nothing was consumed: the handler reads the packet whole.
			if len(tc.parts) > 0 && tc.name != "short then close" {
				want := bytes.Join(tc.parts, nil)
				got := make([]byte, len(want))
				_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("after peeking, read %q (%v), want %q", got, err, want)
				}
			}
		})
	}
}
