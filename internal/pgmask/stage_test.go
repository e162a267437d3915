package pgmask

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// The sensitive values of the fixture. name has no detector: only source
// resolution protects it.
const (
	email = "alice.w@corp-mail.com"
	name  = "Alice Zephyrine"
	card  = "4111111111111111"
	token = "ghp_R7dK2mQx9LpZ4vT8nB3cY6wH1sJ5fA0gE2uI"
)

var allSecrets = []string{email, name, card, token}

// Only the values detectors can still find once a query computes on them.
var detectable = []string{email, card, token}

type lease struct{ user, pw string }

func (l lease) User() string                  { return l.user }
func (l lease) Password() string              { return l.pw }
func (l lease) Expires() time.Time            { return time.Time{} }
func (l lease) Release(context.Context) error { return nil }

type creds struct{ l lease }

func (c creds) Acquire(context.Context, *session.Session, string) (pgwire.Lease, error) {
	return c.l, nil
}

type sink struct {
	mu  sync.Mutex
	evs []session.Event
}

func (s *sink) Record(ev session.Event) {
	ev.Statement = ev.Statement.Clone() // it is ours only during Record
	s.mu.Lock()
	s.evs = append(s.evs, ev)
	s.mu.Unlock()
}

// events is what the session recorded so far.
func (s *sink) events() []session.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]session.Event(nil), s.evs...)
}

type fixture struct {
	pg     *pgtest.Server
	addr   string
	groups []string // the next session's person's groups
	class  string
	off    bool // sessions opened now get no masking stage
	mu     sync.Mutex
	sess   []*session.Session
	sinks  []*sink // each session's record, in order
}

const policyYAML = `
rules:
  - name: pii
    columns: [public.users.email, public.users.name, public.people.name]
    detectors: [email]
    strategy: redact
  - name: cards
    columns: ["*.users.card", "public.big.card", "public.big.email"]
    detectors: [card]
    strategy: partial
    keep: 4
    except_groups: [dba]
  - name: credentials
    detectors: [tokens]
    scan: [public.tickets.body]
    strategy: redact
`

func start(t testing.TB) *fixture { return startWith(t, nil) }

