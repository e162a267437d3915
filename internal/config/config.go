// Package config reads airlockd's YAML configuration strictly: an unknown
// key or a bad value is an error that names the file, the line and the key.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

// DefaultPath is where airlockd looks without --config.
const DefaultPath = "/etc/airlock/airlock.yaml"

// Config is the whole file.
type Config struct {
	StateDir    string       `yaml:"state_dir"`
	RuntimeDir  string       `yaml:"runtime_dir"`
	LogLevel    string       `yaml:"log_level"`
	Proxy       Proxy        `yaml:"proxy"`
	Intercept   Intercept    `yaml:"intercept"`
	DNS         DNS          `yaml:"dns"`
	Targets     []Target     `yaml:"targets"`
	Connections []Connection `yaml:"connections"`

	// LogStatementParams puts statement parameters in the event log; off
	// by default, as they are the database users' data.
	LogStatementParams bool `yaml:"log_statement_params"`

	file  string
	lines map[string]int // key path ("connections[0].targets") → line
}

// Proxy is the local front door.
type Proxy struct {
	Port uint16 `yaml:"port"` // on 127.0.0.1 and [::1]
	// Caps on concurrent sessions, in total and per client uid; the excess
	// is refused (PostgreSQL: SQLSTATE 53300), so one user cannot exhaust
	// the daemon's file descriptors for everyone.
	MaxSessions       int `yaml:"max_sessions"`
	MaxSessionsPerUID int `yaml:"max_sessions_per_uid"`
	// Driver runs PostgreSQL sessions' data path: "goroutines" (two per
	// session) or "loop" (epoll event loops, one per core; TLS client legs
	// stay on goroutines). See docs/BENCHMARKS.md.
	Driver string `yaml:"driver"`
}

// Intercept says which processes are redirected.
type Intercept struct {
	Mode         string   `yaml:"mode"`          // tree | cgroup | all
	AttachCgroup string   `yaml:"attach_cgroup"` // relative to the cgroup v2 mount
	BPFFS        string   `yaml:"bpffs"`
	Executables  []string `yaml:"executables"` // tree mode: names or absolute paths
	Cgroups      []string `yaml:"cgroups"`     // cgroup mode: extra cgroup paths (v2, relative to the mount)
	Mark         uint32   `yaml:"mark"`        // SO_MARK of the daemon's upstream sockets
}

// DNS tunes hostname resolution of targets.
type DNS struct {
	Servers []string `yaml:"servers"`
	MinTTL  Duration `yaml:"min_ttl"`
	MaxTTL  Duration `yaml:"max_ttl"`
	Hosts   string   `yaml:"hosts"`
	// Linger keeps an address a hostname stopped answering with
	// intercepted for this long (default 1h, at least max_ttl).
	Linger Duration `yaml:"linger"`
}

// Target is one destination to intercept.
type Target struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"` // host:port, ip:port, [v6]:port or CIDR:port

	// Parsed from Address by Load.
	Host   string       `yaml:"-"` // set for hostname targets
	Prefix netip.Prefix `yaml:"-"` // set for IP and CIDR targets
	Port   uint16       `yaml:"-"`
}

// Connection says how sessions to some targets are served.
type Connection struct {
	Name     string    `yaml:"name"`
	Protocol string    `yaml:"protocol"` // postgres | tcp
	Targets  []string  `yaml:"targets"`
	Postgres *Postgres `yaml:"postgres"`
}

// Postgres is a PostgreSQL connection's upstream and credential.
type Postgres struct {
	Upstream   Upstream   `yaml:"upstream"`
	Databases  []string   `yaml:"databases"`
	Credential Credential `yaml:"credential"`
}

// Upstream is where the proxy connects.
type Upstream struct {
	Host string `yaml:"host"` // default: the first target's host
	Port uint16 `yaml:"port"` // default: the first target's port
	TLS  TLS    `yaml:"tls"`
}

// TLS is the upstream TLS mode.
type TLS struct {
	Mode       string `yaml:"mode"` // disable | prefer | require | verify-full
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
}

// Credential is how the proxy authenticates upstream.
type Credential struct {
	Mode              string   `yaml:"mode"` // ephemeral | static
	AdminUser         string   `yaml:"admin_user"`
	AdminPasswordFile string   `yaml:"admin_password_file"`
	AdminDatabase     string   `yaml:"admin_database"`
	GroupRoles        []string `yaml:"group_roles"`
	TTL               Duration `yaml:"ttl"`
	RolePrefix        string   `yaml:"role_prefix"`
	User              string   `yaml:"user"`
	PasswordFile      string   `yaml:"password_file"`
}

// Duration is a time.Duration written as "90s", "5m", "1h".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Error is a configuration problem at a place in a file.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// File is the path the configuration came from.
func (c *Config) File() string { return c.file }

// TargetByName returns the named target.
func (c *Config) TargetByName(name string) (Target, bool) {
	for _, t := range c.Targets {
		if t.Name == name {
			return t, true
		}
	}
	return Target{}, false
}

// ConnectionFor returns the connection that serves target, if any.
func (c *Config) ConnectionFor(target string) (Connection, bool) {
	for _, conn := range c.Connections {
		for _, t := range conn.Targets {
			if t == target {
				return conn, true
			}
		}
	}
	return Connection{}, false
}
