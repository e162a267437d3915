package pgmask

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// The laundering corpus: queries that compute on a masked column, each
// returning one computed column, which must come back as the marker (or
// NULL where the type has no text form), whatever the protocol.
var laundering = []struct{ name, sql string }{
	{"upper", "select upper(name) from users"},
	{"substring", "select substring(name, 1, 3) from users"},
	{"concat empty", "select name || '' from users"},
	{"reverse", "select reverse(email) from users"},
	{"translate", "select translate(card, '0123456789', 'abcdefghij') from users"},
	{"base64", "select encode(convert_to(name, 'UTF8'), 'base64') from users"},
	{"row_to_json", "select row_to_json(u) from users u"},
	{"json_agg", "select json_agg(u) from users u"},
	{"array_agg", "select array_agg(name) from users"},
	{"union", "select name from users union select 'z'"},
	{"scalar subquery", "select (select name from users where id = 1)"},
	{"case", "select case when id > 0 then name end from users"},
	{"cte", "with c as (select name from users) select lower(name) from c"},
	{"view computed", "select lower(shout) from contacts"},
	{"lateral", "select x.v from users u, lateral (select u.name || '!' as v) x"},
	{"statistics", "select histogram_bounds::text from pg_stats where tablename = 'users' and attname = 'name'"},
}

// connect opens a pgx connection through the proxy for the test's length.
func (f *fixture) connect(t *testing.T) (context.Context, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, f.url())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return ctx, conn
}

// derivedOK: what a laundered column may come back as.
func derivedOK(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == "[redacted]" || v == `"[redacted]"` || v == ""
	}
	return false
}

func analyzeUsers(t *testing.T, f *fixture) {
	t.Helper()
	f.pg.Psql(t, "postgres", "ANALYZE users")
}

