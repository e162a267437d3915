package config

import (
	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/mask"

	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Parse decodes and validates data; name is used in errors.
func Parse(name string, data []byte) (*Config, error) {
	c := &Config{file: name, lines: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if len(doc.Content) == 0 {
		return nil, &Error{File: name, Msg: "empty configuration"}
	}
	root := doc.Content[0]
	// yaml.v3's KnownFields is lost below custom unmarshalers and gives no
	// key path, so keys are checked against the struct tags first, by hand.
	if err := c.checkKeys(root, reflect.TypeOf(*c), ""); err != nil {
		return nil, err
	}
	if err := root.Decode(c); err != nil {
		var de *durationError
		if errors.As(err, &de) {
			return nil, c.errAt(c.pathAtLine(de.line), de.line, fmt.Sprintf("%q is not a duration (write e.g. 30s, 5m, 1h)", de.value))
		}
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			msg := te.Errors[0]
			var line int
			if _, err := fmt.Sscanf(msg, "line %d:", &line); err == nil {
				msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
				return nil, c.errAt(c.pathAtLine(line), line, msg)
			}
			return nil, &Error{File: name, Msg: msg}
		}
		return nil, &Error{File: name, Msg: err.Error()}
	}
	c.defaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) checkKeys(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	c.lines[path] = n.Line
	switch {
	case t == reflect.TypeOf(Duration(0)):
		return nil
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return c.errAt(path, n.Line, "must be a mapping of keys")
		}
		fields := map[string]reflect.StructField{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag != "" && tag != "-" && f.IsExported() {
				fields[tag] = f
			}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			f, ok := fields[k.Value]
			if !ok {
				return c.errAt(p, k.Line, fmt.Sprintf("unknown key (known keys: %s)", known(fields)))
			}
			if seen[k.Value] {
				return c.errAt(p, k.Line, "key given twice")
			}
			seen[k.Value] = true
			c.lines[p] = k.Line
			if err := c.checkKeys(v, f.Type, p); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Tag == "!!null" {
				return nil
			}
			return c.errAt(path, n.Line, "must be a list")
		}
		for i, item := range n.Content {
			if err := c.checkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	default:
		if n.Kind != yaml.ScalarNode {
			return c.errAt(path, n.Line, "must be a single value")
		}
	}
	return nil
}

func known(fields map[string]reflect.StructField) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (c *Config) errAt(path string, line int, msg string) error {
	return &Error{File: c.file, Line: line, Key: path, Msg: msg}
}

// errKey reports msg at the line where path was written (or its closest
// written parent, for a value that was left out).
func (c *Config) errKey(path, msg string) error {
	p := path
	for {
		if l, ok := c.lines[p]; ok {
			return c.errAt(path, l, msg)
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return c.errAt(path, 0, msg)
		}
		p = p[:i]
	}
}

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return &durationError{line: n.Line, value: n.Value}
	}
	*d = Duration(v)
	return nil
}

