package pgwire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestSockIO(t *testing.T) {
	a, b := tcpPair(t)
	if _, ok := pumpIO(a).(*sockIO); !ok {
		t.Fatalf("pumpIO(*net.TCPConn) = %T, want *sockIO", pumpIO(a))
	}
	if v, err := syscallInt(a, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); err != nil || v == 0 {
		t.Fatalf("TCP_NODELAY = %d (%v), want set", v, err)
	}
	sa, sb := newSockIO(a), newSockIO(b)

	// A write bigger than the socket buffers completes while the peer reads.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	errc := make(chan error, 1)
	go func() {
		n, err := sa.Write(big)
		if err == nil && n != len(big) {
			err = io.ErrShortWrite
		}
		errc <- err
	}()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(sb, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("data corrupted")
	}

	// A read deadline ends a waiting read, as on the net.Conn.
	_ = b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := sb.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	_ = b.SetReadDeadline(time.Time{})

	// The peer's close is io.EOF after what it sent.
	if _, err := sa.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
	rest, err := io.ReadAll(sb)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after close: %q, %v", rest, err)
	}

	// Our own Close ends a read with net.ErrClosed.
	_ = b.Close()
	if _, err := sb.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestPumpIOOther(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	if rw := pumpIO(c); rw != io.ReadWriter(c) {
		t.Fatalf("pumpIO(pipe) = %T, want the conn itself", rw)
	}
}

func syscallInt(c *net.TCPConn, level, opt int) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		return 0, err
	}
	return v, serr
}

func TestDecodeParse(t *testing.T) {
	for _, tc := range []struct {
		body        string
		name, query string
		ok          bool
	}{
		{"s1\x00select 1\x00\x00\x00", "s1", "select 1", true},
		{"\x00select $1\x00\x00\x01\x00\x00\x00\x17", "", "select $1", true},
		{"\x00select $1\x00\x00\x01\x00\x00", "", "", false}, // OID cut short
		{"s1\x00select 1\x00", "", "", false},                // no count
		{"s1\x00select 1", "", "", false},
		{"", "", "", false},
	} {
		name, query, ok := decodeParse([]byte(tc.body))
		if ok != tc.ok || string(name) != tc.name || string(query) != tc.query {
			t.Errorf("decodeParse(%q) = %q, %q, %v; want %q, %q, %v", tc.body, name, query, ok, tc.name, tc.query, tc.ok)
		}
	}
}
