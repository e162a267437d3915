package pgwire

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// capConn holds what is written to it while hold is set, so that a test
// decides how a TLS client's records reach the wire (split, or several in
// one write).
type capConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  bytes.Buffer
}

func (c *capConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		return c.buf.Write(b)
	}
	return c.Conn.Write(b)
}

// held returns what was held and stops holding.
func (c *capConn) held() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	b := append([]byte(nil), c.buf.Bytes()...)
	c.buf.Reset()
	return b
}

// loopTLSPair is a TLS connection whose server end runs over a transport
// taken as an event loop takes it: tr is driven by hand, a pass at a time.
func loopTLSPair(t *testing.T, maxVersion uint16) (srv *tls.Conn, tr *tlsTransport, fd int, cli *tls.Conn, raw *capConn) {
	t.Helper()
	a, b := tcpPair(t)
	cfgOpt, _ := clientTLS(t)
	var o Options
	cfgOpt(&o)
	tr = newTLSTransport(b)
	srv = tls.Server(tr, o.ClientTLS)
	raw = &capConn{Conn: a}
	cli = tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MaxVersion: maxVersion})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	fd, err := takeFD(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	tr.take(fd)
	return srv, tr, fd, cli, raw
}

// pass reads srv as one pass of the loop does: until crypto/tls would
// block, after waiting (bounded) for the socket to be readable.
func pass(t *testing.T, srv *tls.Conn, tr *tlsTransport, fd int, bufSize int) ([]byte, error) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(fds, 5000); err != nil {
		t.Fatalf("poll: %v", err)
	}
	tr.drained = false
	var got []byte
	buf := make([]byte, bufSize)
	for i := 0; i < 1000; i++ {
		n, err := srv.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
	t.Fatal("crypto/tls never said it would block")
	return nil, nil
}

// What the loop relies on in crypto/tls (conn.go, readRecordOrCCS): a
// transport read error that is a net.Error with Temporary() true is
// returned without becoming the connection's error, a partial record is
// kept, and the next Read goes on from it. If a Go release changes that,
// this fails rather than the loop stalling or losing input.
func TestTLSWouldBlockNotSticky(t *testing.T) {
	srv, tr, fd, cli, raw := loopTLSPair(t, 0)
	records := func(msgs ...string) []byte {
		raw.mu.Lock()
		raw.hold = true
		raw.mu.Unlock()
		for _, m := range msgs {
			if _, err := cli.Write([]byte(m)); err != nil {
				t.Fatal(err)
			}
		}
		return raw.held()
	}

	// Nothing sent: would block, twice, with no harm.
	for i := 0; i < 2; i++ {
		tr.drained = false
		if n, err := srv.Read(make([]byte, 10)); n != 0 || !errors.Is(err, errWouldBlock) {
			t.Fatalf("empty socket: %d, %v; want errWouldBlock", n, err)
		}
	}
	if !tr.drained {
		t.Fatal("an empty socket did not leave the transport drained")
	}

	cases := []struct {
		name   string
		msgs   []string
		split  int // the records' bytes go out in two writes, split here (0: one write)
		bufLen int // the loop's read buffer
	}{
		{"a record in two reads", []string{"hello"}, 3, 64},
		{"a header cut short", []string{"hello"}, 4, 64},
		{"several records in one read", []string{"one", "two", "three"}, 0, 64},
		{"a record larger than the buffer", []string{string(bytes.Repeat([]byte("x"), 20000))}, 0, 4096},
		{"records larger than a read", []string{string(bytes.Repeat([]byte("y"), 40000)), "z"}, 9000, 64 << 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wire := records(tc.msgs...)
			want := []byte(nil)
			for _, m := range tc.msgs {
				want = append(want, m...)
			}
			var got []byte
			first := wire
			if tc.split > 0 {
				first = wire[:tc.split]
			}
			if _, err := raw.Conn.Write(first); err != nil {
				t.Fatal(err)
			}
			if tc.split > 0 {
				// Part of a record: nothing whole, and no error that sticks.
				b, err := pass(t, srv, tr, fd, tc.bufLen)
				if !errors.Is(err, errWouldBlock) {
					t.Fatalf("partial: %v", err)
				}
				got = append(got, b...)
				if _, err := raw.Conn.Write(wire[tc.split:]); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 100 && len(got) < len(want); i++ {
				b, err := pass(t, srv, tr, fd, tc.bufLen)
				if !errors.Is(err, errWouldBlock) {
					t.Fatalf("read: %v", err)
				}
				got = append(got, b...)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read %d bytes, want %d", len(got), len(want))
			}
		})
	}

	// Writes only queue records: the loop sends them.
	if n, err := srv.Write([]byte("pong")); n != 4 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if len(tr.out) == 0 {
		t.Fatal("the write queued no record")
	}
	if err := writeAll(fd, tr.out); err != nil {
		t.Fatal(err)
	}
	tr.out = nil
	b := make([]byte, 4)
	if _, err := io.ReadFull(cli, b); err != nil || string(b) != "pong" {
		t.Fatalf("client read %q, %v", b, err)
	}

	// close_notify: the end of input, after what came before it.
	raw.mu.Lock()
	raw.hold = true
	raw.mu.Unlock()
	_, _ = cli.Write([]byte("last"))
	_ = cli.CloseWrite()
	_ = raw.Conn.SetWriteDeadline(time.Time{}) // CloseWrite leaves one in the past
	if _, err := raw.Conn.Write(raw.held()); err != nil {
		t.Fatal(err)
	}
	got, err := pass(t, srv, tr, fd, 64)
	if string(got) != "last" || !errors.Is(err, io.EOF) {
		t.Fatalf("after close_notify: %q, %v; want \"last\", EOF", got, err)
	}
}

