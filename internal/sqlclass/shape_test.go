package sqlclass

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestNumberShape(t *testing.T) {
	cases := []struct {
		sql, want string
		ok        bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", "SELECT abalance FROM pgbench_accounts WHERE aid = 0;", true},
		{"SELECT a FROM t1 WHERE b > 1.5 AND c < .5", "SELECT a FROM t1 WHERE b > 0 AND c < 0", true},
		{"SELECT $1 + 2", "SELECT $1 + 0", true}, // parameters kept
		{"SELECT 'a1', \"t2\" FROM t3 WHERE x = 4", "SELECT 'a1', \"t2\" FROM t3 WHERE x = 0", true},
		{"SELECT E'\\'1', 2 -- 3\n, 4 /* 5 /* 6 */ 7 */", "SELECT E'\\'1', 0 -- 3\n, 0 /* 5 /* 6 */ 7 */", true},
		{"SELECT $q$ 1 $q$, 2", "SELECT $q$ 1 $q$, 0", true},
		{"SELECT 'it''s 1', 2", "SELECT 'it''s 1', 0", true},
		{"SELECT a$1 FROM t", "", false}, // nothing replaced
		{"SELECT 1e5", "", false},
		{"SELECT 0x1F", "", false},
		{"SELECT 1_000", "", false},
		{"SELECT 12abc", "", false},
		{"SELECT 1.2.3", "", false},
		{"SELECT 'open", "", false},
		{"SELECT 1 /* open", "", false},
		{"SELECT $$open 1", "", false},
		{"SELECT 1, 'é'", "SELECT 0, 'é'", true}, // inside a string
		{"SELECT 1 AS é", "", false},
		{"SELECT 1\x00; DROP TABLE t", "", false},
	}
	for _, tc := range cases {
		got, ok := numberShape(tc.sql)
		if ok != tc.ok || got != tc.want {
			t.Errorf("numberShape(%q) = %q, %v; want %q, %v", tc.sql, got, ok, tc.want, tc.ok)
		}
	}
}

var digitRuns = regexp.MustCompile(`[0-9]+`)

// shapeAgrees classifies sql, then variant through the same Classifier
// (a shape hit when they share a shape) and through a fresh one, and
// reports a difference. It returns whether variant was a shape hit.
func shapeAgrees(t *testing.T, sql, variant string) bool {
	t.Helper()
	c := New(Options{})
	if _, err := c.Classify(sql); err != nil {
		return false
	}
	k1, ok1 := numberShape(sql)
	k2, ok2 := numberShape(variant)
	hit := false
	if ok1 && ok2 && k1 == k2 {
		_, hit = c.shape.get(k1)
	}
	shaped, isShape, serr := c.ClassifyShape(variant)
	got, gerr := c.Classify(variant)
	want, werr := New(Options{}).Classify(variant)
	if (gerr == nil) != (werr == nil) || (serr == nil) != (werr == nil) {
		t.Fatalf("%q after %q: errors differ: %v / %v / %v", variant, sql, gerr, serr, werr)
	}
	if gerr == nil && (got.SQL != want.SQL || fmt.Sprintf("%+v", flatten(got)) != fmt.Sprintf("%+v", flatten(want))) {
		t.Fatalf("%q after %q (shape hit %v):\n got %+v\nwant %+v", variant, sql, hit, flatten(got), flatten(want))
	}
	if isShape && !hit {
		t.Fatalf("%q after %q: ClassifyShape says shape, the cache has none", variant, sql)
	}
	if serr == nil && !isShape && shaped != got {
		t.Fatalf("%q after %q: ClassifyShape and Classify gave different cached Results", variant, sql)
	}
	if isShape {
		// The shape's Result says what the text's does, but for the
		// text, which is the shape's own.
		key, _ := numberShape(variant)
		if shaped.SQL != key || shaped.Redacted() != key || len(shaped.Statements) != 1 ||
			shaped.Statements[0].Text != shapeText(key) || shaped.Statements[0].Redacted != shapeText(key) {
			t.Fatalf("%q after %q: the shape's Result carries another text: %q / %q", variant, sql, shaped.SQL, shaped.Statements[0].Text)
		}
		if fmt.Sprintf("%+v", untexted(shaped)) != fmt.Sprintf("%+v", untexted(want)) {
			t.Fatalf("%q after %q: the shape's Result differs from a parse:\n got %+v\nwant %+v", variant, sql, untexted(shaped), untexted(want))
		}
	}
	return hit
}