func (c *Config) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.StateDir, "/var/lib/airlock")
	def(&c.RuntimeDir, "/run/airlock")
	def(&c.LogLevel, "info")
	if c.Proxy.Port == 0 {
		c.Proxy.Port = 15432
	}
	if c.Proxy.MaxSessions == 0 {
		c.Proxy.MaxSessions = 4096
	}
	if c.Proxy.MaxSessionsPerUID == 0 {
		c.Proxy.MaxSessionsPerUID = min(1024, c.Proxy.MaxSessions)
	}
	def(&c.Proxy.Driver, "loop")
	def(&c.Intercept.Mode, "tree")
	def(&c.Intercept.AttachCgroup, "/")
	def(&c.Intercept.BPFFS, "/sys/fs/bpf")
	if c.Intercept.Mark == 0 {
		c.Intercept.Mark = 0xa1c0
	}
	if c.DNS.MinTTL == 0 {
		c.DNS.MinTTL = Duration(5 * time.Second)
	}
	if c.DNS.MaxTTL == 0 {
		c.DNS.MaxTTL = Duration(10 * time.Minute)
	}
	if c.DNS.Linger == 0 {
		c.DNS.Linger = max(Duration(time.Hour), c.DNS.MaxTTL)
	}
	if id := c.Identity; id != nil {
		if id.RefreshBefore == 0 {
			id.RefreshBefore = Duration(5 * time.Minute)
		}
		if id.ExpiryGrace == 0 {
			id.ExpiryGrace = Duration(time.Minute)
		}
		if id.KeysRefresh == 0 {
			id.KeysRefresh = Duration(15 * time.Minute)
		}
		for i := range id.Issuers {
			is := &id.Issuers[i]
			def(&is.Kind, "people")
			def(&is.Audience, is.ClientID)
			def(&is.Claims.Name, "preferred_username")
			def(&is.Claims.Email, "email")
			def(&is.Claims.Groups, "groups")
			if len(is.Scopes) == 0 && is.Kind == "people" {
				is.Scopes = []string{"openid", "profile", "email", "offline_access"}
			}
		}
	}
	if c.Audit.CommitInterval == 0 {
		c.Audit.CommitInterval = Duration(200 * time.Millisecond)
	}
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = Duration(time.Minute)
	}
	if c.Audit.SpoolMaxMB == 0 {
		c.Audit.SpoolMaxMB = 1024
	}
	if a := c.Approvals; a != nil {
		if a.Timeout == 0 {
			a.Timeout = Duration(5 * time.Minute)
		}
		if a.MaxGrant == 0 {
			a.MaxGrant = Duration(8 * time.Hour)
		}
		if a.TeamPoll == 0 {
			a.TeamPoll = Duration(time.Second)
		}
	}
	for i := range c.Connections {
		conn := &c.Connections[i]
		def(&conn.Protocol, "tcp")
		if pg := conn.Postgres; pg != nil {
			def(&pg.Upstream.TLS.Mode, "prefer")
			def(&pg.Credential.Mode, "ephemeral")
			def(&pg.Credential.AdminDatabase, "postgres")
			def(&pg.Credential.RolePrefix, "airlock_")
			if pg.Credential.Mode == "ephemeral" {
				def(&pg.Credential.Leftovers, "reassign")
			}
			if pg.Credential.TTL == 0 {
				pg.Credential.TTL = Duration(time.Hour)
			}
		}
	}
}