// Garbage where a record should be: a clear error that stays, and the
// alert crypto/tls sends queued for the client, after the data before it.
func TestTLSGarbageRecord(t *testing.T) {
	for _, tc := range []struct {
		name    string
		garbage []byte
	}{
		{"application data that does not decrypt", append([]byte{23, 3, 3, 0, 32}, bytes.Repeat([]byte{0xa5}, 32)...)},
		{"a record type that does not exist", []byte{99, 3, 3, 0, 2, 1, 2}},
		{"an oversized record", []byte{23, 3, 3, 0xff, 0xff}},
		{"plaintext", []byte("Q\x00\x00\x00\x0dselect 1\x00")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, tr, fd, cli, raw := loopTLSPair(t, 0)
			raw.mu.Lock()
			raw.hold = true
			raw.mu.Unlock()
			_, _ = cli.Write([]byte("before"))
			wire := append(raw.held(), tc.garbage...)
			if _, err := raw.Conn.Write(wire); err != nil {
				t.Fatal(err)
			}
			got, err := pass(t, srv, tr, fd, 64)
			if string(got) != "before" {
				t.Fatalf("read %q before the garbage, want \"before\"", got)
			}
			if err == nil || errors.Is(err, errWouldBlock) || errors.Is(err, io.EOF) {
				t.Fatalf("garbage: %v; want a TLS error", err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Temporary() {
				t.Fatalf("garbage: %v is temporary", err)
			}
			tr.drained = false
			if _, again := srv.Read(make([]byte, 64)); again == nil {
				t.Fatal("the connection read again after garbage")
			}
			t.Logf("error: %v; %d bytes of alert queued", err, len(tr.out))
		})
	}
}

// tlsClient is a client that speaks TLS to the proxy by hand, so that a
// test controls how its records reach the wire.
type tlsClient struct {
	raw  *capConn
	conn *tls.Conn
	fe   *pgproto3.Frontend
	got  *recvLog
}

// recvLog keeps every byte the client received on the wire.
type recvLog struct {
	net.Conn
	mu sync.Mutex
	b  []byte
}

func (r *recvLog) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.b = append(r.b, p[:n]...)
	r.mu.Unlock()
	return n, err
}

