package control

import (
	"time"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/session"
)

// Status is what `airlock status` shows.
type Status struct {
	Daemon   DaemonStatus     `json:"daemon"`
	Kernel   KernelStatus     `json:"kernel"`
	Programs []ProgramStatus  `json:"programs"`
	Targets  []TargetStatus   `json:"targets"`
	Tracked  []TrackedProcess `json:"tracked"`
	Sessions []SessionStatus  `json:"sessions"`
	// Proxy is the front door's session caps and counts.
	Proxy *ProxyStatus `json:"proxy,omitempty"`
	// Counters are the kernel programs' counters (redirected, skip_*...).
	Counters   map[string]uint64 `json:"counters,omitempty"`
	MapEntries map[string]int    `json:"map_entries,omitempty"`

	// Selection says who is intercepted and what that leaves open.
	Selection *SelectionStatus `json:"selection,omitempty"`
	// Audit is the state of the session record (store, spool, checkpoints).
	Audit *audit.Status `json:"audit,omitempty"`
}

// DaemonStatus describes airlockd itself.
type DaemonStatus struct {
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Config    string    `json:"config"`
	Mode      string    `json:"mode"`
	Cgroup    string    `json:"attach_cgroup"`
	ProxyPort uint16    `json:"proxy_port"`
	PinDir    string    `json:"pin_dir"`
	// ClientLeg is how the agent <-> proxy leg is carried: "sockhash" (in
	// the kernel, past the loopback TCP stack) or "tcp (why)".
	ClientLeg string `json:"client_leg,omitempty"`
	// Off names parts of the data path turned off for a benchmark
	// (AIRLOCK_BENCH_OFF): never silent, since it removes a guarantee.
	Off []string `json:"off,omitempty"`
}

// KernelStatus is what the feature probe found.
type KernelStatus struct {
	Release string   `json:"release"`
	Found   []string `json:"found"`
	Missing []string `json:"missing,omitempty"`
}

// ProgramStatus is one attached eBPF program.
type ProgramStatus struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Attach string `json:"attach"`
	LinkID uint32 `json:"link_id"`
	Pinned bool   `json:"pinned"`
}

// SelectionStatus is who the kernel intercepts, and what that leaves open.
type SelectionStatus struct {
	Mode        string   `json:"mode"`
	Executables []string `json:"executables,omitempty"` // tree mode
	Users       []string `json:"users,omitempty"`       // user mode
	// NetnsAddresses are where selected processes in other network
	// namespaces are sent; none: their target connects are refused.
	NetnsAddresses []string `json:"netns_addresses,omitempty"`
	// Containment is the cgroup (relative to the v2 mount) under which tree
	// mode keeps each tree in a cgroup of its own; "" when off.
	Containment string `json:"containment,omitempty"`
	// TrackingLost counts processes the kernel could not track (the map
	// was full); while TrackingIncomplete, tree mode refuses target
	// connects of every untracked process until the set is rebuilt.
	TrackingLost       uint64 `json:"tracking_lost,omitempty"`
	TrackingIncomplete bool   `json:"tracking_incomplete,omitempty"`
	// OpenEscapes lists, in plain words, the ways around interception the
	// mode leaves open.
	OpenEscapes []string `json:"open_escapes"`
}

// TargetStatus is one configured target.
type TargetStatus struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	Connection string    `json:"connection,omitempty"`
	Protocol   string    `json:"protocol"`
	Resolved   []string  `json:"resolved"`
	TTL        string    `json:"ttl,omitempty"`
	ResolvedAt time.Time `json:"resolved_at,omitempty"`
	Error      string    `json:"error,omitempty"`
	// Unresolved: a hostname target with no address yet. Its port is
	// intercepted at every address and those connections are refused.
	Unresolved bool `json:"unresolved,omitempty"`
	// Addresses of a hostname target: current ones and those DNS dropped
	// that stay intercepted until they expire.
	Addresses []AddressStatus `json:"addresses,omitempty"`
}

// AddressStatus is one address of a hostname target.
type AddressStatus struct {
	Address  string    `json:"address"`
	State    string    `json:"state"` // "current" or "lingering"
	LastSeen time.Time `json:"last_seen,omitempty"`
	Expires  time.Time `json:"expires,omitempty"` // lingering only
}

// ProxyStatus is the front door's session caps and counts.
type ProxyStatus struct {
	MaxSessions       int               `json:"max_sessions"`
	MaxSessionsPerUID int               `json:"max_sessions_per_uid"`
	Active            int               `json:"active"`
	PerUID            map[string]int    `json:"per_uid,omitempty"` // by uid; others than root see only their own
	Refused           map[string]uint64 `json:"refused,omitempty"` // by reason
	AcceptErrors      uint64            `json:"accept_errors"`
	LastAcceptError   string            `json:"last_accept_error,omitempty"`
	LastAcceptErrorAt time.Time         `json:"last_accept_error_at,omitempty"`
	OpenFilesLimit    uint64            `json:"open_files_limit"`
}

// TrackedProcess is a process selected in tree mode.
type TrackedProcess struct {
	PID uint32 `json:"pid"`
	Exe string `json:"exe"`
}

// SessionStatus is one live session.
type SessionStatus struct {
	ID         string            `json:"id"`
	Target     string            `json:"target"`
	Connection string            `json:"connection"`
	Protocol   string            `json:"protocol"`
	Dest       string            `json:"dest"`
	Person     string            `json:"person"`
	Started    time.Time         `json:"started"`
	Origin     session.Origin    `json:"origin"`
	Database   string            `json:"database,omitempty"`
	Role       string            `json:"upstream_role,omitempty"`
	Counters   session.Counters  `json:"counters"`
	Attrs      map[string]string `json:"attrs,omitempty"`
}
