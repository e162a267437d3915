package main

import (
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/audit"
)

// TestPrintAuditStatusRingFull: records that found the journal's ring
// full are shown, and nothing is said while there are none.
func TestPrintAuditStatusRingFull(t *testing.T) {
	tests := []struct {
		full int64
		want string // "" : no ring line
	}{
		{0, ""},
		{1, "ring full\t1 records"},
		{4096, "ring full\t4096 records"},
	}
	for _, tc := range tests {
		var b strings.Builder
		printAuditStatus(&b, &audit.Status{Store: "sqlite:/x", Stored: 5, Reachable: true, RingFull: tc.full})
		out := b.String()
		if tc.want == "" && strings.Contains(out, "ring full") || tc.want != "" && !strings.Contains(out, tc.want) {
			t.Errorf("ring_full %d: output %q, want %q", tc.full, out, tc.want)
		}
	}
}
