// Command report runs the PostgreSQL throughput benchmarks and writes
// docs/BENCHMARKS.md. tests/bench/run.sh (`sudo make bench`) sets up the
// servers (a PostgreSQL in a network namespace, PgBouncer, airlockd) and
// their cgroups, describes them in a JSON file and runs this program, which
// measures every path back to back, rotated, and writes the tables.
//
//	report -setup /tmp/airlock-bench/setup.json -out docs/BENCHMARKS.md
//
// Flags (and the environment variables run.sh passes them from):
//
//	-seconds   BENCH_SECONDS  pgbench -T per run
//	-clients   BENCH_CLIENTS  client counts, e.g. "1 10 50 200"
//	-modes     BENCH_MODES    pgbench -M values
//	-scripts   BENCH_SCRIPTS  "select" (-S) and/or "tpcb"; "none": only the feature comparisons
//	-quick     BENCH_QUICK=1  1/10/50 clients, 5 s, select-only in all three modes and TPC-B simple
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Path is one way pgbench reaches the server.
type Path struct {
	Name string `json:"name"` // direct, airlock, airlock-tls, pgbouncer, ...
	Kind string `json:"kind"` // direct, airlock or pgbouncer
	DSN  string `json:"dsn"`
	// ClientCgroup is where pgbench runs (airlock's clients: a cgroup its
	// programs intercept).
	ClientCgroup string `json:"client_cgroup"`
	// ProxyCgroup holds the proxy's process (empty for direct).
	ProxyCgroup string `json:"proxy_cgroup"`
	// ProxyPID is the proxy's process, for its memory.
	ProxyPID int `json:"proxy_pid"`
	// Socket is an airlockd's control socket: before each run the
	// report waits for that daemon to have shipped its audit record.
	Socket string `json:"socket"`
	Note   string `json:"note"`
	// Only restricts the path to these scripts (empty: all).
	Only []string `json:"only"`
	// Feature marks a path that only the feature comparisons use (mask,
	// guard, audit): an airlockd with that feature changed.
	Feature string `json:"feature"`
}

// Setup is what run.sh prepared.
type Setup struct {
	Paths        []Path   `json:"paths"`
	ServerCgroup string   `json:"server_cgroup"` // postgres and its backends
	OwnCgroups   []string `json:"own_cgroups"`   // everything this benchmark runs in
	Dir          string   `json:"dir"`
	Airlock      string   `json:"airlock"` // the airlock CLI, for settle`
	Idle         struct {
		Path     string `json:"path"`   // the path whose proxy holds idle sessions
		Binary   string `json:"binary"` // tests/bench/idle, built
		Sessions int    `json:"sessions"`
		// Also are more paths whose proxies' idle memory is measured
		// (without the busy runs).
		Also []string `json:"also"` // 0: skip
	} `json:"idle"`
	// PipeBench is the compiled pgwire test binary, for BenchmarkPipeRows.
	PipeBench string `json:"pipe_bench"`
	// MaskBench is the compiled internal/mask test binary, for the
	// detectors' throughput.
	MaskBench string `json:"mask_bench"`
	// Features are the comparisons to run (mask, guard, audit), with
	// MaskScript the pgbench script reading MaskRows masked rows.
	Features   []string          `json:"features"`
	MaskScript string            `json:"mask_script"`
	MaskRows   int               `json:"mask_rows"`
	Setup      []string          `json:"setup"`   // lines describing the setup, for the report
	Machine    map[string]string `json:"machine"` // extra rows for the machine table
	Command    string            `json:"command"`
}

type result struct {
	ok      bool
	err     string
	tps     float64
	latMs   float64
	txns    float64
	cpu     map[string]float64 // µs per transaction: client, proxy, server
	sysc    float64            // the proxy's read and write system calls per transaction
	ctxsw   float64            // the proxy's context switches per transaction
	others  float64            // cores used by processes outside the benchmark
	seconds float64
}

type cell struct {
	script, mode string
	clients      int
}

func (c cell) String() string { return fmt.Sprintf("%s/%s/%d", c.script, c.mode, c.clients) }