// startWith starts the fixture; catCfg, when set, changes the catalog's
// connection settings.
func startWith(t testing.TB, catCfg func(*pgx.ConnConfig)) *fixture {
	t.Helper()
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Psql(t, "postgres", fmt.Sprintf(`
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE TABLE users (id int PRIMARY KEY, name text, email text UNIQUE, card varchar(19), plan text);
INSERT INTO users VALUES (1, '%s', '%s', '%s', 'pro'), (2, 'Bob Plain', 'bob@example.com', '5555555555554444', 'free');
CREATE TABLE tickets (id int, body text);
INSERT INTO tickets VALUES (1, 'please rotate %s asap');
CREATE TABLE other (id int, v text);
INSERT INTO other SELECT g, 'row ' || g FROM generate_series(1, 3) g;
CREATE VIEW contacts AS SELECT id AS uid, email AS mail, upper(name) AS shout, plan FROM users;
CREATE VIEW contacts2 AS SELECT uid, mail FROM contacts;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO app;
`, name, email, card, token))

	rs := compileRules(t, policyYAML)
	adminCfg, err := pgx.ParseConfig(pg.AdminURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if catCfg != nil {
		catCfg(adminCfg)
	}
	cat := NewCatalog(adminCfg, 2)
	t.Cleanup(cat.Close)

	f := &fixture{pg: pg, class: session.ClassAgent}
	classifier := sqlclass.New(sqlclass.Options{})
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := pgwire.New(pgwire.Options{
		Name: "testdb", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: creds{lease{"app", "app-pw"}},
		Logger:      log,
		Stages: func(sess *session.Session) pgwire.Stages {
			f.mu.Lock()
			off := f.off
			f.mu.Unlock()
			if off {
				return pgwire.Stages{}
			}
			st := New(rs.ForSubject(Subject(sess)), cat, sess, log)
			if st == nil {
				return pgwire.Stages{}
			}
			st.TrackLineage(classifier)
			return pgwire.Stages{Client: []pgwire.ClientStage{st}, Server: []pgwire.ServerStage{st}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.addr = pgwiretest.Serve(t, p, func() *session.Session {
		sk := &sink{}
		sess := session.New(sk)
		sess.Connection = "testdb"
		f.mu.Lock()
		f.sinks = append(f.sinks, sk)
		sess.Origin.Class = f.class
		sess.Person = identity.Person{Name: "alice", UID: 1000, Groups: f.groups}
		f.sess = append(f.sess, sess)
		f.mu.Unlock()
		return sess
	}, nil)
	return f
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (f *fixture) url() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("x", "y"), Host: f.addr, Path: "/postgres",
		RawQuery: "sslmode=disable"}
	return u.String()
}

func (f *fixture) psql(t *testing.T, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", f.url(), "-c", sql).CombinedOutput()
	return string(out), err
}

func leaks(out string, secrets []string) []string {
	var l []string
	for _, s := range secrets {
		if strings.Contains(strings.ToLower(out), strings.ToLower(s)) {
			l = append(l, s)
		}
	}
	return l
}

// The bypass corpus: queries an agent could word to get around column
// rules, through psql (text format).
var corpus = []struct {
	name, sql string
	secrets   []string // what must not appear
	want      string   // what must appear (proves the query ran)
}{
	{"plain", "select * from users order by id", allSecrets[:3], "free"},
	{"alias", "select email as e, name as n, card as c from users", allSecrets[:3], "[redacted]"},
	{"qualified star", "select u.* from users u", allSecrets[:3], "free"},
	{"subquery", "select x.m from (select email as m from users) x", allSecrets[:3], "[redacted]"},
	{"cte", "with c as (select name, email, card from users) select * from c", allSecrets[:3], "1111"},
	{"view", "select * from contacts", allSecrets[:3], "pro"},
	{"view computed", "select shout, plan from contacts", allSecrets[:3], "free"},
	{"view over view", "select mail from contacts2", allSecrets[:3], "[redacted]"},
	{"cast", "select email::varchar(100), card::text, card::bigint from users", detectable, "[redacted]"},
	{"row_to_json", "select row_to_json(u) from users u", allSecrets[:3], "[redacted]"},
	{"json_agg", "select json_agg(u) from users u", allSecrets[:3], "[redacted]"},
	{"string_agg", "select string_agg(email || ' ' || card, ';') from users", detectable, "[redacted]"},
	{"concat", "select concat('x ', email, ' y ', card) from users", detectable, "[redacted]"},
	{"substring", "select substring(card from 1 for 16), substring(email, 1) from users", detectable, "[redacted]"},
	{"upper", "select upper(email), lower(email) from users", detectable, "REDACTED"},
	{"whole row", "select u from users u", allSecrets[:3], ""},
	{"whole row of a view", "select c from contacts c", allSecrets[:3], ""},
	{"array_agg", "select array_agg(email), array_agg(card) from users", detectable, ""},
	{"union", "select email from users union all select 'z'", allSecrets[:3], "[redacted]"},
	{"scan column", "select body from tickets", []string{token}, "please rotate"},
	{"cursor", "begin; declare c cursor for select * from users; fetch all c; commit", allSecrets[:3], "free"},
	{"other table", "select * from other", nil, "row 2"},
}

// A child table (INHERITS) or a partition holds its parent's rows under a
// name no rule mentions: a rule on the parent masks them there too, named
// directly or through an expression.
func TestInheritedAndPartitionedTables(t *testing.T) {
	f := start(t)
	f.pg.Psql(t, "postgres", `
CREATE TABLE users_archive () INHERITS (users);
INSERT INTO users_archive VALUES (3, 'Carol Inherited', 'carol@example.com', '4111111111111111', 'pro');
CREATE TABLE people (id int, name text, plan text) PARTITION BY RANGE (id);
CREATE TABLE people_p1 PARTITION OF people FOR VALUES FROM (0) TO (100);
CREATE TABLE people_p1a PARTITION OF people FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (id);
CREATE TABLE people_p1a_x PARTITION OF people_p1a FOR VALUES FROM (100) TO (200);
INSERT INTO people VALUES (1, 'Dana Partitioned', 'pro'), (150, 'Eve Subpartitioned', 'free');
GRANT SELECT ON users_archive, people, people_p1, people_p1a, people_p1a_x TO app;`)
	secrets := []string{"Carol Inherited", "carol@example.com", "4111111111111111", "Dana Partitioned", "Eve Subpartitioned"}
	for _, c := range []struct{ sql, want string }{
		{"select id, name, email, card from users_archive", "3|[redacted]|[redacted]|************1111"},
		{"select upper(name), reverse(card) from users_archive", "[redacted]|[redacted]"},
		{"select name, plan from people order by id", "[redacted]|pro\n[redacted]|free"},
		{"select name, plan from people_p1", "[redacted]|pro"},
		{"select name, plan from people_p1a_x", "[redacted]|free"},
		{"select lower(p.name) from people_p1a_x p", "[redacted]"},
		{"select id, plan from people_p1 where name is not null", "1|pro"},
	} {
		out, err := f.psql(t, c.sql)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.sql, err, out)
		}
		if l := leaks(out, secrets); len(l) > 0 {
			t.Errorf("%s leaked %v:\n%s", c.sql, l, out)
		}
		if got := strings.TrimSpace(out); got != c.want {
			t.Errorf("%s: got %q, want %q", c.sql, got, c.want)
		}
	}
}

func TestBypassCorpusPsql(t *testing.T) {
	f := start(t)
	for _, c := range corpus {
		t.Run(c.name, func(t *testing.T) {
			out, err := f.psql(t, c.sql)
			if err != nil {
				t.Fatalf("%s: %v\n%s", c.sql, err, out)
			}
			t.Logf("%s:\n%s", c.sql, out)
			if l := leaks(out, c.secrets); len(l) > 0 {
				t.Errorf("%s leaked %v:\n%s", c.sql, l, out)
			}
			if !strings.Contains(strings.ToUpper(out), strings.ToUpper(c.want)) {
				t.Errorf("%s: want %q in output:\n%s", c.sql, c.want, out)
			}
		})
	}
}

func TestBypassCorpusPgxBinary(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.url())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, c := range corpus {
		if strings.HasPrefix(c.sql, "begin") {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			// Twice: the second run uses pgx's cached statement (Bind
			// and Execute only, binary results).
			for i := 0; i < 2; i++ {
				rows, err := conn.Query(ctx, c.sql)
				if err != nil {
					t.Fatal(err)
				}
				var b strings.Builder
				for rows.Next() {
					vals, err := rows.Values()
					if err != nil {
						t.Fatal(err)
					}
					fmt.Fprintln(&b, vals...)
				}
				if err := rows.Err(); err != nil {
					t.Fatalf("%s: %v", c.sql, err)
				}
				out := b.String()
				if l := leaks(out, c.secrets); len(l) > 0 {
					t.Errorf("%s leaked %v:\n%s", c.sql, l, out)
				}
				if c.want != "REDACTED" && c.want != "{" && c.want != "[" && !strings.Contains(out, c.want) {
					t.Errorf("%s: want %q in output:\n%s", c.sql, c.want, out)
				}
			}
		})
	}
	// A pipelined batch, with a failing statement in the middle: each
	// result keeps its own description.
	b := &pgx.Batch{}
	b.Queue("select email, id from users where id = 1")
	b.Queue("select 1/0")
	b.Queue("select card, name from users where id = 1")
	br := conn.SendBatch(ctx, b)
	var e1 string
	var id int
	if err := br.QueryRow().Scan(&e1, &id); err != nil || e1 != "[redacted]" || id != 1 {
		t.Errorf("batch 1: %q %d %v", e1, id, err)
	}
	_ = br.Close()
	b = &pgx.Batch{}
	b.Queue("select plan, email from users where id = 1")
	b.Queue("select card, name from users where id = 1")
	b.Queue("select id, plan from users where id = 2")
	br = conn.SendBatch(ctx, b)
	var p1, c2, n2, p3 string
	if err := br.QueryRow().Scan(&p1, &e1); err != nil || p1 != "pro" || e1 != "[redacted]" {
		t.Errorf("batch 1: %q %q %v", p1, e1, err)
	}
	if err := br.QueryRow().Scan(&c2, &n2); err != nil || c2 != "************1111" || n2 != "[redacted]" {
		t.Errorf("batch 2: %q %q %v", c2, n2, err)
	}
	if err := br.QueryRow().Scan(&id, &p3); err != nil || id != 2 || p3 != "free" {
		t.Errorf("batch 3: %d %q %v", id, p3, err)
	}
	if err := br.Close(); err != nil {
		t.Error(err)
	}

	// Binary integers carrying a card are sent NULL.
	var n *int64
	if err := conn.QueryRow(ctx, "select card::bigint from users where id = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != nil {
		t.Errorf("card as bigint in binary: got %d, want NULL", *n)
	}
	var total int64
	if err := conn.QueryRow(ctx, "select sum(id) from users").Scan(&total); err != nil || total != 3 {
		t.Errorf("sum(id) = %d, %v: numbers that are not secrets pass", total, err)
	}
}

