package main

import (
	"context"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Feature overhead: the same cells through airlockd's that differ in one
// feature (masking, guardrails, recording), back to back, the order rotated
// from one round to the next, several rounds. Ratios are taken per round
// (each pair ran minutes apart at most) and reported as their mean and range.

// featureGroup is one cell and the paths run for it in each round; base is
// what "of base" divides by.
type featureGroup struct {
	c     cell
	base  string
	paths []string
}

// featureTarget compares on against off in one cell: on/off ≥ min.
type featureTarget struct {
	issue, what string
	c           cell
	on, off     string
	min         float64
}

func (r *runner) features(quick bool) string {
	have := func(f string) (string, bool) {
		if !contains(r.st.Features, f) {
			return "", false
		}
		for _, p := range r.st.Paths {
			if p.Feature == f {
				return p.Name, true
			}
		}
		return "", false
	}
	mask, withMask := have("mask")
	noguard, withGuard := have("guard")
	noaudit, withAudit := have("audit")
	// maskAlone: masking with recording off, against noaudit (see run.sh);
	// pgstore: recording into a PostgreSQL team store.
	var maskAlone, pgstore string
	if withAudit {
		for _, p := range r.st.Paths {
			switch p.Feature {
			case "mask-noaudit":
				if withMask {
					maskAlone = p.Name
				}
			case "audit-pgstore":
				pgstore = p.Name
			}
		}
	}
	if !withMask && !withGuard && !withAudit {
		return ""
	}
	rounds, selModes, maskModes := 3, []string{"simple", "prepared"}, []string{"simple", "extended"}
	if quick {
		selModes, maskModes = []string{"simple"}, []string{"simple"}
	}
	// Single runs here swing by more than the 5% the recording and masking
	// targets ask for: more rounds narrow the mean (BENCH_ROUNDS).
	rounds = envInt("BENCH_ROUNDS", rounds)
	const clients = 10
	var groups []featureGroup
	var targets []featureTarget
	if withMask {
		for _, m := range maskModes {
			c := cell{"masked", m, clients}
			g := featureGroup{c, "direct", []string{"direct", "airlock", mask}}
			targets = append(targets, featureTarget{"11", fmt.Sprintf("%d masked rows a transaction ≥ 0.80 × direct", r.st.MaskRows), c, mask, "direct", 0.80},
				// No target: how much of the gap masking itself makes.
				featureTarget{"11", "(masking's own share: the same rows through airlock unmasked)", c, mask, "airlock", 0})
			if _, ok := r.path("pgbouncer"); ok {
				// No target: what a proxy that does nothing to the rows keeps.
				g.paths = append(g.paths, "pgbouncer")
				targets = append(targets, featureTarget{"11", "(the same rows through PgBouncer, of direct)", c, "pgbouncer", "direct", 0})
			}
			if maskAlone != "" {
				// No target: the same with recording off (no result
				// samples stored), of direct.
				g.paths = append(g.paths, maskAlone)
				targets = append(targets, featureTarget{"11", "(the same, recording off, of direct)", c, maskAlone, "direct", 0})
			}
			groups = append(groups, g)
		}
	}
	for _, m := range selModes {
		c := cell{"select", m, clients}
		g := featureGroup{c, "airlock", []string{"airlock"}}
		if withMask {
			g.paths = append(g.paths, mask)
			if maskAlone == "" {
				targets = append(targets, featureTarget{"11", "pgbench -S, masking on other tables, within 5% of masking off", c, mask, "airlock", 0.95})
			} else {
				// Both recording: the round-to-round spread of two
				// recording daemons is larger than what this compares.
				targets = append(targets, featureTarget{"11", "(pgbench -S, masking on other tables, both recording)", c, mask, "airlock", 0})
			}
		}
		if withGuard {
			g.paths = append(g.paths, noguard)
			targets = append(targets, featureTarget{"10", "pgbench -S, guardrails on within 10% of off", c, "airlock", noguard, 0.90})
		}
		if withAudit {
			g.paths = append(g.paths, noaudit)
			targets = append(targets, featureTarget{"9", "pgbench -S, recording on (SQLite) within 5% of off", c, "airlock", noaudit, 0.95})
			if pgstore != "" {
				g.paths = append(g.paths, pgstore)
				targets = append(targets, featureTarget{"9", "pgbench -S, recording on (PostgreSQL store) within 5% of off", c, pgstore, noaudit, 0.95})
			}
		}
		if maskAlone != "" {
			g.paths = append(g.paths, maskAlone)
			targets = append(targets, featureTarget{"11", "pgbench -S, masking on other tables, within 5% of masking off (recording off on both)", c, maskAlone, noaudit, 0.95})
		}
		groups = append(groups, g)
	}
	if withAudit {
		c := cell{"tpcb", "simple", clients}
		g := featureGroup{c, "airlock", []string{"airlock", noaudit}}
		targets = append(targets, featureTarget{"9", "TPC-B, recording on (SQLite) within 5% of off", c, "airlock", noaudit, 0.95})
		if pgstore != "" {
			g.paths = append(g.paths, pgstore)
			targets = append(targets, featureTarget{"9", "TPC-B, recording on (PostgreSQL store) within 5% of off", c, pgstore, noaudit, 0.95})
		}
		groups = append(groups, g)
		// pgbench's own default, one client: the cores are not saturated,
		// so the recording's CPU shows as latency rather than as CPU taken
		// from the server (the 10-client cells above).
		for _, script := range []string{"select", "tpcb"} {
			c := cell{script, "simple", 1}
			g := featureGroup{c, "airlock", []string{"airlock", noaudit}}
			name := map[string]string{"select": "pgbench -S", "tpcb": "TPC-B"}[script] + ", 1 client"
			targets = append(targets, featureTarget{"9", name + ", recording on (SQLite) within 5% of off", c, "airlock", noaudit, 0.95})
			if pgstore != "" {
				g.paths = append(g.paths, pgstore)
				targets = append(targets, featureTarget{"9", name + ", recording on (PostgreSQL store) within 5% of off", c, pgstore, noaudit, 0.95})
			}
			groups = append(groups, g)
		}
	}

	if withMask {
		logf("features: warm-up of the masked script (not recorded)")
		if p, ok := r.path(mask); ok {
			r.pgbench(p, cell{"masked", "simple", clients}, 2)
		}
	}
	runs := map[string][]result{}
	for round := 0; round < rounds; round++ {
		for gi, g := range groups {
			for i := range g.paths {
				name := g.paths[(round+gi+i)%len(g.paths)]
				p, ok := r.path(name)
				if !ok {
					continue
				}
				res := r.pgbench(p, g.c, r.seconds)
				runs[key(g.c, name)] = append(runs[key(g.c, name)], res)
				logf("features round %d: %-22s %-16s %8.0f tps  cpu/tx %s  proxy sys/tx %.2f csw/tx %.2f  others %.2f%s", round+1, g.c, name, res.tps,
					fmtCPU(res.cpu), res.sysc, res.ctxsw, res.others, errSuffix(res))
			}
		}
	}

	var w strings.Builder
	pf := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	pf("\n## Feature overhead (issues 9, 10, 11)\n\n")
	pf("Each cell below ran on every listed path back to back, %d rounds, the order rotated from one round to the next,\n", rounds)
	pf("`pgbench -n -T %d -c %d -j 2` (the cells ending in /1: `-c 1`). Figures are the means over the rounds; a ratio is taken within each round\n", r.seconds, clients)
	pf("(the two runs it compares were back to back) and given as the rounds' geometric mean with their range and a confidence interval.\n")
	pf("**airlock** has guardrails (the SQL policy stage, built-in rules) and recording (embedded SQLite) on and no masking.\n")
	if withMask {
		pf("The masked script (`-f`): `SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + %d`\n", r.st.MaskRows-1)
		pf("with `:a` random: %d rows a transaction, two of the five columns masked on **%s** (%d values a transaction).\n", r.st.MaskRows, mask, 2*r.st.MaskRows)
	}
	pf("\n| cell | path | TPS | of %s | CPU µs/tx client | proxy | server | total | proxy syscalls/tx | proxy switches/tx | others (cores) |\n", "base")
	pf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, g := range groups {
		base := meanResult(runs[key(g.c, g.base)])
		for _, name := range g.paths {
			m := meanResult(runs[key(g.c, name)])
			label := name
			if name == g.base {
				label += " (base)"
			}
			if !m.ok {
				pf("| %s | %s | failed: %s | | | | | | | | %.2f |\n", g.c, label, mdEscape(m.err), m.others)
				continue
			}
			total := m.cpu["client"] + m.cpu["proxy"] + m.cpu["server"]
			pf("| %s | %s | %.0f | %s | %s | %s | %s | %.0f | %s | %s | %.2f |\n", g.c, label, m.tps, ratio(m, base),
				us(m.cpu["client"]), us(m.cpu["proxy"]), us(m.cpu["server"]), total, per(m.sysc), per(m.ctxsw), m.others)
		}
	}
	pf("\n### Targets (feature overhead)\n\n| issue | target (cell) | measured | rounds | result |\n|---|---|---|---|---|\n")
	for _, t := range targets {
		on, off := runs[key(t.c, t.on)], runs[key(t.c, t.off)]
		var ratios []float64
		for i := range on {
			if i < len(off) && on[i].ok && off[i].ok && off[i].tps > 0 {
				ratios = append(ratios, on[i].tps/off[i].tps)
			}
		}
		if len(ratios) == 0 {
			pf("| %s | %s (%s) | no complete round | | **not measured** |\n", t.issue, t.what, t.c)
			continue
		}
		_, lo, hi := stats(ratios)
		est := ratioCI(ratios)
		mon, moff := meanResult(on), meanResult(off)
		verdict := "no target"
		if t.min > 0 {
			verdict = est.verdict(t.min)
		}
		pf("| %s | %s (%s) | %.2f × (rounds %.2f–%.2f; 90%% CI %s); proxy CPU %s vs %s µs/tx | %d | %s |\n", t.issue, t.what, t.c, est.mean, lo, hi,
			est.interval(), us(mon.cpu["proxy"]), us(moff.cpu["proxy"]), len(ratios), verdict)
	}
	pf("\nA ratio is the geometric mean of the rounds' ratios; its 90%% confidence interval is Student's t on their logarithms\n")
	pf("(the rounds taken as independent pairs). A target is **met** when the whole interval is at or above it, **missed** when\n")
	pf("the whole interval is below it, and **not resolved** when the interval straddles it: the rounds cannot tell which.\n")
	return w.String()
}

// estimate is a ratio's geometric mean over rounds with its confidence
// interval. A target called met or missed on a mean alone flipped from run
// to run on this machine (rounds swing by ±15–30%), so the verdict says so
// when the rounds cannot decide.
type estimate struct {
	mean, lo, hi float64
	n            int
}

func ratioCI(ratios []float64) estimate {
	e := estimate{n: len(ratios)}
	var logs []float64
	for _, r := range ratios {
		if r > 0 {
			logs = append(logs, math.Log(r))
		}
	}
	if len(logs) == 0 {
		return estimate{mean: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	var m float64
	for _, l := range logs {
		m += l
	}
	m /= float64(len(logs))
	e.mean = math.Exp(m)
	if len(logs) < 2 {
		e.lo, e.hi = math.NaN(), math.NaN()
		return e
	}
	var ss float64
	for _, l := range logs {
		ss += (l - m) * (l - m)
	}
	half := t90(len(logs)-1) * math.Sqrt(ss/float64(len(logs)-1)/float64(len(logs)))
	e.lo, e.hi = math.Exp(m-half), math.Exp(m+half)
	return e
}

func (e estimate) interval() string {
	if math.IsNaN(e.lo) {
		return "– (one round)"
	}
	return fmt.Sprintf("%.2f–%.2f", e.lo, e.hi)
}

func (e estimate) verdict(min float64) string {
	switch {
	case math.IsNaN(e.lo):
		return "**not resolved** (one round)"
	case e.lo >= min:
		return "**met**"
	case e.hi < min:
		return "**missed**"
	case e.mean >= min:
		return "**not resolved** (mean at or above)"
	default:
		return "**not resolved** (mean below)"
	}
}

// t90 is Student's t for a two-sided 90% interval with df degrees of
// freedom.
func t90(df int) float64 {
	table := []float64{6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812,
		1.796, 1.782, 1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725}
	switch {
	case df < 1:
		return math.NaN()
	case df <= len(table):
		return table[df-1]
	case df <= 30:
		return 1.697
	case df <= 60:
		return 1.671
	default:
		return 1.645
	}
}

func metStr(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

// meanResult averages the successful runs (ok when there is one).
func meanResult(rs []result) result {
	m := result{cpu: map[string]float64{}}
	n := 0.0
	for _, r := range rs {
		m.others += r.others
		if !r.ok {
			m.err = r.err
			continue
		}
		n++
		m.tps += r.tps
		m.latMs += r.latMs
		m.sysc += r.sysc
		m.ctxsw += r.ctxsw
		for k, v := range r.cpu {
			m.cpu[k] += v
		}
	}
	if len(rs) > 0 {
		m.others /= float64(len(rs))
	}
	if n == 0 {
		if m.err == "" {
			m.err = "not run"
		}
		return m
	}
	m.ok = true
	m.tps /= n
	m.latMs /= n
	m.sysc /= n
	m.ctxsw /= n
	for k := range m.cpu {
		m.cpu[k] /= n
	}
	return m
}

func stats(v []float64) (mean, lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		mean += x
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return mean / float64(len(v)), lo, hi
}

// detectors runs internal/mask's throughput benchmarks: every detector on
// every value of a typical mixed result, and the masker on the same values.
func (r *runner) detectors() string {
	if r.st.MaskBench == "" || !contains(r.st.Features, "mask") {
		return ""
	}
	logf("BenchmarkDetectMixed, BenchmarkMaskMixed, BenchmarkClean")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const count = 5
	args := []string{"-test.run", "^$", "-test.bench", "^(BenchmarkDetectMixed|BenchmarkMaskMixed|BenchmarkClean)$", "-test.count", strconv.Itoa(count), "-test.benchtime", "1s"}
	cmd := exec.CommandContext(ctx, r.st.MaskBench, args...)
	cmd.Dir = filepath.Dir(r.st.MaskBench)
	out, err := cmd.CombinedOutput()
	var w strings.Builder
	pf := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	pf("\n## Detectors (issue 11)\n\n")
	pf("`go test -run '^$' -bench '^(BenchmarkDetectMixed|BenchmarkMaskMixed|BenchmarkClean)$' -count %d ./internal/mask/`, median of %d.\n", count, count)
	pf("The mixed result is 2,000 order rows of 10 text columns (ids, UUIDs, names, timestamps, amounts, addresses, a user\n")
	pf("agent, a digest, and free-text notes of which one in 20 carries an email, card, phone, token or IBAN), about 460 KB.\n")
	pf("**detect**: every detector on every value, as if every column were computed (the worst case: a sourced column no\n")
	pf("rule names is never read). **mask**: the masker (detect, then hash, partial or redact) on the same values.\n")
	pf("**clean prose**: 4 KiB of text with none of the bytes a detector starts from. \"per core\" is per CPU-second of the\n")
	pf("benchmark's own thread (`getrusage(RUSAGE_THREAD)`), which waiting for a core on a shared machine does not inflate.\n\n")
	if err != nil {
		pf("Failed: %v: %s\n", err, mdEscape(lastLines(string(out), 3)))
		return w.String()
	}
	re := regexp.MustCompile(`(?m)^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op\s+([0-9.]+) MB/s\s+([0-9.]+) MB/cpu-s`)
	type agg struct{ ns, mbs, cpu []float64 }
	got := map[string]*agg{}
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		a := got[m[1]]
		if a == nil {
			a = &agg{}
			got[m[1]] = a
		}
		f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		a.ns, a.mbs, a.cpu = append(a.ns, f(m[2])), append(a.mbs, f(m[3])), append(a.cpu, f(m[4]))
	}
	pf("| benchmark | MB/s per core | MB/s (wall clock) | time per 2,000-row result |\n|---|---:|---:|---:|\n")
	for _, b := range []struct{ name, label string }{
		{"BenchmarkDetectMixed", "detect, mixed result"},
		{"BenchmarkMaskMixed", "mask, mixed result"},
		{"BenchmarkClean/prose", "detect, clean prose"},
		{"BenchmarkClean/with-digits", "detect, clean text with digits"},
	} {
		a := got[b.name]
		if a == nil {
			pf("| %s | – | – | – |\n", b.label)
			continue
		}
		per := "–"
		if !strings.HasPrefix(b.name, "BenchmarkClean") {
			per = fmt.Sprintf("%.1f ms", median(a.ns)/1e6)
		}
		pf("| %s | %.0f | %.0f | %s |\n", b.label, median(a.cpu), median(a.mbs), per)
	}
	return w.String()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
