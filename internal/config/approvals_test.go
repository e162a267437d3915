package config

import (
	"strings"
	"testing"
	"time"
)

func TestApprovals(t *testing.T) {
	base := strings.Replace(withIdentity, "    access:\n", "    require_grant: true\n    access:\n", 1)
	cases := []struct {
		name, extra, wantErr string
	}{
		{name: "defaults", extra: "approvals:\n  approvers_group: dba\n"},
		{name: "no group", extra: "approvals:\n  timeout: 1m\n", wantErr: "approvals.approvers_group"},
		{name: "bad regex", extra: "approvals:\n  approvers_group: dba\n  hold_statements: ['(']\n", wantErr: ":3: approvals.hold_statements[0]"},
		{name: "plain http webhook", extra: "approvals:\n  approvers_group: dba\n  webhook_url: http://hooks.example.com/x\n", wantErr: "approvals.webhook_url"},
		{name: "timeout too short", extra: "approvals:\n  approvers_group: dba\n  timeout: 10ms\n", wantErr: "approvals.timeout"},
		{name: "team poll too fast", extra: "approvals:\n  approvers_group: dba\n  team_poll: 1ms\n", wantErr: ":3: approvals.team_poll"},
		{name: "unknown key", extra: "approvals:\n  approvers: dba\n", wantErr: "unknown key"},
		{name: "grant without approvals", extra: "", wantErr: "require_grant"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("airlock.yaml", []byte(tc.extra+base))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Approvals.Timeout.D() != 5*time.Minute || c.Approvals.MaxGrant.D() != 8*time.Hour || c.Approvals.TeamPoll.D() != time.Second || !c.Connections[0].RequireGrant {
				t.Fatalf("approvals %+v", c.Approvals)
			}
		})
	}
}