func TestLaunderingPsql(t *testing.T) {
	f := start(t)
	analyzeUsers(t, f)
	for _, c := range laundering {
		t.Run(c.name, func(t *testing.T) {
			out, err := f.psql(t, c.sql)
			if err != nil {
				t.Fatalf("%s: %v\n%s", c.sql, err, out)
			}
			if l := leaks(out, allSecrets); len(l) > 0 {
				t.Errorf("%s leaked %v:\n%s", c.sql, l, out)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			for _, l := range lines {
				if !derivedOK(l) {
					t.Errorf("%s: got %q, want the marker or NULL", c.sql, l)
				}
			}
		})
	}
	// A cursor and SQL PREPARE keep their statement's taint.
	for _, q := range []string{
		"begin; declare c cursor for select upper(name) from users; fetch all c; commit",
		"prepare p as select upper(name) from users; execute p",
	} {
		out, err := f.psql(t, q)
		if err != nil {
			t.Fatalf("%s: %v\n%s", q, err, out)
		}
		if l := leaks(out, allSecrets); len(l) > 0 || !strings.Contains(out, "[redacted]") {
			t.Errorf("%s: leaked %v, or no marker:\n%s", q, l, out)
		}
	}
}

func TestLaunderingPgx(t *testing.T) {
	f := start(t)
	analyzeUsers(t, f)
	ctx, conn := f.connect(t)
	for _, c := range laundering {
		t.Run(c.name, func(t *testing.T) {
			// Twice: the second run Binds pgx's cached statement.
			for i := 0; i < 2; i++ {
				rows, err := conn.Query(ctx, c.sql)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for rows.Next() {
					vals, err := rows.Values()
					if err != nil {
						t.Fatal(err)
					}
					n++
					if !derivedOK(vals[0]) {
						t.Errorf("%s: got %#v, want the marker or NULL", c.sql, vals[0])
					}
				}
				if err := rows.Err(); err != nil {
					t.Fatalf("%s: %v", c.sql, err)
				}
				if n == 0 {
					t.Errorf("%s: no rows", c.sql)
				}
			}
		})
	}
	// pgx's cursor-less way to the same statement: a named prepared
	// statement, described and run later.
	if _, err := conn.Prepare(ctx, "later", "select reverse(name) from users where id = 1"); err != nil {
		t.Fatal(err)
	}
	var v *string
	if err := conn.QueryRow(ctx, "later").Scan(&v); err != nil || v == nil || *v != "[redacted]" {
		t.Errorf("prepared by name: %v %v", v, err)
	}
}

func TestLaunderingDescribedPortals(t *testing.T) {
	f := start(t)
	analyzeUsers(t, f)
	ctx, conn := f.connect(t)
	for _, c := range laundering {
		for _, format := range []int16{0, 1} {
			t.Run(fmt.Sprintf("%s/format %d", c.name, format), func(t *testing.T) {
				r := conn.PgConn().ExecParams(ctx, c.sql, nil, nil, nil, []int16{format}).Read()
				if r.Err != nil {
					t.Fatalf("%s: %v", c.sql, r.Err)
				}
				for _, row := range r.Rows {
					v := string(row[0])
					if format == 1 && len(v) > 0 && v[0] == 1 {
						v = v[1:] // jsonb's version byte
					}
					if row[0] != nil && !derivedOK(v) {
						t.Errorf("%s: got %q, want the marker or NULL", c.sql, row[0])
					}
				}
			})
		}
	}
}

// The copying corpus: statements that would store a masked column where a
// later statement reads it back. Each is refused with 42501 naming the
// column, and the server's state shows it never ran.
var copying = []struct {
	name, sql, column string
	// check runs on the admin's connection after the refusal: it must
	// return "ok".
	check string
}{
	{"create table as", "create table t1 as select name from users", "public.users.name",
		"select case when to_regclass('public.t1') is null then 'ok' end"},
	{"select into", "select email into t2 from users", "public.users.email",
		"select case when to_regclass('public.t2') is null then 'ok' end"},
	{"materialized view", "create materialized view mv as select upper(name) from users", "public.users.name",
		"select case when to_regclass('public.mv') is null then 'ok' end"},
	{"insert select", "insert into other select id, name from users", "public.users.name",
		"select case when count(*) = 3 then 'ok' end from other"},
	{"update subquery", "update other set v = (select name from users where id = 1)", "public.users.name",
		"select case when count(*) = 3 then 'ok' end from other where v like 'row %'"},
	{"do raise", "do $$ begin raise notice '%', (select name from users where id = 1); end $$", "public.users.name",
		"select 'ok'"},
	{"function body", "create function leak() returns text language sql as $$ select name from users limit 1 $$", "public.users.name",
		"select case when to_regproc('public.leak') is null then 'ok' end"},
	{"set_config", "select set_config('x.y', name, false) from users", "public.users.name", "select 'ok'"},
	{"pg_notify", "select pg_notify('ch', email) from users", "public.users.email", "select 'ok'"},
	{"prepare", "prepare cp as insert into other select id, card from users", "public.users.card",
		"select case when count(*) = 3 then 'ok' end from other"},
	{"whole row", "insert into other select 1, u::text from users u", "public.users.",
		"select case when count(*) = 3 then 'ok' end from other"},
	// Dynamic SQL Airlock cannot read: it could copy anything.
	{"dynamic sql", "do $$ declare c text := 'na'; begin c := c || 'me'; execute 'create table t9 as select ' || c || ' from users'; end $$", "",
		"select case when to_regclass('public.t9') is null then 'ok' end"},
}

func TestCopyRefused(t *testing.T) {
	f := start(t)
	f.pg.Psql(t, "postgres", "GRANT CREATE ON SCHEMA public TO app; GRANT UPDATE ON other TO app")
	ctx, conn := f.connect(t)
	admin, err := pgx.Connect(ctx, f.pg.AdminURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, c := range copying {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			t.Run(fmt.Sprintf("%s/%v", c.name, mode), func(t *testing.T) {
				_, err := conn.Exec(ctx, c.sql, mode)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "masked column "+c.column) ||
					!strings.Contains(pe.Hint, "exempt") {
					t.Fatalf("%s: want 42501 naming %s, got %v", c.sql, c.column, err)
				}
				if l := leaks(pe.Message+pe.Detail+pe.Hint, allSecrets); len(l) > 0 {
					t.Errorf("refusal quotes %v", l)
				}
				var ok *string
				if err := admin.QueryRow(ctx, c.check).Scan(&ok); err != nil || ok == nil || *ok != "ok" {
					t.Errorf("%s: the server's state changed (%s: %v %v)", c.sql, c.check, ok, err)
				}
				// The session goes on.
				var one int
				if err := conn.QueryRow(ctx, "select 1", mode).Scan(&one); err != nil || one != 1 {
					t.Errorf("after the refusal: %d %v", one, err)
				}
			})
		}
	}
	// Nothing was set in the session either.
	var v *string
	if err := conn.QueryRow(ctx, "select current_setting('x.y', true)").Scan(&v); err != nil || v != nil && *v != "" {
		t.Errorf("set_config ran: %v %v", v, err)
	}
	// Each refusal is recorded as the guard records its own.
	f.mu.Lock()
	sk := f.sinks[len(f.sinks)-1]
	f.mu.Unlock()
	denies := 0
	for _, ev := range sk.events() {
		if ev.Kind == session.KindDecision && ev.Decision.Action == "deny" && strings.Contains(ev.Decision.Reason, "copies masked column") {
			denies++
			if l := leaks(ev.Decision.SQL, allSecrets); len(l) > 0 {
				t.Errorf("record keeps %v", l)
			}
		}
	}
	if denies != 2*len(copying) {
		t.Errorf("%d refusals recorded, want %d", denies, 2*len(copying))
	}
}

