package intercept

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoConn is the proxy side of an echo run: it joins the client leg the
// way the daemon does (before reading), then sends back everything with
// read(2)/write(2) until the client half-closes, and half-closes in turn.
func (p *proxy) echoConn(c *net.TCPConn) {
	defer c.Close()
	if ic := p.ic.Load(); ic != nil {
		ic.JoinClientLeg(c)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 37*1024) // not a power of two: writes straddle the client's reads
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				c.CloseWrite()
			}
			return
		}
	}
}

// helperConnect opens a blocking TCP socket to HELPER_ADDR, with send and
// receive timeouts of timeout seconds (0: none).
func helperConnect(timeout int64) (int, error) {
	fam, sa, err := helperSockaddr()
	if err != nil {
		return -1, err
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, errors.New(errString(err))
	}
	if timeout > 0 {
		tv := unix.Timeval{Sec: timeout}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
	if err := connectFD(fd, sa); err != nil {
		unix.Close(fd)
		return -1, errors.New(errString(err))
	}
	return fd, nil
}

// echoPattern is the byte at offset i of an echo run: not periodic at any
// buffer size used, so a reordered or duplicated chunk is caught.
func echoPattern(i int64) byte { return byte(i*7 + i/251 + i/65521) }

// helperEcho sends n bytes in writes of varying size while reading the echo,
// half-closes, and checks that what came back is exactly what was sent.
func helperEcho(n int) dialResult {
	r := dialResult{PID: os.Getpid()}
	fd, err := helperConnect(20)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer unix.Close(fd)
	// Like a PostgreSQL client: a first message, and nothing more before
	// its answer (see the ordering note in bpf/sockmap.c).
	first := make([]byte, min(n, 8))
	for j := range first {
		first[j] = echoPattern(int64(j))
	}
	if _, err := writeFD(fd, first); err != nil {
		r.Err = "write first: " + errString(err)
		return r
	}
	for got := 0; got < len(first); {
		m, err := readFD(fd, first[got:])
		if err != nil || m == 0 {
			r.Err = fmt.Sprintf("read first: %d %v", m, err)
			return r
		}
		got += m
	}
	for j := range first {
		if first[j] != echoPattern(int64(j)) {
			r.Err = "first message differs"
			return r
		}
	}
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, 70000)
		off := int64(len(first))
		for k := 1; off < int64(n); k++ {
			size := min(int64(k*977%len(buf))+1, int64(n)-off)
			for j := range size {
				buf[j] = echoPattern(off + j)
			}
			if _, err := writeFD(fd, buf[:size]); err != nil {
				sent <- fmt.Errorf("write at %d: %w", off, err)
				return
			}
			off += size
		}
		sent <- unix.Shutdown(fd, unix.SHUT_WR)
	}()
	buf := make([]byte, 50000)
	got := int64(len(first))
	// HELPER_SPLICE: read the answers as forwarders do, through splice(2).
	read := func(b []byte) (int, error) { return readFD(fd, b) }
	if os.Getenv("HELPER_SPLICE") == "1" {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			r.Err = "pipe: " + errString(err)
			return r
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		read = func(b []byte) (int, error) {
			m, err := unix.Splice(fd, nil, p[1], nil, len(b), 0)
			for tries := 0; err == unix.EINTR && tries < 100; tries++ {
				m, err = unix.Splice(fd, nil, p[1], nil, len(b), 0)
			}
			if m <= 0 || err != nil {
				return int(m), err
			}
			return io.ReadFull(os.NewFile(uintptr(p[0]), "pipe"), b[:m])
		}
	}
	spurious := 0
	for {
		m, err := read(buf)
		// A blocking read waiting on the redirected queue when the peer's
		// FIN arrives returns EAGAIN once (tcp_bpf, Linux 6.18); the next
		// read sees the end. Non-blocking clients (libpq, Go) never wait
		// there and see no difference.
		if errors.Is(err, unix.EAGAIN) && spurious < 3 {
			spurious++
			continue
		}
		if err != nil {
			r.Err = "read: " + errString(err)
			return r
		}
		if m == 0 {
			break
		}
		for j := range m {
			if buf[j] != echoPattern(got+int64(j)) {
				r.Err = fmt.Sprintf("byte %d differs", got+int64(j))
				return r
			}
		}
		got += int64(m)
	}
	if err := <-sent; err != nil {
		r.Err = err.Error()
		return r
	}
	r.Echoed, r.Spurious = got, spurious
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		r.TCPSent, r.TCPRecved = info.Bytes_acked, info.Bytes_received
	}
	return r
}