// dialTLS connects to h with an SSLRequest, the TLS handshake (at most
// maxVersion; 0: any) and a StartupMessage, up to ReadyForQuery.
func dialTLS(t *testing.T, h *harness, maxVersion uint16) *tlsClient {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(sslReq); err != nil {
		t.Fatal(err)
	}
	var s [1]byte
	if _, err := io.ReadFull(c, s[:]); err != nil || s[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", s[:], err)
	}
	got := &recvLog{Conn: c}
	raw := &capConn{Conn: got}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MaxVersion: maxVersion})
	cl := &tlsClient{raw: raw, conn: tc, fe: pgproto3.NewFrontend(tc, tc), got: got}
	if _, err := tc.Write(startupPacket(3<<16, "user", "x", "database", "postgres")); err != nil {
		t.Fatalf("startup: %v", err)
	}
	cl.until(t, nil)
	return cl
}

// until reads to the next ReadyForQuery, returning the DataRows' first
// values; a non-nil *error gets a read error instead of failing the test.
func (c *tlsClient) until(t *testing.T, rerr *error) []string {
	t.Helper()
	var vals []string
	for i := 0; i < 100000; i++ {
		m, err := c.fe.Receive()
		if err != nil {
			if rerr != nil {
				*rerr = err
				return vals
			}
			t.Fatalf("receive: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			vals = append(vals, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			t.Fatalf("error from the proxy: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return vals
		}
	}
	t.Fatal("no ReadyForQuery")
	return nil
}

// held sends msgs as one TLS record each, all in one write on the wire,
// with extra bytes after them.
func (c *tlsClient) batch(t *testing.T, extra []byte, msgs ...[]byte) {
	t.Helper()
	c.raw.mu.Lock()
	c.raw.hold = true
	c.raw.mu.Unlock()
	for _, m := range msgs {
		if _, err := c.conn.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.raw.Conn.Write(append(c.raw.held(), extra...)); err != nil {
		t.Fatal(err)
	}
}

func queryMsg(sql string) []byte {
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	return b
}

// chopConn writes in small pieces, a little apart, so that the proxy reads
// records in parts.
type chopConn struct{ net.Conn }

func (c chopConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k := min(7, len(b)-n)
		m, err := c.Conn.Write(b[n : n+k])
		n += m
		if err != nil {
			return n, err
		}
		time.Sleep(50 * time.Microsecond)
	}
	return n, nil
}

// A TLS client leg under each driver: how records reach the proxy (split,
// batched, larger than a read), how the client ends it (close_notify), and
// a client that sends garbage. The loop drives crypto/tls itself, so these
// are its edges; the goroutine driver is the reference.
func TestTLSClientLeg(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	tlsOpt, _ := clientTLS(t)
	for _, driver := range []string{DriverLoop, DriverGoroutines} {
		t.Run(driver, func(t *testing.T) {
			h := newHarness(t, pg, func(o *Options) { o.Driver = driver; tlsOpt(o) })
			h.sslmode = "require"
			ended := 0
			sessionEnds := func(t *testing.T) error {
				t.Helper()
				ended++
				errs := h.serveResults(ended)
				return errs[ended-1]
			}

			t.Run("records split into pieces", func(t *testing.T) {
				cfg, err := pgx.ParseConfig(h.url("postgres"))
				if err != nil {
					t.Fatal(err)
				}
				dial := cfg.DialFunc
				cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := dial(ctx, network, addr)
					return chopConn{c}, err
				}
				c, err := pgx.ConnectConfig(ctx(t), cfg)
				if err != nil {
					t.Fatal(err)
				}
				long := strings.Repeat("p", 3000)
				for i := 0; i < 3; i++ {
					var s string
					if err := c.QueryRow(ctx(t), "select $1::text || $2::text", long, itoa(i)).Scan(&s); err != nil || s != long+itoa(i) {
						t.Fatalf("query %d: %d bytes, %v", i, len(s), err)
					}
				}
				_ = c.Close(ctx(t))
				if err := sessionEnds(t); err != nil {
					t.Fatalf("session: %v", err)
				}
			})

			t.Run("several records in one read, records larger than a read", func(t *testing.T) {
				c := dialTLS(t, h, 0)
				big := strings.Repeat("b", 100<<10) // seven records, more than the loop reads at once
				var msgs [][]byte
				for i := 0; i < 5; i++ {
					msgs = append(msgs, queryMsg("select "+itoa(i)))
				}
				msgs = append(msgs, queryMsg("select length('"+big+"')"))
				c.batch(t, nil, msgs...)
				for i := 0; i < 5; i++ {
					if v := c.until(t, nil); len(v) != 1 || v[0] != itoa(i) {
						t.Fatalf("query %d: %q", i, v)
					}
				}
				if v := c.until(t, nil); len(v) != 1 || v[0] != itoa(len(big)) {
					t.Fatalf("large query: %q", v)
				}
				c.batch(t, nil, []byte{'X', 0, 0, 0, 4})
				if err := sessionEnds(t); err != nil {
					t.Fatalf("session: %v", err)
				}
			})

			t.Run("close_notify", func(t *testing.T) {
				// TLS 1.2, where an alert's record type is on the wire.
				c := dialTLS(t, h, tls.VersionTLS12)
				if _, err := c.conn.Write(queryMsg("select 7")); err != nil {
					t.Fatal(err)
				}
				if v := c.until(t, nil); len(v) != 1 || v[0] != "7" {
					t.Fatalf("query: %q", v)
				}
				// No Terminate: the client just ends its TLS session.
				if err := c.conn.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, c.conn); err != nil {
					t.Fatalf("after close_notify: %v", err)
				}
				if err := sessionEnds(t); err != nil {
					t.Fatalf("session: %v", err)
				}
				// The proxy answered with its own close_notify: the last
				// record it sent is an alert.
				last := lastRecordType(t, c.got.b)
				if last != 21 {
					t.Fatalf("last record from the proxy has type %d, want an alert (21)", last)
				}
			})

			t.Run("garbage after a query", func(t *testing.T) {
				// The session must end when the server, told to
				// Terminate, has answered and closed (often both in
				// one segment), not when the drain gives up.
				old := drainTimeout
				drainTimeout = time.Minute
				t.Cleanup(func() { drainTimeout = old })
				c := dialTLS(t, h, 0)
				sql := "select 'before the garbage'"
				garbage := append([]byte{23, 3, 3, 0, 40}, bytes.Repeat([]byte{0x5a}, 40)...)
				c.batch(t, garbage, queryMsg(sql))
				// The record layer's alert ends the session: the client
				// sees it (before the answer, which the alert may
				// overtake: nothing may follow a fatal alert).
				var rerr error
				for i := 0; i < 2 && rerr == nil; i++ {
					c.until(t, &rerr)
				}
				if rerr == nil || !strings.Contains(rerr.Error(), "bad record MAC") {
					t.Fatalf("after the garbage: %v; want the proxy's bad_record_mac alert", rerr)
				}
				if err := sessionEnds(t); err != nil {
					t.Fatalf("session: %v", err)
				}
				// Nothing lost: the query that came before the garbage
				// ran, and is recorded with the server's answer.
				found := false
				for _, st := range h.sink.statements() {
					found = found || (st.SQL == sql && st.Tag == "SELECT 1")
				}
				if !found {
					t.Fatalf("%q not recorded with its outcome: %+v", sql, h.sink.statements())
				}
			})
		})
	}
}

