package access

import (
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/identity"
)

func TestDecide(t *testing.T) {
	rules := Rules{Connection: "appdb", Enforce: true, Rules: []Rule{
		{Group: "analysts", Roles: []string{"app_readonly"}},
		{Group: "dba", Roles: []string{"app_admin", "app_readonly"}},
	}}
	cases := []struct {
		name    string
		rules   Rules
		groups  []string
		roles   string
		wantErr string
	}{
		{"analyst", rules, []string{"analysts"}, "app_readonly", ""},
		{"dba", rules, []string{"dba", "staff"}, "app_admin,app_readonly", ""},
		{"both", rules, []string{"analysts", "dba"}, "app_admin,app_readonly", ""},
		{"no group", rules, []string{"staff"}, "", "not in a group allowed on connection appdb (allowed: analysts, dba)"},
		{"no groups at all", rules, nil, "", "groups: none"},
		{"deny by default", Rules{Connection: "appdb", Enforce: true}, []string{"dba"}, "", "admits no group"},
		{"not enforced", Rules{Connection: "appdb"}, nil, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := c.rules.Decide(identity.Person{Name: "alice", Groups: c.groups})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || strings.Join(d.Roles, ",") != c.roles {
				t.Fatalf("Decide = %+v, %v; want roles %q", d, err, c.roles)
			}
		})
	}
}
