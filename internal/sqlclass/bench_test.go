package sqlclass

import (
	"strconv"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time this process has used. The machine running the
// benchmarks is shared, so wall-clock ns/op measures the neighbours as
// much as the code: cpu-ns/op (CPU used by the whole process divided by
// the iterations, GC included) is the figure to compare with the targets.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkClassifyCached is the hot path: a statement seen before.
// Issue 10 asks for at most 1 µs.
func BenchmarkClassifyCached(b *testing.B) {
	c := New(Options{})
	const q = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"
	if _, err := c.Classify(q); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		if _, err := c.Classify(q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClassifyUncachedSelect parses and classifies a simple SELECT
// never seen before: every iteration names another table, so neither the
// text cache nor the shape cache (shape.go) can answer. Issue 10 asks for
// at most 20 µs.
func BenchmarkClassifyUncachedSelect(b *testing.B) {
	c := New(Options{})
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	i := 0
	for b.Loop() {
		i++
		q := "SELECT abalance FROM pgbench_accounts_" + strconv.Itoa(i) + " WHERE aid = 1"
		if _, err := c.Classify(q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClassifyNewConstants: a new text differing only in its numeric
// constants (pgbench -S, and clients that inline their values): served
// by the shape cache without parsing.
func BenchmarkClassifyNewConstants(b *testing.B) {
	c := New(Options{})
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	i := 0
	for b.Loop() {
		i++
		q := "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i)
		if _, err := c.Classify(q); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClassifyUncachedDO(b *testing.B) {
	c := New(Options{})
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	i := 0
	for b.Loop() {
		i++
		q := "DO $$ BEGIN EXECUTE 'DROP TABLE t" + strconv.Itoa(i) + "'; UPDATE t SET a = 1; END $$"
		if _, err := c.Classify(q); err != nil {
			b.Fatal(err)
		}
	}
}

// pgbenchStatements are the statements pgbench sends, as functions of a
// counter: -S's SELECT and TPC-B's set with a new account, teller, branch
// and delta each time (simple protocol: the constants are inline), and
// the extended protocol's Parse text, the same each time.
var pgbenchStatements = []struct {
	name string
	sql  func(i int) string
}{
	{"select-only", func(i int) string {
		return "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i%100000+1) + ";"
	}},
	{"begin", func(int) string { return "BEGIN;" }},
	{"update-accounts", func(i int) string {
		return "UPDATE pgbench_accounts SET abalance = abalance + " + strconv.Itoa(i%10001-5000) +
			" WHERE aid = " + strconv.Itoa(i%100000+1) + ";"
	}},
	{"update-tellers", func(i int) string {
		return "UPDATE pgbench_tellers SET tbalance = tbalance + " + strconv.Itoa(i%10001-5000) +
			" WHERE tid = " + strconv.Itoa(i%10+1) + ";"
	}},
	{"insert-history", func(i int) string {
		return "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (" + strconv.Itoa(i%10+1) + ", 1, " +
			strconv.Itoa(i%100000+1) + ", " + strconv.Itoa(i%10001-5000) + ", CURRENT_TIMESTAMP);"
	}},
	{"end", func(int) string { return "END;" }},
	{"extended-parse", func(int) string { return "SELECT abalance FROM pgbench_accounts WHERE aid = $1;" }},
}

// BenchmarkClassifyPgbench classifies each of pgbench's statements with
// new constants every time, through Classify (a Result for the text) and
// ClassifyShape (the guard's: the shape's Result). The texts are built
// before the loop, so the allocations reported are the classifier's.
func BenchmarkClassifyPgbench(b *testing.B) {
	for _, st := range pgbenchStatements {
		classify := map[string]func(c *Classifier, sql string) error{
			"classify": func(c *Classifier, sql string) error { _, err := c.Classify(sql); return err },
			"shape":    func(c *Classifier, sql string) error { _, _, err := c.ClassifyShape(sql); return err },
		}
		for _, way := range []string{"classify", "shape"} {
			b.Run(way+"/"+st.name, func(b *testing.B) {
				c := New(Options{})
				texts := make([]string, 1<<14)
				for i := range texts {
					texts[i] = st.sql(i)
				}
				if _, err := c.Classify(texts[0]); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				defer reportCPU(b, cpuTime())
				i := 0
				for b.Loop() {
					i++
					if err := classify[way](c, texts[i%len(texts)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
