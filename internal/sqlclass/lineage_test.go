package sqlclass

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// lineageCase is one statement string and the lineage of its first
// top-level statement. References are written "rel:col", "a|b:col" for a
// reference that may belong to a or b, and "rel:*" for a whole row.
type lineageCase struct {
	name                string
	sql                 string
	out, filter, copied []string
	unknown             bool
	cursor              string
}

var lineageCases = []lineageCase{
	// Laundering through expressions: the computed column still names its source.
	{name: "function", sql: "SELECT upper(name) FROM users", out: []string{"users:name"}},
	{name: "reverse", sql: "SELECT reverse(email) AS e FROM users", out: []string{"users:email"}},
	{name: "translate", sql: "SELECT translate(card, '0123456789', 'abcdefghij') FROM payments", out: []string{"payments:card"}},
	{name: "cast and concat", sql: "SELECT name::text || '' FROM users", out: []string{"users:name"}},
	{name: "case", sql: "SELECT CASE WHEN ssn LIKE '1%' THEN 'a' ELSE 'b' END FROM people", out: []string{"people:ssn"}},
	{name: "aggregate", sql: "SELECT string_agg(name, ',' ORDER BY id) FROM users", out: []string{"users:name"}, filter: []string{"users:id"}},
	{name: "window", sql: "SELECT lag(name) OVER (PARTITION BY dept ORDER BY id) FROM users",
		out: []string{"users:name"}, filter: []string{"users:dept", "users:id"}},
	{name: "whole row function", sql: "SELECT row_to_json(u) FROM users u", out: []string{"users:*", "users:u"}},
	{name: "whole row bare", sql: "SELECT t FROM t", out: []string{"t:*", "t:t"}},
	{name: "composite field", sql: "SELECT (u).name FROM users u", out: []string{"users:*", "users:u"}},
	{name: "star", sql: "SELECT * FROM users", out: []string{"users:*"}},
	{name: "qualified star", sql: "SELECT u.*, o.id FROM users u JOIN orders o ON o.uid = u.id",
		out: []string{"users:*", "orders:id"}, filter: []string{"orders:uid", "users:id"}},
	{name: "table", sql: "TABLE payments", out: []string{"payments:*"}},

	// Negatives.
	{name: "count star", sql: "SELECT count(*) FROM users"},
	{name: "where only", sql: "SELECT id FROM users WHERE name = 'x'", out: []string{"users:id"}, filter: []string{"users:name"}},
	{name: "constant", sql: "SELECT 1"},
	{name: "exists", sql: "SELECT EXISTS (SELECT name FROM users WHERE id = 1)", filter: []string{"users:name", "users:id"}},
	{name: "show", sql: "SHOW x"},

	// Scopes.
	{name: "schema qualified", sql: "SELECT u.name, public.users.email FROM public.users u2, public.users",
		out: []string{"u:name", "public.users:email"}},
	{name: "alias resolved", sql: "SELECT a.email FROM app.users AS a", out: []string{"app.users:email"}},
	{name: "unqualified two relations", sql: "SELECT name FROM users, orders WHERE users.id = orders.uid",
		out: []string{"orders|users:name"}, filter: []string{"users:id", "orders:uid"}},
	{name: "folding", sql: `SELECT NAME, "Email" FROM Users`, out: []string{"users:name", "users:Email"}},
	{name: "quoted relation", sql: `SELECT "Card" FROM "Payments" p`, out: []string{"Payments:Card"}},
	{name: "join using", sql: "SELECT a.x FROM a JOIN b USING (id) ORDER BY b.y LIMIT 5",
		out: []string{"a:x"}, filter: []string{"a|b:id", "b:y"}},
	{name: "join alias", sql: "SELECT j.name FROM (users u JOIN orders o ON u.id = o.uid) AS j",
		out: []string{"users:name", "orders:name"}, filter: []string{"users:id", "orders:uid"}},
	{name: "group having distinct on", sql: "SELECT DISTINCT ON (dept) dept, max(salary) FROM emp GROUP BY dept HAVING min(age) > 3",
		out: []string{"emp:dept", "emp:salary"}, filter: []string{"emp:dept", "emp:age"}},
	{name: "column aliases on a table", sql: "SELECT x FROM users u(x)", out: []string{"users:*", "users:x"}},
	{name: "column past the aliases", sql: "SELECT email FROM users u(x)", out: []string{"users:email"}},
	{name: "whole row of aliased table", sql: "SELECT u FROM users u(x)", out: []string{"users:*", "users:u"}},
	{name: "correlated subquery", sql: "SELECT (SELECT o.total FROM orders o WHERE o.uid = u.id) FROM users u",
		out: []string{"orders:total"}, filter: []string{"orders:uid", "users:id"}},
	{name: "scalar subquery unqualified sees outer", sql: "SELECT (SELECT name FROM users LIMIT 1), id FROM orders",
		out: []string{"orders|users:name", "orders:id"}},
	{name: "in subquery in target list", sql: "SELECT 'bob' IN (SELECT name FROM users)", out: []string{"users:name"}},
	{name: "in subquery in where", sql: "SELECT id FROM orders WHERE uid IN (SELECT id FROM users WHERE name = 'x')",
		out: []string{"orders:id"}, filter: []string{"orders:uid", "orders|users:id", "orders|users:name"}},

	// Derived relations: a reference to their column is resolved into it.
	{name: "from subquery", sql: "SELECT s.x FROM (SELECT upper(name) AS x, id FROM users) s WHERE s.id > 3",
		out: []string{"users:name"}, filter: []string{"users:name", "users:id"}},
	{name: "from subquery unused column", sql: "SELECT s.id FROM (SELECT name, id FROM users) s",
		out: []string{"users:id"}, filter: []string{"users:name", "users:id"}},
	{name: "from subquery star", sql: "SELECT * FROM (SELECT * FROM users) s", out: []string{"users:*"}, filter: []string{"users:*"}},
	{name: "from subquery star then column", sql: "SELECT s.email FROM (SELECT * FROM users) s",
		out: []string{"users:email"}, filter: []string{"users:*"}},
	{name: "subquery column aliases", sql: "SELECT s.b FROM (SELECT id, name FROM users) s(a, b)",
		out: []string{"users:name"}, filter: []string{"users:id", "users:name"}},
	{name: "subquery whole row", sql: "SELECT row_to_json(s) FROM (SELECT name FROM users) s",
		out: []string{"users:name"}, filter: []string{"users:name"}},
	{name: "cte", sql: "WITH x AS (SELECT name AS n, id FROM users) SELECT n FROM x",
		out: []string{"users:name"}, filter: []string{"users:name", "users:id"}},
	{name: "cte column list", sql: "WITH x(a, b) AS (SELECT id, name FROM users) SELECT x.b FROM x",
		out: []string{"users:name"}, filter: []string{"users:id", "users:name"}},
	{name: "cte unused", sql: "WITH x AS (SELECT name FROM users) SELECT 1", filter: []string{"users:name"}},
	{name: "recursive cte", sql: "WITH RECURSIVE r AS (SELECT id, name FROM tree UNION ALL SELECT t.id, r.name FROM tree t JOIN r ON t.parent = r.id) SELECT name FROM r",
		out: []string{"tree:id", "tree:name"}, filter: []string{"tree:id", "tree:name", "tree:parent"}},
	{name: "data-modifying cte", sql: "WITH x AS (DELETE FROM users WHERE id = 1 RETURNING name) SELECT * FROM x",
		out: []string{"users:name"}, filter: []string{"users:name", "users:id"}},
	{name: "cte shadows table", sql: "WITH users AS (SELECT 1 AS name) SELECT name FROM users"},
	{name: "lateral", sql: "SELECT l.n FROM users u, LATERAL (SELECT u.name AS n) l",
		out: []string{"users:name"}, filter: []string{"users:name"}},
	{name: "lateral values", sql: "SELECT v.b FROM users, LATERAL (VALUES (name, email)) v(a, b)",
		out: []string{"users:email"}, filter: []string{"users:name", "users:email"}},
	{name: "function in from", sql: "SELECT x FROM users u, unnest(ARRAY[u.name]) AS x",
		out: []string{"users:name", "users:x"}, filter: []string{"users:name"}},
	{name: "union", sql: "SELECT name FROM users UNION SELECT email FROM customers ORDER BY 1",
		out: []string{"users:name", "customers:email"}},
	{name: "union in subquery", sql: "SELECT s.v FROM (SELECT name AS v FROM users EXCEPT SELECT nick FROM bans) s",
		out: []string{"users:name", "bans:nick"}, filter: []string{"users:name", "bans:nick"}},
	{name: "values", sql: "VALUES (1, 'a')"},
	{name: "array sublink", sql: "SELECT ARRAY(SELECT card FROM payments)", out: []string{"payments:card"}},
	{name: "set operation renamed", sql: "SELECT a FROM (SELECT name FROM users UNION SELECT email FROM admins) s(a)",
		out: []string{"users:name", "admins:email"}, filter: []string{"users:name", "admins:email"}},
	{name: "record functions", sql: "SELECT * FROM json_to_recordset((SELECT json_agg(u) FROM users u)) AS x(name text)",
		out: []string{"users:*", "users:u"}, filter: []string{"users:*", "users:u"}},
	{name: "json_table", sql: "SELECT x.a FROM users, JSON_TABLE(doc, '$' COLUMNS (a text PATH '$.a')) x",
		out: []string{"users:doc"}, filter: []string{"users:doc"}},
	{name: "error quoting read", sql: "SELECT 1 FROM users WHERE name::int = 1", filter: []string{"users:name"}},
	{name: "recursive with forward reference", sql: "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT name FROM users) SELECT * FROM a",
		filter: []string{"users:name"}, unknown: true},
	{name: "forward reference without recursive is a table", sql: "WITH a AS (SELECT * FROM b), b AS (SELECT name FROM users) SELECT * FROM a",
		out: []string{"b:*"}, filter: []string{"b:*", "users:name"}},

	// What a statement stores.
	{name: "create table as", sql: "CREATE TEMP TABLE t AS SELECT name FROM users WHERE id < 10",
		copied: []string{"users:name"}, filter: []string{"users:id"}},
	{name: "select into", sql: "SELECT name INTO t FROM users", copied: []string{"users:name"}},
	{name: "materialized view", sql: "CREATE MATERIALIZED VIEW mv AS SELECT lower(email) FROM users", copied: []string{"users:email"}},
	{name: "refresh", sql: "REFRESH MATERIALIZED VIEW public.mv", copied: []string{"public.mv:*"}},
	{name: "view", sql: "CREATE VIEW v AS SELECT name FROM users", copied: []string{"users:name"}},
	{name: "insert select", sql: "INSERT INTO other (a) SELECT name FROM users WHERE id = 2",
		copied: []string{"users:name"}, filter: []string{"users:id"}},
	{name: "insert values subquery", sql: "INSERT INTO other VALUES ((SELECT name FROM users LIMIT 1))", copied: []string{"users:name"}},
	{name: "insert returning", sql: "INSERT INTO logs (msg) VALUES ('x') RETURNING msg, id", out: []string{"logs:msg", "logs:id"}},
	{name: "insert on conflict", sql: "INSERT INTO t (id, v) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = excluded.v || t.w WHERE t.z > 0",
		copied: []string{"t:v", "t:w"}, filter: []string{"t:id", "t:z"}},
	{name: "update from", sql: "UPDATE accounts a SET note = u.name FROM users u WHERE u.id = a.uid RETURNING a.id",
		out: []string{"accounts:id"}, copied: []string{"users:name"}, filter: []string{"users:id", "accounts:uid"}},
	{name: "update same table", sql: "UPDATE users SET bio = name", copied: []string{"users:name"}},
	{name: "update multi-assign", sql: "UPDATE t SET (a, b) = (SELECT name, email FROM users WHERE users.id = t.id)",
		copied: []string{"t|users:name", "t|users:email"}, filter: []string{"users:id", "t:id"}},
	{name: "delete using returning", sql: "DELETE FROM users u USING bans b WHERE b.uid = u.id RETURNING u.*",
		out: []string{"users:*"}, filter: []string{"bans:uid", "users:id"}},
	{name: "merge", sql: "MERGE INTO t USING users u ON t.id = u.id WHEN MATCHED AND u.active THEN UPDATE SET n = u.name WHEN NOT MATCHED THEN INSERT (id, n) VALUES (u.id, u.email)",
		copied: []string{"users:name", "users:id", "users:email"}, filter: []string{"t:id", "users:id", "users:active"}},
	{name: "merge from subquery", sql: "MERGE INTO t USING (SELECT id, name FROM users) s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name)",
		copied: []string{"users:id", "users:name"}, filter: []string{"t:id", "users:id", "users:name"}},
	{name: "rule", sql: "CREATE RULE r AS ON INSERT TO t DO ALSO INSERT INTO log SELECT new.a, name FROM users",
		copied: []string{"t:*", "new:a", "users:name"}},
	{name: "trigger", sql: "CREATE TRIGGER tr AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION keep()", copied: []string{"users:*"}},
	{name: "generated column", sql: "ALTER TABLE users ADD COLUMN n2 text GENERATED ALWAYS AS (upper(name)) STORED",
		copied: []string{"users:name"}},
	{name: "alter type using", sql: "ALTER TABLE users ALTER COLUMN note TYPE text USING ssn::text", copied: []string{"users:ssn"}},
	{name: "copy query to file", sql: "COPY (SELECT name FROM users) TO '/tmp/x'", copied: []string{"users:name"}},
	{name: "copy query to program", sql: "COPY (SELECT name FROM users) TO PROGRAM 'cat'", copied: []string{"users:name"}},
	{name: "copy query to stdout", sql: "COPY (SELECT name FROM users) TO STDOUT", out: []string{"users:name"}},
	{name: "copy table to stdout", sql: "COPY users TO STDOUT", out: []string{"users:*"}},
	{name: "copy columns to file", sql: "COPY users (name, email) TO '/tmp/x'", copied: []string{"users:name", "users:email"}},
	{name: "copy from", sql: "COPY users FROM STDIN"},
	{name: "set_config in target list", sql: "SELECT set_config('x', name, false) FROM users",
		out: []string{"users:name"}, copied: []string{"users:name"}},
	{name: "set_config in where", sql: "SELECT 1 FROM users WHERE set_config('x', name, false) <> ''",
		filter: []string{"users:name"}, copied: []string{"users:name"}},
	{name: "pg_notify", sql: "SELECT pg_notify('c', email) FROM users", out: []string{"users:email"}, copied: []string{"users:email"}},
	{name: "large object", sql: "SELECT lo_from_bytea(0, convert_to(name, 'UTF8')) FROM users",
		out: []string{"users:name"}, copied: []string{"users:name"}},
	{name: "side effect in from", sql: "SELECT * FROM users u, set_config('x', u.name, false) s",
		out: []string{"users:*", "users:name"}, copied: []string{"users:name"}, filter: []string{"users:name"}},
	{name: "call", sql: "CALL keep((SELECT name FROM users LIMIT 1))", copied: []string{"users:name"}},

	// Code: everything a body reads is Copy.
	{name: "do block", sql: "DO $$ DECLARE r record; BEGIN FOR r IN SELECT name FROM users LOOP RAISE NOTICE '%', r.name; END LOOP; END $$",
		copied: []string{"users:name"}},
	{name: "do insert", sql: "DO $$ BEGIN INSERT INTO t SELECT email FROM users WHERE id = 1; END $$",
		copied: []string{"users:email", "users:id"}},
	{name: "do dynamic", sql: "DO $$ BEGIN EXECUTE 'SELECT ' || 'name FROM users'; EXECUTE format('SELECT %I FROM users', 'x'); END $$",
		copied: []string{"users:name"}, unknown: true},
	{name: "do other language", sql: "DO LANGUAGE plpython3u $$ plpy.execute('SELECT name FROM users') $$", unknown: true},
	{name: "sql function", sql: "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT name FROM users'", copied: []string{"users:name"}},
	{name: "sql function atomic", sql: "CREATE FUNCTION f(i int) RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT email FROM users WHERE id = i; END",
		copied: []string{"users:email", "users:id", "users:i"}},
	{name: "plpgsql procedure", sql: "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('x', (SELECT name FROM users LIMIT 1), false); END $$",
		copied: []string{"users:name"}},
	{name: "c function", sql: "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'", unknown: true},
	{name: "query_to_xml", sql: "SELECT query_to_xml('SELECT name FROM users', true, true, '')", out: []string{"users:name"}},
	{name: "query_to_xml stored", sql: "CREATE TABLE t AS SELECT query_to_xml('SELECT name FROM users', true, true, '')",
		out: []string{"users:name"}, copied: []string{"users:name"}},
	{name: "dblink_exec", sql: "SELECT dblink_exec('conn', 'INSERT INTO t SELECT name FROM users')", copied: []string{"users:name"}},

	// Bookkeeping statements.
	{name: "prepare", sql: "PREPARE p AS SELECT name FROM users"},
	{name: "declare", sql: "DECLARE c CURSOR FOR SELECT name FROM users", out: []string{"users:name"}, cursor: "c"},
	{name: "fetch", sql: "FETCH 10 FROM c", cursor: "c"},
	{name: "move", sql: "MOVE NEXT IN c", cursor: "c"},
	{name: "close", sql: "CLOSE c", cursor: "c"},
	{name: "close all", sql: "CLOSE ALL"},
	{name: "explain", sql: "EXPLAIN SELECT name FROM users WHERE id = 1", filter: []string{"users:name", "users:id"}},
	{name: "explain analyze", sql: "EXPLAIN ANALYZE INSERT INTO t SELECT name FROM users WHERE id = 1",
		copied: []string{"users:name"}, filter: []string{"users:id"}},
	{name: "execute", sql: "EXECUTE p(1)"},
}

