// Package upstream dials the real destinations of intercepted sessions.
//
// Every socket the daemon opens towards a target carries Mark, which the eBPF
// connect programs test before redirecting: that, with the daemon's own tgid
// and netns checks in the kernel, keeps the proxy from looping into itself.
package upstream

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMark is the SO_MARK value of the daemon's upstream sockets. It is a
// fixed, documented value so that firewall rules can recognise them too.
const DefaultMark = 0xa1c0

// Dialer opens marked TCP connections.
type Dialer struct {
	Mark    uint32
	Timeout time.Duration
}

// DialContext opens a TCP connection to address with the mark set before
// connect(), so the kernel's connect hook sees it.
func (d Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	nd := net.Dialer{
		Timeout:   d.Timeout,
		KeepAlive: 30 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(d.Mark))
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set SO_MARK %#x on upstream socket: %w", d.Mark, serr)
			}
			return nil
		},
	}
	conn, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", address, err)
	}
	return conn, nil
}
