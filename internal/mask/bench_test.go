package mask

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cpuMeter reports throughput per CPU-second of the benchmark's own thread
// (MB/cpu-s) next to the wall-clock MB/s: on a shared machine the wall clock
// counts time spent waiting for a core.
type cpuMeter struct {
	b     *testing.B
	start time.Duration
	n     int
}

func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func meter(b *testing.B) *cpuMeter {
	runtime.LockOSThread()
	return &cpuMeter{b: b, start: threadCPU()}
}

func (m *cpuMeter) done(bytesPerOp int64) {
	used := threadCPU() - m.start
	runtime.UnlockOSThread()
	if used > 0 && m.n > 0 {
		m.b.ReportMetric(float64(bytesPerOp)*float64(m.n)/used.Seconds()/1e6, "MB/cpu-s")
	}
}

// doneOps reports the thread's CPU time per operation (cpu-ns/op).
func (m *cpuMeter) doneOps() {
	used := threadCPU() - m.start
	runtime.UnlockOSThread()
	if m.n > 0 {
		m.b.ReportMetric(float64(used.Nanoseconds())/float64(m.n), "cpu-ns/op")
	}
}

// mixedResult builds the values of a typical result: order rows with ids,
// UUIDs, names, timestamps, amounts, addresses, user agents, digests, and
// a notes column where one row in twenty carries something sensitive.
func mixedResult(rows int) [][]byte {
	r := rand.New(rand.NewPCG(42, 42))
	first := []string{"Alice", "Bob", "Chloé", "David", "Emma", "Farid", "Grace", "Hiro", "Inès", "Jonas"}
	last := []string{"Martin", "Nguyen", "O'Brien", "Schmidt", "Dubois", "Kowalski", "Silva", "Tanaka"}
	streets := []string{"Baker Street", "Rue de Rivoli", "Hauptstraße", "Main St", "Calle Mayor"}
	status := []string{"pending", "shipped", "delivered", "refunded", "cancelled"}
	words := strings.Fields("the customer asked to change the delivery address before shipping and wants an invoice with the company name please call back tomorrow morning about the refund of the damaged item")
	sensitive := []func() string{
		func() string { return fmt.Sprintf("contact %s.%s@corp-mail.com", first[r.IntN(10)], last[r.IntN(8)]) },
		func() string { return "paid with 4111 1111 1111 1111" },
		func() string { return "call +44 20 7946 0958" },
		func() string { return "token ghp_" + randToken(r, base62, 36) },
		func() string { return "iban DE89 3704 0044 0532 0130 00" },
	}
	var out [][]byte
	for i := 0; i < rows; i++ {
		note := make([]string, 8+r.IntN(30))
		for k := range note {
			note[k] = words[r.IntN(len(words))]
		}
		if r.IntN(20) == 0 {
			note = append(note, sensitive[r.IntN(len(sensitive))]())
		}
		row := []string{
			fmt.Sprint(100000 + i),
			fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", r.Uint32(), r.IntN(1<<16), r.IntN(1<<12), r.IntN(1<<12), r.Uint64()&(1<<48-1)),
			first[r.IntN(10)] + " " + last[r.IntN(8)],
			fmt.Sprintf("2024-%02d-%02d %02d:%02d:%02d.%06d+00", 1+r.IntN(12), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1e6)),
			fmt.Sprintf("%d.%02d", r.IntN(5000), r.IntN(100)),
			status[r.IntN(len(status))],
			fmt.Sprintf("%d %s, %05d", 1+r.IntN(300), streets[r.IntN(len(streets))], r.IntN(99999)),
			"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
			fmt.Sprintf("%016x%016x%016x%016x", r.Uint64(), r.Uint64(), r.Uint64(), r.Uint64()),
			strings.Join(note, " "),
		}
		for _, v := range row {
			out = append(out, []byte(v))
		}
	}
	return out
}

func totalLen(vs [][]byte) (n int64) {
	for _, v := range vs {
		n += int64(len(v))
	}
	return n
}

// BenchmarkDetectMixed runs every detector on every value of a typical
// result, as if every column were computed (the worst case: sourced columns
// no rule names are never looked at).
func BenchmarkDetectMixed(b *testing.B) {
	vals := mixedResult(2000)
	b.SetBytes(totalLen(vals))
	var sp []Span
	b.ReportAllocs()
	cm := meter(b)
	for b.Loop() {
		cm.n++
		for _, v := range vals {
			sp = Detect(sp[:0], v, AllKinds)
		}
	}
	cm.done(totalLen(vals))
}

