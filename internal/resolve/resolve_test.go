package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/miekg/dns"
)

// zone is an in-process authoritative DNS server whose records a test can
// change while it runs.
type zone struct {
	mu       sync.Mutex
	rrs      map[string][]dns.RR // by lower-case owner name
	fail     map[uint16]int      // per query type (0: all): failServfail or failDrop
	noChase  bool                // answer CNAMEs without the target's records
	queries  atomic.Int64
	lastName atomic.Value
}

const (
	failServfail = 1
	failDrop     = 2
)

// set replaces all records with the given zone-file lines.
func (z *zone) set(t *testing.T, records ...string) {
	t.Helper()
	m := map[string][]dns.RR{}
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("record %q: %v", s, err)
		}
		name := strings.ToLower(rr.Header().Name)
		m[name] = append(m[name], rr)
	}
	z.mu.Lock()
	z.rrs = m
	z.mu.Unlock()
}

func (z *zone) setFail(qtype uint16, mode int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.fail == nil {
		z.fail = map[uint16]int{}
	}
	z.fail[qtype] = mode
}

func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	z.queries.Add(1)
	z.mu.Lock()
	defer z.mu.Unlock()
	q := req.Question[0]
	z.lastName.Store(strings.ToLower(q.Name))
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	mode := z.fail[0]
	if mode == 0 {
		mode = z.fail[q.Qtype]
	}
	switch mode {
	case failDrop:
		return
	case failServfail:
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	name := strings.ToLower(q.Name)
	for range 20 {
		rrs, ok := z.rrs[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			break
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		if cname == nil || q.Qtype == dns.TypeCNAME {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		if z.noChase {
			break
		}
		name = strings.ToLower(cname.Target)
	}
	w.WriteMsg(m)
}

// serve starts z on a loopback UDP port and returns its address.
func serve(t *testing.T, z *zone) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: z, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func newResolver(t *testing.T, opts Options) *Resolver {
	t.Helper()
	if opts.Hosts == "" {
		opts.Hosts = "-"
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records []string
		noChase bool
		hosts   string // hosts file content; "" none
		host    string
		want    []netip.Addr
		ttl     time.Duration
		err     error  // errors.Is target
		errHas  string // substring of the error
	}{
		{
			name:    "both families",
			records: []string{"web.test. 60 IN A 192.0.2.1", "web.test. 60 IN A 192.0.2.2", "web.test. 60 IN AAAA 2001:db8::1"},
			host:    "web.test",
			want:    addrs("192.0.2.1", "192.0.2.2", "2001:db8::1"),
			ttl:     60 * time.Second,
		},
		{
			name:    "smallest TTL of the answers",
			records: []string{"web.test. 300 IN A 192.0.2.1", "web.test. 120 IN AAAA 2001:db8::1", "web.test. 90 IN A 192.0.2.9"},
			host:    "web.test",
			want:    addrs("192.0.2.1", "192.0.2.9", "2001:db8::1"),
			ttl:     90 * time.Second,
		},
		{
			name:    "TTL floor",
			records: []string{"web.test. 1 IN A 192.0.2.1"},
			host:    "web.test",
			want:    addrs("192.0.2.1"),
			ttl:     5 * time.Second,
		},
		{
			name:    "TTL zero gets the floor",
			records: []string{"web.test. 0 IN A 192.0.2.1"},
			host:    "web.test",
			want:    addrs("192.0.2.1"),
			ttl:     5 * time.Second,
		},
		{
			name:    "TTL ceiling",
			records: []string{"web.test. 86400 IN A 192.0.2.1"},
			host:    "web.test",
			want:    addrs("192.0.2.1"),
			ttl:     10 * time.Minute,
		},
		{
			name:    "IPv6 only",
			records: []string{"web.test. 60 IN AAAA 2001:db8::1"},
			host:    "web.test",
			want:    addrs("2001:db8::1"),
			ttl:     60 * time.Second,
		},
		{
			name: "CNAME chain followed, its TTL counts",
			records: []string{
				"db.test. 30 IN CNAME mid.test.",
				"mid.test. 400 IN CNAME real.test.",
				"real.test. 600 IN A 192.0.2.7",
				"real.test. 600 IN AAAA 2001:db8::7",
			},
			host: "db.test",
			want: addrs("192.0.2.7", "2001:db8::7"),
			ttl:  30 * time.Second,
		},
		{
			name: "CNAME target asked for when the answer stops at it",
			records: []string{
				"db.test. 300 IN CNAME real.test.",
				"real.test. 40 IN A 192.0.2.7",
			},
			noChase: true,
			host:    "db.test",
			want:    addrs("192.0.2.7"),
			ttl:     40 * time.Second,
		},
		{
			name:    "case and trailing dot",
			records: []string{"web.test. 60 IN A 192.0.2.1"},
			host:    "WEB.Test.",
			want:    addrs("192.0.2.1"),
			ttl:     60 * time.Second,
		},
		{
			name:    "hosts file wins",
			records: []string{"web.test. 60 IN A 192.0.2.1"},
			hosts:   "# comment\n127.0.0.1 localhost\n10.9.9.9 other web.test # trailing\nfe80::9%eth0 web.test\n",
			host:    "web.test",
			want:    addrs("10.9.9.9", "fe80::9"),
			ttl:     5 * time.Second,
		},
		{
			name:    "hosts file without the name",
			records: []string{"web.test. 60 IN A 192.0.2.1"},
			hosts:   "10.9.9.9 other.test\n",
			host:    "web.test",
			want:    addrs("192.0.2.1"),
			ttl:     60 * time.Second,
		},
		{
			name: "IP literal",
			host: "192.0.2.55",
			want: addrs("192.0.2.55"),
			ttl:  10 * time.Minute,
		},
		{
			name:    "NXDOMAIN",
			records: []string{"web.test. 60 IN A 192.0.2.1"},
			host:    "missing.test",
			err:     ErrNXDomain,
			errHas:  `"missing.test"`,
		},
		{
			name:    "CNAME to nowhere",
			records: []string{"db.test. 60 IN CNAME gone.test."},
			host:    "db.test",
			err:     ErrNXDomain,
			errHas:  `"db.test"`,
		},
		{
			name:    "no address records",
			records: []string{"txt.test. 60 IN TXT \"hello\""},
			host:    "txt.test",
			err:     ErrNoAddrs,
			errHas:  `"txt.test"`,
		},
		{
			name:    "CNAME loop",
			records: []string{"a.test. 60 IN CNAME b.test.", "b.test. 60 IN CNAME a.test."},
			noChase: true,
			host:    "a.test",
			errHas:  "CNAME",
		},
		{
			name:   "invalid name",
			host:   "bad..name",
			errHas: "invalid",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := &zone{noChase: tc.noChase}
			z.set(t, tc.records...)
			opts := Options{Servers: []string{serve(t, z)}}
			if tc.hosts != "" {
				opts.Hosts = writeFile(t, tc.hosts)
			}
			r := newResolver(t, opts)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, ttl, err := r.Resolve(ctx, tc.host)
			if tc.err != nil || tc.errHas != "" {
				if err == nil {
					t.Fatalf("Resolve(%q) = %v, %v; want error", tc.host, got, ttl)
				}
				if tc.err != nil && !errors.Is(err, tc.err) {
					t.Errorf("Resolve(%q) error %q, want %q", tc.host, err, tc.err)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("Resolve(%q) error %q, want it to contain %s", tc.host, err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tc.host, err)
			}
			if !slices.Equal(got, tc.want) || ttl != tc.ttl {
				t.Fatalf("Resolve(%q) = %v, %v; want %v, %v", tc.host, got, ttl, tc.want, tc.ttl)
			}
		})
	}
}

func TestSearchDomains(t *testing.T) {
	z := &zone{}
	z.set(t,
		"db.corp.test. 60 IN A 192.0.2.1",
		"db.other.test. 60 IN A 192.0.2.2",
		"db.other. 60 IN A 192.0.2.3",
	)
	r := newResolver(t, Options{Servers: []string{serve(t, z)}})
	r.search, r.ndots = []string{"corp.test", "other.test"}, 1
	ctx := context.Background()
	for _, tc := range []struct {
		host string
		want []netip.Addr
		err  error
	}{
		{"db", addrs("192.0.2.1"), nil},            // first search domain
		{"db.other", addrs("192.0.2.3"), nil},      // enough dots: as is first
		{"db.other.", addrs("192.0.2.3"), nil},     // rooted
		{"nope", nil, ErrNXDomain},                 // every candidate fails
		{"db.corp", nil, ErrNXDomain},              // db.corp, db.corp.corp.test, db.corp.other.test
		{"192.0.2.200", addrs("192.0.2.200"), nil}, // literal, no lookup
	} {
		got, _, err := r.Resolve(ctx, tc.host)
		if tc.err != nil {
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), "tried") {
				t.Errorf("Resolve(%q) = %v, %v; want %v naming the names tried", tc.host, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Resolve(%q) = %v, %v; want %v", tc.host, got, err, tc.want)
		}
	}
}

func TestServerFailover(t *testing.T) {
	bad := &zone{}
	bad.setFail(0, failServfail)
	silent := &zone{}
	silent.setFail(0, failDrop)
	good := &zone{}
	good.set(t, "web.test. 60 IN A 192.0.2.1")
	r := newResolver(t, Options{Servers: []string{serve(t, bad), serve(t, silent), serve(t, good)}, Timeout: 200 * time.Millisecond})
	got, _, err := r.Resolve(context.Background(), "web.test")
	if err != nil || !slices.Equal(got, addrs("192.0.2.1")) {
		t.Fatalf("Resolve = %v, %v; want [192.0.2.1]", got, err)
	}

	r = newResolver(t, Options{Servers: []string{serve(t, bad)}})
	_, _, err = r.Resolve(context.Background(), "web.test")
	if err == nil || !strings.Contains(err.Error(), "SERVFAIL") || !strings.Contains(err.Error(), "web.test") {
		t.Fatalf("Resolve via a failing server: error %v, want SERVFAIL naming web.test", err)
	}
}

func TestResolveCancel(t *testing.T) {
	silent := &zone{}
	silent.setFail(0, failDrop)
	r := newResolver(t, Options{Servers: []string{serve(t, silent)}, Timeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := r.Resolve(ctx, "web.test")
	if err == nil {
		t.Fatal("Resolve succeeded against a silent server")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Resolve took %v after cancel", d)
	}
}

func TestHostsReload(t *testing.T) {
	p := writeFile(t, "10.0.0.1 web.test\n")
	r := newResolver(t, Options{Servers: []string{"127.0.0.1:1"}, Hosts: p, Timeout: 100 * time.Millisecond})
	got, _, err := r.Resolve(context.Background(), "web.test")
	if err != nil || !slices.Equal(got, addrs("10.0.0.1")) {
		t.Fatalf("Resolve = %v, %v", got, err)
	}
	if err := os.WriteFile(p, []byte("10.0.0.2 web.test\n::2 web.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, _, err = r.Resolve(context.Background(), "web.test")
	if err != nil || !slices.Equal(got, addrs("10.0.0.2", "::2")) {
		t.Fatalf("after rewrite: Resolve = %v, %v", got, err)
	}
}

func TestNew(t *testing.T) {
	rc := writeFile(t, "# x\nnameserver 127.0.0.53\nnameserver ::1\nsearch corp.test. lab.test\noptions ndots:2 edns0\n")
	old := resolvConf
	resolvConf = rc
	t.Cleanup(func() { resolvConf = old })

	r, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.53:53", "[::1]:53"}; !slices.Equal(r.servers, want) {
		t.Errorf("servers = %q, want %q", r.servers, want)
	}
	if want := []string{"corp.test", "lab.test"}; !slices.Equal(r.search, want) || r.ndots != 2 {
		t.Errorf("search = %q ndots %d, want %q ndots 2", r.search, r.ndots, want)
	}
	if r.minTTL != DefaultMinTTL || r.maxTTL != DefaultMaxTTL || r.timeout != DefaultTimeout || r.hosts.path != DefaultHosts ||
		r.linger != DefaultLinger {
		t.Errorf("defaults: min %v max %v timeout %v hosts %q", r.minTTL, r.maxTTL, r.timeout, r.hosts.path)
	}

	r, err = New(Options{Servers: []string{"192.0.2.53", "[2001:db8::53]:5353"}, Hosts: "-"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"192.0.2.53:53", "[2001:db8::53]:5353"}; !slices.Equal(r.servers, want) || r.hosts != nil {
		t.Errorf("servers = %q hosts %v, want %q and no hosts file", r.servers, r.hosts, want)
	}

	for _, bad := range []Options{
		{Servers: []string{"dns.example"}},
		{Servers: []string{"127.0.0.1:53"}, MinTTL: time.Minute, MaxTTL: time.Second},
		{Servers: []string{"127.0.0.1:53"}, Timeout: -1},
		{Servers: []string{"127.0.0.1:53"}, MaxTTL: time.Hour, Linger: time.Minute},
		{Servers: []string{"127.0.0.1:53"}, Linger: -1},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
	resolvConf = writeFile(t, "search x.test\n")
	if _, err := New(Options{}); err == nil {
		t.Errorf("New with a resolv.conf without nameserver succeeded")
	}
}

// watcher runs Watch and hands each onChange call to the test.
type watcher struct {
	r       *Resolver
	changes chan []Result
	done    chan struct{}
	cancel  context.CancelFunc
}

func startWatch(t *testing.T, r *Resolver, specs []Spec) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{r: r, changes: make(chan []Result, 100), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		r.Watch(ctx, specs, func(rs []Result) { w.changes <- rs })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	return w
}

func (w *watcher) next(t *testing.T, within time.Duration) []Result {
	t.Helper()
	select {
	case rs := <-w.changes:
		return rs
	case <-time.After(within):
		t.Fatalf("no onChange within %v (snapshot %+v)", within, w.r.Snapshot())
		return nil
	}
}

func (w *watcher) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case rs := <-w.changes:
		t.Fatalf("unexpected onChange %+v", rs)
	case <-time.After(during):
	}
}

// eventually polls the snapshot until ok accepts it.
func eventually(t *testing.T, r *Resolver, within time.Duration, what string, ok func([]Result) bool) []Result {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := r.Snapshot()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; snapshot %+v", what, within, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const minTTL = 200 * time.Millisecond

func TestWatchFollowsChanges(t *testing.T) {
	z := &zone{}
	z.set(t, "web.test. 0 IN A 192.0.2.1", "db.test. 3600 IN A 192.0.2.50")
	r := newResolver(t, Options{Servers: []string{serve(t, z)}, MinTTL: minTTL, MaxTTL: time.Hour})
	specs := []Spec{
		{Name: "web", Host: "web.test", Port: 443},
		{Name: "db", Host: "db.test", Port: 5432},
		{Name: "web-alt", Host: "WEB.test", Port: 8443}, // same host, shared lookups
	}
	w := startWatch(t, r, specs)

	rs := w.next(t, 2*time.Second)
	if len(rs) != 3 {
		t.Fatalf("first onChange: %d results, want 3", len(rs))
	}
	for i, want := range [][]netip.Addr{addrs("192.0.2.1"), addrs("192.0.2.50"), addrs("192.0.2.1")} {
		if rs[i].Name != specs[i].Name || rs[i].Host != specs[i].Host || rs[i].Port != specs[i].Port ||
			!slices.Equal(rs[i].Addrs, want) || rs[i].Err != "" || rs[i].Resolved.IsZero() {
			t.Errorf("result %d = %+v, want %v", i, rs[i], want)
		}
	}
	if rs[0].TTL != minTTL || rs[1].TTL != time.Hour {
		t.Errorf("TTLs %v %v, want %v %v", rs[0].TTL, rs[1].TTL, minTTL, time.Hour)
	}
	// Several refreshes with nothing changed: no onChange.
	before := z.queries.Load()
	w.none(t, 4*minTTL)
	if n := z.queries.Load() - before; n < 4 { // at least two rounds, A and AAAA each
		t.Errorf("%d queries in %v, want re-resolution at the %v floor", n, 4*minTTL, minTTL)
	}

	z.set(t, "web.test. 0 IN A 192.0.2.2", "web.test. 0 IN AAAA 2001:db8::2", "db.test. 3600 IN A 192.0.2.50")
	rs = w.next(t, 10*minTTL)
	if want := addrs("192.0.2.2", "2001:db8::2"); !slices.Equal(rs[0].Addrs, want) || !slices.Equal(rs[2].Addrs, want) {
		t.Fatalf("after change: %+v, want web at %v", rs, want)
	}
	if !slices.Equal(rs[1].Addrs, addrs("192.0.2.50")) {
		t.Fatalf("db changed: %+v", rs[1])
	}
	if s := r.Snapshot(); !slices.Equal(s[0].Addrs, rs[0].Addrs) {
		t.Fatalf("Snapshot %+v disagrees with onChange %+v", s, rs)
	}
	// onChange got copies.
	rs[0].Addrs[0] = netip.Addr{}
	if s := r.Snapshot(); !s[0].Addrs[0].IsValid() {
		t.Fatal("Snapshot shares memory with onChange's results")
	}
}

func TestWatchKeepsAddressesOnFailure(t *testing.T) {
	z := &zone{}
	z.set(t, "web.test. 0 IN A 192.0.2.1", "web.test. 0 IN AAAA 2001:db8::1")
	r := newResolver(t, Options{Servers: []string{serve(t, z)}, MinTTL: minTTL, Timeout: 100 * time.Millisecond})
	w := startWatch(t, r, []Spec{{Name: "web", Host: "web.test", Port: 80}})
	first := w.next(t, 2*time.Second)[0]
	good := addrs("192.0.2.1", "2001:db8::1")
	if !slices.Equal(first.Addrs, good) {
		t.Fatalf("first: %+v", first)
	}

	for _, tc := range []struct {
		name   string
		break_ func()
		errHas string
	}{
		{"SERVFAIL", func() { z.setFail(0, failServfail) }, "SERVFAIL"},
		{"timeout", func() { z.setFail(0, failDrop) }, "timeout"},
		{"NXDOMAIN", func() { z.setFail(0, 0); z.set(t) }, "NXDOMAIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.break_()
			s := eventually(t, r, 10*minTTL, "error recorded", func(s []Result) bool {
				return strings.Contains(s[0].Err, tc.errHas)
			})[0]
			if !slices.Equal(s.Addrs, good) || !strings.Contains(s.Err, "web.test") {
				t.Fatalf("after %s: %+v, want the last good addresses kept and an error naming the host", tc.name, s)
			}
			w.none(t, 3*minTTL)
		})
	}

	// Recovery with new addresses.
	z.setFail(0, 0)
	z.set(t, "web.test. 0 IN A 192.0.2.3")
	rs := w.next(t, 10*minTTL)
	if !slices.Equal(rs[0].Addrs, addrs("192.0.2.3")) || rs[0].Err != "" {
		t.Fatalf("after recovery: %+v", rs[0])
	}

	// Only AAAA fails: the new IPv4 set is taken, the IPv6 set is kept.
	z.set(t, "web.test. 0 IN A 192.0.2.3", "web.test. 0 IN AAAA 2001:db8::3")
	rs = w.next(t, 10*minTTL)
	if !slices.Equal(rs[0].Addrs, addrs("192.0.2.3", "2001:db8::3")) {
		t.Fatalf("with AAAA: %+v", rs[0])
	}
	z.setFail(dns.TypeAAAA, failServfail)
	z.set(t, "web.test. 0 IN A 192.0.2.4")
	rs = w.next(t, 10*minTTL)
	if !slices.Equal(rs[0].Addrs, addrs("192.0.2.4", "2001:db8::3")) || !strings.Contains(rs[0].Err, "AAAA") {
		t.Fatalf("AAAA failing: %+v, want new A and old AAAA", rs[0])
	}
}

func TestWatchUnresolvableAtStart(t *testing.T) {
	z := &zone{}
	z.set(t)
	r := newResolver(t, Options{Servers: []string{serve(t, z)}, MinTTL: minTTL})
	w := startWatch(t, r, []Spec{{Name: "later", Host: "later.test", Port: 80}})
	rs := w.next(t, 2*time.Second)
	if len(rs) != 1 || len(rs[0].Addrs) != 0 || !strings.Contains(rs[0].Err, "later.test") || !rs[0].Resolved.IsZero() {
		t.Fatalf("first: %+v, want no addresses and an error naming the host", rs)
	}
	z.set(t, "later.test. 60 IN A 192.0.2.9")
	rs = w.next(t, 10*minTTL)
	if !slices.Equal(rs[0].Addrs, addrs("192.0.2.9")) || rs[0].Err != "" || rs[0].TTL != 60*time.Second {
		t.Fatalf("once it exists: %+v", rs[0])
	}
}

func TestWatchNoSpecs(t *testing.T) {
	r := newResolver(t, Options{Servers: []string{"127.0.0.1:1"}})
	w := startWatch(t, r, nil)
	if rs := w.next(t, time.Second); len(rs) != 0 {
		t.Fatalf("onChange(%+v), want no results", rs)
	}
	w.none(t, 100*time.Millisecond)
}

func TestWatchStopsPromptly(t *testing.T) {
	z := &zone{}
	z.setFail(0, failDrop)
	r := newResolver(t, Options{Servers: []string{serve(t, z)}, Timeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Watch(ctx, []Spec{{Host: "a.test"}, {Host: "b.test"}}, func([]Result) { t.Error("onChange after cancel") })
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Watch still running 2s after cancel")
	}
}

func TestParseHosts(t *testing.T) {
	got := parseHosts([]byte(`# header
127.0.0.1	localhost
::1     localhost ip6-localhost
10.0.0.1 Web.Test. web # alias
10.0.0.1 web.test
10.0.0.2 web.test
not-an-ip bogus.test
10.0.0.3
fe80::1%eth0 link.test
  # indented comment 10.0.0.9 commented.test
`))
	want := map[string][]netip.Addr{
		"localhost":     addrs("127.0.0.1", "::1"),
		"ip6-localhost": addrs("::1"),
		"web.test":      addrs("10.0.0.1", "10.0.0.2"),
		"web":           addrs("10.0.0.1"),
		"link.test":     addrs("fe80::1"),
	}
	if len(got) != len(want) {
		t.Errorf("parseHosts: %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("parseHosts[%q] = %v, want %v", k, got[k], v)
		}
	}
}

func FuzzParseHosts(f *testing.F) {
	f.Add([]byte("127.0.0.1 localhost\n::1 localhost ip6-localhost # c\n"), "name.test", "192.0.2.1")
	f.Add([]byte("fe80::1%eth0 a\n#x\n\n10.0.0.1"), "A.", "::ffff:1.2.3.4")
	f.Add([]byte("1.2.3.4 a.\x00b \t c#d"), "x", "bad")
	f.Fuzz(func(t *testing.T, b []byte, name, ip string) {
		for k, v := range parseHosts(b) {
			if k == "" || k != normalize(k) {
				t.Fatalf("key %q not normalized", k)
			}
			if len(v) == 0 {
				t.Fatalf("key %q without addresses", k)
			}
			for i, a := range v {
				if !a.IsValid() || a.Zone() != "" || slices.Contains(v[:i], a) {
					t.Fatalf("key %q: bad or repeated address %v in %v", k, a, v)
				}
			}
		}
		// A well-formed line is found by its name.
		a, err := netip.ParseAddr(ip)
		if err != nil || strings.ContainsFunc(name, unicode.IsSpace) || strings.ContainsRune(name, '#') || normalize(name) == "" {
			return
		}
		// A zone with blanks or '#' cannot be written in a hosts file at all
		// (ParseAddr accepts "::% 0"), so such a line is not well-formed.
		if strings.ContainsFunc(a.Zone(), unicode.IsSpace) || strings.ContainsRune(a.Zone(), '#') {
			return
		}
		m := parseHosts([]byte(a.String() + " " + name + "\n"))
		if got := m[normalize(name)]; !slices.Equal(got, []netip.Addr{a.WithZone("")}) {
			t.Fatalf("%s %s: got %v", a, name, m)
		}
	})
}

// DNS that rotates subsets of replicas drops addresses that clients still
// hold: each must stay (lingering) for Linger after a good answer first left
// it out, come back to current if it reappears, and go once it expires.
func TestWatchLingersDroppedAddresses(t *testing.T) {
	z := &zone{}
	z.set(t, "db.test. 0 IN A 192.0.2.1", "db.test. 0 IN A 192.0.2.2")
	const linger = 1500 * time.Millisecond
	r := newResolver(t, Options{Servers: []string{serve(t, z)}, MinTTL: minTTL, MaxTTL: minTTL, Linger: linger})
	w := startWatch(t, r, []Spec{{Name: "db", Host: "db.test", Port: 5432}})
	if rs := w.next(t, 2*time.Second); !slices.Equal(rs[0].Addrs, addrs("192.0.2.1", "192.0.2.2")) || len(rs[0].Lingering) != 0 {
		t.Fatalf("first: %+v", rs[0])
	}

	rotated := time.Now()
	z.set(t, "db.test. 0 IN A 192.0.2.2", "db.test. 0 IN A 192.0.2.3")
	rs := w.next(t, 10*minTTL)
	got := rs[0]
	if !slices.Equal(got.Addrs, addrs("192.0.2.2", "192.0.2.3")) || len(got.Lingering) != 1 || got.Lingering[0].Addr != addrs("192.0.2.1")[0] {
		t.Fatalf("after rotation: %+v, want .2 .3 current and .1 lingering", got)
	}
	l := got.Lingering[0]
	if l.LastSeen.IsZero() || l.LastSeen.After(l.Expires) || l.Expires.Before(rotated.Add(linger)) || l.Expires.After(time.Now().Add(linger)) {
		t.Fatalf("lingering %+v: want last seen before expiry and expiry %v after the rotation", l, linger)
	}
	if want := addrs("192.0.2.1", "192.0.2.2", "192.0.2.3"); !slices.Equal(got.Intercept(), want) {
		t.Fatalf("Intercept() = %v, want %v", got.Intercept(), want)
	}
	if s := r.Snapshot(); len(s[0].Lingering) != 1 {
		t.Fatalf("Snapshot without the lingering address: %+v", s)
	}

	// A failed lookup changes nothing: the lingering address neither
	// expires early nor comes back.
	z.setFail(0, failServfail)
	eventually(t, r, 10*minTTL, "error recorded", func(s []Result) bool { return s[0].Err != "" })
	z.setFail(0, 0)

	// Back in the answers: current again, no longer lingering.
	z.set(t, "db.test. 0 IN A 192.0.2.1", "db.test. 0 IN A 192.0.2.2", "db.test. 0 IN A 192.0.2.3")
	rs = w.next(t, 10*minTTL)
	if !slices.Equal(rs[0].Addrs, addrs("192.0.2.1", "192.0.2.2", "192.0.2.3")) || len(rs[0].Lingering) != 0 {
		t.Fatalf("after it came back: %+v", rs[0])
	}

	// Dropped again, then expired: onChange without it.
	z.set(t, "db.test. 0 IN A 192.0.2.3")
	rs = w.next(t, 10*minTTL)
	if len(rs[0].Lingering) != 2 {
		t.Fatalf("after the second drop: %+v, want .1 and .2 lingering", rs[0])
	}
	rs = w.next(t, linger+20*minTTL)
	if len(rs[0].Lingering) != 0 || !slices.Equal(rs[0].Intercept(), addrs("192.0.2.3")) {
		t.Fatalf("after expiry: %+v, want only .3", rs[0])
	}
}
