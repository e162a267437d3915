package sqlclass

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Issue 6 item 9: every spelling of a role or password change is caught,
// and everyday statements are not.
func TestChangesRoleOrPassword(t *testing.T) {
	changes := []string{
		"ALTER ROLE CURRENT_USER PASSWORD 'x'",
		"alter user current_user password 'x'",
		"ALTER USER \"airlock_1\" PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi'", // psql's \password
		"/**/ALTER/**/ROLE/**/CURRENT_USER/**/PASSWORD/**/'x'",
		"ALTER\tROLE\nSESSION_USER\n\nPASSWORD 'x'",
		"ALTER ROLE CURRENT_ROLE WITH ENCRYPTED PASSWORD 'x'",
		"ALTER ROLE CURRENT_USER PASSWORD NULL",
		"ALTER ROLE U&\"\\0062ob\" PASSWORD 'x'",
		"SELECT 1; ALTER ROLE CURRENT_USER PASSWORD 'x'",
		"COMMIT; ALTER ROLE CURRENT_USER PASSWORD 'x'",
		"CREATE ROLE bd LOGIN PASSWORD 'x'",
		"CREATE USER bd",
		"ALTER ROLE x RENAME TO y",
		"ALTER ROLE x VALID UNTIL 'infinity'",
		"ALTER ROLE x SET role = 'admin'",
		"DROP ROLE x",
		"GRANT admin TO CURRENT_USER",
		"REVOKE admin FROM x",
		"ALTER GROUP admin ADD USER x",
		"COMMENT ON ROLE airlock_1 IS 'airlock:host=elsewhere'",
		"UPDATE pg_authid SET rolpassword = NULL",
		"DO $$ BEGIN ALTER ROLE CURRENT_USER PASSWORD 'x'; END $$",
		"DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''x'''; END $$",
		"DO $$ BEGIN EXECUTE 'ALTER ' || 'ROLE CURRENT_USER PASSWORD ''x'''; END $$",
		"DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'x'); END $$",
		"DO $$ DECLARE q text := 'ALTER ROLE ' || current_user; BEGIN EXECUTE q || ' PASSWORD ''x'''; END $$",
		"DO LANGUAGE plperl $$ spi_exec_query(q{ALTER ROLE x PASSWORD 'y'}) $$",
		"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN EXECUTE 'CREATE ROLE bd LOGIN PASSWORD ''x'''; END $$",
		"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ ALTER ROLE CURRENT_USER PASSWORD 'x' $$",
		"SELECT dblink_exec('dbname=app', 'ALTER ROLE CURRENT_USER PASSWORD ''x''')",
		"SELECT dblink_exec('dbname=app', q) FROM queue",
	}
	for _, q := range changes {
		res, err := Classify(q)
		if err != nil {
			t.Errorf("%q: %v", q, err)
			continue
		}
		if !res.ChangesRoleOrPassword() {
			t.Errorf("%q: ChangesRoleOrPassword = false", q)
		}
	}
	harmless := []string{
		"SELECT * FROM users WHERE password = 'x'",
		"SELECT 'ALTER ROLE x PASSWORD ''y'''",
		"SELECT $$ALTER ROLE x PASSWORD 'y'$$",
		"SELECT 1 /* ALTER ROLE x PASSWORD 'y' */",
		"UPDATE accounts SET password_hash = 'x' WHERE id = 1",
		"CREATE TABLE role (password text)",
		"SET ROLE reporting",
		"GRANT SELECT ON t TO reporting",
		"DO $$ BEGIN UPDATE t SET a = 1 WHERE id = 2; END $$",
		"SELECT current_user, session_user",
	}
	for _, q := range harmless {
		res, err := Classify(q)
		if err != nil {
			t.Errorf("%q: %v", q, err)
			continue
		}
		if res.ChangesRoleOrPassword() {
			t.Errorf("%q: ChangesRoleOrPassword = true", q)
		}
	}
}

