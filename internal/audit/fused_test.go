package audit

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/session"
)

// TestBenchFusedLinksFrames: with BenchSkip.Fused (AIRLOCK_BENCH_OFF=fused,
// a measurement-only step) every frame the drain moves into the segments
// carries its two hashes, each linking to the one before, and its CRC still
// holds: the step does the chaining work it stands in for.
func TestBenchFusedLinksFrames(t *testing.T) {
	state := t.TempDir()
	if ringPath(filepath.Join(state, "audit", "journal")) == "" {
		t.Skip("no tmpfs for the ring")
	}
	w, err := Open(context.Background(), Options{StateDir: state, CommitInterval: time.Hour, Bench: BenchSkip{Fused: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	st := &session.Statement{Protocol: "simple", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Tag: "SELECT 1", Rows: 1, Bytes: 11, Duration: 80 * time.Microsecond}
	for i := 0; i < 100; i++ {
		s.Emit(session.Event{Kind: session.KindStatement, Statement: st})
	}
	if err := w.j.drain(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(state, "audit", "journal", "*"))
	var frames, linked int
	var prev string
	links := regexp.MustCompile(`"prev_hash":"([0-9a-f]{64})","hash":"([0-9a-f]{64})"}`)
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		j := &journal{names: &nameCache{}}
		out, _, _, _ := j.parseFrames(b, nil, 0, 1<<20, true)
		frames += len(out)
		for _, m := range links.FindAllStringSubmatch(string(b), -1) {
			if prev != "" && m[1] != prev {
				t.Fatalf("frame %d links to %s, the one before it is %s", linked+1, m[1], prev)
			}
			prev = m[2]
			linked++
		}
	}
	cancel()
	<-done
	if frames < 100 || linked < frames {
		t.Fatalf("%d frames read back (CRC checked), %d with hashes; segments %v", frames, linked, segs)
	}
	if strings.Trim(prev, "0") == "" {
		t.Fatalf("last link %q", prev)
	}
}
