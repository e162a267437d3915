//go:build perf

package pgwire

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/airlockhq/airlock/internal/pgtest"
)

// TestPgbenchRatio compares pgbench TPS direct and through the proxy. A
// measurement, slow and load-sensitive: built with -tags perf only
// (AIRLOCK_PERF_QUICK=1 runs the first two cases).
func TestPgbenchRatio(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	h := newHarness(t, pg, nil)
	direct := []string{"PGPORT=" + itoa(pg.Port), "PGUSER=" + pg.AdminUser, "PGPASSWORD=" + pg.AdminPassword}
	run(t, h, direct, "pgbench", "-i", "-q", "-s", "10")
	tps := regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	measure := func(env []string, args ...string) float64 {
		out := run(t, h, env, "pgbench", append([]string{"-n", "-T", "8"}, args...)...)
		m := tps.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no tps in %s", out)
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		return f
	}
	bouncer := startPgBouncer(t, pg)
	cases := [][]string{{"-c", "1", "-S"}, {"-c", "10", "-j", "2", "-S"}, {"-c", "10", "-j", "2"}, {"-c", "10", "-j", "2", "-M", "prepared"}}
	if os.Getenv("AIRLOCK_PERF_QUICK") != "" {
		cases = cases[:2]
	}
	for _, tc := range cases {
		d := measure(direct, tc...)
		p := measure(nil, tc...)
		line := fmt.Sprintf("pgbench %v: direct %.0f tps, proxy %.0f tps (%.2f)", tc, d, p, p/d)
		if bouncer != 0 {
			b := measure([]string{"PGPORT=" + itoa(bouncer)}, tc...)
			line += fmt.Sprintf(", pgbouncer %.0f tps (%.2f)", b, b/d)
		}
		t.Log(line)
	}
}
