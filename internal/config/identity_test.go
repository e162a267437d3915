package config

import (
	"strings"
	"testing"
	"time"
)

const withIdentity = `
intercept:
  mode: all
identity:
  issuers:
    - name: corp
      url: https://login.example.com
      client_id: airlock
    - name: ci
      url: https://token.actions.githubusercontent.com
      audience: airlock
      kind: workload
      claims:
        name: repository
targets:
  - name: appdb
    address: db.internal:5432
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb]
    access:
      - group: analysts
        roles: [app_readonly]
      - group: dba
        roles: [app_admin]
    postgres:
      databases: [app]
      credential:
        admin_user: airlock_admin
        admin_password_file: /etc/airlock/secrets/appdb-admin
`

func TestIdentityDefaults(t *testing.T) {
	c, err := Parse("airlock.yaml", []byte(withIdentity))
	if err != nil {
		t.Fatal(err)
	}
	id := c.Identity
	if id.RefreshBefore.D() != 5*time.Minute || id.ExpiryGrace.D() != time.Minute || id.KeysRefresh.D() != 15*time.Minute {
		t.Fatalf("identity defaults: %+v", id)
	}
	corp, ci := id.Issuers[0], id.Issuers[1]
	if corp.Kind != "people" || corp.Audience != "airlock" || corp.Claims.Name != "preferred_username" ||
		corp.Claims.Groups != "groups" || strings.Join(corp.Scopes, " ") != "openid profile email offline_access" {
		t.Fatalf("people issuer defaults: %+v", corp)
	}
	if ci.Kind != "workload" || ci.Claims.Name != "repository" || len(ci.Scopes) != 0 {
		t.Fatalf("workload issuer: %+v", ci)
	}
	if a := c.Connections[0].Access; len(a) != 2 || a[1].Group != "dba" || a[1].Roles[0] != "app_admin" {
		t.Fatalf("access: %+v", a)
	}
}

func TestIdentityErrors(t *testing.T) {
	tests := []struct {
		name, from, to, want string
	}{
		{"http issuer", "url: https://login.example.com", "url: http://login.example.com", "airlock.yaml:7: identity.issuers[0].url: \"http://login.example.com\" must be an https URL"},
		{"bad kind", "kind: workload", "kind: robots", "identity.issuers[1].kind: \"robots\" is not one of people, workload"},
		{"no client id", "      client_id: airlock\n", "", "identity.issuers[0].audience: set audience"},
		{"unknown key", "client_id: airlock", "client_idd: airlock", "identity.issuers[0].client_idd: unknown key"},
		{"duplicate name", "name: ci", "name: corp", "issuer \"corp\" is defined twice"},
		{"group without roles", "        roles: [app_admin]\n", "", "connections[0].access[1].roles: list the upstream group roles"},
		{"group twice", "group: dba", "group: analysts", "group \"analysts\" is listed twice"},
		{"group_roles with access", "        admin_user: airlock_admin\n", "        admin_user: airlock_admin\n        group_roles: [x]\n", "remove group_roles"},
		{"no issuers", "identity:\n  issuers:\n", "identity:\n  refresh_before: 1m\n  old:\n", "identity.old: unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(withIdentity, tc.from, tc.to, 1)
			if src == withIdentity {
				t.Fatalf("replacement %q did not apply", tc.from)
			}
			_, err := Parse("airlock.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
