package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/upstream"
)

func TestBenchOff(t *testing.T) {
	tests := []struct {
		env     string
		off     []string
		records bool
		skip    audit.BenchSkip
	}{
		{"", nil, true, audit.BenchSkip{}},
		{"guard", []string{"guard"}, true, audit.BenchSkip{}},
		{"audit", []string{"audit"}, false, audit.BenchSkip{}},
		{"guard, audit", []string{"guard", "audit"}, false, audit.BenchSkip{}},
		{"record", []string{"record"}, false, audit.BenchSkip{}},
		{"ship", []string{"ship"}, true, audit.BenchSkip{Store: true}},
		{"storesync", []string{"storesync"}, true, audit.BenchSkip{StoreSync: true}},
		{"storesync,ship", []string{"ship", "storesync"}, true, audit.BenchSkip{Store: true, StoreSync: true}},
		{"fused", []string{"fused"}, true, audit.BenchSkip{Fused: true}},
		{"guardrails,auditing,shipper", nil, true, audit.BenchSkip{}}, // whole names only
	}
	for _, tc := range tests {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(benchOffEnv, tc.env)
			// What status shows is what is off.
			if got := benchOffParts(); !slices.Equal(got, tc.off) {
				t.Errorf("parts off %q, want %q", got, tc.off)
			}
			if got := benchRecords(); got != tc.records {
				t.Errorf("events recorded = %v, want %v", got, tc.records)
			}
			if got := benchAuditSkip(); got != tc.skip {
				t.Errorf("audit skips %+v, want %+v", got, tc.skip)
			}
		})
	}
}

// TestBenchOffAuditSamples: with recording off the router gives sessions
// no result sample (the sampler is not even built), with it on the
// configured one.
func TestBenchOffAuditSamples(t *testing.T) {
	rows, bytes := 7, 900
	tests := []struct {
		env              string
		wantRows, wantBy int
	}{
		{"", rows, bytes},
		{"guard", rows, bytes},
		{"audit", 0, 0},
		{"guard,audit", 0, 0},
		// The ladder's steps above "audit" all sample, as recording does.
		{"record", rows, bytes},
		{"ship", rows, bytes},
		{"storesync", rows, bytes},
	}
	for _, tc := range tests {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(benchOffEnv, tc.env)
			cfg := &config.Config{StateDir: t.TempDir(), Audit: config.Audit{SampleRows: &rows, SampleBytes: &bytes}}
			r, err := newRouter(t.Context(), cfg, nil, upstream.Dialer{}, nil, slog.New(slog.DiscardHandler), nil)
			if err != nil {
				t.Fatalf("new router: %v", err)
			}
			t.Cleanup(r.close)
			if r.sampleRows != tc.wantRows || r.sampleBytes != tc.wantBy {
				t.Errorf("sample bounds %d rows, %d bytes; want %d, %d", r.sampleRows, r.sampleBytes, tc.wantRows, tc.wantBy)
			}
		})
	}
}

// The benchmark's profile socket serves the runtime's named profiles to
// root only, and leaves http.DefaultServeMux empty: a listener serving
// the default mux must never hand profiles to the agent.
func TestBenchProfileSocket(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(benchProfileEnv, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop, err := serveBenchProfile(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	sock := filepath.Join(dir, "pprof.sock")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/debug/pprof/mutex", http.StatusOK},
		{"/debug/pprof/block", http.StatusOK},
		{"/debug/pprof/goroutine", http.StatusOK},
		{"/debug/pprof/nothing", http.StatusNotFound},
		{"/debug/pprof/", http.StatusNotFound},
		{"/elsewhere", http.StatusNotFound},
	} {
		resp, err := c.Get("http://airlockd" + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Fatalf("%s: status %d, want %d", tc.path, resp.StatusCode, tc.code)
		}
		// A profile is gzipped protobuf.
		if tc.code == http.StatusOK && (len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b) {
			t.Fatalf("%s: %d bytes, not a gzipped profile", tc.path, len(body))
		}
	}
	req := httptest.NewRequest("GET", "/debug/pprof/goroutine", nil)
	if _, pattern := http.DefaultServeMux.Handler(req); pattern != "" {
		t.Fatalf("http.DefaultServeMux serves %q", pattern)
	}
	stop()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after stop: %v", err)
	}
}
