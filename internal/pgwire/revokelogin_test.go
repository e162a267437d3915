package pgwire

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// revokingCreds hands out leases that also implement loginRevoker, as
// pgcred's ephemeral leases do.
type revokingCreds struct {
	*staticCreds
	err     error
	revoked atomic.Int32
}

type revokingLease struct {
	Lease
	c *revokingCreds
}

func (l revokingLease) RevokeLogin(context.Context) error {
	l.c.revoked.Add(1)
	return l.c.err
}

func (c *revokingCreds) Acquire(ctx context.Context, s *session.Session, db string) (Lease, error) {
	l, err := c.staticCreds.Acquire(ctx, s, db)
	if err != nil {
		return nil, err
	}
	return revokingLease{Lease: l, c: c}, nil
}

func TestRevokeLoginAfterUpstreamLogin(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	tests := []struct {
		name string
		err  error
	}{
		{"revoked: the session goes on", nil},
		{"revoke failed: the session is refused", errors.New("admin cannot connect")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rc *revokingCreds
			h := newHarness(t, pg, func(o *Options) {
				rc = &revokingCreds{staticCreds: o.Credentials.(*staticCreds), err: tc.err}
				o.Credentials = rc
			})
			c, err := pgx.Connect(ctx(t), h.url("postgres"))
			if rc.revoked.Load() != 1 {
				t.Fatalf("RevokeLogin called %d times, want once", rc.revoked.Load())
			}
			if tc.err == nil {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer c.Close(ctx(t))
				var n int
				if err := c.QueryRow(ctx(t), "SELECT 1").Scan(&n); err != nil || n != 1 {
					t.Fatalf("query: %v", err)
				}
				return
			}
			if err == nil {
				c.Close(ctx(t))
				t.Fatal("session went on although its credential could not be secured")
			}
			if pgCode(err) != codeInvalidAuth {
				t.Fatalf("refusal %v, want SQLSTATE %s", err, codeInvalidAuth)
			}
			h.serveResults(1)
			if rc.released.Load() != 1 {
				t.Fatalf("lease released %d times, want once", rc.released.Load())
			}
		})
	}
}