func (c *Config) validate() error {
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return c.errKey("log_level", fmt.Sprintf("%q is not one of debug, info, warn, error", c.LogLevel))
	}
	for _, d := range []struct{ key, v string }{{"state_dir", c.StateDir}, {"runtime_dir", c.RuntimeDir}, {"intercept.bpffs", c.Intercept.BPFFS}} {
		if !filepath.IsAbs(d.v) {
			return c.errKey(d.key, fmt.Sprintf("%q must be an absolute path", d.v))
		}
	}
	switch c.Intercept.Mode {
	case "tree":
		if len(c.Intercept.Executables) == 0 {
			return c.errKey("intercept.executables", "tree mode needs at least one executable name or path (e.g. cursor)")
		}
	case "user":
		if len(c.Intercept.Users) == 0 {
			return c.errKey("intercept.users", "user mode needs at least one user name or uid (the agent's user)")
		}
	case "cgroup", "all":
	default:
		return c.errKey("intercept.mode", fmt.Sprintf("%q is not one of tree, cgroup, user, all", c.Intercept.Mode))
	}
	if err := c.validateInterceptAddrs(); err != nil {
		return err
	}
	if !strings.HasPrefix(c.Intercept.AttachCgroup, "/") {
		return c.errKey("intercept.attach_cgroup", "must start with / (it is relative to the cgroup v2 mount)")
	}
	for i, p := range c.Intercept.Cgroups {
		if !strings.HasPrefix(p, "/") {
			return c.errKey(fmt.Sprintf("intercept.cgroups[%d]", i), "must start with / (it is relative to the cgroup v2 mount)")
		}
	}
	for i, s := range c.DNS.Servers {
		if _, err := netip.ParseAddrPort(s); err != nil {
			return c.errKey(fmt.Sprintf("dns.servers[%d]", i), fmt.Sprintf("%q is not ip:port", s))
		}
	}
	if c.DNS.MinTTL > c.DNS.MaxTTL {
		return c.errKey("dns.min_ttl", "is larger than dns.max_ttl")
	}
	if c.DNS.Linger < c.DNS.MaxTTL {
		return c.errKey("dns.linger", fmt.Sprintf("%v is shorter than dns.max_ttl (%v): a client may still hold an address that long after DNS dropped it",
			c.DNS.Linger.D(), c.DNS.MaxTTL.D()))
	}
	if c.Proxy.MaxSessions < 0 {
		return c.errKey("proxy.max_sessions", "must be positive")
	}
	if c.Proxy.MaxSessionsPerUID < 0 || c.Proxy.MaxSessionsPerUID > c.Proxy.MaxSessions {
		return c.errKey("proxy.max_sessions_per_uid", fmt.Sprintf("must be from 1 to proxy.max_sessions (%d)", c.Proxy.MaxSessions))
	}
	if c.Proxy.Driver != "goroutines" && c.Proxy.Driver != "loop" {
		return c.errKey("proxy.driver", fmt.Sprintf("%q: want goroutines or loop", c.Proxy.Driver))
	}
	names := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		key := fmt.Sprintf("targets[%d]", i)
		if t.Name == "" {
			return c.errKey(key+".name", "every target needs a name")
		}
		if names[t.Name] {
			return c.errKey(key+".name", fmt.Sprintf("target %q is defined twice", t.Name))
		}
		names[t.Name] = true
		if err := parseAddress(t); err != nil {
			return c.errKey(key+".address", err.Error())
		}
		if err := notLocal(t); err != nil {
			return c.errKey(key+".address", err.Error())
		}
	}
	if err := c.validateIdentity(); err != nil {
		return err
	}
	if err := c.validateAudit(); err != nil {
		return err
	}
	if err := c.validateApprovals(); err != nil {
		return err
	}
	claimed := map[string]string{}
	connNames := map[string]bool{}
	for i := range c.Connections {
		conn := &c.Connections[i]
		key := fmt.Sprintf("connections[%d]", i)
		if conn.Name == "" {
			return c.errKey(key+".name", "every connection needs a name")
		}
		if connNames[conn.Name] {
			return c.errKey(key+".name", fmt.Sprintf("connection %q is defined twice", conn.Name))
		}
		connNames[conn.Name] = true
		if len(conn.Targets) == 0 {
			return c.errKey(key+".targets", "a connection needs at least one target")
		}
		for j, tn := range conn.Targets {
			if !names[tn] {
				return c.errKey(fmt.Sprintf("%s.targets[%d]", key, j), fmt.Sprintf("no target named %q", tn))
			}
			if other, ok := claimed[tn]; ok {
				return c.errKey(fmt.Sprintf("%s.targets[%d]", key, j), fmt.Sprintf("target %q is already served by connection %q", tn, other))
			}
			claimed[tn] = conn.Name
		}
		if err := c.validateAccess(key, conn); err != nil {
			return err
		}
		if conn.RequireGrant && (c.Approvals == nil || c.Approvals.ApproversGroup == "") {
			return c.errKey(key+".require_grant", "grants need approvers: set approvals.approvers_group")
		}
		switch conn.Protocol {
		case "tcp":
			if conn.Postgres != nil {
				return c.errKey(key+".postgres", "only a connection with protocol: postgres takes a postgres section")
			}
		case "postgres":
			if conn.Postgres == nil {
				return c.errKey(key+".postgres", "protocol postgres needs a postgres section (upstream, databases, credential)")
			}
			if err := c.validatePostgres(key+".postgres", conn); err != nil {
				return err
			}
		default:
			return c.errKey(key+".protocol", fmt.Sprintf("%q is not one of postgres, tcp", conn.Protocol))
		}
	}
	return c.validateMasking(connNames)
}

// validateMasking checks the masking rules (not the key file, which only
// the daemon reads) and that their scopes name configured connections.
func (c *Config) validateMasking(connNames map[string]bool) error {
	if c.Masking == nil {
		return nil
	}
	if err := c.Masking.Validate(); err != nil {
		var fe *mask.FieldError
		if errors.As(err, &fe) {
			return c.errKey("masking."+fe.Path, fe.Msg)
		}
		return c.errKey("masking", err.Error())
	}
	for i, r := range c.Masking.Rules {
		for j, n := range r.Connections {
			if !connNames[n] {
				return c.errKey(fmt.Sprintf("masking.rules[%d].connections[%d]", i, j), fmt.Sprintf("%q is not a configured connection", n))
			}
		}
		for j, p := range r.Processes {
			if p != "agent" && p != "person" {
				return c.errKey(fmt.Sprintf("masking.rules[%d].processes[%d]", i, j), fmt.Sprintf("%q is not one of agent, person", p))
			}
		}
	}
	return c.validateCompliance()
}

