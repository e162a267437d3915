package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const valid = `
proxy:
  port: 15432
intercept:
  mode: tree
  executables: [cursor, /opt/Cursor.AppImage]
dns:
  min_ttl: 2s
targets:
  - name: appdb
    address: db.internal:5432
  - name: subnet
    address: 10.20.0.0/16:5432
  - name: v6
    address: "[fd00::5]:5432"
  - name: api
    address: 192.0.2.7:443
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb, subnet]
    postgres:
      databases: [app]
      credential:
        admin_user: airlock_admin
        admin_password_file: /etc/airlock/secrets/appdb-admin
        group_roles: [app_readonly]
        ttl: 30m
`

func TestParseValid(t *testing.T) {
	c, err := Parse("airlock.yaml", []byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy.Port != 15432 || c.Intercept.Mode != "tree" || c.DNS.MinTTL.D() != 2*time.Second ||
		c.DNS.Linger.D() != time.Hour || c.Proxy.MaxSessions != 4096 || c.Proxy.MaxSessionsPerUID != 1024 {
		t.Fatalf("unexpected values: %+v", c)
	}
	want := []struct {
		name, host, prefix string
		port               uint16
	}{
		{"appdb", "db.internal", "invalid Prefix", 5432},
		{"subnet", "", "10.20.0.0/16", 5432},
		{"v6", "", "fd00::5/128", 5432},
		{"api", "", "192.0.2.7/32", 443},
	}
	for i, w := range want {
		got := c.Targets[i]
		if got.Name != w.name || got.Host != w.host || got.Prefix.String() != w.prefix || got.Port != w.port {
			t.Errorf("target %d = %+v, want %+v", i, got, w)
		}
	}
	pg := c.Connections[0].Postgres
	if pg.Upstream.Host != "db.internal" || pg.Upstream.Port != 5432 || pg.Upstream.TLS.Mode != "prefer" {
		t.Errorf("upstream defaults: %+v", pg.Upstream)
	}
	if pg.Credential.Mode != "ephemeral" || pg.Credential.TTL.D() != 30*time.Minute || pg.Credential.RolePrefix != "airlock_" ||
		pg.Credential.Leftovers != "reassign" || pg.Credential.LeftoversOwner != "" {
		t.Errorf("credential: %+v", pg.Credential)
	}
	if a := c.Audit; a.Store != "" || a.RecordParams || a.CommitInterval.D() != 200*time.Millisecond || a.SpoolMaxMB != 1024 {
		t.Errorf("audit defaults: %+v", a)
	}
	if rows, bytes := c.Audit.Samples(); rows != 10 || bytes != 4096 {
		t.Errorf("sample defaults: %d rows, %d bytes", rows, bytes)
	}
	if conn, ok := c.ConnectionFor("subnet"); !ok || conn.Name != "appdb" {
		t.Errorf("ConnectionFor(subnet) = %v, %v", conn.Name, ok)
	}
	if _, ok := c.ConnectionFor("api"); ok {
		t.Errorf("api target has no connection")
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top key", "proxi:\n  port: 1\n", `airlock.yaml:1: proxi: unknown key`},
		{"unknown nested key", "intercept:\n  mode: all\n  colour: red\n", `airlock.yaml:3: intercept.colour: unknown key`},
		{"unknown key in list item", "targets:\n  - name: a\n    adress: x:1\n", `airlock.yaml:3: targets[0].adress: unknown key`},
		{"bad mode", "intercept:\n  mode: some\n", `airlock.yaml:2: intercept.mode: "some" is not one of tree, cgroup, user, all`},
		{"user needs users", "intercept:\n  mode: user\n", `intercept.users: user mode needs`},
		{"unknown user", "intercept:\n  mode: user\n  users: [no-such-user-airlock]\n", `airlock.yaml:3: intercept.users[0]: no user "no-such-user-airlock"`},
		{"users outside user mode", "intercept:\n  mode: all\n  users: [0]\n", `airlock.yaml:3: intercept.users: only used in mode: user`},
		{"loopback netns address", "intercept:\n  mode: all\n  netns_addresses: [127.0.0.1]\n", `airlock.yaml:3: intercept.netns_addresses[0]: 127.0.0.1 is not an address other network namespaces can reach`},
		{"two v4 netns addresses", "intercept:\n  mode: all\n  netns_addresses: [10.0.0.1, 10.0.0.2]\n", `intercept.netns_addresses[1]: 10.0.0.2: at most one address per family`},
		{"missing netns env", "intercept:\n  mode: all\n  netns_address_env: AIRLOCK_TEST_UNSET_VAR\n", `airlock.yaml:3: intercept.netns_address_env: environment variable AIRLOCK_TEST_UNSET_VAR is not set`},
		{"loopback target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: 127.0.0.1:5432\n", `airlock.yaml:4: targets[0].address: "127.0.0.1:5432" covers this machine's loopback`},
		{"loopback v6 target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: '[::1]:5432'\n", `targets[0].address: "[::1]:5432" covers this machine's loopback`},
		{"v4-mapped loopback target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: '[::ffff:127.0.0.2]:5432'\n", `covers this machine's loopback`},
		{"loopback range target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: 127.0.0.0/16:5432\n", `covers this machine's loopback`},
		{"unspecified target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: 0.0.0.0:5432\n", `covers this machine's loopback or unspecified address`},
		{"localhost target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: localhost:5432\n", `airlock.yaml:4: targets[0].address: "localhost:5432" is this machine's loopback`},
		{"dot-localhost target", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: db.localhost.:5432\n", `is this machine's loopback`},
		{"tree needs executables", "intercept:\n  mode: tree\n", `intercept.executables: tree mode needs`},
		{"bad duration", "intercept:\n  mode: all\ndns:\n  min_ttl: soon\n", `airlock.yaml:4: dns.min_ttl: "soon" is not a duration`},
		{"port too large", "proxy:\n  port: 70000\n", `airlock.yaml:2`},
		{"no port", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: db.internal\n", `airlock.yaml:4: targets[0].address: "db.internal" has no port`},
		{"bad cidr", "intercept: {mode: all}\ntargets:\n  - name: a\n    address: 10.0.0.0/99:5432\n", `is not a CIDR range`},
		{"duplicate target", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\n  - {name: a, address: 'y:1'}\n", `airlock.yaml:4: targets[1].name: target "a" is defined twice`},
		{"unknown target ref", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    targets: [b]\n", `airlock.yaml:6: connections[0].targets[0]: no target named "b"`},
		{"postgres without section", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    protocol: postgres\n    targets: [a]\n", `protocol postgres needs a postgres section`},
		{"static without file", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    protocol: postgres\n    targets: [a]\n    postgres:\n      databases: [d]\n      credential:\n        mode: static\n        user: u\n", `static mode needs user and password_file`},
		{"linger below max_ttl", "intercept: {mode: all}\ndns:\n  max_ttl: 2h\n  linger: 1h\n", `airlock.yaml:4: dns.linger: 1h0m0s is shorter than dns.max_ttl`},
		{"negative max_sessions", "intercept: {mode: all}\nproxy:\n  max_sessions: -1\n", `airlock.yaml:3: proxy.max_sessions: must be positive`},
		{"unknown driver", "intercept: {mode: all}\nproxy:\n  driver: threads\n", `airlock.yaml:3: proxy.driver: "threads": want goroutines or loop`},
		{"per-uid cap above total", "intercept: {mode: all}\nproxy:\n  max_sessions: 10\n  max_sessions_per_uid: 11\n", `airlock.yaml:4: proxy.max_sessions_per_uid: must be from 1 to proxy.max_sessions (10)`},
		{"bad leftovers", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    protocol: postgres\n    targets: [a]\n    postgres:\n      databases: [d]\n      credential:\n        admin_user: adm\n        admin_password_file: /f\n        group_roles: [g]\n" + "        leftovers: keep\n", `airlock.yaml:14: connections[0].postgres.credential.leftovers: "keep" is not one of reassign, drop`},
		{"owner with drop", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    protocol: postgres\n    targets: [a]\n    postgres:\n      databases: [d]\n      credential:\n        admin_user: adm\n        admin_password_file: /f\n        group_roles: [g]\n" + "        leftovers: drop\n        leftovers_owner: o\n", `airlock.yaml:15: connections[0].postgres.credential.leftovers_owner: only applies with leftovers: reassign`},
		{"owner is admin", "intercept: {mode: all}\ntargets:\n  - {name: a, address: 'x:1'}\nconnections:\n  - name: c\n    protocol: postgres\n    targets: [a]\n    postgres:\n      databases: [d]\n      credential:\n        admin_user: adm\n        admin_password_file: /f\n        group_roles: [g]\n" + "        leftovers_owner: adm\n", `credential.leftovers_owner: must not be the admin role`},
		{"masking bad strategy", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      columns: [users.email]\n      strategy: blur\n", `airlock.yaml:6: masking.rules[0].strategy`},
		{"masking unknown key", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      colums: [users.email]\n", `airlock.yaml:5: masking.rules[0].colums: unknown key`},
		{"masking hash without key", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      columns: [users.email]\n      strategy: hash\n", `masking.key_file: rules[0] uses the hash strategy`},
		{"masking unknown connection", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      columns: [users.email]\n      strategy: redact\n      connections: [nope]\n", `airlock.yaml:7: masking.rules[0].connections[0]: "nope" is not a configured connection`},
		{"masking unknown process", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      columns: [users.email]\n      strategy: redact\n      processes: [robot]\n", `masking.rules[0].processes[0]: "robot" is not one of agent, person`},
		{"masking unknown detector", "intercept: {mode: all}\nmasking:\n  rules:\n    - name: r\n      detectors: [emial]\n      strategy: redact\n", `airlock.yaml:5: masking.rules[0].detectors`},
		{"not a mapping", "proxy: 5\n", `airlock.yaml:1: proxy: must be a mapping`},
		{"twice", "proxy:\n  port: 1\nproxy:\n  port: 2\n", `key given twice`},
		{"syntax", "proxy: [\n", `airlock.yaml`},
		{"empty", "", `empty configuration`},
		{"audit store password in url", "intercept: {mode: all}\naudit:\n  store: postgres://a:secret@db/audit\n", `airlock.yaml:3: audit.store: must not hold a password`},
		{"audit store relative", "intercept: {mode: all}\naudit:\n  store: audit.db\n", `audit.store: must be empty`},
		{"audit password file without postgres", "intercept: {mode: all}\naudit:\n  password_file: /etc/x\n", `audit.password_file: only a postgres`},
		{"audit retention negative", "intercept: {mode: all}\naudit:\n  retention_days: -1\n", `airlock.yaml:3: audit.retention_days`},
		{"audit commit window", "intercept: {mode: all}\naudit:\n  commit_interval: 1m\n", `audit.commit_interval: must be between`},
		{"audit sample rows negative", "intercept: {mode: all}\naudit:\n  sample_rows: -1\n", `airlock.yaml:3: audit.sample_rows: must be from 0`},
		{"audit sample bytes huge", "intercept: {mode: all}\naudit:\n  sample_bytes: 9999999\n", `airlock.yaml:3: audit.sample_bytes: must be from 0`},
		{"compliance without key", "intercept: {mode: all}\nmasking:\n  compliance:\n    max_bytes: 10\n", `masking.compliance: needs recipient`},
		{"compliance private key", "intercept: {mode: all}\nmasking:\n  compliance:\n    recipient: AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n", `airlock.yaml:4: masking.compliance.recipient: this is an age private key`},
		{"compliance bad key", "intercept: {mode: all}\nmasking:\n  compliance:\n    recipient: age1nope\n", `airlock.yaml:4: masking.compliance.recipient: not an age public key`},
		{"compliance relative file", "intercept: {mode: all}\nmasking:\n  compliance:\n    recipient_file: key.pub\n", `airlock.yaml:4: masking.compliance.recipient_file: must be an absolute path`},
		{"compliance both", "intercept: {mode: all}\nmasking:\n  compliance:\n    recipient: age1x\n    recipient_file: /k\n", `masking.compliance: give recipient or recipient_file, not both`},
		{"audit unknown key", "intercept: {mode: all}\naudit:\n  params: true\n", `airlock.yaml:3: audit.params: unknown key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("airlock.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// The commented examples shipped in deploy/examples must stay valid.
func TestExamplesParse(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/examples/*.yaml")
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("targets:\n  - {name: a, address: '[::1]:5'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
	})
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestInterceptSelection(t *testing.T) {
	t.Setenv("AIRLOCK_TEST_NODE_IP", "192.0.2.7")
	c, err := Parse("airlock.yaml", []byte("intercept:\n  mode: user\n  users: [root, \"4242\"]\n  netns_addresses: [\"2001:db8::1\"]\n  netns_address_env: AIRLOCK_TEST_NODE_IP\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Intercept.UIDs; len(got) != 2 || got[0] != 0 || got[1] != 4242 {
		t.Errorf("uids = %v, want [0 4242]", got)
	}
	if got := fmt.Sprint(c.Intercept.NetnsAddrs); got != "[2001:db8::1 192.0.2.7]" {
		t.Errorf("netns addresses = %s", got)
	}
	if !c.Intercept.ContainTrees() {
		t.Error("intercept.contain must default to true")
	}
	c, err = Parse("airlock.yaml", []byte("intercept:\n  mode: tree\n  executables: [cursor]\n  contain: false\n"))
	if err != nil || c.Intercept.ContainTrees() {
		t.Errorf("contain: false not honoured: %v", err)
	}
	// A target near loopback but not on it stays valid.
	if _, err := Parse("airlock.yaml", []byte("intercept: {mode: all}\ntargets:\n  - {name: a, address: '128.0.0.1:5432'}\n  - {name: b, address: 'localhostdb:5432'}\n")); err != nil {
		t.Errorf("non-loopback targets refused: %v", err)
	}
}

func TestSamplesOffAndCompliance(t *testing.T) {
	c, err := Parse("airlock.yaml", []byte("intercept: {mode: all}\naudit:\n  sample_rows: 0\n"+
		"masking:\n  compliance:\n    recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"))
	if err != nil {
		t.Fatal(err)
	}
	if rows, bytes := c.Audit.Samples(); rows != 0 || bytes != 0 {
		t.Errorf("sample_rows 0: %d rows, %d bytes; want off", rows, bytes)
	}
	if cp := c.Masking.Compliance; cp == nil || cp.Limit() != 64<<10 {
		t.Errorf("compliance: %+v", cp)
	}
}