// BenchmarkMaskMixed masks the same result through a Masker (detect and
// replace: hash, partial, redact).
func BenchmarkMaskMixed(b *testing.B) {
	vals := mixedResult(2000)
	m := testMasker(b, agent)
	c := m.Column(Source{})
	dst := make([]byte, 0, 4096)
	b.SetBytes(totalLen(vals))
	b.ReportAllocs()
	cm := meter(b)
	for b.Loop() {
		cm.n++
		for _, v := range vals {
			dst, _ = c.Mask(dst[:0], v)
		}
	}
	cm.done(totalLen(vals))
}

// cleanProse is text with none of the bytes a detector needs.
func cleanProse(n int) []byte {
	var buf bytes.Buffer
	words := strings.Fields("The customer asked us to change the delivery address before shipping, and wants an invoice with the company name; please call back tomorrow morning about the refund of the damaged item. Thanks!")
	for i := 0; buf.Len() < n; i++ {
		buf.WriteString(words[i%len(words)])
		buf.WriteByte(' ')
	}
	return buf.Bytes()[:n]
}

// BenchmarkClean: values with nothing to mask. "prose" has no digit, '@',
// ':', '-' or '_' and is rejected by the word-at-a-time prefilter;
// "with-digits" is clean text that needs the full scan. IndexByte on the
// same bytes (a byte that is absent) is the memchr yardstick.
func BenchmarkClean(b *testing.B) {
	prose := cleanProse(4096)
	digits := []byte(strings.Repeat("Order 12345 shipped on 2024-05-01 to Springfield, 3 items, total 129.95 USD. ", 53))[:4096]
	for _, c := range []struct {
		name string
		v    []byte
	}{{"prose", prose}, {"with-digits", digits}} {
		b.Run(c.name, func(b *testing.B) {
			var sp []Span
			b.SetBytes(int64(len(c.v)))
			b.ReportAllocs()
			cm := meter(b)
			for b.Loop() {
				cm.n++
				if sp = Detect(sp[:0], c.v, AllKinds); len(sp) != 0 {
					b.Fatal("found something in clean text")
				}
			}
			cm.done(int64(len(c.v)))
		})
	}
	b.Run("memchr", func(b *testing.B) {
		b.SetBytes(int64(len(prose)))
		cm := meter(b)
		for b.Loop() {
			cm.n++
			if bytes.IndexByte(prose, 0) >= 0 {
				b.Fatal("zero byte")
			}
		}
		cm.done(int64(len(prose)))
	})
}

// BenchmarkColumnNotMasked: a sourced column no rule names.
func BenchmarkColumnNotMasked(b *testing.B) {
	m := testMasker(b, agent)
	c := m.Column(Source{"public", "orders", "notes"})
	v := []byte("mail alice@corp.com, card 4111 1111 1111 1111")
	b.ReportAllocs()
	for b.Loop() {
		if _, r := c.Mask(nil, v); r != Unchanged {
			b.Fatal("masked")
		}
	}
}

// BenchmarkWhole: a column rule masking a whole value, per strategy (an
// email; a card number for partial).
func BenchmarkWhole(b *testing.B) {
	for _, st := range []Strategy{Redact, Partial, Hash, Fake, Null} {
		b.Run(string(st), func(b *testing.B) {
			rs, err := Compile(Policy{Rules: []Rule{{Name: "r", Columns: []string{"public.people.v"}, Strategy: st}}}, bytes.Repeat([]byte("k"), 32))
			if err != nil {
				b.Fatal(err)
			}
			c := rs.ForSubject(Subject{Process: "agent"}).Column(Source{"public", "people", "v"})
			v := []byte("user12345@corp-mail.com")
			if st == Partial {
				v = []byte("4000000000012345")
			}
			dst := make([]byte, 0, 256)
			b.SetBytes(int64(len(v)))
			b.ReportAllocs()
			cm := meter(b)
			for b.Loop() {
				cm.n++
				if dst, _ = c.Mask(dst[:0], v); st != Null && len(dst) == 0 {
					b.Fatal("not masked")
				}
			}
			cm.doneOps()
		})
	}
}