// TestBypassCorpusDescribedPortals: the corpus through pgconn's
// ExecParams, which describes each portal itself after its Bind (as libpq
// does), so the stage takes the portal's description from the client's
// Describe instead of asking; text and binary results, then three
// statements pipelined in one batch.
func TestBypassCorpusDescribedPortals(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.url())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pc := conn.PgConn()
	show := func(rs ...*pgconn.Result) string {
		var b strings.Builder
		for _, r := range rs {
			for _, row := range r.Rows {
				for _, v := range row {
					fmt.Fprintf(&b, "%s|", v)
				}
				b.WriteByte('\n')
			}
		}
		return b.String()
	}
	for _, c := range corpus {
		if strings.HasPrefix(c.sql, "begin") {
			continue
		}
		for _, format := range []int16{0, 1} {
			t.Run(fmt.Sprintf("%s/format %d", c.name, format), func(t *testing.T) {
				r := pc.ExecParams(ctx, c.sql, nil, nil, nil, []int16{format}).Read()
				if r.Err != nil {
					t.Fatalf("%s: %v", c.sql, r.Err)
				}
				out := show(r)
				if l := leaks(out, c.secrets); len(l) > 0 {
					t.Errorf("%s leaked %v:\n%s", c.sql, l, out)
				}
				if format == 0 && c.want != "REDACTED" && c.want != "{" && c.want != "[" && !strings.Contains(out, c.want) {
					t.Errorf("%s: want %q in output:\n%s", c.sql, c.want, out)
				}
			})
		}
	}
	b := &pgconn.Batch{}
	b.ExecParams("select plan, email from users where id = 1", nil, nil, nil, []int16{1})
	b.ExecParams("select card, name from users where id = 1", nil, nil, nil, []int16{0})
	b.ExecParams("select id, plan from users where id = 2", nil, nil, nil, []int16{0})
	rs, err := pc.ExecBatch(ctx, b).ReadAll()
	if err != nil || len(rs) != 3 {
		t.Fatalf("batch: %d results, %v", len(rs), err)
	}
	if got, want := show(rs...), "pro|[redacted]|\n************1111|[redacted]|\n2|free|\n"; got != want {
		t.Errorf("batch: %q, want %q", got, want)
	}
}

