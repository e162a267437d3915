package pgwire

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// publishStage rewrites every row (its first value, to one of another
// length, so every row is replaced) and counts them where only the server
// side touches the count; Publish makes it visible.
type publishStage struct {
	mask      maskStage
	rows      int64
	published atomic.Int64
}

func (s *publishStage) ServerTypes() string { return "D" }

func (s *publishStage) Server(m *ServerMsg) Verdict {
	if out := s.Row(m); out != nil {
		return Verdict{Action: Replace, Msgs: out}
	}
	return Verdict{}
}

func (s *publishStage) Row(m *ServerMsg) []byte {
	out := s.mask.Row(m)
	if out != nil {
		s.rows++
	}
	return out
}

func (s *publishStage) Publish() { s.published.Store(s.rows) }

// TestPublishBeforeClientSees: a stage's counters are published before
// the rows they count can reach the client, whether a write holds one
// row or ends in the middle of a large result (every row replaced, so the
// writes are of gathered replacements). Both drivers.
func TestPublishBeforeClientSees(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, driver := range []string{DriverLoop, DriverGoroutines} {
		for _, rows := range []int{1, 20, 20000} {
			t.Run(driver+"/"+itoa(rows), func(t *testing.T) {
				st := &publishStage{mask: maskStage{column: 0, with: []byte("masked")}}
				h := newHarness(t, pg, func(o *Options) {
					o.Driver = driver
					o.Stages = func(*session.Session) Stages { return Stages{Server: []ServerStage{st}} }
				})
				c := h.connect(ctx(t), t)
				rs, err := c.Query(ctx(t), "select repeat('x', 200) from generate_series(1, "+itoa(rows)+")", pgx.QueryExecModeSimpleProtocol)
				if err != nil {
					t.Fatal(err)
				}
				seen := int64(0)
				for rs.Next() {
					var v string
					if err := rs.Scan(&v); err != nil {
						t.Fatal(err)
					}
					if v != "masked" {
						t.Fatalf("row %d not rewritten: %q", seen, strings.TrimRight(v, "x")+"…")
					}
					seen++
					if p := st.published.Load(); p < seen {
						t.Fatalf("the client has row %d, the stage published %d", seen, p)
					}
				}
				if err := rs.Err(); err != nil {
					t.Fatal(err)
				}
				if seen != int64(rows) || st.published.Load() != int64(rows) {
					t.Fatalf("client saw %d rows, stage published %d, want %d", seen, st.published.Load(), rows)
				}
			})
		}
	}
}