// The fingerprint conflates statements that must be classified apart; the
// cache must not (it is keyed by text), and this shows why.
func TestFingerprintIsNotAClassificationKey(t *testing.T) {
	pairs := []struct{ a, b string }{
		{"SELECT set_config('work_mem', '1GB', false)", "SELECT set_config('role', 'postgres', false)"},
		{"DO $$ BEGIN PERFORM 1; END $$", "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$"},
		{"BEGIN READ ONLY", "BEGIN READ WRITE"},
		{"DELETE FROM payments_10 WHERE id = 1", "DELETE FROM payments_99 WHERE id = 1"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM t RETURNING 1'"},
	}
	c := New(Options{})
	for _, p := range pairs {
		fa, err1 := Fingerprint(p.a)
		fb, err2 := Fingerprint(p.b)
		if err1 != nil || err2 != nil {
			t.Fatalf("fingerprint: %v %v", err1, err2)
		}
		if fa != fb {
			t.Logf("%q and %q no longer share a fingerprint (pg_query changed)", p.a, p.b)
		}
		ra, err1 := c.Classify(p.a)
		rb, err2 := c.Classify(p.b)
		if err1 != nil || err2 != nil {
			t.Fatalf("classify: %v %v", err1, err2)
		}
		if fmt.Sprint(ra.Flags(), ra.TablesWritten(), ra.Kinds()) == fmt.Sprint(rb.Flags(), rb.TablesWritten(), rb.Kinds()) &&
			ra.Statements[0].Setting == rb.Statements[0].Setting {
			t.Errorf("%q and %q classified alike", p.a, p.b)
		}
	}
}

// Secrets never reach the redacted form or an error message.
func TestRedaction(t *testing.T) {
	cases := []struct{ sql, secret string }{
		{"ALTER ROLE x PASSWORD 'hunter2'", "hunter2"},
		{"ALTER USER CURRENT_USER WITH ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB'", "c2FsdA=="},
		{"CREATE ROLE bd LOGIN PASSWORD 'hunter2' VALID UNTIL '2030-01-01'", "hunter2"},
		{"SELECT 1; ALTER ROLE x PASSWORD 'hunter2'", "hunter2"},
		{"DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''hunter2'''; END $$", "hunter2"},
		{"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN CREATE ROLE y PASSWORD 'hunter2'; END $$", "hunter2"},
		{"CREATE USER MAPPING FOR x SERVER s OPTIONS (user 'u', password 'hunter2')", "hunter2"},
		{"CREATE SUBSCRIPTION s CONNECTION 'host=h password=hunter2' PUBLICATION p", "hunter2"},
		{"SELECT dblink_connect('c', 'host=h password=hunter2')", "hunter2"},
	}
	for _, tc := range cases {
		res, err := Classify(tc.sql)
		if err != nil {
			t.Errorf("%q: %v", tc.sql, err)
			continue
		}
		if !res.Has(FlagSecret) {
			t.Errorf("%q: no FlagSecret", tc.sql)
		}
		for _, red := range []string{res.Redacted(), res.Statements[len(res.Statements)-1].Redacted} {
			if strings.Contains(red, tc.secret) {
				t.Errorf("%q: redacted form %q keeps the secret", tc.sql, red)
			}
		}
	}
	// Broken statements: the parser's message would quote the input.
	for _, q := range []string{
		"ALTER ROLE x PASSWORD 'hunter2' 'hunter3'",
		"ALTER ROLE x PASSWORD 'hunter2",
		"ALTER ROLE \"hunter2 PASSWORD 'x'",
		"DO $$ BEGIN hunter2 hunter3; END $$",
	} {
		_, err := Classify(q)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%q: error %v, want a ParseError", q, err)
			continue
		}
		if strings.Contains(err.Error(), "hunter") {
			t.Errorf("%q: error %q quotes the input", q, err)
		}
	}
}

