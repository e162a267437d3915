package pgwire

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// startTestLoop runs a loop of its own (not one of the process's) and stops
// it when the test ends.
func startTestLoop(t *testing.T, mode string, backstop int) *evloop {
	t.Helper()
	l, err := newEvloop(mode)
	if err != nil {
		t.Fatal(err)
	}
	l.backstop = backstop
	if mode == waitRaw {
		before := runtime.GOMAXPROCS(0)
		reserveLoopPs(1) // as pickLoop does
		t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run()
	}()
	t.Cleanup(func() {
		l.post(func() { l.quit = true })
		select {
		case <-done:
			l.close()
		case <-time.After(30 * time.Second):
			t.Error("the loop did not stop")
		}
	})
	return l
}

// waitOrFail runs fn in a goroutine and fails the test if it has not
// returned within a minute: a loop that the runtime cannot stop hangs a GC
// for good, and the test should say so rather than hang.
func waitOrFail(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s never returned", what)
	}
}

// A loop must be woken by commands, and must let the world be stopped, in
// each way it can wait: through Go's poller, in a raw epoll_wait that holds
// its P (with no backstop, so only the runtime's preemption signal can get
// it out for a GC), and in the blocking epoll_wait a raw loop falls back to
// when idle (backstop 0: every wait is that one).
func TestLoopWait(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     string
		backstop int
	}{
		{"poller", waitPoller, rawBackstop},
		{"raw wait only", waitRaw, -1},
		{"idle wait only", waitRaw, 0},
		{"raw with backstop", waitRaw, rawBackstop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var loops []*evloop
			for i := 0; i < 2; i++ { // two, as on a two-core machine
				loops = append(loops, startTestLoop(t, tc.mode, tc.backstop))
			}
			// Commands from many goroutines, each waking a loop that
			// waits.
			const posters, each = 8, 200
			ran := make(chan int, posters*each)
			for p := 0; p < posters; p++ {
				go func() {
					for i := 0; i < each; i++ {
						loops[(p+i)%len(loops)].post(func() { ran <- 1 })
						if i%50 == 0 {
							time.Sleep(time.Millisecond) // let the loop go back to waiting
						}
					}
				}()
			}
			got := 0
			timeout := time.After(time.Minute)
			for got < posters*each {
				select {
				case n := <-ran:
					got += n
				case <-timeout:
					t.Fatalf("%d of %d commands ran", got, posters*each)
				}
			}

			// The loops are waiting now: the world must stop for GCs
			// and for ReadMemStats, with garbage made meanwhile.
			waitOrFail(t, "GC with the loops waiting", func() {
				for i := 0; i < 5; i++ {
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					_ = make([]byte, 1<<20)
				}
			})
			// And a command still wakes them after.
			for _, l := range loops {
				done := make(chan struct{})
				l.post(func() { close(done) })
				waitOrFail(t, "a command after the GCs", func() { <-done })
			}
		})
	}
}

// A raw loop's goroutine is still preempted and scanned by the GC while it
// waits: the GC's stack scan of a goroutine that never yields must not be
// left to the backstop (there is none here), and one signal must do. A loop
// that answered the signal by yielding (runtime.Gosched) was run again at
// once, which cancelled the request: the GC kept signalling it, thousands of
// times per GC, for seconds.
func TestLoopWaitRawUnderGC(t *testing.T) {
	old := debug.SetGCPercent(1)
	defer debug.SetGCPercent(old)
	l := startTestLoop(t, waitRaw, -1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	waitOrFail(t, "allocating with a raw loop waiting", func() {
		var keep [][]byte
		for i := 0; i < 2000; i++ {
			keep = append(keep, make([]byte, 64<<10))
			if len(keep) > 64 {
				keep = keep[:0]
			}
			if i%100 == 0 {
				done := make(chan struct{})
				l.post(func() { close(done) })
				<-done
			}
		}
	})
	runtime.ReadMemStats(&after)
	intr := make(chan int)
	l.post(func() { intr <- l.intr })
	gcs, n := int(after.NumGC-before.NumGC), <-intr
	t.Logf("%d GCs, %d waits ended by a signal", gcs, n)
	if gcs == 0 {
		t.Fatal("no GC ran")
	}
	// A GC asks a running goroutine to stop a handful of times (two
	// stops of the world, the stack scan, the per-P flushes), each one
	// signal as the runtime sends no second while one is pending; sysmon
	// adds one every 10 ms. Measured: about 5 per GC, against 70 to 1,700
	// when the loop yielded instead.
	if n > 20*gcs+100 {
		t.Fatalf("%d waits ended by a signal for %d GCs: the loop does not stop when asked", n, gcs)
	}
}

func TestLoopWaitSelection(t *testing.T) {
	for _, tc := range []struct {
		env, godebug, want string
	}{
		{"", "", waitRaw},
		{"poller", "", waitPoller},
		{"raw", "", waitRaw},
		{"", "madvdontneed=1", waitRaw},
		{"", "asyncpreemptoff=1", waitPoller}, // no preemption signal: a raw wait would stall the GC
		{"raw", "gctrace=1,asyncpreemptoff=1", waitPoller},
		{"anything else", "", waitRaw},
	} {
		t.Run(tc.env+"/"+tc.godebug, func(t *testing.T) {
			if got := loopWaitOf(tc.env, tc.godebug); got != tc.want {
				t.Fatalf("loopWaitOf(%q, %q) = %q, want %q", tc.env, tc.godebug, got, tc.want)
			}
		})
	}
}

// Raw loops hold their Ps: the process gets as many more, so that the rest
// of it keeps one per core.
func TestReserveLoopPs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	for _, n := range []int{1, 2, 4} {
		runtime.GOMAXPROCS(before)
		reserveLoopPs(n)
		if got := runtime.GOMAXPROCS(0); got != before+n {
			t.Fatalf("after reserving %d: GOMAXPROCS %d, want %d", n, got, before+n)
		}
	}
}