func main() {
	setupFile := flag.String("setup", "", "JSON description of the prepared paths (written by run.sh)")
	out := flag.String("out", "docs/BENCHMARKS.md", "report to write")
	seconds := flag.Int("seconds", envInt("BENCH_SECONDS", 10), "pgbench -T per run")
	clients := flag.String("clients", envStr("BENCH_CLIENTS", "1 10 50 200"), "client counts")
	modes := flag.String("modes", envStr("BENCH_MODES", "simple extended prepared"), "pgbench -M values")
	scripts := flag.String("scripts", envStr("BENCH_SCRIPTS", "select tpcb"), "select and/or tpcb")
	quick := flag.Bool("quick", os.Getenv("BENCH_QUICK") == "1", "fewer cells: 1/10/50 clients, 5 s")
	compare := flag.String("compare", "", "A,B: measure held path B against A in pairs of runs (compare.go) and print the result; no report is written")
	pairs := flag.Int("pairs", 16, "pairs of runs for -compare")
	compareCell := flag.String("cell", "select/simple/10", "SCRIPT/MODE/CLIENTS for -compare (script: select, tpcb or masked)")
	flag.Parse()
	if *quick {
		if os.Getenv("BENCH_CLIENTS") == "" {
			*clients = "1 10 50"
		}
		if os.Getenv("BENCH_SECONDS") == "" {
			*seconds = 5
		}
	}
	if *setupFile == "" {
		fatalf("usage: report -setup FILE [-out FILE]")
	}
	var st Setup
	b, err := os.ReadFile(*setupFile)
	if err != nil {
		fatalf("read setup: %v", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		fatalf("parse %s: %v", *setupFile, err)
	}
	r := &runner{st: st, seconds: *seconds, results: map[string]result{}}
	if *compare != "" {
		ab := strings.Split(*compare, ",")
		if len(ab) != 2 {
			fatalf("-compare %q: want two paths, A,B (usage: report -setup FILE -compare A,B [-pairs N] [-cell SCRIPT/MODE/CLIENTS] [-seconds S])", *compare)
		}
		c, err := parseCell(*compareCell)
		if err != nil {
			fatalf("-cell: %v", err)
		}
		out, err := r.compare(ab[0], ab[1], *pairs, c)
		if err != nil {
			fatalf("compare: %v", err)
		}
		fmt.Println(out)
		return
	}
	loadStart := loadavg()
	started := time.Now().UTC()

	var cells []cell
	for _, s := range strings.Fields(*scripts) {
		if s == "none" { // only the feature comparisons
			continue
		}
		for _, m := range strings.Fields(*modes) {
			if *quick && s == "tpcb" && m != "simple" {
				continue
			}
			for _, c := range strings.Fields(*clients) {
				n, err := strconv.Atoi(c)
				if err != nil || n < 1 {
					fatalf("bad client count %q", c)
				}
				cells = append(cells, cell{s, m, n})
			}
		}
	}

	logf("warm-up (not recorded)")
	for _, p := range st.Paths {
		r.pgbench(p, cell{"select", "simple", 10}, 2)
	}
	for k, c := range cells {
		paths := r.pathsFor(c.script)
		for i := range paths {
			p := paths[(k+i)%len(paths)] // rotated: no path always runs first
			res := r.pgbench(p, c, r.seconds)
			r.results[key(c, p.Name)] = res
			logf("%-28s %-12s %8.0f tps  %7.3f ms  cpu/tx %s  proxy sys/tx %.2f csw/tx %.2f  others %.2f%s", c, p.Name, res.tps, res.latMs,
				fmtCPU(res.cpu), res.sysc, res.ctxsw, res.others, errSuffix(res))
		}
	}

	feats := r.features(*quick)
	detectors := r.detectors()

	idle := r.idle(r.st.Idle.Path, true)
	var also []idleResult
	for _, name := range r.st.Idle.Also {
		also = append(also, r.idle(name, false))
	}
	stages := r.pipeRows()
	loadEnd := loadavg()
	rep := r.report(cells, idle, also, started, loadStart, loadEnd, *seconds, *quick)
	rep += feats + detectors + stages
	if err := writeKeepingTail(*out, rep); err != nil {
		fatalf("write %s: %v", *out, err)
	}
	logf("wrote %s", *out)
}

func errSuffix(r result) string {
	if r.ok {
		return ""
	}
	return "  FAILED: " + r.err
}

func key(c cell, path string) string { return c.String() + "/" + path }

type runner struct {
	st      Setup
	seconds int
	results map[string]result
}

func (r *runner) pathsFor(script string) []Path {
	var ps []Path
	for _, p := range r.st.Paths {
		if len(p.Only) > 0 && !contains(p.Only, script) || p.Feature != "" {
			continue
		}
		ps = append(ps, p)
	}
	return ps
}

func (r *runner) path(name string) (Path, bool) {
	for _, p := range r.st.Paths {
		if p.Name == name {
			return p, true
		}
	}
	return Path{}, false
}

var (
	reTPS  = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	reLat  = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reTxns = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFail = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// pgbench runs one measurement of path p and reads the CPU each part used.
func (r *runner) pgbench(p Path, c cell, seconds int) result {
	r.settle(p)
	// Setting up many sessions takes seconds on a busy machine: the steady
	// state measured starts after it, and gets its full length.
	seconds += c.clients / 10
	args := []string{"-n", "-P", "1", "-M", c.mode, "-c", strconv.Itoa(c.clients), "-T", strconv.Itoa(seconds)}
	switch c.script {
	case "select":
		args = append(args, "-S")
	case "masked":
		args = append(args, "-f", r.st.MaskScript)
	}
	if c.clients > 1 {
		args = append(args, "-j", "2")
	}
	args = append(args, p.DSN)
	groups := map[string]string{"client": p.ClientCgroup, "proxy": p.ProxyCgroup, "server": r.st.ServerCgroup}
	// CPU is counted between pgbench's first and last progress reports
	// (-P 1): the steady state, without the connections' setup and
	// teardown, over the transactions those reports count.
	var (
		first, last map[string]float64
		m0, m1      sample
		p0, p1      procCounts
		steady      float64 // transactions between the first and last reports
		lastAt      float64 // time of the previous report
	)
	onProgress := func(line string) {
		f := progressTPS.FindStringSubmatch(line)
		if f == nil {
			return
		}
		now := map[string]float64{}
		for k, g := range groups {
			if g != "" {
				now[k] = cpuUsec(g)
			}
		}
		ms := machineSample(r.st.OwnCgroups)
		pc := procCountsOf(p.ProxyCgroup)
		if first == nil {
			first, m0, lastAt, p0 = now, ms, 0, pc
			if iv, err := strconv.ParseFloat(f[1], 64); err == nil {
				lastAt = iv
			}
			return
		}
		v, _ := strconv.ParseFloat(f[2], 64)
		iv, _ := strconv.ParseFloat(f[1], 64)
		steady += v * (iv - lastAt)
		lastAt = iv
		last, m1, p1 = now, ms, pc
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+180)*time.Second)
	defer cancel()
	outb, err := runIn(ctx, p.ClientCgroup, onProgress, "pgbench", args...)
	res := result{cpu: map[string]float64{}, seconds: float64(seconds)}
	if last != nil {
		res.others = m1.others(m0)
	}
	out := string(outb)
	_ = os.WriteFile(filepath.Join(r.st.Dir, "pgbench."+strings.ReplaceAll(key(c, p.Name), "/", ".")+".log"), outb, 0o644)
	if err != nil {
		res.err = fmt.Sprintf("%v: %s", err, lastLines(out, 3))
		return res
	}
	if f := reFail.FindStringSubmatch(out); f == nil || f[1] != "0" {
		res.err = "failed transactions: " + lastLines(out, 3)
		return res
	}
	tps, lat, txns := reTPS.FindStringSubmatch(out), reLat.FindStringSubmatch(out), reTxns.FindStringSubmatch(out)
	if tps == nil || lat == nil || txns == nil {
		res.err = "no tps/latency in output: " + lastLines(out, 3)
		return res
	}
	res.tps, _ = strconv.ParseFloat(tps[1], 64)
	res.latMs, _ = strconv.ParseFloat(lat[1], 64)
	res.txns, _ = strconv.ParseFloat(txns[1], 64)
	for k, g := range groups {
		if g != "" && last != nil && steady > 0 {
			res.cpu[k] = (last[k] - first[k]) / steady
		}
	}
	if p.ProxyCgroup != "" && last != nil && steady > 0 {
		res.sysc = (p1.sysc - p0.sysc) / steady
		res.ctxsw = (p1.ctxsw - p0.ctxsw) / steady
	}
	res.ok = true
	return res
}

// procCounts are a cgroup's processes' read/write system calls (syscr and
// syscw of /proc/PID/io) and context switches (all threads), which the
// machine's load does not inflate the way it does CPU time.
type procCounts struct{ sysc, ctxsw float64 }

func procCountsOf(cgroup string) procCounts {
	var pc procCounts
	if cgroup == "" {
		return pc
	}
	b, _ := os.ReadFile(filepath.Join(cgroup, "cgroup.procs"))
	for _, pid := range strings.Fields(string(b)) {
		io, _ := os.ReadFile("/proc/" + pid + "/io")
		for _, l := range strings.Split(string(io), "\n") {
			if f := strings.Fields(l); len(f) == 2 && (f[0] == "syscr:" || f[0] == "syscw:") {
				v, _ := strconv.ParseFloat(f[1], 64)
				pc.sysc += v
			}
		}
		tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/status")
		for _, t := range tasks {
			st, _ := os.ReadFile(t)
			for _, l := range strings.Split(string(st), "\n") {
				if f := strings.Fields(l); len(f) == 2 && (f[0] == "voluntary_ctxt_switches:" || f[0] == "nonvoluntary_ctxt_switches:") {
					v, _ := strconv.ParseFloat(f[1], 64)
					pc.ctxsw += v
				}
			}
		}
	}
	return pc
}

// runIn runs a command inside a cgroup (clone3 with CLONE_INTO_CGROUP), so
// not even its first instructions run elsewhere.
func runIn(ctx context.Context, cgroup string, onLine func(string), name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if cgroup != "" {
		fd, err := syscall.Open(cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", cgroup, err)
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	var buf bytes.Buffer
	cmd.Stdout = &buf
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stderr)
	var errb bytes.Buffer
	for sc.Scan() {
		errb.WriteString(sc.Text() + "\n")
		if onLine != nil {
			onLine(sc.Text())
		}
	}
	err = cmd.Wait()
	buf.Write(errb.Bytes())
	return buf.Bytes(), err
}

// A pgbench -P report: "progress: 2.0 s, 6123.4 tps, lat ...".
var progressTPS = regexp.MustCompile(`^progress: ([0-9.]+) s, ([0-9.]+) tps`)

// settle waits (bounded) until p's airlockd has shipped every audit
// record to its store. Shipping is deferred work: without this, a run
// pays for the records of the run before it on the same daemon (a
// masked cell's large result samples, say), and the comparison is off.
func (r *runner) settle(p Path) {
	if p.Socket == "" || r.st.Airlock == "" {
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cmd := exec.Command(r.st.Airlock, "status", "--json")
		cmd.Env = append(os.Environ(), "AIRLOCK_SOCKET="+p.Socket)
		out, err := cmd.Output()
		var st struct {
			Audit *struct {
				Written int64 `json:"written"`
				Stored  int64 `json:"stored"`
			} `json:"audit"`
		}
		if err == nil && json.Unmarshal(out, &st) == nil && (st.Audit == nil || st.Audit.Stored >= st.Audit.Written) {
			return
		}
		if time.Now().After(deadline) {
			logf("%s: audit record still shipping after 60 s; measuring anyway", p.Name)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cpuUsec is a cgroup's CPU time so far, from its cpu.stat.
func cpuUsec(cgroup string) float64 {
	b, err := os.ReadFile(filepath.Join(cgroup, "cpu.stat"))
	if err != nil {
		return math.NaN()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "usage_usec" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return math.NaN()
}

// sample is the machine's busy CPU time, the benchmark's own, and the wall
// clock, in µs.
type sample struct{ busy, ours, wall float64 }

func machineSample(own []string) sample {
	s := sample{wall: float64(time.Now().UnixMicro())}
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) > 8 && f[0] == "cpu" {
		// user nice system (idle) (iowait) irq softirq steal; USER_HZ is 100 on Linux.
		for _, i := range []int{1, 2, 3, 6, 7, 8} {
			v, _ := strconv.ParseFloat(f[i], 64)
			s.busy += v * 1e4
		}
	}
	for _, g := range own {
		if v := cpuUsec(g); !math.IsNaN(v) {
			s.ours += v
		}
	}
	return s
}

func (b sample) others(a sample) float64 {
	if b.wall <= a.wall {
		return 0
	}
	return math.Max(0, ((b.busy-a.busy)-(b.ours-a.ours))/(b.wall-a.wall))
}

type idleResult struct {
	path               string
	ok                 bool
	err                string
	sessions           int
	rssBefore, rssWith float64 // KiB
	openSeconds        float64
	busy               map[string]result // 50-client select-only runs with the sessions open
}

// idle opens sessions through the idle path's proxy and measures its memory,
// then runs 50 busy clients on every path while they stay open.
func (r *runner) idle(name string, busy bool) idleResult {
	ir := idleResult{path: name, sessions: r.st.Idle.Sessions, busy: map[string]result{}}
	p, ok := r.path(name)
	if ir.sessions <= 0 || !ok || p.ProxyPID == 0 {
		ir.err = "not run"
		return ir
	}
	logf("idle: %d sessions through %s", ir.sessions, p.Name)
	runtime.GC()
	time.Sleep(2 * time.Second)
	ir.rssBefore = rssKiB(p.ProxyPID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.st.Idle.Binary, "-n", strconv.Itoa(ir.sessions), "-parallel", "8", "-timeout", "8m", "-dsn", p.DSN)
	fd, err := syscall.Open(p.ClientCgroup, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		ir.err = err.Error()
		return ir
	}
	defer syscall.Close(fd)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		ir.err = err.Error()
		return ir
	}
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "ready" {
			ir.openSeconds, _ = strconv.ParseFloat(strings.TrimSuffix(f[2], "s"), 64)
			ready = true
			break
		}
	}
	if !ready {
		_ = cmd.Wait()
		ir.err = "idle sessions did not open: " + lastLines(stderr.String(), 3)
		return ir
	}
	time.Sleep(3 * time.Second)
	ir.rssWith = rssKiB(p.ProxyPID)
	for _, q := range r.pathsFor("select") {
		if !busy {
			break
		}
		c := cell{"select", "simple", 50}
		ir.busy[q.Name] = r.pgbench(q, c, max(r.seconds, 8))
		logf("with %d idle: %-12s %8.0f tps", ir.sessions, q.Name, ir.busy[q.Name].tps)
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		ir.err = "idle sessions failed after idling: " + lastLines(stderr.String(), 3)
		return ir
	}
	ir.ok = true
	return ir
}

// pipeRows runs BenchmarkPipeRows (the pipeline core relaying 1,000 rows
// with no server stage, a stage that decodes every DataRow, and one that
// rewrites a column of each) and reports the medians and their ratios.
func (r *runner) pipeRows() string {
	if r.st.PipeBench == "" {
		return ""
	}
	logf("BenchmarkPipeRows")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"-test.run", "^$", "-test.bench", "BenchmarkPipeRows", "-test.count", "7", "-test.benchtime", "3000x"}
	cmd := exec.CommandContext(ctx, r.st.PipeBench, args...)
	cmd.Dir = filepath.Dir(r.st.PipeBench)
	out, err := cmd.CombinedOutput()
	var w strings.Builder
	fmt.Fprintf(&w, "\n## Stages on the data path\n\n`go test -run '^$' -bench BenchmarkPipeRows -count 7 -benchtime 3000x ./internal/pgwire/`: the pipeline core\n")
	fmt.Fprintf(&w, "relays one result of 1,000 rows (RowDescription, DataRows, CommandComplete, ReadyForQuery) with no server stage,\n")
	fmt.Fprintf(&w, "a stage that decodes every DataRow and forwards it (counting rows in an atomic; decode-walk: reading every value's length, no\n")
	fmt.Fprintf(&w, "atomic), and a stage that rewrites one column of every row (through `Row`; rewrite-server: through `Server`). Median of 7.\n\n")
	if err != nil {
		fmt.Fprintf(&w, "Failed: %v: %s\n", err, mdEscape(lastLines(string(out), 3)))
		return w.String()
	}
	runs := map[string][]float64{}
	re := regexp.MustCompile(`(?m)^BenchmarkPipeRows/([\w-]+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op`)
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		runs[m[1]] = append(runs[m[1]], v)
	}
	med := func(name string) float64 {
		v := runs[name]
		if len(v) == 0 {
			return math.NaN()
		}
		for i := 1; i < len(v); i++ {
			for j := i; j > 0 && v[j] < v[j-1]; j-- {
				v[j], v[j-1] = v[j-1], v[j]
			}
		}
		return v[len(v)/2]
	}
	none := med("none")
	fmt.Fprintf(&w, "| stage | µs per 1,000 rows | throughput of no stage | target | result |\n|---|---:|---:|---|---|\n")
	for _, c := range []struct {
		name, target string
		min          float64
	}{{"none", "", 0}, {"decode", "≥ 0.90", 0.90}, {"decode-walk", "", 0}, {"rewrite", "≥ 0.80", 0.80}, {"rewrite-server", "", 0}} {
		v := med(c.name)
		if math.IsNaN(v) {
			continue
		}
		res := ""
		if c.min > 0 {
			res = map[bool]string{true: "**met**", false: "**missed**"}[none/v >= c.min]
		}
		fmt.Fprintf(&w, "| %s | %.1f | %.2f | %s | %s |\n", c.name, v/1000, none/v, c.target, res)
	}
	return w.String()
}

func rssKiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return math.NaN()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return math.NaN()
}

