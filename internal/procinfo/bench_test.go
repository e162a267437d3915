package procinfo

import (
	"os"
	"testing"
)

// BenchmarkAncestry is a new session's /proc work: the client and each of
// its ancestors up to PID 1 (here, the test process's).
func BenchmarkAncestry(b *testing.B) {
	pid := uint32(os.Getpid())
	for b.Loop() {
		p, err := Read(pid)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := AncestryOf(p, nil, 16); err != nil {
			b.Fatal(err)
		}
	}
}