// TestClientLegRedirect: with the redirect on, what a redirected client
// sends reaches the proxy without TCP carrying it, intact and in order, over
// sizes from one byte to a large COPY-like stream and all three address
// forms; the answers come back by TCP, readable with splice too; off,
// everything goes by TCP as before.
func TestClientLegRedirect(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("redirect=%v", on), func(t *testing.T) {
			e := newEnvWith(t, ModeAll, func(o *Options) { o.ClientLegRedirect = on })
			e.proxy.echo.Store(true)
			r := e.remote
			if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0]), e.target(r.v6, r.ports[0])}); err != nil {
				t.Fatal(err)
			}
			leg := e.ic.ClientLeg()
			if want := map[bool]string{true: "sockhash", false: "tcp (disabled)"}[on]; leg.Mode != want {
				t.Fatalf("client leg %q, want %q", leg.Mode, want)
			}
			mapped := netip.AddrFrom16(r.v4.As16())
			addrs := []struct {
				name   string
				addr   netip.AddrPort
				family int
			}{
				{"v4", netip.AddrPortFrom(r.v4, r.ports[0]), 4},
				{"v6", netip.AddrPortFrom(r.v6, r.ports[0]), 6},
				{"v4-mapped", netip.AddrPortFrom(mapped, r.ports[0]), 6},
			}
			for _, a := range addrs {
				for _, run := range []struct {
					size   int
					splice bool
				}{{1, false}, {100 << 10, false}, {16 << 20, false}, {4 << 20, true}} {
					size := run.size
					t.Run(fmt.Sprintf("%s/%d/splice=%v", a.name, size, run.splice), func(t *testing.T) {
						before := e.ic.ClientLeg().Counters["redirected"]
						res := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: a.addr, Family: a.family, Echo: size, Splice: run.splice, WaitAt: -1}).result(t)
						if res.Err != "" || res.Echoed != int64(size) {
							t.Fatalf("echo of %d bytes: %+v", size, res)
						}
						if res.Spurious > 0 {
							t.Logf("%d spurious EAGAIN from blocking reads", res.Spurious)
						}
						// The first send may beat the proxy's join and go by
						// TCP; everything after it must not. The answers
						// always go by TCP (see bpf/sockmap.c).
						if on {
							if res.TCPSent > 70000 || res.TCPRecved < uint64(size) {
								t.Errorf("TCP carried %d bytes out, %d in of %d: want only the answers", res.TCPSent, res.TCPRecved, size)
							}
							// A 1-byte run is all first message.
							if size > 8 && e.ic.ClientLeg().Counters["redirected"] == before {
								t.Error("redirected counter did not move")
							}
						} else if res.TCPSent < uint64(size) || res.TCPRecved < uint64(size) {
							t.Errorf("redirect off, yet TCP carried only %d/%d of %d bytes", res.TCPSent, res.TCPRecved, size)
						}
					})
				}
			}
		})
	}
}

// TestClientLegProxyGone: when the proxy's socket closes (a daemon killed),
// the client's next send fails instead of going anywhere else, and new
// connects are refused once the listener is gone.
func TestClientLegProxyGone(t *testing.T) {
	e := newEnvWith(t, ModeAll, func(o *Options) { o.ClientLegRedirect = true })
	e.proxy.echo.Store(true)
	r := e.remote
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(r.v4, r.ports[0])
	if res := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: target, Echo: 1000, WaitAt: -1}).result(t); res.Err != "" {
		t.Fatalf("echo before: %+v", res)
	}
	e.proxy.close()
	e.ic.Close()
	res := dial(t, helperSpec{Cgroup: e.cgroup, Addr: target})
	if res.Err != "ECONNREFUSED" {
		t.Fatalf("with the proxy gone, dial = %+v, want ECONNREFUSED", res)
	}
	if bytes.Contains([]byte(res.Line), []byte("remote")) {
		t.Fatal("reached the remote directly")
	}
}

