package pgwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// BenchmarkSelect1 measures one round trip of "select 1", direct and through
// the proxy, in the same run: the difference is the proxy's added latency.
func BenchmarkSelect1(b *testing.B) {
	pg := pgtest.Start(b, pgtest.Options{})
	h := newHarness(b, pg, nil)
	targets := []struct{ name, url string }{
		{"Direct", pg.AdminURL("postgres")},
		{"Proxy", h.url("postgres")},
	}
	for _, tgt := range targets {
		for _, mode := range []string{"simple", "prepared"} {
			b.Run(tgt.name+"/"+mode, func(b *testing.B) {
				ctx := context.Background()
				c, err := pgconn.Connect(ctx, tgt.url)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close(ctx)
				if _, err := c.Prepare(ctx, "s1", "select 1", nil); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				cpu0 := cpuTime()
				for i := 0; i < b.N; i++ {
					if mode == "simple" {
						_, err = c.Exec(ctx, "select 1").ReadAll()
					} else {
						err = c.ExecPrepared(ctx, "s1", nil, nil, nil).Read().Err
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				// CPU time of this process (client and, through the
				// proxy, the proxy too) per query: steadier than wall
				// time on a shared machine.
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// TestIdleSessionMemory bounds what an idle relayed session costs the
// daemon (heap in use and goroutine stacks after two collections): on the
// loop driver the sockets, the pipe and the loop's state and no goroutine,
// served detached as the daemon's front door serves sessions; on the
// goroutine driver also its two pumps and their buffers. The bounds leave
// about twice the room of what was measured (docs/BENCHMARKS.md, "Idle
// sessions"): 7.3 KB on the loop.
func TestIdleSessionMemory(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{Conf: []string{"max_connections = 300"}})
	h := newHarness(t, pg, nil)
	login := startupPacket(3<<16, "user", "x", "database", "postgres")
	const n = 200
	// Warm up so that one-time allocations do not count.
	warm := idleClients(t, h, login, 5)
	defer closeAll(warm)
	heap0, stack0 := heapAndStacks()
	g0 := runtime.NumGoroutine()
	conns := idleClients(t, h, login, n)
	defer closeAll(conns)
	time.Sleep(200 * time.Millisecond)
	heap1, stack1 := heapAndStacks()
	goroutines := runtime.NumGoroutine() - g0
	heap, stack := (heap1-heap0)/n, (stack1-stack0)/n
	t.Logf("idle session: %d bytes in the daemon (heap in use %d + stacks %d), %d goroutines for %d sessions, client side excluded",
		heap+stack, heap, stack, goroutines, n)
	limit, maxGoroutines := int64(64<<10), 2*n+n/10
	if defaultDriver == DriverLoop {
		limit, maxGoroutines = 16<<10, n/10
	}
	if heap+stack > limit {
		t.Errorf("idle session costs %d bytes, want < %d", heap+stack, limit)
	}
	if goroutines > maxGoroutines {
		t.Errorf("%d goroutines for %d idle sessions, want at most %d", goroutines, n, maxGoroutines)
	}
}

func idleClients(t *testing.T, h *harness, login []byte, n int) []net.Conn {
	var out []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
		if _, err := c.Write(login); err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(c, c)
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		// One query so the session has relayed something.
		fe.Send(&pgproto3.Query{String: "select 1"})
		_ = fe.Flush()
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	}
	return out
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

func heapAndStacks() (heap, stacks int64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse), int64(m.StackInuse)
}

// startPgBouncer runs a session-pooling PgBouncer in front of pg, as the
// reference point for the proxy's overhead; 0 when it is not installed.
func startPgBouncer(t *testing.T, pg *pgtest.Server) int {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		return 0
	}
	port := freeTCPPort(t)
	// Not t.TempDir: its parent is private to root, and PgBouncer runs as
	// postgres.
	dir, err := os.MkdirTemp("", "airlock-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o777)
	users := filepath.Join(dir, "users.txt")
	_ = os.WriteFile(users, []byte(`"whoever" ""`+"\n"), 0o644)
	cfg := filepath.Join(dir, "pgbouncer.ini")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf(`[databases]
postgres = host=%s port=%d dbname=postgres user=%s password=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = %s/pgbouncer.log
`, pg.Addr, pg.Port, pg.AdminUser, pg.AdminPassword, port, users, dir)), 0o644)
	cmd := exec.Command(bin, "-u", "postgres", cfg)
	if err := cmd.Start(); err != nil {
		t.Logf("pgbouncer: %v", err)
		return 0
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := 0; i < 50; i++ {
		if c, err := net.Dial("tcp", "127.0.0.1:"+itoa(port)); err == nil {
			_ = c.Close()
			return port
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
	t.Logf("pgbouncer did not start: %s", log)
	return 0
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BenchmarkPipeRows measures the pipeline core alone on a result of 1,000
// rows: with no stage, with a stage that sees every DataRow and rewrites
// nothing (decode counts them in an atomic, as the tools test's does;
// decode-walk reads every value's length), and with one that rewrites a
// column of every row (through Row; rewrite-server through Server). It
// reports allocations: the core must add none per message.
func BenchmarkPipeRows(b *testing.B) {
	var stream []byte
	stream, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("id")}, {Name: []byte("email")}}}).Encode(stream)
	for i := 0; i < 1000; i++ {
		stream, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte(strconv.Itoa(i)), []byte("someone@example.com")}}).Encode(stream)
	}
	stream, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1000")}).Encode(stream)
	stream, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(stream)
	cases := []struct {
		name  string
		stage ServerStage
	}{
		{"none", nil},
		{"decode", &countRows{}},
		{"decode-walk", &walkRows{}},
		{"rewrite", &maskStage{column: 1, with: []byte("***")}},
		{"rewrite-server", serverOnly{&maskStage{column: 1, with: []byte("***")}}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			var st Stages
			if tc.stage != nil {
				st.Server = []ServerStage{tc.stage}
			}
			pl := newPipe(session.New(nil), st, 0)
			r := bytes.NewReader(stream)
			p := newPump(r, io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Reset(stream)
				pl.push(pending{kind: 'Q', sql: "select"})
				_ = p.run()
			}
		})
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkPipeSelectTx measures the pipeline core's work for one pgbench
// -S transaction (a Query; RowDescription, DataRow, CommandComplete,
// ReadyForQuery) with no stage: the per-transaction cost that is the
// proxy's own, apart from the system calls. Allocations per op are what to
// watch (each is GC work on the data path).
func BenchmarkPipeSelectTx(b *testing.B) {
	q, _ := (&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"}).Encode(nil)
	var ans []byte
	ans, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}).Encode(ans)
	ans, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte("0")}}).Encode(ans)
	ans, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(ans)
	ans, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(ans)
	sess := session.New(nil)
	pl := newPipe(sess, Stages{}, 0)
	cr, sr := bytes.NewReader(q), bytes.NewReader(ans)
	cp := newPump(cr, io.Discard, pl.fromClient, pl.clientTypes(), 1<<20, 0)
	sp := newPump(sr, io.Discard, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cr.Reset(q)
		_ = cp.run()
		sr.Reset(ans)
		_ = sp.run()
		pl.flush()
	}
}

