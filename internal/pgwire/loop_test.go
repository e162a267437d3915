package pgwire

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// holdOnce holds the first Query that mentions "held" until release is
// closed; every other message passes.
type holdOnce struct {
	release chan struct{}
	parked  chan struct{}
	once    sync.Once
}

func (s *holdOnce) ClientTypes() string { return "Q" }

func (s *holdOnce) Client(m *ClientMsg) Verdict {
	if !bytes.Contains(m.SQL(), []byte("held")) {
		return Verdict{Action: Forward}
	}
	v := Verdict{Action: Forward}
	s.once.Do(func() {
		h := NewHold(30*time.Second, ErrorReply{})
		go func() {
			<-h.Parked()
			close(s.parked)
			<-s.release
			h.Approve()
		}()
		v = Verdict{Action: Hold, Hold: h}
	})
	return v
}

// The event-loop driver under what stresses it apart from the goroutine
// driver: messages larger than its shared read buffer (decoded ones grown
// whole, undecoded ones streamed), a client slower than the server (writes
// buffered on EAGAIN, the server side paused), a hold parked while other
// sessions on the same loops go on, and many sessions at once. The whole
// package suite runs under it by default (and under the goroutine driver
// with AIRLOCK_PGWIRE_DRIVER=goroutines).
//
// The same edges run under the goroutine driver too, which stays selectable
// (proxy.driver: goroutines) now that the loop is the default, and each with
// a TLS client leg: there the loop drives crypto/tls, whose records are
// at most 16 KiB, so the large messages span many records, several of them
// in one of the loop's reads.
func TestLoopDriver(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Psql(t, "postgres", "create table blobs (id int primary key, data bytea)")
	tlsOpt, _ := clientTLS(t)
	id := 0
	for _, tc := range []struct{ name, driver, wait string }{
		{DriverLoop, DriverLoop, waitRaw},
		{DriverLoop + "/" + waitPoller, DriverLoop, waitPoller}, // the loops' other wait (AIRLOCK_PGWIRE_LOOPWAIT)
		{DriverGoroutines, DriverGoroutines, ""},
	} {
		for _, sslmode := range []string{"disable", "require"} {
			t.Run(tc.name+"/sslmode="+sslmode, func(t *testing.T) {
				var opt func(*Options)
				if sslmode != "disable" {
					opt = tlsOpt
				}
				driverEdges(t, pg, tc.driver, tc.wait, sslmode, opt, id)
			})
			id++
		}
	}
}

// driverEdges runs the edges above under one driver; id keeps its rows
// apart from another run's in the same database.
func driverEdges(t *testing.T, pg *pgtest.Server, driver, wait, sslmode string, opt func(*Options), id int) {
	stage := &holdOnce{release: make(chan struct{}), parked: make(chan struct{})}
	h := newHarness(t, pg, func(o *Options) {
		o.Driver = driver
		o.loopWait = wait
		o.Stages = func(*session.Session) Stages { return Stages{Client: []ClientStage{stage}} }
		if opt != nil {
			opt(o)
		}
	})
	h.sslmode = sslmode
	ctx := testCtx(t)
	t.Cleanup(func() {
		// Every session ran on the driver under test, TLS ones too.
		if want := "driver=" + driver; !strings.Contains(h.logs.String(), want) || strings.Contains(h.logs.String(), "driver="+otherDriver(driver)) {
			t.Errorf("sessions did not all run with %s:\n%s", want, h.logs.String())
		}
	})

	t.Run("large messages", func(t *testing.T) {
		c := h.connect(ctx, t)
		blob := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16) // a 300 KiB Bind, decoded
		if _, err := c.Exec(ctx, "insert into blobs values ($1, $2)", id, blob); err != nil {
			t.Fatalf("insert 300 KiB: %v", err)
		}
		var got []byte // a 300 KiB DataRow, streamed undecoded
		if err := c.QueryRow(ctx, "select data from blobs where id = $1", id).Scan(&got); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("select 300 KiB: %d bytes, %v", len(got), err)
		}
		long := "select '" + strings.Repeat("y", 200<<10) + "' as v" // a 200 KiB Query, decoded
		var s string
		if err := c.QueryRow(ctx, long, pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil || len(s) != 200<<10 {
			t.Fatalf("200 KiB query: %d bytes, %v", len(s), err)
		}
	})

	t.Run("slow client", func(t *testing.T) {
		c := h.connect(ctx, t)
		rows, err := c.Query(ctx, "select repeat('x', 1000) from generate_series(1, 20000)")
		if err != nil {
			t.Fatal(err)
		}
		n, total := 0, 0
		for rows.Next() {
			if n == 0 {
				time.Sleep(300 * time.Millisecond) // the proxy's writes to us fill up meanwhile
			}
			var v string
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			n++
			total += len(v)
		}
		if err := rows.Err(); err != nil || n != 20000 || total != 20000*1000 {
			t.Fatalf("read %d rows, %d bytes, %v", n, total, err)
		}
	})

	t.Run("hold parks one session only", func(t *testing.T) {
		held := h.connect(ctx, t)
		res := make(chan error, 1)
		go func() {
			var v int
			err := held.QueryRow(ctx, "select 42 /* held */", pgx.QueryExecModeSimpleProtocol).Scan(&v)
			if err == nil && v != 42 {
				err = fmt.Errorf("got %d", v)
			}
			res <- err
		}()
		select {
		case <-stage.parked:
		case <-ctx.Done():
			t.Fatal("the statement was never parked")
		}
		// While it waits, other sessions (on the same loops) are served.
		for i := 0; i < 4; i++ {
			c := h.connect(ctx, t)
			var one int
			if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("session %d during the hold: %v", i, err)
			}
		}
		select {
		case err := <-res:
			t.Fatalf("the held statement finished before its approval: %v", err)
		default:
		}
		close(stage.release)
		if err := <-res; err != nil {
			t.Fatalf("held statement after approval: %v", err)
		}
	})

	t.Run("many sessions", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := 0; i < 40; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := pgx.Connect(ctx, h.url("postgres"))
				if err != nil {
					errs <- fmt.Errorf("session %d: connect: %v", i, err)
					return
				}
				defer func() { _ = c.Close(context.Background()) }()
				for j := 0; j < 50; j++ {
					var v int
					if err := c.QueryRow(ctx, "select $1::int", i*1000+j).Scan(&v); err != nil || v != i*1000+j {
						errs <- fmt.Errorf("session %d query %d: %d, %v", i, j, v, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func otherDriver(d string) string {
	if d == DriverLoop {
		return DriverGoroutines
	}
	return DriverLoop
}