// ---------------------------------------------------------------- report

const marker = "<!-- Everything below this line is written by hand and kept when the benchmark regenerates the file. -->"

var oldMarkers = []string{marker, "<!-- Everything below this line is written by hand and kept when tests/bench/run.sh regenerates the file. -->"}

func writeKeepingTail(out, generated string) error {
	tail := "\n## Analysis\n\n(Written by hand after a run: why a target was missed, and what would change it.)\n"
	if b, err := os.ReadFile(out); err == nil {
		for _, m := range oldMarkers {
			if _, after, ok := strings.Cut(string(b), m+"\n"); ok {
				tail = after
				break
			}
		}
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, []byte(generated+"\n"+marker+"\n"+tail), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func (r *runner) report(cells []cell, idle idleResult, also []idleResult, started time.Time, load0, load1 string, seconds int, quick bool) string {
	var w strings.Builder
	pf := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	pf("# Benchmarks\n\nGenerated by `tests/bench/report` (run by `tests/bench/run.sh`) on %s. Re-run with:\n\n```\n%s\n```\n\n",
		started.Format("2006-01-02 15:04 UTC"), r.st.Command)
	pf("## Machine\n\n| | |\n|---|---|\n")
	pf("| kernel | %s |\n", strings.TrimSpace(cmdOut("uname", "-r")))
	pf("| CPU | %d cores, %s |\n", runtime.NumCPU(), cpuModel())
	for _, k := range sortedKeys(r.st.Machine) {
		pf("| %s | %s |\n", k, r.st.Machine[k])
	}
	pf("| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", load0, load1)
	pf("## Setup\n\n")
	for _, l := range r.st.Setup {
		pf("- %s\n", l)
	}
	for _, p := range r.st.Paths {
		pf("- **%s**: %s\n", p.Name, p.Note)
	}
	if len(r.st.Features) > 0 {
		pf("- Feature paths (the airlockd's with a feature changed) run only in \"Feature overhead\" below.\n")
	}
	pf("- pgbench: `-n -T %d`, `-j 2` above one client; %s. Every cell runs all paths back to back, the order rotated\n", seconds,
		map[bool]string{true: "quick mode (`BENCH_QUICK=1`): TPC-B in simple mode only", false: "all cells"}[quick])
	pf("  from one cell to the next. TPS exclude connection time; latency is pgbench's average.\n")
	pf("- CPU µs per transaction: the growth of `usage_usec` in each part's own cgroup's `cpu.stat` between pgbench's first and\n")
	pf("  last progress reports (`-P 1`), divided by the transactions those reports count: the steady state, without setting up\n")
	pf("  the sessions (through Airlock a `CREATE ROLE` each).\n")
	pf("  \"client\" is pgbench, \"proxy\" airlockd or PgBouncer, \"server\" PostgreSQL and its backends.\n")
	pf("- \"others\": cores used meanwhile by processes outside this benchmark's cgroups (busy time in `/proc/stat` minus ours).\n")
	pf("  Rows where it is well above 0 were disturbed.\n\n")

	pf("## Throughput, latency and CPU per transaction\n")
	groups := map[[2]string][]cell{}
	var order [][2]string
	for _, c := range cells {
		k := [2]string{c.script, c.mode}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], c)
	}
	for _, k := range order {
		title := "select-only (`-S`)"
		if k[0] == "tpcb" {
			title = "TPC-B-like (default script)"
		}
		pf("\n### %s, `-M %s`\n\n", title, k[1])
		pf("| clients | path | TPS | of direct | of PgBouncer | latency ms | added µs | CPU µs/tx client | proxy | server | total | proxy syscalls/tx | proxy switches/tx | others (cores) |\n")
		pf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range groups[k] {
			d, b := r.results[key(c, "direct")], r.results[key(c, "pgbouncer")]
			for _, p := range r.pathsFor(c.script) {
				res := r.results[key(c, p.Name)]
				if !res.ok {
					pf("| %d | %s | failed: %s | | | | | | | | | | | %.2f |\n", c.clients, p.Name, mdEscape(res.err), res.others)
					continue
				}
				total := res.cpu["client"] + res.cpu["proxy"] + res.cpu["server"]
				pf("| %d | %s | %.0f | %s | %s | %.3f | %s | %s | %s | %s | %.0f | %s | %s | %.2f |\n", c.clients, p.Name, res.tps,
					ratio(res, d), ratio(res, b), res.latMs, added(res, d), us(res.cpu["client"]), us(res.cpu["proxy"]),
					us(res.cpu["server"]), total, per(res.sysc), per(res.ctxsw), res.others)
			}
		}
	}

	pf("\n## Idle sessions\n\n")
	if idle.sessions <= 0 {
		pf("Not measured in this run (`BENCH_IDLE=0`).\n")
	} else if idle.rssWith == 0 {
		pf("Failed: %s\n", idle.err)
	} else {
		per := (idle.rssWith - idle.rssBefore) / float64(idle.sessions)
		pf("`tests/bench/idle` opened %d pgx sessions through **%s** (8 at a time, `SELECT 1` each, then idle) in %.1f s.\n",
			idle.sessions, r.st.Idle.Path, idle.openSeconds)
		pf("The proxy's VmRSS: %.0f KiB before, %.0f KiB with them open: **%.1f KiB per idle session**.\n", idle.rssBefore, idle.rssWith, per)
		for _, a := range also {
			if a.rssWith == 0 {
				pf("Through **%s**: failed: %s\n", a.path, mdEscape(a.err))
				continue
			}
			pf("Through **%s**, the same: %.0f KiB before, %.0f KiB with them open: **%.1f KiB per idle session** (opened in %.1f s).\n",
				a.path, a.rssBefore, a.rssWith, (a.rssWith-a.rssBefore)/float64(a.sessions), a.openSeconds)
		}
		if idle.err != "" {
			pf("(%s)\n", idle.err)
		}
		pf("\nWith them open, `pgbench -S -M simple -c 50`:\n\n| path | TPS | of direct | of PgBouncer | CPU µs/tx proxy | others (cores) |\n|---|---:|---:|---:|---:|---:|\n")
		d, b := idle.busy["direct"], idle.busy["pgbouncer"]
		for _, p := range r.pathsFor("select") {
			res := idle.busy[p.Name]
			if !res.ok {
				pf("| %s | failed: %s | | | | |\n", p.Name, mdEscape(res.err))
				continue
			}
			pf("| %s | %.0f | %s | %s | %s | %.2f |\n", p.Name, res.tps, ratio(res, d), ratio(res, b), us(res.cpu["proxy"]), res.others)
		}
	}

	pf("\n## Targets (issue 7)\n\n")
	for _, p := range r.st.Paths {
		if p.Kind != "airlock" || p.Feature != "" {
			continue
		}
		r.targets(&w, p, cells, idle, also)
	}
	return w.String()
}

