package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Held comparisons (report -compare A,B against a setup that run.sh holds
// with BENCH_HOLD=1): two airlockd builds or settings measured in pairs of
// back-to-back runs. On this kind of machine (two shared cores of a nested
// VM) one path's throughput moves by ±10% from minute to minute, in step
// for every path; two runs seconds apart see nearly the same machine, so
// the pair's ratio is what is compared, and the order alternates (A B, B
// A, ...) so that a drift within a pair falls on each side alike. The
// rotated rounds of the report's feature comparisons put minutes between
// the two sides of a ratio; these pairs do not.

// abbaOrder is the order of the runs of pair i (from 0): a first in even
// pairs, b first in odd ones.
func abbaOrder(i int, a, b string) [2]string {
	if i%2 == 0 {
		return [2]string{a, b}
	}
	return [2]string{b, a}
}

// pairSummary is b against a over pairs of runs: the throughput ratio's
// geometric mean with its 90% interval, how many pairs had b faster, and
// the median of the paired differences of each part's CPU µs a
// transaction (client, proxy, server) and of the cores used by others.
type pairSummary struct {
	tps    estimate
	higher int
	cpu    map[string]float64
	others float64
}

func summarizePairs(pairs [][2]result) pairSummary {
	s := pairSummary{cpu: map[string]float64{}}
	var ratios []float64
	diffs := map[string][]float64{}
	var others []float64
	for _, p := range pairs {
		a, b := p[0], p[1]
		if !a.ok || !b.ok || a.tps <= 0 || b.tps <= 0 {
			continue
		}
		ratios = append(ratios, b.tps/a.tps)
		if b.tps > a.tps {
			s.higher++
		}
		for k, v := range b.cpu {
			if w, ok := a.cpu[k]; ok && !math.IsNaN(v) && !math.IsNaN(w) {
				diffs[k] = append(diffs[k], v-w)
			}
		}
		others = append(others, b.others-a.others)
	}
	s.tps = ratioCI(ratios)
	for k, d := range diffs {
		s.cpu[k] = median(d)
	}
	if len(others) > 0 {
		s.others = median(others)
	}
	return s
}

func (s pairSummary) String() string {
	var parts []string
	for _, k := range []string{"client", "proxy", "server"} {
		if v, ok := s.cpu[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %+.1f", k, v))
		}
	}
	return fmt.Sprintf("TPS ratio %.3f (90%% CI %s, higher in %d of %d pairs); paired medians, CPU µs a transaction: %s; others %+.2f cores",
		s.tps.mean, s.tps.interval(), s.higher, s.tps.n, strings.Join(parts, ", "), s.others)
}

// compare measures path b against path a in n pairs of cell c.
func (r *runner) compare(a, b string, n int, c cell) (string, error) {
	if a == b {
		// Each pair's two runs are told apart by name: a path against
		// itself would compare a run with itself.
		return "", fmt.Errorf("%q against itself: name two different paths", a)
	}
	byName := map[string]Path{}
	for _, name := range []string{a, b} {
		p, ok := r.path(name)
		if !ok {
			return "", fmt.Errorf("no path %q in the setup (its paths: %s)", name, strings.Join(r.names(), ", "))
		}
		byName[name] = p
	}
	if n < 2 {
		return "", fmt.Errorf("%d pairs: at least 2 are needed for an interval", n)
	}
	pairs := make([][2]result, 0, n)
	for i := 0; i < n; i++ {
		got := map[string]result{}
		for _, name := range abbaOrder(i, a, b) {
			res := r.pgbench(byName[name], c, r.seconds)
			got[name] = res
			logf("pair %2d %-22s %8.0f tps  cpu/tx %s  others %.2f  load %s%s", i+1, name, res.tps, fmtCPU(res.cpu), res.others,
				strings.Fields(loadavg())[0], errSuffix(res))
		}
		pairs = append(pairs, [2]result{got[a], got[b]})
	}
	return fmt.Sprintf("%s against %s, %s, %d s a run: %s", b, a, c, r.seconds, summarizePairs(pairs)), nil
}

// parseCell reads SCRIPT/MODE/CLIENTS.
func parseCell(s string) (cell, error) {
	f := strings.Split(s, "/")
	if len(f) != 3 {
		return cell{}, fmt.Errorf("cell %q: want SCRIPT/MODE/CLIENTS", s)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 1 {
		return cell{}, fmt.Errorf("cell %q: bad client count", s)
	}
	if !slices.Contains([]string{"select", "tpcb", "masked"}, f[0]) {
		return cell{}, fmt.Errorf("cell %q: script is select, tpcb or masked", s)
	}
	if !slices.Contains([]string{"simple", "extended", "prepared"}, f[1]) {
		return cell{}, fmt.Errorf("cell %q: mode is simple, extended or prepared", s)
	}
	return cell{f[0], f[1], n}, nil
}

// names lists the setup's paths.
func (r *runner) names() []string {
	var ns []string
	for _, p := range r.st.Paths {
		ns = append(ns, p.Name)
	}
	slices.Sort(ns)
	return ns
}