// untexted is flatten without the statements' texts.
func untexted(r *Result) []Statement {
	out := flatten(r)
	for i := range out {
		out[i].Text, out[i].Redacted = "", ""
	}
	return out
}

// digitVariants are sql with its digit runs replaced: all of them by each
// of a few numbers, and each run alone (the first 8) by another.
func digitVariants(sql string) []string {
	var out []string
	for _, n := range []string{"0", "7", "12345", "1.5"} {
		out = append(out, digitRuns.ReplaceAllString(sql, n))
	}
	for k := range min(8, len(digitRuns.FindAllStringIndex(sql, -1))) {
		out = append(out, replaceRun(sql, k, "98"))
	}
	return out
}

// replaceRun replaces sql's k-th digit run (from 0) by n.
func replaceRun(sql string, k int, n string) string {
	runs := digitRuns.FindAllStringIndex(sql, -1)
	if k < 0 || k >= len(runs) {
		return sql
	}
	return sql[:runs[k][0]] + n + sql[runs[k][1]:]
}

// A shape hit is exactly what parsing the text gives, over the corpus
// (with its numbers changed) and the places where a number's value
// matters.
func TestShapeMatchesParse(t *testing.T) {
	sqls := []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
		"UPDATE t SET a = 1 WHERE id = 5",
		"DELETE FROM t WHERE 1 = 1",
		"DELETE FROM t WHERE 1 = 1;",
		"WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x",
		"EXPLAIN (ANALYZE 0) DELETE FROM t WHERE id = 1",
		"EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1",
		"SELECT set_config('transaction_read_only', 0::text, false), 1",
		"SET transaction_read_only = 0",
		"BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE; SELECT 1",
		"SELECT 1; SELECT 2",
		"/* lead */ SELECT 1",
		"SELECT pg_terminate_backend(123)",
		"SELECT * FROM t LIMIT 10 OFFSET 20",
		"INSERT INTO t VALUES (1, 2.5, 'x3')",
		"SELECT dblink_exec('conn', 'DELETE FROM t WHERE id = 1'), 1",
		"SELECT * FROM payments_01 WHERE x = 1",
	}
	b, err := os.ReadFile("testdata/corpus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cases []corpusCase
	if err := yaml.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		sqls = append(sqls, c.SQL)
	}
	hits := 0
	for _, sql := range sqls {
		for _, v := range digitVariants(sql) {
			if shapeAgrees(t, sql, v) {
				hits++
			}
		}
	}
	if hits == 0 {
		t.Fatal("no variant was served from the shape cache: the test checks nothing")
	}
	// The values that matter never share a shape.
	if shapeAgrees(t, "EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t") {
		t.Fatal("EXPLAIN ANALYZE 0 and 1 shared a classification")
	}
}

// FuzzShape: for any text and any other numbers in it, a shape hit equals
// a full parse.
func FuzzShape(f *testing.F) {
	f.Add("SELECT abalance FROM pgbench_accounts WHERE aid = 48213", uint16(7))
	f.Add("UPDATE t SET a = 1 WHERE id = 5 -- 6", uint16(0))
	f.Add("EXPLAIN (ANALYZE 0) DELETE FROM t", uint16(1))
	f.Add("SELECT $a$ 1 $a$, 'x''1', \"c1\", E'\\'2', 3", uint16(9))
	f.Add("SELECT 'a'';1', 2 FROM t WHERE b = U&'\\0031' AND c = 3", uint16(4))
	f.Add("SELECT 1 /* ; DELETE FROM t WHERE id = 2 */", uint16(3))
	f.Add("SELECT $$ 1 $$ || 2; SELECT 3", uint16(5))
	f.Add("SELECT \"1\" FROM t1 WHERE x = 1", uint16(2))
	f.Fuzz(func(t *testing.T, sql string, n uint16) {
		if len(sql) > 2000 {
			return
		}
		shapeAgrees(t, sql, digitRuns.ReplaceAllString(sql, strconv.Itoa(int(n))))
		// One number changed, the others kept.
		shapeAgrees(t, sql, replaceRun(sql, int(n%8), strconv.Itoa(int(n))))
	})
}
