package daemon

import (
	"log/slog"
	"testing"

	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/upstream"
)

func TestBenchOff(t *testing.T) {
	tests := []struct {
		env         string
		guard, audt bool
	}{
		{"", false, false},
		{"guard", true, false},
		{"audit", false, true},
		{"guard, audit", true, true},
		{"guardrails,auditing", false, false}, // whole names only
	}
	for _, tc := range tests {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(benchOffEnv, tc.env)
			if got := benchOff("guard"); got != tc.guard {
				t.Errorf("guard off = %v, want %v", got, tc.guard)
			}
			if got := benchOff("audit"); got != tc.audt {
				t.Errorf("audit off = %v, want %v", got, tc.audt)
			}
			// What status shows is what is off.
			if got := len(benchOffParts()); got != b2i(tc.guard)+b2i(tc.audt) {
				t.Errorf("status lists %d parts off, want %d", got, b2i(tc.guard)+b2i(tc.audt))
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
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
