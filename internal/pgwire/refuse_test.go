package pgwire

import (
	stdctx "context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
)

func startupPacket(version uint32, params ...string) []byte {
	b := []byte{0, 0, 0, 0}
	b = binary.BigEndian.AppendUint32(b, version)
	for _, p := range params {
		b = append(b, p...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// exchange sends raw bytes to the proxy and returns the first ErrorResponse
// it answers with (nil if none), and every byte it sent back.
func exchange(t *testing.T, addr string, send []byte, closeAfter bool) (*pgproto3.ErrorResponse, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(send); err != nil {
		t.Fatal(err)
	}
	if closeAfter {
		_ = c.(*net.TCPConn).CloseWrite()
	}
	all, _ := io.ReadAll(c)
	rest := all
	if len(rest) > 0 && rest[0] == 'N' { // the answer to an SSLRequest
		rest = rest[1:]
	}
	for len(rest) >= 5 {
		n := int(binary.BigEndian.Uint32(rest[1:5]))
		if n < 4 || 1+n > len(rest) {
			break
		}
		if rest[0] == 'E' {
			var e pgproto3.ErrorResponse
			if err := e.Decode(rest[5 : 1+n]); err != nil {
				t.Fatal(err)
			}
			return &e, all
		}
		rest = rest[1+n:]
	}
	return nil, all
}

func TestRefusedBeforeStartup(t *testing.T) {
	h := newHarness(t, nil, nil)
	huge := []byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}
	tests := []struct {
		name, code, msg string
		send            []byte
	}{
		{"protocol 2", "0A000", "unsupported frontend protocol 2.0", startupPacket(2<<16, "user", "x")},
		{"protocol 4", "0A000", "unsupported frontend protocol 4.0", startupPacket(4<<16, "user", "x")},
		{"short length", "08P01", "invalid startup packet length 3", []byte{0, 0, 0, 3, 0, 3, 0, 0}},
		{"huge length", "08P01", "invalid startup packet length", huge},
		{"garbage", "08P01", "invalid startup packet length", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"unterminated parameters", "08P01", "invalid startup packet", []byte{0, 0, 0, 12, 0, 3, 0, 0, 'u', 0, 'x', 'y'}},
		{"second SSLRequest", "08P01", "unexpected SSLRequest", append(append([]byte{}, sslReq...), sslReq...)},
		{"unknown request code", "0A000", "unsupported frontend protocol 4660.22137", []byte{0, 0, 0, 8, 0x12, 0x34, 0x56, 0x79}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.sink.reset()
			e, _ := exchange(t, h.addr, tc.send, false)
			if e == nil || e.Code != tc.code || e.Severity != "FATAL" || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("got %+v, want FATAL %s %q", e, tc.code, tc.msg)
			}
		})
	}
	// An unknown cancel key and a client that vanishes get a silent close.
	cancel := []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 2, 3, 4, 5}
	if e, all := exchange(t, h.addr, cancel, true); e != nil || len(all) != 0 {
		t.Fatalf("unknown cancel answered: %q", all)
	}
	if e, all := exchange(t, h.addr, startupPacket(3<<16, "user", "x")[:9], true); e != nil || len(all) != 0 {
		t.Fatalf("vanished client answered: %q", all)
	}
}

var sslReq = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

func TestRefusedAtStartup(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	tests := []struct {
		name   string
		mutate func(*Options)
		person string
		db     string
		code   string
		msg    string
	}{
		{"wrong database", nil, "alice", "template1", "3D000", `database "template1" is not available through Airlock connection testdb; allowed: postgres`},
		{"no databases", func(o *Options) { o.Databases = nil }, "alice", "postgres", "3D000", "no databases are allowed"},
		{"no person", nil, "", "postgres", "28000", "no identity for uid 1000: run `airlock login`"},
		{"credential failure", func(o *Options) {
			o.Credentials = &staticCreds{err: errors.New("group role analysts missing")}
		}, "alice", "postgres", "28000", "could not create a just-in-time credential for connection testdb: group role analysts missing; ask your Airlock admin"},
		{"upstream unreachable", func(o *Options) { o.Upstream.Port = 1 }, "alice", "postgres", "08001", "upstream testdb unreachable"},
		{"upstream rejects login", func(o *Options) {
			o.Credentials = &staticCreds{user: pg.AdminUser, password: "wrong-password-123"}
		}, "alice", "postgres", "28P01", "upstream testdb refused the connection"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, pg, tc.mutate)
			h.person.Store(tc.person)
			var rec recorder
			cfg, err := pgx.ParseConfig(h.url(tc.db))
			if err != nil {
				t.Fatal(err)
			}
			cfg.DialFunc = func(ctx2 stdctx.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx2, network, addr)
				return &recordingConn{Conn: c, rec: &rec}, err
			}
			_, err = pgx.ConnectConfig(ctx(t), cfg)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != tc.code || !strings.Contains(pgErr.Message, tc.msg) {
				t.Fatalf("connect: %v, want %s %q", err, tc.code, tc.msg)
			}
			ref := h.sink.refusals()
			if len(ref) != 1 || ref[0].SQLState != tc.code {
				t.Fatalf("refusals %+v", ref)
			}
			if rec.contains(h.creds.password) || rec.contains("wrong-password-123") || rec.contains(pg.AdminPassword) {
				t.Fatal("a password reached the client")
			}
			if res := h.serveResults(1); !errors.Is(res[0], ErrRefused) {
				t.Fatalf("Serve: %v", res[0])
			}
		})
	}
}

func TestRefusedAfterStartup(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	h := newHarness(t, pg, func(o *Options) { o.MaxMessageLen = 64 << 10 })
	login := startupPacket(3<<16, "user", "x", "database", "postgres")
	tests := []struct {
		name, code string
		send       []byte
	}{
		{"message too long", "54000", []byte{'Q', 0x10, 0, 0, 0}},
		{"bad message length", "08P01", []byte{'Q', 0, 0, 0, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, all := exchange(t, h.addr, append(append([]byte{}, login...), tc.send...), false)
			if e == nil || e.Code != tc.code || e.Severity != "FATAL" {
				t.Fatalf("got %+v (%q), want FATAL %s", e, all, tc.code)
			}
		})
	}
	// A newer protocol minor version is negotiated down, as PostgreSQL does.
	c, err := pgx.Connect(ctx(t), h.url("postgres", "max_protocol_version", "3.2", "min_protocol_version", "3.0"))
	if err != nil {
		t.Fatalf("protocol 3.2 client: %v", err)
	}
	defer c.Close(ctx(t))
	var n int
	if err := c.QueryRow(ctx(t), "select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
}