func (r *runner) targets(w *strings.Builder, p Path, cells []cell, idle idleResult, also []idleResult) {
	pf := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	pf("### %s\n\n| target | measured | result |\n|---|---|---|\n", p.Name)
	met := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**missed**"
	}
	for _, c := range cells {
		if !contains(r.pathNames(c.script), p.Name) {
			continue
		}
		a, b := r.results[key(c, p.Name)], r.results[key(c, "pgbouncer")]
		if !a.ok || !b.ok {
			continue
		}
		pf("| ≥ PgBouncer TPS (%s) | %.2f × | %s |\n", c, a.tps/b.tps, met(a.tps >= b.tps))
	}
	for _, c := range cells {
		if c.script != "select" || c.mode != "simple" || c.clients != 10 || !contains(r.pathNames(c.script), p.Name) {
			continue
		}
		a, d := r.results[key(c, p.Name)], r.results[key(c, "direct")]
		if a.ok && d.ok {
			pf("| ≥ 0.80 × direct at 10 clients, select-only simple | %.2f | %s |\n", a.tps/d.tps, met(a.tps/d.tps >= 0.80))
		}
	}
	// CPU per transaction: the proxy's own, against PgBouncer's.
	for _, c := range cells {
		if c.clients != 10 || !contains(r.pathNames(c.script), p.Name) {
			continue
		}
		a, b := r.results[key(c, p.Name)], r.results[key(c, "pgbouncer")]
		if a.ok && b.ok {
			pf("| proxy CPU per transaction ≤ PgBouncer's (%s) | %.0f µs vs %.0f µs | %s |\n", c, a.cpu["proxy"], b.cpu["proxy"], met(a.cpu["proxy"] <= b.cpu["proxy"]))
		}
	}
	for _, c := range cells {
		if c.clients != 1 || !contains(r.pathNames(c.script), p.Name) {
			continue
		}
		a, b, d := r.results[key(c, p.Name)], r.results[key(c, "pgbouncer")], r.results[key(c, "direct")]
		if a.ok && b.ok && d.ok {
			pa, pb := (a.latMs-d.latMs)*1000, (b.latMs-d.latMs)*1000
			pf("| added latency at 1 client ≤ PgBouncer's (%s) | %.0f µs vs %.0f µs | %s |\n", c, pa, pb, met(pa <= pb))
		}
	}
	if tls, ok := r.path(p.Name + "-tls"); ok {
		for _, c := range cells {
			if !contains(r.pathNames(c.script), tls.Name) {
				continue
			}
			a, t := r.results[key(c, p.Name)], r.results[key(c, tls.Name)]
			if a.ok && t.ok {
				pf("| TLS client leg within 10%% of plain (%s) | %.2f × | %s |\n", c, t.tps/a.tps, met(t.tps >= 0.9*a.tps))
			}
		}
	}
	for _, a := range also {
		if a.rssWith > 0 && a.path == p.Name {
			per := (a.rssWith - a.rssBefore) / float64(a.sessions)
			pf("| idle session ≤ 32 KiB | %.1f KiB | %s |\n", per, met(per <= 32))
		}
	}
	if idle.rssWith > 0 && r.st.Idle.Path == p.Name {
		per := (idle.rssWith - idle.rssBefore) / float64(idle.sessions)
		pf("| idle session ≤ 32 KiB | %.1f KiB | %s |\n", per, met(per <= 32))
		a, b := idle.busy[p.Name], idle.busy["pgbouncer"]
		if a.ok && b.ok {
			pf("| %d idle + 50 busy: ≥ PgBouncer | %.2f × | %s |\n", idle.sessions, a.tps/b.tps, met(a.tps >= b.tps))
		}
	}
	pf("\n")
}

func (r *runner) pathNames(script string) []string {
	var n []string
	for _, p := range r.pathsFor(script) {
		n = append(n, p.Name)
	}
	return n
}

func ratio(a, b result) string {
	if !a.ok || !b.ok || b.tps == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.tps/b.tps)
}

func added(a, d result) string {
	if !a.ok || !d.ok {
		return "–"
	}
	return fmt.Sprintf("%.0f", (a.latMs-d.latMs)*1000)
}

func us(v float64) string {
	if v == 0 || math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

func per(v float64) string {
	if v == 0 || math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

func fmtCPU(m map[string]float64) string {
	return fmt.Sprintf("%s/%s/%s µs", us(m["client"]), us(m["proxy"]), us(m["server"]))
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", "\\|")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " / ")
}

func cmdOut(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	return string(b)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func sortedKeys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	for i := 1; i < len(k); i++ {
		for j := i; j > 0 && k[j] < k[j-1]; j-- {
			k[j], k[j-1] = k[j-1], k[j]
		}
	}
	return k
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func envStr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "   "+format+"\n", a...)
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "report: "+format+"\n", a...)
	os.Exit(1)
}