// validateCompliance checks masking.compliance: one public key, given
// inline or as a root-owned file (read by the daemon at start).
func (c *Config) validateCompliance() error {
	cp := c.Masking.Compliance
	if cp == nil {
		return nil
	}
	switch {
	case cp.Recipient != "" && cp.RecipientFile != "":
		return c.errKey("masking.compliance", "give recipient or recipient_file, not both")
	case cp.Recipient != "":
		if _, err := compliance.ParseRecipients(cp.Recipient); err != nil {
			return c.errKey("masking.compliance.recipient", err.Error())
		}
	case cp.RecipientFile != "":
		if !filepath.IsAbs(cp.RecipientFile) {
			return c.errKey("masking.compliance.recipient_file", "must be an absolute path")
		}
	default:
		return c.errKey("masking.compliance", "needs recipient (an age public key, age1…) or recipient_file")
	}
	if cp.MaxBytes < 0 || cp.MaxBytes > 16<<20 {
		return c.errKey("masking.compliance.max_bytes", "must be from 1 to 16777216 bytes (0: the default, 65536)")
	}
	return nil
}

func (c *Config) validatePostgres(key string, conn *Connection) error {
	pg := conn.Postgres
	first, _ := c.TargetByName(conn.Targets[0])
	if pg.Upstream.Host == "" {
		pg.Upstream.Host = first.Host
		if pg.Upstream.Host == "" && first.Prefix.IsSingleIP() {
			pg.Upstream.Host = first.Prefix.Addr().String()
		}
		if pg.Upstream.Host == "" {
			return c.errKey(key+".upstream.host", "needed when the first target is a CIDR range")
		}
	}
	if pg.Upstream.Port == 0 {
		pg.Upstream.Port = first.Port
	}
	switch pg.Upstream.TLS.Mode {
	case "disable", "prefer", "require":
	case "verify-full":
		if pg.Upstream.TLS.CAFile == "" {
			return c.errKey(key+".upstream.tls.ca_file", "verify-full needs a CA file")
		}
	default:
		return c.errKey(key+".upstream.tls.mode", fmt.Sprintf("%q is not one of disable, prefer, require, verify-full", pg.Upstream.TLS.Mode))
	}
	if len(pg.Databases) == 0 {
		return c.errKey(key+".databases", "list the databases sessions may open (at least one)")
	}
	cr := &pg.Credential
	switch cr.Mode {
	case "ephemeral":
		if cr.AdminUser == "" || cr.AdminPasswordFile == "" {
			return c.errKey(key+".credential", "ephemeral mode needs admin_user and admin_password_file")
		}
		if len(conn.Access) > 0 {
			if len(cr.GroupRoles) > 0 {
				return c.errKey(key+".credential.group_roles", "with access rules, a session's roles come from access[].roles of the person's groups; remove group_roles")
			}
		} else if len(cr.GroupRoles) == 0 {
			return c.errKey(key+".credential.group_roles", "ephemeral roles must be granted at least one group role")
		}
		if cr.User != "" || cr.PasswordFile != "" {
			return c.errKey(key+".credential", "user and password_file belong to static mode")
		}
		if cr.TTL.D() < 5*time.Second {
			return c.errKey(key+".credential.ttl", "must be at least 5s")
		}
		switch cr.Leftovers {
		case "reassign":
		case "drop":
			if cr.LeftoversOwner != "" {
				return c.errKey(key+".credential.leftovers_owner", "only applies with leftovers: reassign")
			}
		default:
			return c.errKey(key+".credential.leftovers", fmt.Sprintf("%q is not one of reassign, drop", cr.Leftovers))
		}
		if cr.LeftoversOwner != "" && cr.LeftoversOwner == cr.AdminUser {
			return c.errKey(key+".credential.leftovers_owner", "must not be the admin role: a SECURITY DEFINER function a session left behind would run with its rights")
		}
	case "static":
		if cr.User == "" || cr.PasswordFile == "" {
			return c.errKey(key+".credential", "static mode needs user and password_file")
		}
		for i, a := range conn.Access {
			if len(a.Roles) > 0 {
				return c.errKey(fmt.Sprintf("%s.access[%d].roles", strings.TrimSuffix(key, ".postgres"), i),
					"a static credential cannot be granted roles per session; use mode: ephemeral")
			}
		}
		if cr.Leftovers != "" || cr.LeftoversOwner != "" {
			return c.errKey(key+".credential", "leftovers and leftovers_owner belong to ephemeral mode")
		}
	default:
		return c.errKey(key+".credential.mode", fmt.Sprintf("%q is not one of ephemeral, static", cr.Mode))
	}
	return nil
}