func refStrings(refs []ColumnRef) []string {
	var out []string
	for _, r := range refs {
		col := r.Column
		if col == "" {
			col = "*"
		}
		out = append(out, strings.Join(r.Relations, "|")+":"+col)
	}
	slices.Sort(out)
	return out
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func checkLineage(t *testing.T, c lineageCase, st *Statement) {
	t.Helper()
	for _, l := range []struct {
		what      string
		got, want []string
	}{
		{"Output", refStrings(st.Lineage.Output), sortedCopy(c.out)},
		{"Filter", refStrings(st.Lineage.Filter), sortedCopy(c.filter)},
		{"Copy", refStrings(st.Lineage.Copy), sortedCopy(c.copied)},
	} {
		if !slices.Equal(l.got, l.want) {
			t.Errorf("%s: %q: %s = %q, want %q", c.name, c.sql, l.what, l.got, l.want)
		}
	}
	if st.Lineage.Unknown != c.unknown {
		t.Errorf("%s: %q: Unknown = %v, want %v", c.name, c.sql, st.Lineage.Unknown, c.unknown)
	}
	if st.CursorName != c.cursor {
		t.Errorf("%s: %q: CursorName = %q, want %q", c.name, c.sql, st.CursorName, c.cursor)
	}
}

func TestLineage(t *testing.T) {
	for _, c := range lineageCases {
		res, err := New(Options{}).Classify(c.sql)
		if err != nil {
			t.Errorf("%s: %q: %v", c.name, c.sql, err)
			continue
		}
		checkLineage(t, c, res.Statements[0])
	}
}

// Lists never repeat a reference, and every reference names a relation.
func TestLineageWellFormed(t *testing.T) {
	sqls := []string{}
	for _, c := range lineageCases {
		sqls = append(sqls, c.sql)
	}
	for _, cc := range loadCorpus(t) {
		sqls = append(sqls, cc.SQL)
	}
	for _, sql := range sqls {
		res, err := New(Options{}).Classify(sql)
		if err != nil {
			continue
		}
		res.Walk(func(s *Statement) { lineageWellFormed(t, sql, s) })
	}
}

func lineageWellFormed(t *testing.T, sql string, s *Statement) {
	t.Helper()
	for _, l := range [][]ColumnRef{s.Lineage.Output, s.Lineage.Filter, s.Lineage.Copy} {
		seen := map[string]bool{}
		for _, r := range l {
			if len(r.Relations) == 0 || slices.Contains(r.Relations, "") {
				t.Fatalf("%q: reference without a relation: %+v", sql, r)
			}
			k := fmt.Sprint(r)
			if seen[k] {
				t.Fatalf("%q: reference listed twice: %+v", sql, r)
			}
			seen[k] = true
		}
	}
}

// PREPARE's prepared statement carries the lineage, PREPARE none.
func TestLineagePrepare(t *testing.T) {
	res, err := New(Options{}).Classify("PREPARE p (int) AS SELECT name FROM users WHERE id = $1")
	if err != nil {
		t.Fatal(err)
	}
	st := res.Statements[0]
	if len(st.Nested) != 1 {
		t.Fatalf("PREPARE has %d nested statements", len(st.Nested))
	}
	checkLineage(t, lineageCase{name: "prepared", out: []string{"users:name"}, filter: []string{"users:id"}}, st.Nested[0])
}

// The text cache and the shape cache hand out the Lineage a fresh parse
// gives.
func TestLineageCachedAndShaped(t *testing.T) {
	c := New(Options{})
	for _, lc := range lineageCases {
		first, err := c.Classify(lc.sql)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := c.Classify(lc.sql)
		if again != first {
			t.Errorf("%s: not served from the text cache", lc.name)
		}
		checkLineage(t, lc, again.Statements[0])
	}
	shaped := []struct {
		first, variant string
		c              lineageCase
	}{
		{"SELECT name FROM users WHERE id = 1", "SELECT name FROM users WHERE id = 27",
			lineageCase{name: "shape select", out: []string{"users:name"}, filter: []string{"users:id"}}},
		{"UPDATE t SET a = b + 1 WHERE id = 5", "UPDATE t SET a = b + 9 WHERE id = 6",
			lineageCase{name: "shape update", copied: []string{"t:b"}, filter: []string{"t:id"}}},
		{"INSERT INTO t SELECT name FROM users LIMIT 3", "INSERT INTO t SELECT name FROM users LIMIT 4",
			lineageCase{name: "shape insert", copied: []string{"users:name"}}},
	}
	for _, s := range shaped {
		if _, err := c.Classify(s.first); err != nil {
			t.Fatal(err)
		}
		res, isShape, err := c.ClassifyShape(s.variant)
		if err != nil {
			t.Fatal(err)
		}
		if !isShape {
			t.Errorf("%s: %q not served from the shape cache", s.c.name, s.variant)
		}
		s.c.sql = s.variant
		checkLineage(t, s.c, res.Statements[0])
		own, _ := c.Classify(s.variant)
		checkLineage(t, s.c, own.Statements[0])
		fresh, _ := New(Options{}).Classify(s.variant)
		checkLineage(t, s.c, fresh.Statements[0])
	}
}

// Deep nesting ends in the classifier's existing error or a result, never
// a crash, and what the lineage walk gives up on is Unknown.
func TestLineageDeep(t *testing.T) {
	var sqls []string
	for _, n := range []int{10, 100, 1000, 6000} {
		sqls = append(sqls,
			strings.Repeat("SELECT * FROM (", n)+"SELECT name FROM users"+strings.Repeat(") s", n),
			"SELECT "+strings.Repeat("upper(", n)+"name"+strings.Repeat(")", n)+" FROM users",
			"SELECT "+strings.Repeat("(SELECT ", n)+"name"+strings.Repeat(")", n)+" FROM users")
	}
	for _, sql := range sqls {
		n := len(sql)
		res, err := New(Options{}).Classify(sql)
		if err != nil {
			continue
		}
		st := res.Statements[0]
		if !st.Lineage.Unknown && !slices.Contains(refStrings(st.Lineage.Output), "users:name") {
			t.Errorf("%d bytes: name lost: %v", n, refStrings(st.Lineage.Output))
		}
	}
}

func sameLineage(a, b Lineage) bool {
	return a.Unknown == b.Unknown && slices.Equal(refStrings(a.Output), refStrings(b.Output)) &&
		slices.Equal(refStrings(a.Filter), refStrings(b.Filter)) && slices.Equal(refStrings(a.Copy), refStrings(b.Copy))
}

// Statements whose lineage would grow faster than their text (CTEs joined
// to themselves double their columns at each step; thousands of FROM items
// each seen by thousands of names) still classify, with every source kept.
// A walk that blew up would show here as a test timeout.
func TestLineageLargeStatements(t *testing.T) {
	var parts []string
	parts = append(parts, "x0 AS (SELECT name FROM users)")
	for i := 1; i < 300; i++ {
		parts = append(parts, fmt.Sprintf("x%d AS (SELECT * FROM x%d, x%d)", i, i-1, i/2))
	}
	doubling := "WITH " + strings.Join(parts, ", ") + " SELECT * FROM x299"

	var from, cols []string
	for i := 0; i < 1000; i++ {
		from = append(from, fmt.Sprintf("t%d", i))
		cols = append(cols, fmt.Sprintf("c%d", i))
	}
	wide := "SELECT " + strings.Join(cols, ", ") + " FROM " + strings.Join(from, ", ")

	for _, c := range []struct {
		name, sql string
		want      string
		count     int
	}{
		{"doubling CTEs", doubling, "users:name", 1},
		{"wide", wide, strings.Join(sortedCopy(from), "|") + ":c999", 1000},
	} {
		res, err := New(Options{}).Classify(c.sql)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		out := refStrings(res.Statements[0].Lineage.Output)
		if len(out) != c.count || !slices.Contains(out, c.want) {
			t.Errorf("%s: Output has %d references (want %d), %q among them: %v", c.name, len(out), c.count, c.want, slices.Contains(out, c.want))
		}
	}
}
