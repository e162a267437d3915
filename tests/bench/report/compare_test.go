package main

import (
	"math"
	"strings"
	"testing"
)

func TestABBAOrderAlternates(t *testing.T) {
	firsts := map[string]int{}
	for i := 0; i < 6; i++ {
		o := abbaOrder(i, "a", "b")
		if o[0] == o[1] || (o[0] != "a" && o[0] != "b") || (o[1] != "a" && o[1] != "b") {
			t.Fatalf("pair %d: order %v is not a and b once each", i, o)
		}
		firsts[o[0]]++
		if i > 0 && o[0] != abbaOrder(i-1, "a", "b")[1] {
			t.Errorf("pair %d starts with %s, not with the previous pair's last", i, o[0])
		}
	}
	if firsts["a"] != 3 || firsts["b"] != 3 {
		t.Errorf("firsts %v: each side should run first in half the pairs", firsts)
	}
}

func run(tps float64, client, proxy, server, others float64) result {
	return result{ok: true, tps: tps, others: others, cpu: map[string]float64{"client": client, "proxy": proxy, "server": server}}
}

func TestSummarizePairs(t *testing.T) {
	for _, c := range []struct {
		name   string
		pairs  [][2]result
		ratio  float64
		higher int
		n      int
		proxy  float64
		server float64
	}{
		{
			name: "b slower by its proxy's CPU",
			pairs: [][2]result{
				{run(10000, 24, 45, 120, 0), run(9500, 24, 52, 121, 0)},
				{run(9000, 25, 47, 130, 0), run(8600, 25, 53, 131, 0)},
				{run(11000, 23, 44, 115, 0), run(10400, 23, 51, 116, 0)},
			},
			ratio: 0.951, higher: 0, n: 3, proxy: 7, server: 1,
		},
		{
			name: "a failed run leaves its pair out",
			pairs: [][2]result{
				{run(10000, 24, 45, 120, 0), run(10100, 24, 45, 119, 0)},
				{{err: "pgbench: connection refused"}, run(9000, 25, 47, 130, 0)},
				{run(9000, 25, 47, 130, 0), run(9090, 25, 47, 128, 0)},
			},
			ratio: 1.01, higher: 2, n: 2, proxy: 0, server: -1,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := summarizePairs(c.pairs)
			if math.Abs(s.tps.mean-c.ratio) > 0.002 {
				t.Errorf("ratio %.4f, want %.3f", s.tps.mean, c.ratio)
			}
			if s.higher != c.higher || s.tps.n != c.n {
				t.Errorf("higher in %d of %d, want %d of %d", s.higher, s.tps.n, c.higher, c.n)
			}
			if s.cpu["proxy"] != c.proxy || s.cpu["server"] != c.server {
				t.Errorf("paired medians proxy %+.1f server %+.1f, want %+.1f %+.1f", s.cpu["proxy"], s.cpu["server"], c.proxy, c.server)
			}
			if !(s.tps.lo <= s.tps.mean && s.tps.mean <= s.tps.hi) {
				t.Errorf("interval %.3f–%.3f does not hold %.3f", s.tps.lo, s.tps.hi, s.tps.mean)
			}
			if str := s.String(); !strings.Contains(str, "TPS ratio") || !strings.Contains(str, "proxy") {
				t.Errorf("summary %q", str)
			}
		})
	}
}

func TestParseCell(t *testing.T) {
	for _, c := range []struct {
		in   string
		want cell
		bad  bool
	}{
		{in: "select/simple/10", want: cell{"select", "simple", 10}},
		{in: "tpcb/prepared/1", want: cell{"tpcb", "prepared", 1}},
		{in: "select/simple", bad: true},
		{in: "select/simple/0", bad: true},
		{in: "select/simple/ten", bad: true},
		{in: "drop/simple/10", bad: true},
		{in: "select/pipelined/10", bad: true},
	} {
		got, err := parseCell(c.in)
		if c.bad != (err != nil) || (!c.bad && got != c.want) {
			t.Errorf("parseCell(%q) = %v, %v", c.in, got, err)
		}
	}
}

// compare refuses what it cannot measure before running anything: a path
// against itself, a path the setup does not have, fewer than two pairs.
func TestCompareRefuses(t *testing.T) {
	r := &runner{st: Setup{Paths: []Path{{Name: "airlock"}, {Name: "airlock-noaudit"}}}, seconds: 1}
	c := cell{"select", "simple", 10}
	for _, tc := range []struct {
		a, b  string
		pairs int
		want  string
	}{
		{"airlock", "airlock", 8, "against itself"},
		{"airlock-noaudit", "airlock-env", 8, `no path "airlock-env"`},
		{"nope", "airlock", 8, `no path "nope"`},
		{"airlock-noaudit", "airlock", 1, "at least 2"},
	} {
		if _, err := r.compare(tc.a, tc.b, tc.pairs, c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("compare(%s, %s, %d) = %v, want an error with %q", tc.a, tc.b, tc.pairs, err, tc.want)
		}
	}
}