// BenchmarkRowCall is the core's own work for one DataRow, without the
// pump: what a stage that sees rows adds per row, apart from the framing.
func BenchmarkRowCall(b *testing.B) {
	row, _ := (&pgproto3.DataRow{Values: [][]byte{[]byte("1234"), []byte("someone@example.com")}}).Encode(nil)
	for _, tc := range []struct {
		name  string
		stage ServerStage
	}{{"none", nil}, {"decode", &countRows{}}, {"rewrite", &maskStage{column: 1, with: []byte("***")}}} {
		b.Run(tc.name, func(b *testing.B) {
			var st Stages
			if tc.stage != nil {
				st.Server = []ServerStage{tc.stage}
			}
			pl := newPipe(session.New(nil), st, 0)
			b.ReportAllocs()
			for b.Loop() {
				if a := pl.fromServer('D', len(row)-1, row[5:]); a.err != nil {
					b.Fatal(a.err)
				}
			}
		})
	}
}

// walkRows reads every DataRow's values and rewrites nothing: a stage that
// decodes rows (metrics, a detector that finds nothing).
type walkRows struct{ values, bytes int }

func (w *walkRows) ServerTypes() string { return "D" }
func (w *walkRows) Server(m *ServerMsg) Verdict {
	w.Row(m)
	return Verdict{}
}

func (w *walkRows) Row(m *ServerMsg) []byte {
	if len(m.Body) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(m.Body))
	for i, p := 0, 2; i < n && p+4 <= len(m.Body); i++ {
		l := int(int32(binary.BigEndian.Uint32(m.Body[p:])))
		p += 4 + max(l, 0)
		w.values++
		w.bytes += max(l, 0)
	}
	return nil
}
