package pgwire

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// rawSession logs in to the proxy speaking the protocol by hand.
func rawSession(t *testing.T, h *harness) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, _ := proxyStartup(t, h.addr)
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	return conn, pgproto3.NewFrontend(conn, conn)
}

// untilReady reads until n ReadyForQuery messages have arrived.
func untilReady(t *testing.T, fe *pgproto3.Frontend, n int) []pgproto3.BackendMessage {
	t.Helper()
	var out []pgproto3.BackendMessage
	for n > 0 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			cp := *e
			out = append(out, &cp)
		} else {
			out = append(out, nil)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			n--
		}
	}
	return out
}

// waitStatements waits until the sink holds statements matching keep.
func waitStatements(t *testing.T, h *harness, n int, keep func(session.Statement) bool) []session.Statement {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []session.Statement
		for _, s := range h.sink.statements() {
			if keep(s) {
				got = append(got, s)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecordHolds checks that nothing switches the record off or fools it
// (issue 6 item 12); each case failed on the tracker this pipeline
// replaced.
func TestRecordHolds(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})

	t.Run("pipelined past ten thousand", func(t *testing.T) {
		// The old tracker gave up recording after 10,000 requests in
		// flight; now the proxy stops reading instead.
		h := newHarness(t, pg, nil)
		conn, fe := rawSession(t, h)
		const n = 12000
		var buf []byte
		for i := 0; i < n; i++ {
			buf, _ = (&pgproto3.Query{String: fmt.Sprintf("select %d as pipelined", i)}).Encode(buf)
		}
		werr := make(chan error, 1)
		go func() { _, err := conn.Write(buf); werr <- err }()
		untilReady(t, fe, n)
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		got := waitStatements(t, h, n, func(s session.Statement) bool { return strings.HasSuffix(s.SQL, "as pipelined") })
		if len(got) != n {
			t.Fatalf("recorded %d of %d pipelined statements", len(got), n)
		}
		for i, s := range got {
			if s.SQL != fmt.Sprintf("select %d as pipelined", i) || s.Tag != "SELECT 1" {
				t.Fatalf("statement %d recorded as %+v", i, s)
			}
		}
	})

	t.Run("fast-path function call", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		_, fe := rawSession(t, h)
		fe.Send(&pgproto3.FunctionCall{Function: 177, Arguments: [][]byte{[]byte("20"), []byte("22")}})
		_ = fe.Flush()
		untilReady(t, fe, 1)
		got := waitStatements(t, h, 1, func(s session.Statement) bool { return s.Protocol == "function" })
		if len(got) != 1 || got[0].FunctionOID != 177 || strings.Join(got[0].Params, ",") != "20,22" || got[0].SQLState != "" {
			t.Fatalf("function call recorded as %+v", got)
		}
	})

	t.Run("client leaves with statements in flight", func(t *testing.T) {
		pg.Psql(t, "postgres", "drop table if exists left_behind; create table left_behind (n int)")
		h := newHarness(t, pg, nil)
		conn, fe := rawSession(t, h)
		fe.Send(&pgproto3.Query{String: "select pg_sleep(0.3)"})
		fe.Send(&pgproto3.Query{String: "insert into left_behind values (1)"})
		_ = fe.Flush()
		_ = conn.Close() // gone before any answer
		got := waitStatements(t, h, 2, func(s session.Statement) bool { return s.Protocol == "simple" })
		if len(got) != 2 || got[0].Tag != "SELECT 1" || got[1].Tag != "INSERT 0 1" || got[1].Decision != "" {
			t.Fatalf("statements of a client that left recorded as %+v", got)
		}
		if n := pg.Psql(t, "postgres", "select count(*) from left_behind"); n != "1" {
			t.Fatalf("the insert ran %s times", n)
		}
	})

	t.Run("client leaves a statement that outlasts the drain", func(t *testing.T) {
		old := drainTimeout
		drainTimeout = 300 * time.Millisecond
		t.Cleanup(func() { drainTimeout = old })
		h := newHarness(t, pg, nil)
		conn, fe := rawSession(t, h)
		fe.Send(&pgproto3.Query{String: "select pg_sleep(5)"})
		_ = fe.Flush()
		time.Sleep(100 * time.Millisecond)
		_ = conn.Close()
		got := waitStatements(t, h, 1, func(s session.Statement) bool { return strings.Contains(s.SQL, "pg_sleep(5)") })
		if len(got) != 1 || got[0].Decision != "unknown: client left" {
			t.Fatalf("statement still running when the client left recorded as %+v", got)
		}
	})

	t.Run("rejected Parse keeps the name's statement", func(t *testing.T) {
		pg.Psql(t, "postgres", "drop table if exists rp; create table rp as select g as id, 0 as n from generate_series(1, 10) g")
		h := newHarness(t, pg, nil)
		c := h.connect(ctx(t), t)
		pc := c.PgConn()
		if _, err := pc.Prepare(ctx(t), "s1", "update rp set n = n + 1", nil); err != nil {
			t.Fatal(err)
		}
		// The server refuses a second s1 (42P05): s1 is still the update.
		if _, err := pc.Prepare(ctx(t), "s1", "select 1", nil); pgCode(err) != "42P05" {
			t.Fatalf("second Parse of s1: %v", err)
		}
		res := pc.ExecPrepared(ctx(t), "s1", nil, nil, nil).Read()
		if res.Err != nil || res.CommandTag.String() != "UPDATE 10" {
			t.Fatalf("execute s1: %v %v", res.Err, res.CommandTag)
		}
		got := waitStatements(t, h, 1, func(s session.Statement) bool { return s.Tag == "UPDATE 10" })
		if len(got) != 1 || got[0].SQL != "update rp set n = n + 1" || got[0].Name != "s1" {
			t.Fatalf("execution of s1 recorded as %+v", got)
		}
	})

	t.Run("prepared statement budget", func(t *testing.T) {
		h := newHarness(t, pg, func(o *Options) { o.MaxPreparedBytes = 1000 })
		c := h.connect(ctx(t), t)
		pc := c.PgConn()
		long := func(tag string) string { return "select '" + tag + strings.Repeat("x", 600) + "'" }
		if _, err := pc.Prepare(ctx(t), "a", long("a"), nil); err != nil {
			t.Fatal(err)
		}
		_, err := pc.Prepare(ctx(t), "b", long("b"), nil)
		if pgCode(err) != "54000" {
			t.Fatalf("Parse over the budget: %v, want 54000", err)
		}
		// The session goes on, and freeing a statement makes room.
		var n int
		if err := c.QueryRow(ctx(t), "select 7", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 7 {
			t.Fatalf("after the refusal: %v", err)
		}
		if err := pc.Deallocate(ctx(t), "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Prepare(ctx(t), "b", long("b"), nil); err != nil {
			t.Fatalf("Parse after Close: %v", err)
		}
		// A statement the server never created is not known either: b
		// exists, a is gone.
		if res := pc.ExecPrepared(ctx(t), "a", nil, nil, nil).Read(); pgCode(res.Err) != "26000" {
			t.Fatalf("execute a: %v", res.Err)
		}
		// SQL DEALLOCATE frees room too.
		if _, err := pc.Exec(ctx(t), "deallocate b").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Prepare(ctx(t), "c", long("c"), nil); err != nil {
			t.Fatalf("Parse after DEALLOCATE: %v", err)
		}
		var refused bool
		for _, s := range h.sink.statements() {
			refused = refused || (s.SQLState == "54000" && strings.HasPrefix(s.SQL, "select 'b") && s.Decision == "refused")
		}
		if !refused {
			t.Fatalf("the refused Parse is not recorded: %+v", h.sink.statements())
		}
	})

	t.Run("unnamed portal across Sync in a transaction", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		_, fe := rawSession(t, h)
		fe.Send(&pgproto3.Query{String: "begin"})
		fe.Send(&pgproto3.Parse{Query: "select g as across from generate_series(1, 4) g"})
		fe.Send(&pgproto3.Bind{})
		fe.Send(&pgproto3.Execute{MaxRows: 2})
		fe.Send(&pgproto3.Sync{})
		fe.Send(&pgproto3.Execute{MaxRows: 2})
		fe.Send(&pgproto3.Sync{})
		_ = fe.Flush()
		untilReady(t, fe, 3)
		got := waitStatements(t, h, 2, func(s session.Statement) bool { return s.Protocol == "extended" })
		if len(got) != 2 || got[1].SQL != "select g as across from generate_series(1, 4) g" {
			t.Fatalf("second Execute of the unnamed portal recorded as %+v", got)
		}
	})

	t.Run("statement prepared in SQL", func(t *testing.T) {
		h := newHarness(t, pg, nil)
		c := h.connect(ctx(t), t)
		pc := c.PgConn()
		if _, err := pc.Exec(ctx(t), "prepare sqlprep as select 41 + 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if res := pc.ExecPrepared(ctx(t), "sqlprep", nil, nil, nil).Read(); res.Err != nil {
			t.Fatal(res.Err)
		}
		got := waitStatements(t, h, 1, func(s session.Statement) bool { return s.Protocol == "extended" })
		if len(got) != 1 || got[0].SQL != `<statement "sqlprep" prepared in SQL>` {
			t.Fatalf("execution of a SQL-prepared statement recorded as %+v", got)
		}
		// A cursor declared in SQL, fetched with the protocol's Execute.
		h.sink.reset()
		_, fe := rawSession(t, h)
		fe.Send(&pgproto3.Query{String: "begin; declare cur2 cursor for select 1 from generate_series(1, 5)"})
		fe.Send(&pgproto3.Execute{Portal: "cur2", MaxRows: 2})
		fe.Send(&pgproto3.Sync{})
		_ = fe.Flush()
		untilReady(t, fe, 2)
		got = waitStatements(t, h, 1, func(s session.Statement) bool { return s.Protocol == "extended" })
		if len(got) != 1 || got[0].SQL != `<portal "cur2" declared in SQL>` {
			t.Fatalf("Execute of a SQL cursor recorded as %+v", got)
		}
	})
}