func (c *Config) validateAudit() error {
	a := &c.Audit
	switch {
	case a.Store == "" || filepath.IsAbs(a.Store):
		if a.PasswordFile != "" {
			return c.errKey("audit.password_file", "only a postgres:// store takes a password file")
		}
	case strings.HasPrefix(a.Store, "postgres://") || strings.HasPrefix(a.Store, "postgresql://"):
		u, err := url.Parse(a.Store)
		if err != nil || u.Host == "" {
			return c.errKey("audit.store", "is not a valid postgres:// URL (postgres://user@host:5432/db?sslmode=verify-full)")
		}
		if _, has := u.User.Password(); has {
			return c.errKey("audit.store", "must not hold a password: put it in audit.password_file (owned by root, mode 600)")
		}
		if a.PasswordFile != "" && !filepath.IsAbs(a.PasswordFile) {
			return c.errKey("audit.password_file", "must be an absolute path")
		}
	default:
		return c.errKey("audit.store", "must be empty (SQLite in state_dir), an absolute file path, or a postgres:// URL")
	}
	if a.RetentionDays < 0 {
		return c.errKey("audit.retention_days", "must be 0 (keep for ever) or a number of days")
	}
	if d := a.CommitInterval.D(); d < time.Millisecond || d > 10*time.Second {
		return c.errKey("audit.commit_interval", "must be between 1ms and 10s")
	}
	if a.CheckpointInterval.D() < time.Second {
		return c.errKey("audit.checkpoint_interval", "must be at least 1s")
	}
	if a.SpoolMaxMB < 1 {
		return c.errKey("audit.spool_max_mb", "must be at least 1")
	}
	if n := a.SampleRows; n != nil && (*n < 0 || *n > 1000) {
		return c.errKey("audit.sample_rows", "must be from 0 (no result samples) to 1000")
	}
	if n := a.SampleBytes; n != nil && (*n < 0 || *n > 1<<20) {
		return c.errKey("audit.sample_bytes", "must be from 0 (no result samples) to 1048576")
	}
	return nil
}

// parseAddress accepts host:port, ip:port, [v6]:port and CIDR:port.
func parseAddress(t *Target) error {
	a := t.Address
	if a == "" {
		return errors.New("every target needs an address (host:port or CIDR:port)")
	}
	i := strings.LastIndex(a, ":")
	if i <= 0 {
		return fmt.Errorf("%q has no port (write host:port or CIDR:port)", a)
	}
	hostPart, portPart := a[:i], a[i+1:]
	port, err := strconv.ParseUint(portPart, 10, 16)
	if err != nil || port == 0 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", a, portPart)
	}
	t.Port = uint16(port)
	hostPart = strings.TrimSuffix(strings.TrimPrefix(hostPart, "["), "]")
	if strings.Contains(hostPart, "/") {
		p, err := netip.ParsePrefix(hostPart)
		if err != nil {
			return fmt.Errorf("%q: %q is not a CIDR range", a, hostPart)
		}
		t.Prefix = p.Masked()
		return nil
	}
	if ip, err := netip.ParseAddr(hostPart); err == nil {
		ip = ip.Unmap()
		t.Prefix = netip.PrefixFrom(ip, ip.BitLen())
		return nil
	}
	if strings.Contains(hostPart, ":") || hostPart == "" || !validHostname(hostPart) {
		return fmt.Errorf("%q: %q is neither an IP address, a CIDR range nor a hostname", a, hostPart)
	}
	if ip := net.ParseIP(hostPart); ip != nil {
		return fmt.Errorf("%q: %q is not a valid address", a, hostPart)
	}
	t.Host = strings.TrimSuffix(hostPart, ".")
	return nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

