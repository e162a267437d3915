package pgcred

import (
	"context"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// AcquireRoles grants exactly the roles asked for (a person's roles from
// the access rules), never the configured defaults on top, and only roles
// checked at start.
func TestAcquireRoles(t *testing.T) {
	s := startPG(t, pgtest.Options{})
	ctx := context.Background()
	rec := newRecorder(t)
	e := newEph(t, connConfig(t, s, "pgcred_admin", "admin-pw-5f1e", "postgres"), EphemeralOptions{
		GroupRoles: []string{"agent_read"}, AccessRoles: []string{"agent_write"}})

	cases := []struct {
		name       string
		roles      []string
		read, wrte string // pg_has_role answers
		wantErr    string
	}{
		{"write only", []string{"agent_write"}, "false", "true", ""},
		{"both", []string{"agent_read", "agent_write"}, "true", "true", ""},
		{"none", []string{}, "false", "false", ""},
		{"unchecked role", []string{"unrelated"}, "", "", "was not checked at start"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sess := newSess(rec, "alice")
			l, err := e.AcquireRoles(ctx, sess, "postgres", c.roles)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("AcquireRoles = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rec.secret(l.Password())
			defer l.Release(ctx)
			conn, err := loginAs(ctx, s, l, "postgres")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var read, write bool
			if err := conn.QueryRow(ctx, `SELECT pg_has_role('agent_read', 'MEMBER'), pg_has_role('agent_write', 'MEMBER')`).Scan(&read, &write); err != nil {
				t.Fatal(err)
			}
			if got := []string{boolText(read), boolText(write)}; got[0] != c.read || got[1] != c.wrte {
				t.Fatalf("pg_has_role(read, write) = %v, want %s %s", got, c.read, c.wrte)
			}
		})
	}
}

func boolText(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
