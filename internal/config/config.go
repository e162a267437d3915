// Package config reads airlockd's YAML configuration strictly: an unknown
// key or a bad value is an error that names the file, the line and the key.
package config

import (
	"github.com/airlockhq/airlock/internal/mask"

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
	// Identity, when set, makes every session prove its person with an
	// OIDC token (`airlock login`); without it the person is the uid's
	// local account, as before.
	Identity *Identity `yaml:"identity"`
	// Masking, when set, masks sensitive values in PostgreSQL results
	// before they reach the client (internal/mask, internal/pgmask).
	Masking *mask.Policy `yaml:"masking"`
	// Approvals configures who decides held statements and just-in-time
	// access requests (`airlock approvals`, `approve`, `deny`, `request`).
	Approvals *Approvals `yaml:"approvals"`

	// Audit is the session record (statements, with their parameters only
	// when audit.record_params is set; the log never holds statements).
	Audit Audit `yaml:"audit"`

	// PolicyFile is the SQL policy (internal/policy): deny and hold rules
	// per connection, group and process class. Empty: the built-in rules
	// only (role and password changes and unparseable SQL refused).
	// Reloaded on SIGHUP and when the file changes.
	PolicyFile string `yaml:"policy_file"`

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
	// Driver runs PostgreSQL sessions' data path: "loop" (the default:
	// epoll event loops, one per core, TLS client legs included)
	// or "goroutines" (two per session). See docs/BENCHMARKS.md.
	Driver string `yaml:"driver"`
}

// Intercept says which processes are redirected.
type Intercept struct {
	Mode         string   `yaml:"mode"`          // tree | cgroup | user | all
	AttachCgroup string   `yaml:"attach_cgroup"` // relative to the cgroup v2 mount
	BPFFS        string   `yaml:"bpffs"`
	Executables  []string `yaml:"executables"` // tree mode: names or absolute paths
	Cgroups      []string `yaml:"cgroups"`     // cgroup mode: extra cgroup paths (v2, relative to the mount)
	Mark         uint32   `yaml:"mark"`        // SO_MARK of the daemon's upstream sockets

	// Cgroups are selected in every mode, like `airlock run`'s; Mark is the
	// only exemption (no pid is exempt), on every daemon socket.

	// Users are intercepted in user mode: user names or numeric uids.
	Users []string `yaml:"users"`
	// Contain moves each tree (tree mode) into a cgroup Airlock owns,
	// <attach_cgroup>/airlock.tree/..., which no unprivileged process can
	// leave. Default true.
	Contain *bool `yaml:"contain"`
	// Sockhash carries what PostgreSQL clients send to the proxy through a
	// kernel sockhash instead of loopback TCP where the kernel allows
	// (bpf/sockmap.c). Default false: on Linux 6.18 a blocking read(2) on a
	// socket in a sockhash can fail with EAGAIN (rarely: 4 of 15 runs of
	// 20,000 round trips in BenchmarkClientLeg, and at the peer's close),
	// which a client on blocking sockets that does not retry (Python's
	// plain sockets) reports as an error; libpq, Go, Java's socket
	// implementation and async clients retry.
	Sockhash bool `yaml:"sockhash"`
	// NetnsAddresses are host addresses (at most one IPv4, one IPv6) where
	// selected processes in other network namespaces reach the proxy; the
	// proxy listens there too. Empty: their target connects are refused.
	NetnsAddresses []string `yaml:"netns_addresses"`
	// NetnsAddressEnv names an environment variable holding one more such
	// address, for a DaemonSet whose node address differs per node.
	NetnsAddressEnv string `yaml:"netns_address_env"`

	// Parsed by Load.
	UIDs       []uint32     `yaml:"-"` // Users as uids
	NetnsAddrs []netip.Addr `yaml:"-"` // NetnsAddresses and NetnsAddressEnv
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
	// Access lists the groups whose members may open the connection and,
	// per group, the upstream group roles their sessions get. Empty with
	// identity configured: nobody may (deny by default).
	Access []Access `yaml:"access"`
	// RequireGrant: a session is admitted only while its person holds an
	// approved just-in-time grant (`airlock request CONN --for 1h`); live
	// sessions end when it expires. Needs an approvals section.
	RequireGrant bool `yaml:"require_grant"`
}

// Access is one group's right to a connection.
type Access struct {
	Group string   `yaml:"group"`
	Roles []string `yaml:"roles"` // ephemeral credentials: granted to the session's role
}

