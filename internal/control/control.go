// Package control is the daemon's local API: a unix socket in a root-owned
// directory, one JSON request and one JSON reply per connection. Every caller
// is identified by the kernel (SO_PEERCRED), never by what it claims.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where airlockd listens by default.
const DefaultSocket = "/run/airlock/airlock.sock"

// Peer is the caller as the kernel reports it.
type Peer struct {
	PID uint32
	UID uint32
	GID uint32
	// PIDFD names the caller's process for the duration of the call, so
	// that a pid recycled after the caller exited is never mistaken for
	// it: SO_PEERPIDFD where the kernel has it (6.5+), else pidfd_open of
	// the SO_PEERCRED pid checked to have started before the call. Nil if
	// neither worked. The server closes it when the call returns.
	PIDFD *os.File
}

// Request is one call.
type Request struct {
	Op string `json:"op"` // "status" or "run"
}

// Reply answers a Request.
type Reply struct {
	Error  string    `json:"error,omitempty"`
	Status *Status   `json:"status,omitempty"`
	Run    *RunReply `json:"run,omitempty"`
}

// RunReply tells `airlock run` where its process was placed.
type RunReply struct {
	Cgroup string `json:"cgroup"`
}

// Handler answers calls; it is the daemon.
type Handler interface {
	Status(ctx context.Context, p Peer) (*Status, error)
	// Run moves the caller's process into a fresh cgroup the daemon
	// intercepts, so that what it execs next is selected.
	Run(ctx context.Context, p Peer) (*RunReply, error)
}

// Server serves the socket.
type Server struct {
	path string
	l    *net.UnixListener
	h    Handler
	log  *slog.Logger
}

// Listen creates the socket at path. Its directory is made root-owned and
// not writable by others, so nobody can put a socket of their own there; the
// socket itself is open to every local user, who are told apart by
// SO_PEERCRED.
func Listen(path string, h Handler, log *slog.Logger) (*Server, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create control socket dir %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("check control socket dir %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() || st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("control socket dir %s must be a root-owned directory not writable by others (chown root %s; chmod 755 %s)", dir, dir, dir)
	}
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("open control socket %s to local users: %w", path, err)
	}
	return &Server{path: path, l: l, h: h, log: log}, nil
}

// Serve answers calls until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.l.Close() })
	defer stop()
	defer os.Remove(s.path)
	// No accept error ends the loop: out of file descriptors (EMFILE),
	// back off and retry, so `airlock status` answers again once sessions
	// end instead of the daemon exiting.
	var backoff time.Duration
	for {
		c, err := s.l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if backoff == 0 {
				s.log.Warn("accept on control socket failed; backing off and retrying", "err", err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		backoff = 0
		go s.serveConn(ctx, c)
	}
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	accepted := bootTicks()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	peer, err := peerOf(c)
	if err != nil {
		s.log.Warn("control: no peer credentials", "err", err)
		return
	}
	if peer.PIDFD, err = peerPIDFD(c, peer.PID, accepted); err != nil {
		s.log.Debug("control: no pidfd for the caller", "pid", peer.PID, "err", err)
	} else {
		defer peer.PIDFD.Close()
	}
	var req Request
	dec := json.NewDecoder(bufio.NewReader(&limitedReader{c, 64 << 10}))
	dec.DisallowUnknownFields()
	var rep Reply
	if err := dec.Decode(&req); err != nil {
		rep.Error = fmt.Sprintf("bad request: %v", err)
	} else {
		switch req.Op {
		case "status":
			rep.Status, err = s.h.Status(ctx, peer)
		case "run":
			rep.Run, err = s.h.Run(ctx, peer)
		default:
			err = fmt.Errorf("unknown op %q (known: status, run)", req.Op)
		}
		if err != nil {
			rep.Error = err.Error()
		}
	}
	s.log.Debug("control call", "op", req.Op, "pid", peer.PID, "uid", peer.UID, "error", rep.Error)
	_ = json.NewEncoder(c).Encode(&rep)
}

func peerOf(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, cerr
	}
	return Peer{PID: uint32(cred.Pid), UID: cred.Uid, GID: cred.Gid}, nil
}

type limitedReader struct {
	c interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request larger than 64 KiB")
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.c.Read(b)
	l.n -= int64(n)
	return n, err
}

// Call sends req to the daemon at path and returns its reply.
func Call(ctx context.Context, path string, req Request) (*Reply, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to airlockd at %s (is it running? `systemctl status airlockd`): %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(&req); err != nil {
		return nil, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	var rep Reply
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		return nil, fmt.Errorf("read %s reply: %w", req.Op, err)
	}
	if rep.Error != "" {
		return &rep, errors.New(rep.Error)
	}
	return &rep, nil
}