func TestOtherChannels(t *testing.T) {
	f := start(t)
	t.Run("copy refused", func(t *testing.T) {
		for _, q := range []string{"copy users to stdout", "copy (select email from users) to stdout with (format csv)",
			"copy users to stdout with (format binary)"} {
			out, err := f.psql(t, q)
			if err == nil || !strings.Contains(out, "COPY TO STDOUT is not available while masking") {
				t.Errorf("%s: want a refusal, got %v:\n%s", q, err, out)
			}
			if l := leaks(out, allSecrets); len(l) > 0 {
				t.Errorf("%s leaked %v", q, l)
			}
		}
		// The session goes on after a refused COPY.
		out, err := f.psql(t, "copy (select 1) to stdout")
		if err == nil {
			t.Errorf("copy refused: %s", out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, f.url())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.PgConn().CopyTo(ctx, &bytes.Buffer{}, "copy users to stdout"); err == nil {
			t.Error("copy through pgx not refused")
		}
		var v string
		if err := conn.QueryRow(ctx, "select 'still here'").Scan(&v); err != nil || v != "still here" {
			t.Errorf("after a refused COPY: %q %v", v, err)
		}
	})
	t.Run("unique violation detail", func(t *testing.T) {
		out, err := f.psql(t, fmt.Sprintf("insert into users values (9, 'x', '%s', '1', 'x')", email))
		if err == nil {
			t.Fatalf("duplicate accepted: %s", out)
		}
		if !strings.Contains(out, "23505") && !strings.Contains(out, "duplicate key") {
			t.Errorf("want the unique violation, got %s", out)
		}
		if l := leaks(out, allSecrets); len(l) > 0 {
			t.Errorf("error echoed %v:\n%s", l, out)
		}
		out, _ = f.psql(t, fmt.Sprintf("insert into users values (1, '%s', 'q@example.org', '1', 'x')", name))
		if l := leaks(out, []string{name}); len(l) > 0 {
			t.Errorf("error echoed %v:\n%s", l, out)
		}
		out, _ = f.psql(t, "do $$ begin raise notice 'found %', (select email from users where id = 1); end $$")
		if l := leaks(out, []string{email}); len(l) > 0 {
			t.Errorf("notice echoed %v:\n%s", l, out)
		}
		for _, q := range []string{"select cast(email as int) from users where id = 1",
			"select cast(name as int) from users where id = 1", "select name::date from users where id = 1",
			"select name::json from users where id = 1", "select ('x' || name)::uuid from users where id = 1"} {
			out, err := f.psql(t, q)
			if err == nil {
				t.Errorf("%s: no error: %s", q, out)
			}
			if l := leaks(out, allSecrets); len(l) > 0 {
				t.Errorf("%s: error echoed %v:\n%s", q, l, out)
			}
		}
	})
	t.Run("notify payload", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, f.url())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "listen ch"); err != nil {
			t.Fatal(err)
		}
		// A masked column as a payload is a copy: refused.
		var pe *pgconn.PgError
		if _, err := conn.Exec(ctx, "select pg_notify('ch', 'mail ' || email) from users where id = 1"); !errors.As(err, &pe) || pe.Code != "42501" {
			t.Fatalf("notify of a masked column: %v", err)
		}
		// The detectors read the payloads of the rest.
		if _, err := conn.Exec(ctx, "select pg_notify('ch', 'body ' || body) from tickets where id = 1"); err != nil {
			t.Fatal(err)
		}
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(n.Payload, token) || !strings.HasPrefix(n.Payload, "body ") {
			t.Errorf("payload %q", n.Payload)
		}
	})
}

