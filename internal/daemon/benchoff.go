package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/airlockhq/airlock/internal/audit"
)

// benchOffEnv names the parts of the data path a benchmark runs without,
// comma-separated: "guard" (the SQL policy stage) and "audit" (statement
// and session events go to the log only, not to the audit record, and no
// result samples are taken). Between recording off and on, a ladder of
// steps, each doing all the work of the one before it:
//
//	record     result samples are taken as for recording, events go to the log only
//	encode     recorded, but a statement's record is encoded into a buffer
//	           that stays in cache and dropped; the rest as "ship"
//	ringcopy   as "ship", but a statement's record is encoded into that
//	           buffer and copied into the ring, not encoded in it in place
//	ship       recorded into the journal (ring, segments, fsync); the shipper
//	           releases records without reading, chaining or storing them
//	storesync  shipped and stored, the store never made durable
//
// and beside it, "fused": as "ship", but the drain chains each record as
// it moves it into the segments and writes its two hashes there, nothing
// stored (what a record path built around one durable write would at
// least do: docs/AUDIT.md, "What one write would save").
//
// It exists so tests/bench can measure what each costs against the same
// daemon with it on, in the same run; no configuration file can turn these
// off, and only whoever starts airlockd (root) sets its environment. Every
// part turned off is logged as a warning at start. The record a daemon
// keeps with "encode", "ringcopy", "ship", "fused" or "storesync" does not verify
// (the first three store nothing). encode and ringcopy say where
// Writer.Record's cost is: the encoding's own work, or its stores into the
// ring's lines (docs/AUDIT.md, "Where the record's in-situ cost is").
const benchOffEnv = "AIRLOCK_BENCH_OFF"

// benchParts are the parts benchOffEnv can name, in the order they are
// reported.
var benchParts = []string{"guard", "audit", "record", "encode", "ringcopy", "ship", "storesync", "fused"}

// benchOff reports whether the benchmark turned part off.
func benchOff(part string) bool {
	for _, p := range strings.Split(os.Getenv(benchOffEnv), ",") {
		if strings.TrimSpace(p) == part {
			return true
		}
	}
	return false
}

// benchOffParts lists the parts turned off, for the log and `airlock status`.
func benchOffParts() []string {
	var off []string
	for _, p := range benchParts {
		if benchOff(p) {
			off = append(off, p)
		}
	}
	return off
}

func warnBenchOff(log *slog.Logger) {
	for _, p := range benchOffParts() {
		log.Warn("benchmark setting: running without a part of the data path", "env", benchOffEnv, "off", p)
	}
}

// benchRecords reports whether session and statement events go to the
// audit record.
func benchRecords() bool {
	return !benchOff("audit") && !benchOff("record")
}

// benchAuditSkip is the steps of recording the audit writer leaves out.
func benchAuditSkip() audit.BenchSkip {
	return audit.BenchSkip{Store: benchOff("ship"), StoreSync: benchOff("storesync"),
		Ring: benchOff("encode"), Copy: benchOff("ringcopy"), Fused: benchOff("fused")}
}

// benchSamples is the result sample bounds a session gets: none with
// recording off. A sample only ever goes into the audit record, so taking
// one that is not recorded would make "recording off" pay for part of
// recording, and the on/off comparison would not measure recording alone.
// The "record" step takes them, to measure the sampler alone.
func benchSamples(rows, bytes int) (int, int) {
	if benchOff("audit") {
		return 0, 0
	}
	return rows, bytes
}

// benchProfileEnv, set to a folder, makes airlockd record lock contention
// and blocking and serve Go's profiles on a unix socket there
// (pprof.sock: `curl --unix-socket DIR/pprof.sock
// http://x/debug/pprof/mutex`: the profile since start; take two and
// compare them with `go tool pprof -base` for a window), for a benchmark
// to see where the data path waits. Only root, starting airlockd, sets it; the socket
// is root's only.
const benchProfileEnv = "AIRLOCK_BENCH_PROFILE"

// benchProfileRates: one contention event in mutexFraction is recorded,
// and a blocking event about every blockRate nanoseconds blocked. Sampled,
// so that profiling changes the figures it explains as little as it can.
const (
	mutexFraction = 5
	blockRate     = 10000
)

// serveBenchProfile serves the profiles until ctx is done, when
// benchProfileEnv is set.
func serveBenchProfile(ctx context.Context, log *slog.Logger) (func(), error) {
	dir := os.Getenv(benchProfileEnv)
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the profile folder: %w", err)
	}
	path := filepath.Join(dir, "pprof.sock")
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove an old profile socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen for profiles: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict the profile socket: %w", err)
	}
	runtime.SetMutexProfileFraction(mutexFraction)
	runtime.SetBlockProfileRate(blockRate)
	log.Warn("benchmark setting: serving Go profiles", "env", benchProfileEnv, "socket", path)
	srv := &http.Server{Handler: http.HandlerFunc(serveNamedProfile), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("profile server stopped", "err", err)
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	return func() {
		stop()
		_ = srv.Close()
		<-done
		_ = os.Remove(path)
	}, nil
}

// serveNamedProfile writes the runtime profile a request names
// (/debug/pprof/mutex, block, goroutine, heap, ...). It is not
// net/http/pprof: importing that registers its handlers on
// http.DefaultServeMux, where any later listener that serves the default
// mux (a metrics port, say) would hand them to every local process.
func serveNamedProfile(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, "/debug/pprof/")
	p := pprof.Lookup(name)
	if !ok || p == nil {
		http.Error(w, "no such profile: ask for /debug/pprof/mutex, block, goroutine, heap, allocs or threadcreate", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_ = p.WriteTo(w, 0)
}
