//go:build perf

package audit

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/pgwire/pgwiretest"
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
	addr := pgwiretest.Serve(t, p, func() *session.Session {
		s := session.New(sink)
		s.Person = identity.Person{Name: "bench", UID: 1000}
		s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
		return s
	}, func(s *session.Session) {
		s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
	})
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// TestPgbenchRecordingOverhead compares pgbench through the proxy with the
// audit writer as its sink (embedded SQLite store, and a PostgreSQL store on
// a server of its own) and with a sink that drops everything, in the same
// run, rotating the order. Besides TPS it reports the CPU time of this
// process (the proxy and the writer: what airlockd would spend) per
// transaction, including the shipping that was still to do when pgbench
// finished. A measurement, slow and load-sensitive:
// built with -tags perf only.
func TestPgbenchRecordingOverhead(t *testing.T) {
	secs := "8"
	if s := os.Getenv("AIRLOCK_PERF_SECONDS"); s != "" {
		secs = s
	}
	// The measured server does not wait for its disk (as in the
	// benchmark report): what is compared is the proxy's cost. The team
	// store keeps its durability.
	pg := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off", "synchronous_commit = off"}})
	storePG := pgtest.Start(t, pgtest.Options{})
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
	storePG.Psql(t, "postgres", "CREATE DATABASE audit")
	open := func(spec, pw string) *Writer {
		// The daemon's defaults: a 50 ms commit window.
		w, err := Open(context.Background(), Options{StateDir: t.TempDir(), Store: spec, Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return w
	}
	wl := open("", "")
	wp := open(fmt.Sprintf("postgres://%s@%s:%d/audit?sslmode=disable", storePG.AdminUser, storePG.Addr, storePG.Port), storePG.AdminPassword)
	type mode struct {
		name string
		port int
		w    *Writer
	}
	modes := []mode{{"off", serveProxy(t, pg, discard{}), nil}, {"sqlite", serveProxy(t, pg, wl), wl}, {"postgres", serveProxy(t, pg, wp), wp}}
	tps := regexp.MustCompile(`tps = ([0-9.]+) \((?:without initial|including reconnection)`) // -C says the latter
	txs := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	measure := func(m mode, args []string) (float64, float64) {
		c0 := cpuTime()
		out := pgbench(m.port, append([]string{"-n", "-T", secs}, append(args, "postgres")...)...)
		if m.w != nil {
			// What shipping was still to do is part of the cost.
			if err := m.w.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		cpu := cpuTime() - c0
		a, b := tps.FindStringSubmatch(out), txs.FindStringSubmatch(out)
		if a == nil || b == nil {
			t.Fatalf("no tps in %s", out)
		}
		f, _ := strconv.ParseFloat(a[1], 64)
		n, _ := strconv.ParseFloat(b[1], 64)
		return f, float64(cpu.Microseconds()) / n
	}
	runs := [][]string{{"-c", "1", "-S"}, {"-c", "10", "-j", "2", "-S"}, {"-c", "1"}, {"-c", "10", "-j", "2"}}
	if s := os.Getenv("AIRLOCK_PERF_PGBENCH"); s != "" {
		// Other pgbench options, a run per ";"-separated set: "-C -S"
		// connects per transaction, what a session costs (issue 9).
		runs = runs[:0]
		for _, set := range strings.Split(s, ";") {
			runs = append(runs, strings.Fields(set))
		}
	}
	for i, args := range runs {
		var tp, cpu [3]float64
		const rounds = 2
		for r := 0; r < rounds; r++ { // rotate, so drifting load hits every mode
			for k := range modes {
				j := (k + r + i) % len(modes)
				a, c := measure(modes[j], args)
				tp[j] += a / rounds
				cpu[j] += c / rounds
			}
		}
		t.Logf("pgbench %v: off %.0f tps %.1f µs/tx | sqlite %.0f tps (%.3f) %.1f µs/tx (+%.1f) | postgres %.0f tps (%.3f) %.1f µs/tx (+%.1f)",
			args, tp[0], cpu[0], tp[1], tp[1]/tp[0], cpu[1], cpu[1]-cpu[0], tp[2], tp[2]/tp[0], cpu[2], cpu[2]-cpu[0])
	}
	for _, w := range []*Writer{wl, wp} {
		st := w.Status()
		t.Logf("%s: records written %d, stored %d", st.Store, st.Written, st.Stored)
	}
}