// BenchmarkLoopWaitGC measures how long the GC takes to stop the world
// (runtime/metrics /sched/pauses/stopping/gc) and how long the world stays
// stopped (/sched/pauses/total/gc) with two loops of each wait, idle or
// woken by commands all the time, while the benchmark allocates. A raw loop
// is stopped by the runtime's preemption signal ending its epoll_wait, so
// the stopping figure is what the raw wait risks.
func BenchmarkLoopWaitGC(b *testing.B) {
	for _, mode := range []string{waitPoller, waitRaw} {
		for _, busy := range []bool{false, true} {
			name := mode + "/idle"
			if busy {
				name = mode + "/busy"
			}
			b.Run(name, func(b *testing.B) { benchLoopGC(b, mode, busy) })
		}
	}
}

func benchLoopGC(b *testing.B, mode string, busy bool) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	var loops []*evloop
	var runs []chan struct{}
	for i := 0; i < 2; i++ {
		l, err := newEvloop(mode)
		if err != nil {
			b.Fatal(err)
		}
		if mode == waitRaw {
			reserveLoopPs(1)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.run()
		}()
		loops, runs = append(loops, l), append(runs, done)
	}
	stop := make(chan struct{})
	var pingers []chan struct{}
	if busy {
		// Each loop woken by a command as soon as it finished the last:
		// it is always either waking or about to wait.
		for _, l := range loops {
			done := make(chan struct{})
			pingers = append(pingers, done)
			go func() {
				defer close(done)
				pong := make(chan struct{}, 1)
				for {
					select {
					case <-stop:
						return
					default:
					}
					l.post(func() { pong <- struct{}{} })
					<-pong
				}
			}()
		}
	}
	samples := []metrics.Sample{{Name: "/sched/pauses/stopping/gc:seconds"}, {Name: "/sched/pauses/total/gc:seconds"}}
	metrics.Read(samples)
	var c0 [2][]uint64 // copied: the next Read reuses the histograms
	for k := range samples {
		c0[k] = append([]uint64(nil), samples[k].Value.Float64Histogram().Counts...)
	}
	b.ResetTimer()
	var keep [][]byte
	for i := 0; i < b.N; i++ {
		keep = append(keep, make([]byte, 256<<10))
		if len(keep) > 16 {
			keep = keep[:0]
		}
		if i%64 == 0 {
			runtime.GC()
		}
	}
	b.StopTimer()
	metrics.Read(samples)
	for k, what := range []string{"stopping", "stopped"} {
		p50, p99, max := histDelta(c0[k], samples[k].Value.Float64Histogram())
		b.ReportMetric(p50*1e6, what+"-p50-µs")
		b.ReportMetric(p99*1e6, what+"-p99-µs")
		b.ReportMetric(max*1e6, what+"-max-µs")
	}
	close(stop)
	for _, d := range pingers {
		<-d
	}
	for i, l := range loops {
		l.post(func() { l.quit = true })
		<-runs[i]
		l.close()
	}
}

// histDelta returns the median, 99th percentile and maximum (each bucket's
// upper bound) of what was added to a runtime/metrics histogram since it
// held the counts a.
func histDelta(a []uint64, b *metrics.Float64Histogram) (p50, p99, max float64) {
	var total uint64
	counts := make([]uint64, len(b.Counts))
	for i := range b.Counts {
		counts[i] = b.Counts[i] - a[i]
		total += counts[i]
	}
	if total == 0 {
		return 0, 0, 0
	}
	var seen uint64
	for i, c := range counts {
		if c == 0 {
			continue
		}
		seen += c
		upper := b.Buckets[i+1]
		if p50 == 0 && seen*2 >= total {
			p50 = upper
		}
		if p99 == 0 && seen*100 >= total*99 {
			p99 = upper
		}
		max = upper
	}
	return p50, p99, max
}
