package guard

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// shapePolicies are decided on shapes and on full parses: the built-in
// one, the decision corpus's (tables, functions, flags, classes, a regex)
// and one whose rules turn on a constant's value, which only a regex can.
func shapePolicies(t testing.TB) map[string]*policy.Policy {
	t.Helper()
	corpus, err := policy.Load("../policy/testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	constant, err := policy.Parse("constant.yaml", []byte(`
rules:
  - name: not-account-7
    action: deny
    regex: 'aid = 7\b'
  - name: hold-big-limits
    action: hold
    regex: 'LIMIT [0-9]{4,}'
  - name: no-history
    action: deny
    tables: [pgbench_history]
`))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*policy.Policy{"built-in": policy.Default(), "corpus": corpus, "constant": constant}
}

// shapeSQL is the SQL the differential test starts from: the classifier's
// corpus, the decision corpus, pgbench's statements and a few that put
// numbers next to what a lexer can get wrong.
func shapeSQL(t testing.TB) []string {
	t.Helper()
	sqls := []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
		"UPDATE pgbench_accounts SET abalance = abalance + -4077 WHERE aid = 7;",
		"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 7, -4077, CURRENT_TIMESTAMP);",
		"SELECT * FROM t LIMIT 10",
		"SELECT 'aid = 7', 1 FROM t",
		"SELECT 1 /* ; DELETE FROM t WHERE id = 2 */",
		"SELECT 1 -- ; DROP TABLE t\n, 2",
		"SELECT $$ 1 $$, 2; DELETE FROM t WHERE id = 3",
		"SELECT E'\\' ; DELETE FROM t WHERE 1 = 1 --', 4",
		"SELECT U&'\\0031', 5 FROM t6",
		"SELECT \"7\" FROM t WHERE \"x8\" = 9",
		"SELECT pg_sleep(1)",
		"SELECT * FROM secrets WHERE id = 1",
		"SELECT * FROM payroll_2024 WHERE id = 1",
		"DELETE FROM t WHERE id = 1",
		"UPDATE t SET a = 1",
		"EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 2",
		"SELECT set_config('role', 'x', false), 1",
	}
	b, err := os.ReadFile("../sqlclass/testdata/corpus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var corpus []struct {
		SQL string `yaml:"sql"`
	}
	if err := yaml.Unmarshal(b, &corpus); err != nil {
		t.Fatal(err)
	}
	for _, c := range corpus {
		sqls = append(sqls, c.SQL)
	}
	f, err := os.Open("../policy/testdata/decisions.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if parts := strings.SplitN(sc.Text(), "|", 5); len(parts) == 5 && len(parts[0]) == 1 && !strings.HasPrefix(parts[0], "#") {
			sqls = append(sqls, parts[4])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sqls
}

var digitRuns = regexp.MustCompile(`[0-9]+`)

// variants are sql with other numbers: every digit run replaced by each
// of a few, and each of the first runs alone by another.
func variants(sql string) []string {
	var out []string
	for _, n := range []string{"0", "7", "12345", "1.5"} {
		out = append(out, digitRuns.ReplaceAllString(sql, n))
	}
	runs := digitRuns.FindAllStringIndex(sql, -1)
	for _, r := range runs[:min(8, len(runs))] {
		out = append(out, sql[:r[0]]+"7"+sql[r[1]:])
		out = append(out, sql[:r[0]]+"10000"+sql[r[1]:])
	}
	return out
}

// decideAgrees decides variant through the stage (after sql: a shape hit
// when they share a shape, decided by the memo when the stage saw the
// shape) and through a fresh classifier and policy, and reports a
// difference. It returns whether the stage decided on a shape.
func decideAgrees(t testing.TB, s *Stage, memo *policy.Memo, sql, variant string) bool {
	t.Helper()
	s.decide(memo, sql)
	_, shape, _ := s.g.Classifier.ClassifyShape(variant)
	got, res, err := s.decide(memo, variant)
	wantRes, wantErr := sqlclass.New(sqlclass.Options{}).Classify(variant)
	want := memo.Policy().Decide(wantRes, wantErr, memo.Who())
	if got != want || (err == nil) != (wantErr == nil) {
		t.Fatalf("%q after %q (shape %v): decided %+v (err %v), a full parse %+v (err %v)", variant, sql, shape, got, err, want, wantErr)
	}
	if !silent(got) && err == nil && (res.SQL != variant || res.Redacted() != wantRes.Redacted()) {
		t.Fatalf("%q after %q: a decision that is shown carries the text %q", variant, sql, res.Redacted())
	}
	return shape
}

// A decision made on a statement's shape is the one a full parse of its
// own text gets, under every policy, for agents and people, whichever
// texts of the shape came before.
func TestDecideByShape(t *testing.T) {
	sqls := shapeSQL(t)
	for name, p := range shapePolicies(t) {
		for _, class := range []string{policy.ClassAgent, policy.ClassPerson} {
			t.Run(name+"/"+class, func(t *testing.T) {
				s := &Stage{g: &Guard{Classifier: sqlclass.New(sqlclass.Options{})}}
				memo := p.Memo(policy.Who{Connection: "dev", Class: class})
				shapes, shown := 0, 0
				for _, sql := range sqls {
					for _, v := range variants(sql) {
						if decideAgrees(t, s, memo, sql, v) {
							shapes++
							if d, _, _ := s.decide(memo, v); !silent(d) {
								shown++
							}
						}
					}
				}
				t.Logf("%d texts, %d decisions on a shape, %d of them shown", len(sqls), shapes, shown)
				if shapes == 0 || (name == "constant" && shown == 0) {
					t.Fatalf("%d decisions on a shape, %d of them shown: the test checks nothing", shapes, shown)
				}
			})
		}
	}
}

// FuzzDecideByShape: for any text and other numbers in it, the stage's
// decision is a full parse's, under policies that read the text and
// policies that do not.
func FuzzDecideByShape(f *testing.F) {
	for _, sql := range shapeSQL(f)[:40] {
		f.Add(sql, uint16(7), uint8(0))
	}
	pols := shapePolicies(f)
	f.Fuzz(func(t *testing.T, sql string, n uint16, which uint8) {
		if len(sql) > 2000 {
			return
		}
		variant := digitRuns.ReplaceAllString(sql, strconv.Itoa(int(n)))
		if runs := digitRuns.FindAllStringIndex(sql, -1); which > 0 && len(runs) > 0 {
			r := runs[int(which)%len(runs)]
			variant = sql[:r[0]] + strconv.Itoa(int(n)) + sql[r[1]:]
		}
		for _, name := range []string{"built-in", "corpus", "constant"} {
			s := &Stage{g: &Guard{Classifier: sqlclass.New(sqlclass.Options{})}}
			decideAgrees(t, s, pols[name].Memo(policy.Who{Connection: "dev", Class: policy.ClassAgent}), sql, variant)
		}
	})
}
