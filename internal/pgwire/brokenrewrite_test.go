package pgwire

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// brokenStage answers Replace with bytes that are not a whole message for
// every row (row) or every RowDescription (not row) whose first value or
// column name contains "secret": a stage bug, never the client's doing.
type brokenStage struct{ row bool }

func (s brokenStage) ServerTypes() string {
	if s.row {
		return "D"
	}
	return "T"
}

func (s brokenStage) Server(m *ServerMsg) Verdict {
	if s.row {
		var r pgproto3.DataRow
		if r.Decode(m.Body) != nil || len(r.Values) == 0 || !strings.Contains(string(r.Values[0]), "secret") {
			return Verdict{}
		}
	} else if !strings.Contains(string(m.Body), "secret") {
		return Verdict{}
	}
	return Verdict{Action: Replace, Msgs: []byte{m.Type, 0, 0, 0, 99, 'x'}} // claims 99 bytes, has 1
}

// TestBrokenRewriteFailsClosed: a server stage whose rewrite is not whole
// messages ends the session with an ErrorResponse (XX000); neither the
// broken bytes nor the original (what a masking stage meant to hide) reach
// the client, and the session before it worked. Both drivers.
func TestBrokenRewriteFailsClosed(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, driver := range []string{DriverLoop, DriverGoroutines} {
		for _, row := range []bool{true, false} {
			name := driver + "/RowDescription"
			if row {
				name = driver + "/DataRow"
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, pg, func(o *Options) {
					o.Driver = driver
					o.Stages = func(*session.Session) Stages { return Stages{Server: []ServerStage{brokenStage{row: row}}} }
				})
				c := h.connect(ctx(t), t)
				var v string
				if err := c.QueryRow(ctx(t), "select 'public'", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "public" {
					t.Fatalf("before the broken rewrite: %v %q", err, v)
				}
				sql := "select 'top secret value'"
				if !row {
					sql = "select 'x' as secret"
				}
				err := c.QueryRow(ctx(t), sql, pgx.QueryExecModeSimpleProtocol).Scan(&v)
				if pgCode(err) != codeInternal {
					t.Fatalf("broken rewrite: got %v (value %q), want SQLSTATE %s", err, v, codeInternal)
				}
				if strings.Contains(v, "secret") {
					t.Fatalf("the original row reached the client: %q", v)
				}
				if !strings.Contains(err.Error(), "airlock ended this session") {
					t.Fatalf("error does not say what happened: %v", err)
				}
			})
		}
	}
}
