package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// helperPgx is a pgx client run inside the intercepted cgroup. Modes:
// hold (report current_user, wait for stdin to close, then try one more
// query) and scenario (exercise the protocol and report each check).
func helperPgx() {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out := map[string]string{}
	emit := func() { b, _ := json.Marshal(out); fmt.Println(string(b)) }
	conn, err := pgx.Connect(ctx, os.Getenv("PGX_DSN"))
	if err != nil {
		out["error"] = err.Error()
		emit()
		return
	}
	defer conn.Close(context.Background())
	switch os.Getenv("PGX_MODE") {
	case "hold":
		var user string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
			out["error"] = err.Error()
		}
		out["user"] = user
		emit()
		_, _ = io.Copy(io.Discard, os.Stdin)
		out = map[string]string{"after": "ok"}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			out["after"] = errString(err)
		}
		emit()
	case "query":
		// One statement through the extended protocol with one text
		// parameter, PGX_PARAM; prints the first column.
		var v string
		if err := conn.QueryRow(ctx, os.Getenv("PGX_SQL"), os.Getenv("PGX_PARAM")).Scan(&v); err != nil {
			out["error"] = errString(err)
		} else {
			out["result"] = v
		}
		emit()
	case "scenario":
		pgxScenario(ctx, conn, out)
		emit()
	case "guard":
		pgxGuard(ctx, conn, out)
		emit()
	}
}

func errString(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code + ": " + pe.Message
	}
	return err.Error()
}

func pgxScenario(ctx context.Context, conn *pgx.Conn, out map[string]string) {
	check := func(name string, fn func() error) {
		if err := fn(); err != nil {
			out[name] = errString(err)
		} else {
			out[name] = "ok"
		}
	}
	check("simple", func() error {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM customers", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			return err
		}
		if n != 1000 {
			return fmt.Errorf("count = %d", n)
		}
		return nil
	})
	check("extended", func() error {
		var email string
		if err := conn.QueryRow(ctx, "SELECT email FROM customers WHERE id = $1", 7).Scan(&email); err != nil {
			return err
		}
		if email != "user7@example.com" {
			return fmt.Errorf("email = %q", email)
		}
		return nil
	})
	check("batch", func() error {
		b := &pgx.Batch{}
		for i := 1; i <= 5; i++ {
			b.Queue("SELECT id FROM customers WHERE id = $1", i)
		}
		br := conn.SendBatch(ctx, b)
		for i := 1; i <= 5; i++ {
			var id int
			if err := br.QueryRow().Scan(&id); err != nil {
				return err
			}
			if id != i {
				return fmt.Errorf("batch item %d = %d", i, id)
			}
		}
		return br.Close()
	})
	check("copy_from", func() error {
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE cf(a int, b text)"); err != nil {
			return err
		}
		rows := make([][]any, 5000)
		for i := range rows {
			rows[i] = []any{i, fmt.Sprintf("row %d", i)}
		}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"cf"}, []string{"a", "b"}, pgx.CopyFromRows(rows))
		if err != nil {
			return err
		}
		if n != 5000 {
			return fmt.Errorf("copied %d", n)
		}
		return nil
	})
	check("copy_to", func() error {
		var buf bytes.Buffer
		tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id FROM customers) TO STDOUT")
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1000 || bytes.Count(buf.Bytes(), []byte("\n")) != 1000 {
			return fmt.Errorf("copy to: %d rows", tag.RowsAffected())
		}
		return nil
	})
	check("notify", func() error {
		if _, err := conn.Exec(ctx, "LISTEN airlock_e2e"); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT pg_notify('airlock_e2e', 'hello')"); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			return err
		}
		if n.Payload != "hello" {
			return fmt.Errorf("payload %q", n.Payload)
		}
		return nil
	})
	check("large", func() error {
		rows, err := conn.Query(ctx, "SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
		if err != nil {
			return err
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if n != 200000 {
			return fmt.Errorf("%d rows", n)
		}
		return nil
	})
	check("sqlstate", func() error {
		_, err := conn.Exec(ctx, "SELECT 1/0")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "22012" {
			return fmt.Errorf("want SQLSTATE 22012, got %v", err)
		}
		// The session must still work after an error.
		var one int
		return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	})
}

// pgxGuard runs statements the guard refuses through the extended protocol
// and reports each outcome, then whether the session still works.
func pgxGuard(ctx context.Context, conn *pgx.Conn, out map[string]string) {
	b := &pgx.Batch{}
	b.Queue("SELECT 'e2e_pgx_marker'")
	b.Queue("ALTER ROLE CURRENT_USER PASSWORD 'pgx-batch-pw'")
	out["batch"] = errString(conn.SendBatch(ctx, b).Close())
	_, err := conn.Exec(ctx, "DROP TABLE customers")
	out["drop"] = errString(err)
	if _, err := conn.Prepare(ctx, "wipe", "DELETE FROM customers"); err != nil {
		out["prepare"] = errString(err)
	}
	_, err = conn.Exec(ctx, "wipe")
	out["execute"] = errString(err)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&n); err != nil {
		out["after"] = errString(err)
	} else {
		out["after"] = fmt.Sprint(n)
	}
}
