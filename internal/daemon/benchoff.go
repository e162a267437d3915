package daemon

import (
	"log/slog"
	"os"
	"strings"
)

// benchOffEnv names the parts of the data path a benchmark runs without,
// comma-separated: "guard" (the SQL policy stage) and "audit" (statement
// and session events go to the log only, not to the audit record, and no
// result samples are taken). It
// exists so tests/bench can measure what each costs against the same
// daemon with it on, in the same run; no configuration file can turn these
// off, and only whoever starts airlockd (root) sets its environment. Every
// part turned off is logged as a warning at start.
const benchOffEnv = "AIRLOCK_BENCH_OFF"

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
	for _, p := range []string{"guard", "audit"} {
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

// benchSamples is the result sample bounds a session gets: none with
// recording off. A sample only ever goes into the audit record, so taking
// one that is not recorded would make "recording off" pay for part of
// recording, and the on/off comparison would not measure recording alone.
func benchSamples(rows, bytes int) (int, int) {
	if benchOff("audit") {
		return 0, 0
	}
	return rows, bytes
}