func TestExemptGroupSeesValues(t *testing.T) {
	f := start(t)
	f.mu.Lock()
	f.groups = []string{"dba"}
	f.mu.Unlock()
	out, err := f.psql(t, "select card from users where id = 1")
	if err != nil || !strings.Contains(out, card) {
		t.Errorf("dba: want the card unmasked, got %v %s", err, out)
	}
	// The pii rule has no exception: still masked for the dba.
	out, err = f.psql(t, "select email from users where id = 1")
	if err != nil || strings.Contains(out, email) {
		t.Errorf("dba: want the email masked, got %v %s", err, out)
	}
	// The counts reach the session.
	f.mu.Lock()
	s := f.sess[len(f.sess)-1]
	f.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.MaskCounts()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	counts := s.MaskCounts()
	if len(counts) != 1 || counts[0].Rule != "pii" || counts[0].Detector != "column" || counts[0].Values != 1 {
		t.Errorf("counts: %+v", counts)
	}
}

func TestDDLRefreshesSources(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.url())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The session owns both tables, so its renames below succeed.
	f.pg.Psql(t, "postgres", "CREATE TABLE staging (id int, note text); INSERT INTO staging VALUES (1, 'nothing'); ALTER TABLE staging OWNER TO app; ALTER TABLE users OWNER TO app; GRANT CREATE ON SCHEMA public TO app")
	var v string
	if err := conn.QueryRow(ctx, "select note from staging", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "nothing" {
		t.Fatalf("before: %q %v", v, err)
	}
	// Described by the same bytes before and after the DDL below (alias,
	// table OID, attribute number, type): a kept decision would be stale.
	if err := conn.QueryRow(ctx, "select note as e from staging", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "nothing" {
		t.Fatalf("before, aliased: %q %v", v, err)
	}
	if err := conn.QueryRow(ctx, "select 'x' as other", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil {
		t.Fatal(err)
	}
	// The session moves the table under a masked name: the cached
	// source is dropped on its DDL.
	for _, q := range []string{"alter table users rename to users_old", "alter table staging rename to users",
		"alter table users rename column note to email"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := conn.QueryRow(ctx, "select email from users", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "[redacted]" {
		t.Errorf("after DDL: %q %v, want [redacted]", v, err)
	}
	if err := conn.QueryRow(ctx, "select email as e from users", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "[redacted]" {
		t.Errorf("after DDL, aliased: %q %v, want [redacted]", v, err)
	}
}

func TestTargetOrigins(t *testing.T) {
	action := `({QUERY :commandType 1 :rtable ({RANGETBLENTRY :subquery {QUERY :targetList ({TARGETENTRY :resno 1 :resorigtbl 99 :resorigcol 9})}}) :targetList ({TARGETENTRY :expr {VAR :varno 1} :resno 1 :resname uid :ressortgroupref 0 :resorigtbl 16385 :resorigcol 1 :resjunk false} {TARGETENTRY :expr {FUNCEXPR :args ({VAR :varno 1})} :resno 2 :resname "a\}b" :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false}) :override 0})`
	got := TargetOrigins(action)
	if len(got) != 1 || got[1] != (Attr{16385, 1}) {
		t.Errorf("TargetOrigins = %v", got)
	}
}

func yamlStrict(s string, v any) error {
	d := yaml.NewDecoder(strings.NewReader(s))
	d.KnownFields(true)
	return d.Decode(v)
}

// With the catalog unreachable, columns from tables are sent NULL (fail
// closed) and the session goes on; computed columns are masked whole, as
// the statement's relations could not be looked up.
func TestCatalogDownFailsClosed(t *testing.T) {
	old := lookupTimeout
	lookupTimeout = 2 * time.Second
	t.Cleanup(func() { lookupTimeout = old })
	f := startWith(t, func(c *pgx.ConnConfig) { c.Password = "wrong" })
	out, err := f.psql(t, "select id, plan, email, 'x ' || card from users where id = 1")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if l := leaks(out, allSecrets); len(l) > 0 {
		t.Errorf("leaked %v: %s", l, out)
	}
	// The statement's relations could not be looked up either: its
	// computed column counts as reading a masked one.
	if want := "|||[redacted]"; !strings.Contains(out, want) {
		t.Errorf("got %q, want %q", out, want)
	}
}
