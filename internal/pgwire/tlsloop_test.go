package pgwire

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
