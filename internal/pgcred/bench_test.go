package pgcred

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

type discardSink struct{}

func (discardSink) Record(session.Event) {}

// BenchmarkAcquireRelease measures what a just-in-time role adds to opening a
// session, as the proxy does it. Each iteration opens, in turn:
//
//   - direct: pgx.Connect as a static SCRAM user (default 4096 iterations),
//     SELECT 1, close: the baseline, as pgbench -C sees it;
//   - jit: Acquire + pgx.Connect as the new role + SELECT 1, close, then
//     Release (timed apart: it runs after the client has left).
//
// Metrics: direct-ms and jit-ms per connection, added-ms = jit-ms - direct-ms
// (what the session setup costs over direct, the 15 ms target), release-ms.
// Both legs share one server and are interleaved, so load on the machine
// affects both alike.
func BenchmarkAcquireRelease(b *testing.B) {
	s := startPG(b, pgtest.Options{})
	ctx := context.Background()
	e, err := NewEphemeral(ctx, EphemeralOptions{
		Admin:      connConfig(b, s, "pgcred_admin", "admin-pw-5f1e", "postgres"),
		GroupRoles: []string{"agent_read"},
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	direct := connConfig(b, s, "pgcred_plain", "plain-pw-77aa", "postgres")
	s.Psql(b, "postgres", "GRANT SELECT ON things TO pgcred_plain")

	selectOne := func(c *pgx.Conn) {
		var n int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
			b.Fatalf("SELECT 1: %d %v", n, err)
		}
	}
	var directD, jitD, releaseD time.Duration
	// Warm up both paths (first backend start, catalog caches, pooled admin
	// connection) outside the measurement.
	for i := 0; i < 3; i++ {
		c, err := pgx.ConnectConfig(ctx, direct)
		if err != nil {
			b.Fatal(err)
		}
		selectOne(c)
		c.Close(ctx)
		l, err := e.Acquire(ctx, benchSession(), "postgres")
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c, err := pgx.ConnectConfig(ctx, direct)
		if err != nil {
			b.Fatal(err)
		}
		selectOne(c)
		c.Close(ctx)
		t1 := time.Now()
		l, err := e.Acquire(ctx, benchSession(), "postgres")
		if err != nil {
			b.Fatal(err)
		}
		cfg := direct.Copy()
		cfg.User, cfg.Password = l.User(), l.Password()
		c, err = pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		selectOne(c)
		c.Close(ctx)
		t2 := time.Now()
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		directD += t1.Sub(t0)
		jitD += t2.Sub(t1)
		releaseD += t3.Sub(t2)
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(b.N) / 1e6 }
	b.ReportMetric(ms(directD), "direct-ms")
	b.ReportMetric(ms(jitD), "jit-ms")
	b.ReportMetric(ms(jitD)-ms(directD), "added-ms")
	b.ReportMetric(ms(releaseD), "release-ms")
}

func benchSession() *session.Session {
	sess := session.New(discardSink{})
	sess.Person = identity.Person{Name: "bench", UID: 1000}
	return sess
}

// BenchmarkSCRAMVerifier is the client-side PBKDF2 cost at a given
// iteration count: Acquire pays it once to build the verifier, and the
// upstream login pays it again to compute its proof.
func BenchmarkSCRAMVerifier(b *testing.B) {
	salt := make([]byte, 16)
	for _, iter := range []int{4096, 1024, scramIterations} {
		b.Run("iter="+strconv.Itoa(iter), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := scramVerifierSalt("Zm9vYmFyYmF6cXV4cXV1eFpt9vYmFyYmF6cXV4cXV1eA", salt, iter); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
