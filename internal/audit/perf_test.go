package audit

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

type staticLease struct{ user, pw string }

func (l staticLease) User() string                  { return l.user }
func (l staticLease) Password() string              { return l.pw }
func (l staticLease) Expires() time.Time            { return time.Time{} }
func (l staticLease) Release(context.Context) error { return nil }
func (l staticLease) Acquire(context.Context, *session.Session, string) (pgwire.Lease, error) {
	return l, nil
}

type discard struct{}

func (discard) Record(session.Event) {}

// serveProxy runs the real PostgreSQL proxy on loopback with sink.
func serveProxy(t *testing.T, pg *pgtest.Server, sink session.Sink) int {
	p, err := pgwire.New(pgwire.Options{Name: "bench", Databases: []string{"postgres"},
		Upstream:    pgwire.Upstream{Host: pg.Addr, Port: pg.Port, TLSMode: "disable"},
		Credentials: staticLease{pg.AdminUser, pg.AdminPassword}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s := session.New(sink)
			s.Person = identity.Person{Name: "bench", UID: 1000}
			s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = p.Serve(ctx, c, s)
				s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
			}()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPgbenchRecordingOverhead compares pgbench through the proxy with the
// audit writer as its sink and with a sink that drops everything, in the
// same run, alternating. Slow and load-sensitive: AIRLOCK_PERF=1 only.
func TestPgbenchRecordingOverhead(t *testing.T) {
	if os.Getenv("AIRLOCK_PERF") == "" {
		t.Skip("set AIRLOCK_PERF=1 to measure the recording overhead with pgbench")
	}
	pg := pgtest.Start(t, pgtest.Options{})
	env := []string{"PGUSER=" + pg.AdminUser, "PGPASSWORD=" + pg.AdminPassword, "PGHOST=" + pg.Addr}
	pgbench := func(port int, args ...string) string {
		cmd := exec.Command("pgbench", append([]string{"-p", strconv.Itoa(port)}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pgbench(pg.Port, "-i", "-q", "-s", "10", "postgres")
	w, cancel, done := openWriter(t, t.TempDir(), "", "", Policy{})
	w.opts.CommitInterval = 50 * time.Millisecond
	defer func() { cancel(); <-done }()
	off, on := serveProxy(t, pg, discard{}), serveProxy(t, pg, w)
	tps := regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	measure := func(port int, args []string) float64 {
		m := tps.FindStringSubmatch(pgbench(port, append([]string{"-n", "-T", "8"}, append(args, "postgres")...)...))
		if m == nil {
			t.Fatal("no tps")
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		return f
	}
	for _, args := range [][]string{{"-c", "1", "-S"}, {"-c", "10", "-j", "2", "-S"}, {"-c", "10", "-j", "2"}} {
		var a, b float64
		for i := 0; i < 2; i++ { // alternate, so drifting load hits both
			a += measure(off, args)
			b += measure(on, args)
		}
		t.Log(fmt.Sprintf("pgbench %v: recording off %.0f tps, on %.0f tps (%.3f)", args, a/2, b/2, b/a))
	}
	st := w.Status()
	t.Logf("records written %d, stored %d", st.Written, st.Stored)
}