// lastRecordType walks a TLS record stream and returns the last record's
// content type.
func lastRecordType(t *testing.T, b []byte) byte {
	t.Helper()
	var typ byte
	for i := 0; len(b) > 0 && i < 1<<20; i++ {
		if len(b) < 5 {
			t.Fatalf("a record header cut short: %d bytes", len(b))
		}
		n := 5 + (int(b[3])<<8 | int(b[4]))
		if len(b) < n {
			t.Fatalf("a record cut short: %d of %d bytes", len(b), n)
		}
		typ, b = b[0], b[n:]
	}
	return typ
}

// sClient is openssl s_client speaking to the proxy: the one client at hand
// that renegotiates (TLS 1.2) and updates keys (TLS 1.3) on command.
type sClient struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer
	done  chan struct{}
}

func startSClient(t *testing.T, h *harness, version string) *sClient {
	t.Helper()
	cmd := exec.Command("openssl", "s_client", "-connect", h.addr, "-starttls", "postgres", version)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &sClient{cmd: cmd, stdin: stdin, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
	})
	if _, err := stdin.Write(startupPacket(3<<16, "user", "x", "database", "postgres")); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "Z\x00\x00\x00\x05I")
	return c
}

// waitFor waits (bounded) until the client's output holds s.
func (c *sClient) waitFor(t *testing.T, s string) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if strings.Contains(c.out.String(), s) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("openssl s_client never printed %q:\n%q", s, c.out.String())
}

