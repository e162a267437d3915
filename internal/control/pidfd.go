package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peerPIDFD returns a pidfd for the process at the other end of c. The
// kernel's SO_PEERPIDFD names the very process that connected. Without it
// (kernels before 6.5), the SO_PEERCRED pid is opened with pidfd_open and
// kept only if that process started no later than the call was accepted
// (accepted, in clock ticks since boot): a process that took over a
// recycled pid started after the caller, which was alive when it
// connected, had exited.
func peerPIDFD(c *net.UnixConn, pid uint32, accepted uint64) (*os.File, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, serr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, serr = unix.GetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return nil, err
	}
	if serr == nil {
		return os.NewFile(uintptr(fd), "pidfd"), nil
	}
	if !errors.Is(serr, unix.ENOPROTOOPT) && !errors.Is(serr, unix.EINVAL) {
		return nil, fmt.Errorf("SO_PEERPIDFD: %w", serr)
	}
	if pid == 0 {
		return nil, errors.New("caller has no pid")
	}
	fd, err = unix.PidfdOpen(int(pid), unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	// With the pidfd held, the pid cannot be recycled again: its start
	// time now belongs to the process the pidfd names.
	start, err := startTicks(int(pid))
	if err != nil {
		f.Close()
		return nil, err
	}
	if accepted == 0 || start > accepted {
		f.Close()
		return nil, fmt.Errorf("pid %d started after the call was accepted: not the caller (pid recycled)", pid)
	}
	return f, nil
}

// startTicks is a process's start time in clock ticks since boot
// (/proc/PID/stat field 22).
func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: count
	// fields after its last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// bootTicks is now in clock ticks (USER_HZ, 100 on Linux) since boot, the
// unit of /proc/PID/stat start times; 0 if unknown.
func bootTicks() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	const userHZ = 100
	return uint64(ts.Sec)*userHZ + uint64(ts.Nsec)/(1e9/userHZ) + 1 // rounded up: a start in this tick counts as before
}