func TestParseErrorsDenied(t *testing.T) {
	for _, q := range []string{"SELEC 1", "DROP TABLE", "SELECT 'x", "\x00", "SELECT 1\x00; DROP TABLE t", "DO $$ BEGIN NOT VALID PLPGSQL; END $$"} {
		res, err := Classify(q)
		if err == nil {
			t.Errorf("%q: no error, result %+v", q, res)
		}
	}
}

func TestNestingBounded(t *testing.T) {
	// DO inside EXECUTE inside DO ..., deeper than maxNesting.
	q := "SELECT 1"
	for i := 0; i < maxNesting+3; i++ {
		q = "DO $$ BEGIN EXECUTE " + quoteLiteral(q) + "; END $$"
		q = strings.ReplaceAll(q, "$$", fmt.Sprintf("$d%d$", i))
	}
	_, err := New(Options{}).Classify(q)
	if !errors.Is(err, ErrTooDeep) {
		t.Fatalf("err = %v, want ErrTooDeep", err)
	}
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// An adversary sending unique statements costs at most the cache budget.
func TestCacheBounded(t *testing.T) {
	c := New(Options{MaxEntries: 160, MaxBytes: 64 << 10, MaxCachedSQL: 2 << 10})
	for i := 0; i < 5000; i++ {
		if _, err := c.Classify(fmt.Sprintf("SELECT * FROM t%d WHERE a = %d", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	n, b := c.CacheStats()
	if n > 160 || b > 64<<10 {
		t.Fatalf("cache holds %d entries, %d bytes; limits 160, %d", n, b, 64<<10)
	}
	big := "SELECT 1" + strings.Repeat(" ", 4<<10)
	if _, err := c.Classify(big); err != nil {
		t.Fatal(err)
	}
	if _, b2 := c.CacheStats(); b2 > 64<<10 {
		t.Fatalf("oversized statement cached: %d bytes", b2)
	}
	// A repeated statement is served from the cache: the same Result.
	q := "SELECT * FROM t WHERE a = 1"
	r1, _ := c.Classify(q)
	r2, _ := c.Classify(q)
	if r1 != r2 {
		t.Fatal("repeated statement parsed again")
	}
	// Errors are cached too: a flood of one broken statement parses once.
	_, e1 := c.Classify("SELEC 1")
	_, e2 := c.Classify("SELEC 1")
	if e1 == nil || e1 != e2 {
		t.Fatalf("errors %v, %v: want the same cached error", e1, e2)
	}
}

// Concurrent classification is safe, and the parser's fd 2 redirection
// (serialised by pgMu) leaves stderr where it was.
func TestConcurrentLeavesStderr(t *testing.T) {
	var before, after syscall.Stat_t
	if err := syscall.Fstat(2, &before); err != nil {
		t.Fatal(err)
	}
	c := New(Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				qs := []string{
					fmt.Sprintf("SELECT * FROM t%d_%d", g, i),
					fmt.Sprintf("DO $$ BEGIN EXECUTE 'DROP TABLE x%d'; END $$", i),
					fmt.Sprintf("SELEC %d", i),
				}
				for _, q := range qs {
					_, err := c.Classify(q)
					if (err == nil) == strings.HasPrefix(q, "SELEC ") {
						errs <- fmt.Errorf("%q: err = %v", q, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := syscall.Fstat(2, &after); err != nil {
		t.Fatal(err)
	}
	if before.Dev != after.Dev || before.Ino != after.Ino {
		t.Fatalf("fd 2 changed from %d/%d to %d/%d", before.Dev, before.Ino, after.Dev, after.Ino)
	}
	if _, err := fmt.Fprint(os.Stderr, ""); err != nil {
		t.Fatalf("stderr unusable: %v", err)
	}
}

// Results from the cache are the ones classification produced: a cached
// and a fresh classification agree on the whole corpus.
func TestCachedEqualsFresh(t *testing.T) {
	shared := New(Options{})
	for _, cc := range loadCorpus(t) {
		a, errA := shared.Classify(cc.SQL)
		a2, _ := shared.Classify(cc.SQL)
		b, errB := New(Options{}).Classify(cc.SQL)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%q: errors differ: %v / %v", cc.SQL, errA, errB)
		}
		if errA != nil {
			continue
		}
		if a != a2 {
			t.Errorf("%q: second call not served from cache", cc.SQL)
		}
		if fmt.Sprintf("%+v", flatten(a)) != fmt.Sprintf("%+v", flatten(b)) {
			t.Errorf("%q: cached and fresh results differ", cc.SQL)
		}
	}
}

func flatten(r *Result) []Statement {
	var out []Statement
	r.Walk(func(s *Statement) {
		c := *s
		c.Nested = nil
		out = append(out, c)
	})
	return out
}

// The hand-written walk of common nodes finds exactly what the generic
// walk over every field finds.
func TestFastWalkMatchesGeneric(t *testing.T) {
	cases := loadCorpus(t)
	fast := map[string]string{}
	for _, cc := range cases {
		r, err := New(Options{}).Classify(cc.SQL)
		if err == nil {
			fast[cc.SQL] = fmt.Sprintf("%+v", flatten(r))
		}
	}
	forceGeneric = true
	defer func() { forceGeneric = false }()
	for _, cc := range cases {
		r, err := New(Options{}).Classify(cc.SQL)
		if err != nil {
			continue
		}
		if got := fmt.Sprintf("%+v", flatten(r)); got != fast[cc.SQL] {
			t.Errorf("%q:\n fast:    %s\n generic: %s", cc.SQL, fast[cc.SQL], got)
		}
	}
}

func TestNormalize(t *testing.T) {
	got, err := Normalize("SELECT * FROM t WHERE card = '4111111111111111'; DO $$ BEGIN PERFORM 'x'; END $$")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got, "4111") || strings.Contains(got, "PERFORM") {
		t.Fatalf("Normalize kept constants: %q", got)
	}
	if _, err := Normalize("SELEC 'hunter2"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("Normalize error %v", err)
	}
}

// Large statements cost time linear in their size: no quadratic sets.
func TestLargeStatements(t *testing.T) {
	const n = 20000
	var from, trunc, calls strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			from.WriteString(", ")
			trunc.WriteString(", ")
			calls.WriteString(", ")
		}
		fmt.Fprintf(&from, "t%d", i)
		fmt.Fprintf(&trunc, "s.t%d", i)
		fmt.Fprintf(&calls, "f%d(%d)", i, i)
	}
	for _, q := range []string{
		"SELECT * FROM " + from.String(),
		"TRUNCATE " + trunc.String(),
		"SELECT " + calls.String(),
	} {
		res, err := New(Options{}).Classify(q)
		if err != nil {
			t.Fatalf("%.40q: %v", q, err)
		}
		got := len(res.TablesRead()) + len(res.TablesWritten()) + len(res.Functions())
		if got != n {
			t.Fatalf("%.40q: %d names, want %d", q, got, n)
		}
	}
}

func TestFastPathCall(t *testing.T) {
	cases := []struct {
		name string
		want Flag
	}{
		{"pg_catalog.lo_export", FlagSideEffect},
		{"lowrite", FlagSideEffect},
		{"pg_terminate_backend", FlagSideEffect},
		{"pg_catalog.set_config", FlagSideEffect | FlagRoleSwitch | FlagSecuritySetting | FlagReadWrite},
		{"public.dblink_exec", FlagSideEffect | FlagDynamicSQL | FlagOpaque | FlagSecret},
		{"pg_catalog.abs", 0},
	}
	for _, tc := range cases {
		st := FastPathCall(tc.name)
		if st.Flags != tc.want {
			t.Errorf("%s: flags %v, want %v", tc.name, st.Flags, tc.want)
		}
		if st.Kind != KindRead || len(st.Functions) != 1 {
			t.Errorf("%s: %+v", tc.name, st)
		}
	}
	if !(&Result{Statements: []*Statement{FastPathCall("dblink_exec")}}).ChangesRoleOrPassword() {
		t.Error("an opaque fast-path call must count as able to change roles")
	}
}
