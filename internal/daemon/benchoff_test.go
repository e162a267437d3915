package daemon

import (
	"log/slog"
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