type durationError struct {
	line  int
	value string
}

func (e *durationError) Error() string {
	return fmt.Sprintf("line %d: bad duration %q", e.line, e.value)
}

// pathAtLine finds the key written on line, for errors raised where only the
// line is known.
func (c *Config) pathAtLine(line int) string {
	best := ""
	for p, l := range c.lines {
		if l == line && len(p) > len(best) {
			best = p
		}
	}
	return best
}

// validateInterceptAddrs resolves intercept.users to uids and parses the
// network namespace addresses.
func (c *Config) validateInterceptAddrs() error {
	ic := &c.Intercept
	ic.UIDs = nil
	for i, u := range ic.Users {
		uid, err := lookupUID(u)
		if err != nil {
			return c.errKey(fmt.Sprintf("intercept.users[%d]", i), err.Error())
		}
		ic.UIDs = append(ic.UIDs, uid)
	}
	if len(ic.Users) > 0 && ic.Mode != "user" {
		return c.errKey("intercept.users", fmt.Sprintf("only used in mode: user (mode is %s)", ic.Mode))
	}
	ic.NetnsAddrs = nil
	var have4, have6 bool
	add := func(key, s string) error {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return c.errKey(key, fmt.Sprintf("%q is not an IP address", s))
		}
		a = a.Unmap()
		if a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return c.errKey(key, fmt.Sprintf("%s is not an address other network namespaces can reach (use the host's address on the bridge or node network)", a))
		}
		if (a.Is4() && have4) || (a.Is6() && have6) {
			return c.errKey(key, fmt.Sprintf("%s: at most one address per family", a))
		}
		have4, have6 = have4 || a.Is4(), have6 || a.Is6()
		ic.NetnsAddrs = append(ic.NetnsAddrs, a)
		return nil
	}
	for i, s := range ic.NetnsAddresses {
		if err := add(fmt.Sprintf("intercept.netns_addresses[%d]", i), s); err != nil {
			return err
		}
	}
	if ic.NetnsAddressEnv != "" {
		v, ok := os.LookupEnv(ic.NetnsAddressEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return c.errKey("intercept.netns_address_env", fmt.Sprintf("environment variable %s is not set (in a DaemonSet, set it from status.hostIP)", ic.NetnsAddressEnv))
		}
		if err := add("intercept.netns_address_env", v); err != nil {
			return err
		}
	}
	return nil
}

// lookupUID accepts a user name or a numeric uid.
func lookupUID(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, fmt.Errorf("no user %q on this machine (write a user name or a numeric uid)", s)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has uid %q, which is not a number", s, u.Uid)
	}
	return uint32(n), nil
}

var (
	loopback4 = netip.MustParsePrefix("127.0.0.0/8")
	loopback6 = netip.MustParsePrefix("::1/128")
)

// notLocal refuses targets on this machine's loopback (or the unspecified
// address, which connect() also sends to this machine): the kernel never
// redirects them, so they would silently go direct.
func notLocal(t *Target) error {
	const hint = "loopback destinations are never intercepted (the proxy itself lives there); register the server's real address or hostname"
	if t.Host != "" {
		h := strings.ToLower(strings.TrimSuffix(t.Host, "."))
		if h == "localhost" || strings.HasSuffix(h, ".localhost") || h == "ip6-localhost" || h == "ip6-loopback" {
			return fmt.Errorf("%q is this machine's loopback: %s", t.Address, hint)
		}
		return nil
	}
	p := t.Prefix
	if !p.IsValid() {
		return nil
	}
	if p.Addr().Is4() && (p.Overlaps(loopback4) || p.Contains(netip.IPv4Unspecified())) ||
		p.Addr().Is6() && (p.Overlaps(loopback6) || p.Contains(netip.IPv6Unspecified())) {
		return fmt.Errorf("%q covers this machine's loopback or unspecified address: %s", t.Address, hint)
	}
	return nil
}

