package audit

import (
	"math"
	"strconv"
	"testing"
)

// TestAppendInt holds appendInt and appendUint to strconv's bytes at each
// digit count's edges, the sign, the extremes, and after a prefix (the
// frame they write into) with and without room to spare.
func TestAppendInt(t *testing.T) {
	var cases []int64
	for p := int64(1); p > 0 && p <= math.MaxInt64/10*10; p *= 10 {
		cases = append(cases, p-1, p, p+1, -p, -(p - 1), -(p + 1))
		if p > math.MaxInt64/10 {
			break
		}
	}
	cases = append(cases, 0, 42, 99, 100, 4821, 1764633600123456789, math.MaxInt64, math.MinInt64, math.MinInt64+1)
	for _, v := range cases {
		for _, prefix := range [][]byte{nil, []byte(`{"rows":`), make([]byte, 3, 64)} {
			want := strconv.AppendInt(append([]byte(nil), prefix...), v, 10)
			got := appendInt(append([]byte(nil), prefix...), v)
			if string(got) != string(want) {
				t.Errorf("appendInt(%q, %d) = %q, want %q", prefix, v, got, want)
			}
			roomy := append(make([]byte, 0, len(prefix)+32), prefix...)
			if got := appendInt(roomy, v); string(got) != string(want) {
				t.Errorf("appendInt(%q with room, %d) = %q, want %q", prefix, v, got, want)
			}
		}
	}
	for _, u := range []uint64{0, 9, 10, 99, 100, 1e8 - 1, 1e8, 1e8 + 1, 1e16, 1e19 - 1, 1e19, math.MaxUint64, math.MaxUint32} {
		if got, want := appendUint(nil, u), strconv.AppendUint(nil, u, 10); string(got) != string(want) {
			t.Errorf("appendUint(%d) = %q, want %q", u, got, want)
		}
	}
}

func FuzzAppendInt(f *testing.F) {
	for _, v := range []int64{0, -1, 99, 100, 1e8, -1e8, math.MaxInt64, math.MinInt64, 1764633600123456789} {
		f.Add(v, uint8(0))
	}
	f.Fuzz(func(t *testing.T, v int64, pad uint8) {
		prefix := make([]byte, pad%24, int(pad%24)+int(pad/24))
		if got, want := appendInt(prefix, v), strconv.AppendInt(prefix, v, 10); string(got) != string(want) {
			t.Fatalf("appendInt(%d) = %q, want %q", v, got, want)
		}
		if got, want := appendUint(prefix, uint64(v)), strconv.AppendUint(prefix, uint64(v), 10); string(got) != string(want) {
			t.Fatalf("appendUint(%d) = %q, want %q", uint64(v), got, want)
		}
	})
}

func BenchmarkAppendInt(b *testing.B) {
	buf := make([]byte, 0, 64)
	for _, tc := range []struct {
		name string
		v    int64
	}{{"time_ns", 1764633600123456789}, {"bytes", 11}, {"duration", 80}, {"seq", 123456}} {
		b.Run(tc.name+"/strconv", func(b *testing.B) {
			for b.Loop() {
				buf = strconv.AppendInt(buf[:0], tc.v, 10)
			}
		})
		b.Run(tc.name+"/appendInt", func(b *testing.B) {
			for b.Loop() {
				buf = appendInt(buf[:0], tc.v)
			}
		})
	}
}
