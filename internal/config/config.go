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
	Audit       Audit        `yaml:"audit"`

	file  string
	lines map[string]int // key path ("connections[0].targets") → line
}

// Proxy is the local front door.
type Proxy struct {
	Port uint16 `yaml:"port"` // on 127.0.0.1 and [::1]
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

// Audit is the session record.
type Audit struct {
	// Store is empty for the embedded SQLite file in state_dir, an
	// absolute path for another SQLite file, or a postgres:// URL (no
	// password in it) for a store shared by a team.
	Store              string   `yaml:"store"`
	PasswordFile       string   `yaml:"password_file"`       // the postgres store's password, root-only
	RecordParams       bool     `yaml:"record_params"`       // keep statement parameters (secrets redacted); default off
	RetentionDays      int      `yaml:"retention_days"`      // 0 keeps records for ever
	AuditorGroup       string   `yaml:"auditor_group"`       // members see every session; others their own
	CommitInterval     Duration `yaml:"commit_interval"`     // fsync and commit window; default 50ms
	CheckpointInterval Duration `yaml:"checkpoint_interval"` // how often the chain head is signed; default 1m
	SpoolMaxMB         int      `yaml:"spool_max_mb"`        // journal bound while the store is down; default 1024
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