func (c *Config) validateIdentity() error {
	id := c.Identity
	if id == nil {
		return nil
	}
	if len(id.Issuers) == 0 {
		return c.errKey("identity.issuers", "list at least one trusted issuer (or remove the identity section)")
	}
	names, urls := map[string]bool{}, map[string]bool{}
	for i := range id.Issuers {
		is := &id.Issuers[i]
		key := fmt.Sprintf("identity.issuers[%d]", i)
		if is.Name == "" {
			return c.errKey(key+".name", "every issuer needs a name")
		}
		if names[is.Name] {
			return c.errKey(key+".name", fmt.Sprintf("issuer %q is defined twice", is.Name))
		}
		names[is.Name] = true
		u, err := url.Parse(is.URL)
		if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname()))) {
			return c.errKey(key+".url", fmt.Sprintf("%q must be an https URL (http only on loopback, for tests)", is.URL))
		}
		if urls[is.URL] {
			return c.errKey(key+".url", fmt.Sprintf("issuer URL %q is listed twice", is.URL))
		}
		urls[is.URL] = true
		if is.Audience == "" {
			return c.errKey(key+".audience", "set audience (the aud tokens must carry) or client_id")
		}
		switch is.Kind {
		case "people":
			if is.ClientID == "" {
				return c.errKey(key+".client_id", "a people issuer needs the client id `airlock login` uses")
			}
		case "workload":
		default:
			return c.errKey(key+".kind", fmt.Sprintf("%q is not one of people, workload", is.Kind))
		}
	}
	if id.ExpiryGrace.D() > time.Hour {
		return c.errKey("identity.expiry_grace", "at most 1h")
	}
	if id.KeysRefresh.D() < time.Second {
		return c.errKey("identity.keys_refresh", "at least 1s")
	}
	return nil
}

func (c *Config) validateAccess(key string, conn *Connection) error {
	seen := map[string]bool{}
	for i, a := range conn.Access {
		k := fmt.Sprintf("%s.access[%d]", key, i)
		if a.Group == "" {
			return c.errKey(k+".group", "every access rule names a group")
		}
		if seen[a.Group] {
			return c.errKey(k+".group", fmt.Sprintf("group %q is listed twice", a.Group))
		}
		seen[a.Group] = true
		for j, r := range a.Roles {
			if r == "" {
				return c.errKey(fmt.Sprintf("%s.roles[%d]", k, j), "empty role name")
			}
		}
		if conn.Protocol == "postgres" && conn.Postgres != nil && conn.Postgres.Credential.Mode == "ephemeral" && len(a.Roles) == 0 {
			return c.errKey(k+".roles", "list the upstream group roles this group's sessions get (at least one)")
		}
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateApprovals() error {
	a := c.Approvals
	if a == nil {
		return nil
	}
	if a.ApproversGroup == "" {
		return c.errKey("approvals.approvers_group", "name the group whose members decide (their `airlock login` proves it)")
	}
	if a.Timeout.D() < time.Second || a.Timeout.D() > 24*time.Hour {
		return c.errKey("approvals.timeout", "from 1s to 24h")
	}
	if a.MaxGrant.D() < time.Minute {
		return c.errKey("approvals.max_grant", "at least 1m")
	}
	if a.TeamPoll.D() < 50*time.Millisecond || a.TeamPoll.D() > time.Minute {
		return c.errKey("approvals.team_poll", "from 50ms to 1m")
	}
	if a.WebhookURL != "" {
		u, err := url.Parse(a.WebhookURL)
		if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname()))) {
			return c.errKey("approvals.webhook_url", "must be an https URL (http only on loopback, for tests)")
		}
	}
	if a.WebhookTokenFile != "" && !filepath.IsAbs(a.WebhookTokenFile) {
		return c.errKey("approvals.webhook_token_file", "must be an absolute path")
	}
	for i, p := range a.HoldStatements {
		if _, err := regexp.Compile(p); err != nil {
			return c.errKey(fmt.Sprintf("approvals.hold_statements[%d]", i), fmt.Sprintf("not a regular expression: %v", err))
		}
	}
	return nil
}