// A client that asks to renegotiate (TLS 1.2; PostgreSQL refuses it too) is
// refused with an alert and its session ends; one that updates its keys
// (TLS 1.3) gets the proxy's key update and its session goes on. Under the
// loop the key update is written from inside a read of the record layer.
func TestTLSRenegotiationAndKeyUpdate(t *testing.T) {
	requireTools(t, "openssl")
	pg := pgtest.Start(t, pgtest.Options{})
	tlsOpt, _ := clientTLS(t)
	extended := func(sql string) []byte {
		var b []byte
		b, _ = (&pgproto3.Parse{Query: sql}).Encode(b)
		b, _ = (&pgproto3.Bind{}).Encode(b)
		b, _ = (&pgproto3.Execute{}).Encode(b)
		b, _ = (&pgproto3.Sync{}).Encode(b)
		return b // starts with 'P': no s_client command letter
	}
	for _, driver := range []string{DriverLoop, DriverGoroutines} {
		t.Run(driver, func(t *testing.T) {
			h := newHarness(t, pg, func(o *Options) { o.Driver = driver; tlsOpt(o) })

			t.Run("renegotiation refused", func(t *testing.T) {
				c := startSClient(t, h, "-tls1_2")
				if _, err := io.WriteString(c.stdin, "R\n"); err != nil {
					t.Fatal(err)
				}
				select {
				case <-c.done:
				case <-time.After(20 * time.Second):
					t.Fatalf("s_client still connected after asking to renegotiate:\n%q", c.out.String())
				}
				if out := c.out.String(); !strings.Contains(out, "unexpected message") {
					t.Fatalf("s_client output does not show the refusal:\n%q", out)
				}
				if errs := h.serveResults(1); errs[0] != nil {
					t.Fatalf("session: %v", errs[0])
				}
			})

			t.Run("key update", func(t *testing.T) {
				c := startSClient(t, h, "-tls1_3")
				if _, err := io.WriteString(c.stdin, "K\n"); err != nil {
					t.Fatal(err)
				}
				c.waitFor(t, "KEYUPDATE")
				if _, err := c.stdin.Write(extended("select 'after the key update'")); err != nil {
					t.Fatal(err)
				}
				c.waitFor(t, "after the key update")
				c.waitFor(t, "C\x00\x00\x00\x0dSELECT 1\x00")
				_, _ = c.stdin.Write([]byte{'X', 0, 0, 0, 4})
				if errs := h.serveResults(2); errs[1] != nil {
					t.Fatalf("session: %v", errs[1])
				}
			})
		})
	}
}
