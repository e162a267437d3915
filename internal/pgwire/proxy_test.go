package pgwire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// TestProxy runs client behaviours through the proxy against one real
// server (SCRAM-SHA-256, plain TCP).
func TestProxy(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Psql(t, "postgres", "create table items (id int primary key, name text, data bytea)")

	t.Run("queries", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		c := h.connect(ctx, t)
		tests := []struct {
			name string
			mode pgx.QueryExecMode
		}{
			{"simple", pgx.QueryExecModeSimpleProtocol},
			{"exec", pgx.QueryExecModeExec},
			{"describe", pgx.QueryExecModeDescribeExec},
			{"cache statement", pgx.QueryExecModeCacheStatement},
			{"cache describe", pgx.QueryExecModeCacheDescribe},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				var s string
				var n int
				if err := c.QueryRow(ctx, "select $1::text, $2::int * 2", tc.mode, "héllo", 21).Scan(&s, &n); err != nil {
					t.Fatal(err)
				}
				if s != "héllo" || n != 42 {
					t.Fatalf("got %q %d", s, n)
				}
				_, err := c.Exec(ctx, "select 1/0", tc.mode)
				if pgCode(err) != "22012" {
					t.Fatalf("division by zero: %v, want SQLSTATE 22012", err)
				}
				// The session is still usable after an error.
				if err := c.QueryRow(ctx, "select 7", tc.mode).Scan(&n); err != nil || n != 7 {
					t.Fatalf("after error: %v %d", err, n)
				}
			})
		}
		// Several statements in one simple query, and an empty one.
		res, err := c.PgConn().Exec(ctx, "select 1; select 2, 3; ;").ReadAll()
		if err != nil || len(res) != 2 {
			t.Fatalf("multi-statement: %v, %d results", err, len(res))
		}
		if _, err := c.PgConn().Exec(ctx, "").ReadAll(); err != nil {
			t.Fatalf("empty query: %v", err)
		}
	})

	t.Run("transactions and prepared statements", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		c := h.connect(ctx, t)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Prepare(ctx, "ins", "insert into items (id, name) values ($1, $2)"); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 5; i++ {
			if _, err := tx.Exec(ctx, "ins", i, fmt.Sprint("item", i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := c.QueryRow(ctx, "select count(*) from items where id <= 5").Scan(&n); err != nil || n != 5 {
			t.Fatalf("count: %v %d", err, n)
		}
		if _, err := c.Exec(ctx, "ins", 1, "dup"); pgCode(err) != "23505" {
			t.Fatalf("duplicate: %v, want 23505", err)
		}
		if err := c.Deallocate(ctx, "ins"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pipelined batch", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		c := h.connect(ctx, t)
		b := &pgx.Batch{}
		for i := 0; i < 50; i++ {
			b.Queue("select $1::int + 1", i)
		}
		b.Queue("select 1/0")
		b.Queue("select 99")
		br := c.SendBatch(ctx, b)
		for i := 0; i < 50; i++ {
			var n int
			if err := br.QueryRow().Scan(&n); err != nil || n != i+1 {
				t.Fatalf("batch item %d: %v %d", i, err, n)
			}
		}
		if _, err := br.Exec(); pgCode(err) != "22012" {
			t.Fatalf("batch error: %v", err)
		}
		_ = br.Close()
		var n int
		if err := c.QueryRow(ctx, "select 5").Scan(&n); err != nil || n != 5 {
			t.Fatalf("after batch: %v", err)
		}
		// Raw pipeline: several Syncs in flight.
		p := c.PgConn().StartPipeline(ctx)
		for i := 0; i < 3; i++ {
			p.SendQueryParams("select $1::int", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil)
			p.SendPipelineSync()
		}
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			res, err := p.GetResults()
			if err != nil {
				t.Fatal(err)
			}
			rr := res.(*pgconn.ResultReader).Read()
			if rr.Err != nil || string(rr.Rows[0][0]) != fmt.Sprint(i) {
				t.Fatalf("pipeline %d: %v %q", i, rr.Err, rr.Rows)
			}
			if _, err := p.GetResults(); err != nil { // the Sync
				t.Fatal(err)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("copy", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		c := h.connect(ctx, t)
		if _, err := c.Exec(ctx, "create temp table cp (id int, name text)"); err != nil {
			t.Fatal(err)
		}
		var in bytes.Buffer
		for i := 0; i < 20000; i++ {
			fmt.Fprintf(&in, "%d\tname %d\n", i, i)
		}
		tag, err := c.PgConn().CopyFrom(ctx, bytes.NewReader(in.Bytes()), "copy cp from stdin")
		if err != nil || tag.RowsAffected() != 20000 {
			t.Fatalf("copy from: %v %v", err, tag)
		}
		var out bytes.Buffer
		tag, err = c.PgConn().CopyTo(ctx, &out, "copy (select * from cp order by id) to stdout")
		if err != nil || tag.RowsAffected() != 20000 {
			t.Fatalf("copy to: %v %v", err, tag)
		}
		if !bytes.Equal(out.Bytes(), in.Bytes()) {
			t.Fatal("copy round trip changed the data")
		}
		// A failing COPY leaves the session usable.
		_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("x\tnot a number\n"), "copy cp from stdin")
		if pgCode(err) != "22P02" {
			t.Fatalf("bad copy: %v", err)
		}
		rows, err := c.CopyFrom(ctx, pgx.Identifier{"cp"}, []string{"id", "name"},
			pgx.CopyFromRows([][]any{{1, "a"}, {2, "b"}}))
		if err != nil || rows != 2 {
			t.Fatalf("binary copy: %v %d", err, rows)
		}
	})

	t.Run("listen notify", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		l := h.connect(ctx, t)
		n := h.connect(ctx, t)
		if _, err := l.Exec(ctx, "listen airlock_chan"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Exec(ctx, "select pg_notify('airlock_chan', 'hi there')"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		note, err := l.WaitForNotification(wctx)
		if err != nil || note.Channel != "airlock_chan" || note.Payload != "hi there" {
			t.Fatalf("notification: %v %+v", err, note)
		}
		// Notices flow too.
		var notices []string
		var mu sync.Mutex
		cfg, _ := pgx.ParseConfig(h.url("postgres"))
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { mu.Lock(); notices = append(notices, n.Message); mu.Unlock() }
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "do $$ begin raise notice 'careful'; end $$"); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(notices) != 1 || notices[0] != "careful" {
			t.Fatalf("notices %q", notices)
		}
	})

	t.Run("large result", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		c := h.connect(ctx, t)
		rows, err := c.Query(ctx, "select g, repeat('x', g % 100) from generate_series(1, 200000) g")
		if err != nil {
			t.Fatal(err)
		}
		count, sum := 0, 0
		for rows.Next() {
			var g int
			var s string
			if err := rows.Scan(&g, &s); err != nil {
				t.Fatal(err)
			}
			count++
			sum += len(s)
		}
		if rows.Err() != nil || count != 200000 {
			t.Fatalf("rows %d: %v", count, rows.Err())
		}
		// Values far larger than a buffer, both ways.
		big := strings.Repeat("abcdefghij", 300000)
		var got string
		if err := c.QueryRow(ctx, "select $1::text || 'z'", big[:900000]).Scan(&got); err != nil || got != big[:900000]+"z" {
			t.Fatalf("large value: %v, %d bytes", err, len(got))
		}
		if err := c.QueryRow(ctx, "select repeat('y', 5000000)").Scan(&got); err != nil || len(got) != 5000000 {
			t.Fatalf("large row: %v, %d bytes", err, len(got))
		}
		st := h.sink.statements()
		var found bool
		for _, s := range st {
			if strings.Contains(s.SQL, "generate_series") {
				found = true
				if s.Rows != 200000 || s.Tag != "SELECT 200000" || s.Bytes < 200000*8 {
					t.Fatalf("large result event %+v", s)
				}
			}
		}
		if !found {
			t.Fatal("no event for the large result")
		}
	})

	t.Run("cancel", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		cfg, err := pgx.ParseConfig(h.url("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)

		qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		start := time.Now()
		_, err = c.Exec(qctx, "select pg_sleep(20)")
		cancel()
		if err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("cancelled sleep: err %v after %v", err, time.Since(start))
		}
		var n int
		if err := c.QueryRow(ctx, "select 3").Scan(&n); err != nil || n != 3 {
			t.Fatalf("after cancel: %v", err)
		}
		var sawCancel bool
		for _, s := range h.sink.statements() {
			sawCancel = sawCancel || s.SQLState == "57014"
		}
		if !sawCancel {
			t.Fatalf("no 57014 statement event: %+v", h.sink.statements())
		}

		// Another uid presenting the same key cancels nothing.
		done := make(chan error, 1)
		start = time.Now()
		go func() { _, err := c.Exec(ctx, "select pg_sleep(1.5)"); done <- err }()
		time.Sleep(300 * time.Millisecond)
		h.uid.Store(2000)
		if err := c.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		h.uid.Store(1000)
		if err := <-done; err != nil {
			t.Fatalf("sleep cancelled by another uid: %v", err)
		}
		if time.Since(start) < 1400*time.Millisecond {
			t.Fatal("sleep ended early")
		}
		var refused bool
		for _, r := range h.sink.refusals() {
			refused = refused || strings.Contains(r.Reason, "cancel request from uid 2000")
		}
		if !refused {
			t.Fatalf("no refusal recorded: %+v", h.sink.refusals())
		}
	})

	t.Run("secret never reaches the client", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		ctx := testCtx(t)
		var rec recorder
		cfg, _ := pgx.ParseConfig(h.url("postgres", "application_name", "mine", "client_encoding", "UTF8"))
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			return &recordingConn{Conn: c, rec: &rec}, err
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"show all", "select * from pg_stat_activity", "select nonsense", "select current_user"} {
			_, _ = c.Exec(ctx, q)
		}
		var app string
		if err := c.QueryRow(ctx, "show application_name").Scan(&app); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(app, "airlock:") || !strings.HasSuffix(app, ":alice") {
			t.Fatalf("application_name %q", app)
		}
		_ = c.Close(ctx)
		h.serveResults(1)
		if rec.contains(pg.AdminPassword) {
			t.Fatal("the upstream password reached the client")
		}
		if strings.Contains(h.logs.String(), pg.AdminPassword) {
			t.Fatal("the upstream password reached the log")
		}
		if strings.Contains(fmt.Sprintf("%+v", h.sink.events()), pg.AdminPassword) {
			t.Fatal("the upstream password reached an event")
		}
	})

	t.Run("endings", func(t *testing.T) {
		tests := []struct {
			name    string
			ttl     time.Duration
			end     func(h *harness, c *pgx.Conn)
			code    string
			serve   error
			release bool
		}{
			{"client closes", 0, func(h *harness, c *pgx.Conn) { _ = c.Close(context.Background()) }, "", nil, true},
			{"daemon shuts down", 0, func(h *harness, c *pgx.Conn) { h.cancel() }, "57P01", ErrShutdown, true},
			// The lease outlives the connection and its first query even on
			// a loaded machine; the session's own end is then awaited, not
			// slept for.
			{"credential expires", 3 * time.Second, func(h *harness, c *pgx.Conn) { h.serveResults(1) }, "57P01", ErrExpired, true},
			{"upstream terminated", 0, func(h *harness, c *pgx.Conn) {
				pg.Psql(t, "postgres", "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'airlock:%'")
			}, "57P01", ErrUpstreamClosed, true},
			{"upstream link drops", 0, func(h *harness, c *pgx.Conn) {
				h.mu.Lock()
				_ = unix.Shutdown(h.upLinks[len(h.upLinks)-1], unix.SHUT_RDWR)
				h.mu.Unlock()
			}, "08006", ErrUpstreamClosed, true},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarness(t, pg, nil)
				h.creds.ttl = tc.ttl
				ctx := testCtx(t)
				c := h.connect(ctx, t)
				if _, err := c.Exec(ctx, "select 1"); err != nil {
					t.Fatal(err)
				}
				tc.end(h, c)
				if tc.code != "" {
					time.Sleep(100 * time.Millisecond)
					_, err := c.Exec(ctx, "select 1")
					if pgCode(err) != tc.code {
						t.Fatalf("next query: %v, want SQLSTATE %s", err, tc.code)
					}
				}
				res := h.serveResults(1)
				if !errors.Is(res[0], tc.serve) || (tc.serve == nil && res[0] != nil) {
					t.Fatalf("Serve returned %v, want %v", res[0], tc.serve)
				}
				if got := h.creds.released.Load(); got != 1 {
					t.Fatalf("lease released %d times", got)
				}
			})
		}
	})
}

// recorder keeps every byte a client received.
type recorder struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (r *recorder) contains(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.b.Bytes(), []byte(s))
}

type recordingConn struct {
	net.Conn
	rec *recorder
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.rec.mu.Lock()
	c.rec.b.Write(b[:n])
	c.rec.mu.Unlock()
	return n, err
}