// TestDecisionRecords checks what the record says under each decision.
func TestDecisionRecords(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	holds := make(chan *Holding, 4)
	h := newHarness(t, pg, func(o *Options) {
		o.Stages = func(*session.Session) Stages {
			return Stages{Client: []ClientStage{
				&refuseStage{types: "QP", match: "forbidden", code: "42501"},
				&rewriteStage{from: "client_said", to: "proxy_said"},
				&holdStage{match: "needs_approval", holds: holds},
			}}
		}
	})
	c := h.connect(ctx(t), t)
	_, err := c.Exec(ctx(t), "select 'forbidden'", pgx.QueryExecModeSimpleProtocol)
	if pgCode(err) != "42501" {
		t.Fatalf("refused: %v", err)
	}
	_, err = c.Exec(ctx(t), "select 'forbidden', $1::int", pgx.QueryExecModeExec, 1)
	if pgCode(err) != "42501" {
		t.Fatalf("refused extended: %v", err)
	}
	var s string
	if err := c.QueryRow(ctx(t), "select 'client_said'", pgx.QueryExecModeExec).Scan(&s); err != nil || s != "proxy_said" {
		t.Fatalf("rewritten: %v %q", err, s)
	}
	go func() { (<-holds).Approve() }()
	if err := c.QueryRow(ctx(t), "select 'needs_approval'", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil {
		t.Fatal(err)
	}
	go func() { (<-holds).Approve() }()
	if err := c.QueryRow(ctx(t), "select 'needs_approval', $1::int", pgx.QueryExecModeExec, 2).Scan(&s, new(int)); err != nil {
		t.Fatal(err)
	}
	want := []want{
		{Protocol: "simple", SQL: "select 'forbidden'", SQLState: "42501"},
		{Protocol: "extended", SQL: "select 'forbidden', $1::int", SQLState: "42501"},
		{Protocol: "extended", SQL: "select 'proxy_said'", Tag: "SELECT 1", Rows: 1},
		{Protocol: "simple", SQL: "select 'needs_approval'", Tag: "SELECT 1", Rows: 1},
		{Protocol: "extended", SQL: "select 'needs_approval', $1::int", Params: []string{"2"}, Tag: "SELECT 1", Rows: 1},
	}
	decisions := []string{"refused", "refused", "replaced", "approved", "approved"}
	got := waitStatements(t, h, len(want), func(session.Statement) bool { return true })
	if len(got) != len(want) {
		t.Fatalf("recorded %d statements, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if p := pick(got[i]); fmt.Sprint(p) != fmt.Sprint(want[i]) || got[i].Decision != decisions[i] {
			t.Errorf("statement %d: got %+v (%s)\n want %+v (%s)", i, p, got[i].Decision, want[i], decisions[i])
		}
	}
}

// TestHoldIsolation: a held session parks alone; the others run on.
func TestHoldIsolation(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	holds := make(chan *Holding, 1)
	h := newHarness(t, pg, func(o *Options) {
		o.Stages = func(*session.Session) Stages {
			return Stages{Client: []ClientStage{&holdStage{match: "needs_approval", holds: holds}}}
		}
	})
	held := h.connect(ctx(t), t)
	done := make(chan error, 1)
	go func() {
		_, err := held.Exec(context.Background(), "select 'needs_approval'")
		done <- err
	}()
	hold := <-holds
	<-hold.Parked()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx(t), h.url("postgres"))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close(context.Background())
			for j := 0; j < 50; j++ {
				var n int
				if err := c.QueryRow(ctx(t), "select $1::int", j).Scan(&n); err != nil || n != j {
					t.Errorf("other session: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-done:
		t.Fatalf("the held statement finished undecided: %v", err)
	default:
	}
	hold.Approve()
	if err := <-done; err != nil {
		t.Fatalf("approved statement: %v", err)
	}
}

// TestSessionState: the live counters and the upstream role are typed
// fields of the session, readable while it runs (as `airlock status` does).
func TestSessionState(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	h := newHarness(t, pg, nil)
	c := h.connect(ctx(t), t)
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(ctx(t), "select g from generate_series(1, 10) g"); err != nil {
			t.Fatal(err)
		}
	}
	h.mu.Lock()
	sess := h.sessions[0]
	h.mu.Unlock()
	// Live: the session is still open. Events (and their counts) are
	// handed over just after the answers go out, so wait for them.
	deadline := time.Now().Add(10 * time.Second)
	for sess.Stats.Statements.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := sess.Stats.Snapshot()
	if got.Statements != 3 || got.Rows != 30 || got.BytesIn == 0 || got.BytesOut == 0 || got.MsgsIn < 3 || got.MsgsOut < 3*12 {
		t.Fatalf("live counters %+v", got)
	}
	if sess.UpstreamRole() != pg.AdminUser || sess.Database() != "postgres" {
		t.Fatalf("upstream role %q, database %q", sess.UpstreamRole(), sess.Database())
	}
	if len(sess.Attrs()) != 0 {
		t.Fatalf("facts left in string attributes: %v", sess.Attrs())
	}
}

// TestHoldClientLeaves: a client that closes its connection while held
// ends its hold at once, not at the hold's timeout, and the session ends.
func TestHoldClientLeaves(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	holds := make(chan *Holding, 1)
	h := newHarness(t, pg, func(o *Options) {
		o.Stages = func(*session.Session) Stages {
			return Stages{Client: []ClientStage{&holdStage{match: "needs_approval", holds: holds}}}
		}
	})
	conn, fe := rawSession(t, h)
	fe.Send(&pgproto3.Query{String: "select 'needs_approval'"})
	_ = fe.Flush()
	hold := <-holds
	<-hold.Parked()
	_ = conn.Close()
	res := h.serveResults(1) // within 10s; the hold's own timeout is minutes
	if res[0] != nil {
		t.Fatalf("Serve: %v", res[0])
	}
	got := waitStatements(t, h, 1, func(s session.Statement) bool { return strings.Contains(s.SQL, "needs_approval") })
	if len(got) != 1 || got[0].SQLState != "57014" || got[0].Decision != "denied" {
		t.Fatalf("held statement of a client that left recorded as %+v", got)
	}
}