// Identity is how people and workloads prove who they are.
type Identity struct {
	Issuers []Issuer `yaml:"issuers"`
	// RefreshBefore: a stored identity is renewed from its refresh token
	// this long before it expires. Default 5m.
	RefreshBefore Duration `yaml:"refresh_before"`
	// ExpiryGrace: a live session whose identity expired and could not be
	// renewed is ended this long after the expiry. Default 1m.
	ExpiryGrace Duration `yaml:"expiry_grace"`
	// KeysRefresh: how often each issuer's signing keys are fetched again,
	// so that keys it withdrew stop verifying. Default 15m.
	KeysRefresh Duration `yaml:"keys_refresh"`
}

// Issuer is one trusted OIDC issuer.
type Issuer struct {
	Name     string   `yaml:"name"`
	URL      string   `yaml:"url"`       // the "iss" of its tokens; discovery below it
	ClientID string   `yaml:"client_id"` // public client used by `airlock login`
	Audience string   `yaml:"audience"`  // required "aud"; default client_id
	Kind     string   `yaml:"kind"`      // people | workload
	Scopes   []string `yaml:"scopes"`    // people: default openid, profile, email, offline_access
	Claims   Claims   `yaml:"claims"`
}

// Claims names the token claims that carry a person's attributes.
type Claims struct {
	Name   string `yaml:"name"`   // default preferred_username (then sub)
	Email  string `yaml:"email"`  // default email
	Groups string `yaml:"groups"` // default groups
}

// Approvals is who decides what a person must approve.
type Approvals struct {
	// ApproversGroup: members (by their own `airlock login`) decide.
	ApproversGroup string `yaml:"approvers_group"`
	// Timeout: a request nobody decided in this long is denied. Default 5m.
	Timeout Duration `yaml:"timeout"`
	// MaxGrant bounds `airlock request --for`. Default 8h.
	MaxGrant Duration `yaml:"max_grant"`
	// WebhookURL gets each new request as JSON (Slack incoming-webhook
	// compatible); WebhookTokenFile, if set, holds a bearer token for it.
	WebhookURL       string `yaml:"webhook_url"`
	WebhookTokenFile string `yaml:"webhook_token_file"`
	// HoldStatements are regular expressions: a matching Query or Parse is
	// held for approval. An interim rule until the policy engine decides
	// holds from PostgreSQL's parse tree; a regex is no guardrail against
	// rewording.
	HoldStatements []string `yaml:"hold_statements"`
	// TeamPoll: with a team store (audit.store: postgres://…), requests
	// are shared through it and this is how often this daemon looks for
	// decisions sent from other machines (a NOTIFY wakes it sooner).
	// Default 1s.
	TeamPoll Duration `yaml:"team_poll"`
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
	Leftovers         string   `yaml:"leftovers"`       // reassign | drop: objects a dropped role still owns
	LeftoversOwner    string   `yaml:"leftovers_owner"` // reassign mode; default: <role_prefix>orphans, managed by Airlock
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
	CommitInterval     Duration `yaml:"commit_interval"`     // fsync and commit window; default 200ms
	CheckpointInterval Duration `yaml:"checkpoint_interval"` // how often the chain head is signed; default 1m
	SpoolMaxMB         int      `yaml:"spool_max_mb"`        // journal bound while the store is down; default 1024
	// SampleRows and SampleBytes bound the result sample each statement
	// record keeps: the first rows as the client got them (after
	// masking). Default 10 rows and 4096 bytes; 0 in either keeps none.
	SampleRows  *int `yaml:"sample_rows"`
	SampleBytes *int `yaml:"sample_bytes"`
}

// Default result-sample caps (audit.sample_rows, audit.sample_bytes).
const (
	DefaultSampleRows  = 10
	DefaultSampleBytes = 4096
)

// Samples returns the result-sample caps; (0, 0) when sampling is off.
func (a Audit) Samples() (rows, bytes int) {
	rows, bytes = DefaultSampleRows, DefaultSampleBytes
	if a.SampleRows != nil {
		rows = *a.SampleRows
	}
	if a.SampleBytes != nil {
		bytes = *a.SampleBytes
	}
	if rows == 0 || bytes == 0 {
		return 0, 0
	}
	return rows, bytes
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

// ContainTrees reports intercept.contain (default true).
func (i Intercept) ContainTrees() bool { return i.Contain == nil || *i.Contain }

// RedirectClientLeg reports intercept.sockhash (default false).
func (i Intercept) RedirectClientLeg() bool { return i.Sockhash }

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