// helperPingPong sends a 100-byte message and waits for its echo n times,
// the shape of a select-only transaction on the client leg, and reports its
// own CPU time per round trip.
func helperPingPong(n int) dialResult {
	r := dialResult{PID: os.Getpid()}
	fd, err := helperConnect(0)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer unix.Close(fd)
	var before, after unix.Rusage
	msg := make([]byte, 100)
	buf := make([]byte, 100)
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for k := 0; k < n; k++ {
		if _, err := writeFD(fd, msg); err != nil {
			r.Err = "write: " + errString(err)
			return r
		}
		for got := 0; got < len(buf); {
			m, err := readFD(fd, buf[got:])
			// See helperEcho; counted, bounded.
			if errors.Is(err, unix.EAGAIN) && r.Spurious < 1000 {
				r.Spurious++
				continue
			}
			if err != nil || m == 0 {
				r.Err = fmt.Sprintf("read: %d %v", m, err)
				return r
			}
			got += m
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	r.NsOp = (cpuNanos(&after) - cpuNanos(&before)) / int64(n)
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		r.SegsOut = info.Segs_out
	}
	return r
}

func cpuNanos(u *unix.Rusage) int64 {
	return u.Utime.Nano() + u.Stime.Nano()
}

// BenchmarkClientLeg: CPU per 100-byte round trip of the client process and
// of the proxy's (this) process, redirect on and off: what the sockhash
// saves on the client leg, without a database in the way.
//
//	go test -run '^$' -bench BenchmarkClientLeg -benchtime 20000x ./internal/intercept/
func BenchmarkClientLeg(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("sockhash=%v", on), func(b *testing.B) {
			requireRoot(b)
			e := &env{cgroup: newCgroup(b), pinDir: newPinDir(b), proxy: newProxy(b), remote: testRemote}
			if e.remote == nil {
				b.Fatal("no remote")
			}
			e.opts = Options{PinDir: e.pinDir, CgroupPath: e.cgroup, ProxyPort: e.proxy.port, Mode: ModeAll, Mark: 0xa1b0c,
				Logger: discardLogger(), ClientLegRedirect: on}
			ic, err := Open(context.Background(), e.opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { ic.Close() })
			e.proxy.ic.Store(ic)
			e.proxy.echo.Store(true)
			if err := ic.SetTargets([]Target{{Prefix: netip.PrefixFrom(e.remote.v4, 32), Port: e.remote.ports[0]}}); err != nil {
				b.Fatal(err)
			}
			var before, after unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &before)
			b.ResetTimer()
			res := startHelper(b, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(e.remote.v4, e.remote.ports[0]), PingPong: b.N, WaitAt: -1}).result(b)
			b.StopTimer()
			unix.Getrusage(unix.RUSAGE_SELF, &after)
			if res.Err != "" {
				b.Fatalf("ping-pong: %+v", res)
			}
			b.ReportMetric(float64(res.NsOp), "client-cpu-ns/op")
			b.ReportMetric(float64(res.Spurious), "spurious-EAGAIN")
			// Segments the client's TCP sent: with the redirect, only ACKs
			// of the answers, no longer carried by the next query.
			b.ReportMetric(float64(res.SegsOut)/float64(b.N), "client-segs/op")
			b.ReportMetric(float64(cpuNanos(&after)-cpuNanos(&before))/float64(b.N), "proxy-cpu-ns/op")
		})
	}
}

// TestClientLegClientKilled: a client killed in the middle of a large send
// leaves nothing behind: both ends leave the sockhashes when they close, so
// no stale entry can name a later connection's socket.
func TestClientLegClientKilled(t *testing.T) {
	e := newEnvWith(t, ModeAll, func(o *Options) { o.ClientLegRedirect = true })
	e.proxy.echo.Store(true)
	r := e.remote
	if err := e.ic.SetTargets([]Target{e.target(r.v4, r.ports[0])}); err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, helperSpec{Cgroup: e.cgroup, Addr: netip.AddrPortFrom(r.v4, r.ports[0]), Echo: 1 << 30, WaitAt: -1})
	// Bounded wait until the stream is under way (both ends joined).
	for k := 0; k < 100 && e.ic.ClientLeg().ProxySockets == 0; k++ {
		time.Sleep(20 * time.Millisecond)
	}
	if st := e.ic.ClientLeg(); st.Sockets != 1 || st.ProxySockets != 1 {
		t.Fatalf("while streaming: %d agent and %d proxy sockets joined, want 1 and 1", st.Sockets, st.ProxySockets)
	}
	h.cmd.Process.Kill()
	h.cmd.Wait()
	var st ClientLegState
	for k := 0; k < 250; k++ {
		if st = e.ic.ClientLeg(); st.Sockets == 0 && st.ProxySockets == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after the client was killed: %d agent and %d proxy sockets still joined", st.Sockets, st.ProxySockets)
}
