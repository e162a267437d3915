package pgwire

import (
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// want is the part of a statement event a test pins down.
type want struct {
	Protocol, SQL, Name, Tag, SQLState string
	Params                             []string
	Rows                               int64
}

func pick(s session.Statement) want {
	w := want{Protocol: s.Protocol, SQL: s.SQL, Tag: s.Tag, SQLState: s.SQLState, Params: s.Params, Rows: s.Rows}
	if !strings.HasPrefix(s.Name, "stmtcache_") {
		w.Name = s.Name
	}
	return w
}

func TestStatementEvents(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	tests := []struct {
		name string
		run  func(t *testing.T, c *pgx.Conn)
		want []want
	}{
		{"simple multi-statement", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.PgConn().Exec(ctx(t), "select 1; select g from generate_series(1,3) g; show search_path").ReadAll()
		}, []want{
			{Protocol: "simple", SQL: "select 1; select g from generate_series(1,3) g; show search_path", Tag: "SELECT 1", Rows: 1},
			{Protocol: "simple", SQL: "select 1; select g from generate_series(1,3) g; show search_path", Tag: "SELECT 3", Rows: 3},
			{Protocol: "simple", SQL: "select 1; select g from generate_series(1,3) g; show search_path", Tag: "SHOW", Rows: 1},
		}},
		{"simple error", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.PgConn().Exec(ctx(t), "select 1; select * from missing_table; select 2").ReadAll()
		}, []want{
			{Protocol: "simple", SQL: "select 1; select * from missing_table; select 2", Tag: "SELECT 1", Rows: 1},
			{Protocol: "simple", SQL: "select 1; select * from missing_table; select 2", SQLState: "42P01"},
		}},
		{"extended with params", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.Exec(ctx(t), "select $1::text, $2::int, $3::text", pgx.QueryExecModeExec, "it's", 42, nil)
		}, []want{
			{Protocol: "extended", SQL: "select $1::text, $2::int, $3::text", Params: []string{"it's", "42", "<null>"}, Tag: "SELECT 1", Rows: 1},
		}},
		{"binary params", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.PgConn().ExecParams(ctx(t), "select $1::bytea, $2::bytea", [][]byte{{1, 2, 255}, make([]byte, 100)},
				nil, []int16{1}, nil).Close()
		}, []want{
			{Protocol: "extended", SQL: "select $1::bytea, $2::bytea", Params: []string{`\x0102ff`, "<binary 100 bytes>"}, Tag: "SELECT 1", Rows: 1},
		}},
		{"named prepared", func(t *testing.T, c *pgx.Conn) {
			if _, err := c.Prepare(ctx(t), "upd", "update ev set n = n + 1 where id < $1"); err != nil {
				t.Fatal(err)
			}
			_, _ = c.Exec(ctx(t), "upd", 3)
			_, _ = c.Exec(ctx(t), "upd", 100)
		}, []want{
			{Protocol: "extended", SQL: "update ev set n = n + 1 where id < $1", Name: "upd", Params: []string{`\x00000003`}, Tag: "UPDATE 3", Rows: 3},
			{Protocol: "extended", SQL: "update ev set n = n + 1 where id < $1", Name: "upd", Params: []string{`\x00000064`}, Tag: "UPDATE 10", Rows: 10},
		}},
		{"batch with error skips the rest", func(t *testing.T, c *pgx.Conn) {
			b := &pgx.Batch{}
			b.Queue("select 1")
			b.Queue("select 1/0")
			b.Queue("select 2")
			_ = c.SendBatch(ctx(t), b).Close()
		}, []want{
			{Protocol: "extended", SQL: "select 1", Tag: "SELECT 1", Rows: 1},
			{Protocol: "extended", SQL: "select 1/0", SQLState: "22012"},
		}},
		{"parse error", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.Exec(ctx(t), "selec 1", 5)
		}, []want{
			{Protocol: "extended", SQL: "selec 1", SQLState: "42601"},
		}},
		{"copy", func(t *testing.T, c *pgx.Conn) {
			_, _ = c.PgConn().CopyFrom(ctx(t), strings.NewReader("100\t1\n101\t2\n"), "copy ev from stdin")
			_, _ = c.PgConn().CopyTo(ctx(t), &strings.Builder{}, "copy ev to stdout")
		}, []want{
			{Protocol: "simple", SQL: "copy ev from stdin", Tag: "COPY 2", Rows: 2},
			{Protocol: "simple", SQL: "copy ev to stdout", Tag: "COPY 12", Rows: 12},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pg.Psql(t, "postgres", "drop table if exists ev; create table ev as select g as id, 0 as n from generate_series(0, 9) g")
			h := newHarness(t, pg, nil)
			c := h.connect(ctx(t), t)
			h.sink.reset()
			tc.run(t, c)
			var n int
			_ = c.QueryRow(ctx(t), "select 1", pgx.QueryExecModeSimpleProtocol).Scan(&n) // a fence
			var got []want
			for _, s := range h.sink.statements() {
				if s.SQL != "select 1" || s.Protocol != "simple" || strings.Contains(tc.name, "simple") {
					got = append(got, pick(s))
				}
			}
			if len(got) > len(tc.want) && got[len(got)-1].SQL == "select 1" {
				got = got[:len(got)-1]
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("events:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestRowsOf(t *testing.T) {
	tests := []struct {
		tag     string
		counted int64
		want    int64
	}{
		{"SELECT 5", 0, 5}, {"INSERT 0 3", 0, 3}, {"UPDATE 7", 0, 7}, {"DELETE 0", 0, 0},
		{"MERGE 2", 0, 2}, {"COPY 10", 0, 10}, {"FETCH 4", 0, 4}, {"SHOW", 1, 1}, {"CREATE TABLE", 0, 0},
		{"", 9, 9}, {"SELECT x", 2, 2},
	}
	for _, tc := range tests {
		if got := rowsOf(tc.tag, tc.counted); got != tc.want {
			t.Errorf("rowsOf(%q, %d) = %d, want %d", tc.tag, tc.counted, got, tc.want)
		}
	}
}
