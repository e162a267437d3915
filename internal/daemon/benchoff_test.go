package daemon

import "testing"

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