// Values an error text could echo are withheld for statements reading a
// masked column, in the select list or only in WHERE; the SQLSTATE and the
// message's shape stay.
func TestErrorTextsScrubbed(t *testing.T) {
	f := start(t)
	ctx, conn := f.connect(t)
	for _, q := range []string{
		"select name::int from users",
		"select id from users where name::int = 1",
		"select id from users order by name::int",
		"select to_date(name, 'YYYY-MM-DD') from users",
		"select name::json from users",
		"select 1 / 0 from users where name = 'x'",
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			_, err := conn.Exec(ctx, q, mode)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || !strings.HasPrefix(pe.Code, "22") {
				t.Errorf("%s: want a data exception, got %v", q, err)
				continue
			}
			if l := leaks(pe.Message+pe.Detail+pe.Hint+pe.Where+pe.InternalQuery, allSecrets); len(l) > 0 {
				t.Errorf("%s: error echoes %v: %+v", q, l, pe)
			}
		}
	}
	// The shape stays: the client still learns what went wrong.
	_, err := conn.Exec(ctx, "select name::int from users", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "22P02" || pe.Message != `invalid input syntax for type integer: "[redacted]"` {
		t.Errorf("got %v", err)
	}
}

// What must keep working: columns no rule names stay visible through
// expressions, aggregates without a masked column, WHERE on a masked
// column (the remaining oracle, documented), the masked bench query's
// shape, and an exempt group.
func TestLineageNegatives(t *testing.T) {
	f := start(t)
	for _, c := range []struct{ sql, want string }{
		{"select upper(plan), id + 1 from users order by id", "PRO|2\nFREE|3\n"},
		{"select count(*) from users", "2\n"},
		{"select id from users where name = 'x'", ""},
		{"select id from users where name = '" + name + "'", "1\n"},
		{"select id, name, email, card, plan from users where id between 1 and 2 order by id",
			"1|[redacted]|[redacted]|************1111|pro\n2|[redacted]|[redacted]|************4444|free\n"},
		{"select v || '!' from other where id = 1", "row 1!\n"},
		{"select upper(shout), plan from contacts where uid = 2", "[redacted]|free\n"},
	} {
		out, err := f.psql(t, c.sql)
		if err != nil || out != c.want {
			t.Errorf("%s: got %q (%v), want %q", c.sql, out, err, c.want)
		}
	}
	// The derived values are counted under their own name.
	if _, err := f.psql(t, "select upper(name) from users"); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	s := f.sess[len(f.sess)-1]
	f.mu.Unlock()
	found := false
	deadline := time.Now().Add(5 * time.Second)
	for !found && time.Now().Before(deadline) {
		for _, c := range s.MaskCounts() {
			found = found || c.Detector == "derived" && c.Values == 2
		}
		if !found {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !found {
		t.Errorf("counts: %+v, want 2 derived", s.MaskCounts())
	}

	// A group exempt from the cards rule launders and copies cards freely;
	// names stay masked (the pii rule has no exception).
	f.mu.Lock()
	f.groups = []string{"dba"}
	f.mu.Unlock()
	f.pg.Psql(t, "postgres", "GRANT CREATE ON SCHEMA public TO app")
	out, err := f.psql(t, "select reverse(card) from users where id = 1")
	if want := reverse(card) + "\n"; err != nil || out != want {
		t.Errorf("dba: got %q %v, want %q", out, err, want)
	}
	if out, err := f.psql(t, "create temp table t as select card from users; select card from t order by 1"); err != nil ||
		!strings.Contains(out, card) {
		t.Errorf("dba copy: %v %s", err, out)
	}
	if out, err := f.psql(t, "select upper(name) from users where id = 1"); err != nil || out != "[redacted]\n" {
		t.Errorf("dba name: %q %v", out, err)
	}
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// Statistics' sample values are masked whole, read plainly or computed on.
func TestStatisticsMasked(t *testing.T) {
	f := start(t)
	analyzeUsers(t, f)
	for _, q := range []string{
		"select * from pg_stats where tablename = 'users'",
		"select histogram_bounds, most_common_vals from pg_stats where tablename = 'users'",
		"select array_to_json(histogram_bounds::text::text[]) from pg_stats where tablename = 'users'",
		"select s from pg_stats s where tablename = 'users'",
	} {
		out, err := f.psql(t, q)
		if err != nil {
			t.Fatalf("%s: %v %s", q, err, out)
		}
		if l := leaks(out, allSecrets); len(l) > 0 {
			t.Errorf("%s leaked %v:\n%s", q, l, out)
		}
		if n := strings.Count(out, "\n"); n != 5 {
			t.Errorf("%s: %d rows, want one per column of users:\n%s", q, n, out)
		}
	}
	// The rest of the row stays readable.
	out, err := f.psql(t, "select attname, null_frac from pg_stats where tablename = 'users' and attname = 'plan'")
	if err != nil || out != "plan|0\n" {
		t.Errorf("pg_stats: %q %v", out, err)
	}
}

// A view replaced in a transaction not committed yet is shown by the
// catalog's connections as it was: until the session's schema changes
// commit, view columns are masked whole, computed columns too, and copies
// out of views are refused; afterwards the view reads as usual again.
func TestUncommittedViewChange(t *testing.T) {
	f := start(t)
	f.pg.Psql(t, "postgres", `CREATE VIEW plans AS SELECT id, plan FROM users; ALTER VIEW plans OWNER TO app;
GRANT CREATE ON SCHEMA public TO app; GRANT UPDATE ON other TO app`)
	ctx, conn := f.connect(t)
	read := func(q string) string {
		t.Helper()
		var v *string
		if err := conn.QueryRow(ctx, q).Scan(&v); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if v == nil {
			return "NULL"
		}
		return *v
	}
	if got := read("select plan from plans where id = 1"); got != "pro" {
		t.Fatalf("before: %q", got)
	}
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	// A view that hands a masked column out under another name is
	// refused outright (the view's query is a copy)...
	_, err := conn.Exec(ctx, "create or replace view plans as select id, name as plan from users")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("a view renaming a masked column: %v", err)
	}
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	// ... and any other change leaves the view's columns masked whole
	// until it commits: what the catalog shows is not what runs.
	for _, q := range []string{"begin", "create or replace view plans as select id, plan || '' as plan from users"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, q := range []string{"select plan from plans where id = 1", "select upper(plan) from plans where id = 1"} {
		if got := read(q); got != "[redacted]" && got != "NULL" {
			t.Errorf("in the transaction, %s: %q", q, got)
		}
	}
	_, err = conn.Exec(ctx, "insert into other select id, plan from plans")
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("copy out of a view changed in the transaction: %v", err)
	}
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	if got := read("select plan from plans where id = 1"); got != "pro" {
		t.Errorf("after: %q", got)
	}
	if got := read("select upper(plan) from plans where id = 2"); got != "FREE" {
		t.Errorf("after, computed: %q", got)
	}
}

// A statement prepared before the stage could read it (its Bind names a
// statement the stage never saw parsed) counts as reading a masked column:
// its computed columns are masked whole.
func TestUnknownStatementTainted(t *testing.T) {
	s := benchStage(t)
	desc := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("upper"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		{Name: []byte("id"), TableOID: oidPeople, TableAttributeNumber: 1, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}})
	row := enc(&pgproto3.DataRow{Values: [][]byte{[]byte("PERSON 4711"), []byte("4711")}})
	st := preparedStatement(desc, [][]byte{row}, 0, true)
	for i := range st.client {
		if v := s.Client(&st.client[i]); v.Action == pgwire.Reply {
			t.Fatalf("message %c refused", st.client[i].Type)
		}
	}
	var got []byte
	for i := range st.server {
		v := s.Server(&st.server[i])
		if st.server[i].Type == 'D' {
			got = v.Msgs
			if v.Action == pgwire.Forward {
				got = enc(&pgproto3.DataRow{Values: [][]byte{[]byte("unchanged")}})
			}
		}
	}
	var dr pgproto3.DataRow
	if err := dr.Decode(got[5:]); err != nil || len(dr.Values) != 2 || string(dr.Values[0]) != "[redacted]" || string(dr.Values[1]) != "4711" {
		t.Errorf("row %q (%v), want the computed column masked and the id kept", got, err)
	}
	var derived uint64
	for _, c := range s.Counts() {
		if c.Detector == "derived" {
			derived = c.Values
		}
	}
	if derived != 1 {
		t.Errorf("counts %+v, want 1 derived", s.Counts())
	}
}
