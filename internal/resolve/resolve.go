// Package resolve resolves target hostnames and keeps them fresh: each is
// re-resolved when its DNS TTL runs out (clamped to a floor and a ceiling),
// and every address it resolves to, IPv4 and IPv6, is reported so that all
// of them can be redirected.
//
// Lookups go straight to the configured DNS servers (by default those of
// /etc/resolv.conf), after the hosts file, so the TTL is known. A failed
// re-resolution never drops addresses: interception must not lapse because
// DNS hiccuped.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Defaults for Options.
const (
	DefaultMinTTL  = 5 * time.Second
	DefaultMaxTTL  = 10 * time.Minute
	DefaultTimeout = 2 * time.Second
	// DefaultLinger is how long an address a hostname stopped answering
	// with stays intercepted. DNS that rotates subsets of replicas drops
	// addresses that clients resolved a moment ago and still dial; letting
	// them go at once would let those connections through.
	DefaultLinger = time.Hour
	DefaultHosts  = "/etc/hosts"
)

const (
	maxCNAME      = 8 // CNAME links followed per lookup
	maxParallel   = 8 // concurrent lookups in one Watch round
	maxCandidates = 7 // names tried per host (search list plus the name itself)
	udpSize       = 1232
)

// resolvConf is the resolv.conf read when Options.Servers is empty.
var resolvConf = "/etc/resolv.conf"

var (
	// ErrNXDomain means the name does not exist.
	ErrNXDomain = errors.New("no such host (NXDOMAIN)")
	// ErrNoAddrs means the name exists but has no A or AAAA records.
	ErrNoAddrs = errors.New("no A or AAAA records")
)

// Spec is one hostname target.
type Spec struct {
	Name string
	Host string
	Port uint16
}

// Result is the current state of one Spec.
type Result struct {
	Name  string
	Host  string
	Port  uint16
	Addrs []netip.Addr // last good addresses, sorted (IPv4 first); kept across failures
	// Lingering are addresses the host answered with before but not in its
	// last good answer, kept for Options.Linger after they were dropped.
	// They must be intercepted like Addrs: clients may still hold them.
	Lingering []Lingering
	TTL       time.Duration // of the last good answer, clamped
	Resolved  time.Time     // of the last good answer; zero if never resolved
	Err       string        // error of the last attempt; "" if it succeeded
}

// Lingering is an address dropped from a host's answers but still
// intercepted until Expires.
type Lingering struct {
	Addr     netip.Addr
	LastSeen time.Time // of the last answer that had it
	Expires  time.Time // Linger after the first good answer without it
}

// Intercept returns every address to intercept for r: the current ones and
// those still lingering, sorted and unique.
func (r Result) Intercept() []netip.Addr {
	out := slices.Clone(r.Addrs)
	for _, l := range r.Lingering {
		out = append(out, l.Addr)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// Options configures a Resolver.
type Options struct {
	Servers        []string      // "ip:port" DNS servers (":53" added if no port); empty: from /etc/resolv.conf
	MinTTL, MaxTTL time.Duration // TTL floor (default 5s) and ceiling (default 10m)
	Hosts          string        // hosts file consulted first, answered with MinTTL; "": /etc/hosts, "-": none
	Timeout        time.Duration // per query, default 2s
	// Linger keeps an address intercepted that long after a good answer
	// first left it out (default 1h, at least MaxTTL).
	Linger time.Duration
	Logger *slog.Logger
}

// Resolver resolves hostnames. Resolve and Snapshot are safe for concurrent
// use; run one Watch at a time.
type Resolver struct {
	servers        []string
	search         []string // search domains, without dots at either end
	ndots          int
	minTTL, maxTTL time.Duration
	timeout        time.Duration
	linger         time.Duration
	hosts          *hostsFile
	log            *slog.Logger
	udp, tcp       *dns.Client

	mu   sync.Mutex
	snap []Result
}

// New returns a Resolver for opts.
func New(opts Options) (*Resolver, error) {
	r := &Resolver{
		minTTL:  opts.MinTTL,
		maxTTL:  opts.MaxTTL,
		timeout: opts.Timeout,
		linger:  opts.Linger,
		log:     opts.Logger,
		ndots:   1,
	}
	if r.minTTL < 0 || r.maxTTL < 0 || r.timeout < 0 || r.linger < 0 {
		return nil, errors.New("resolve: negative MinTTL, MaxTTL, Timeout or Linger")
	}
	if r.minTTL == 0 {
		r.minTTL = DefaultMinTTL
	}
	if r.maxTTL == 0 {
		r.maxTTL = max(DefaultMaxTTL, r.minTTL)
	}
	if r.minTTL > r.maxTTL {
		return nil, fmt.Errorf("resolve: MinTTL %v above MaxTTL %v", r.minTTL, r.maxTTL)
	}
	if r.timeout == 0 {
		r.timeout = DefaultTimeout
	}
	if r.linger == 0 {
		r.linger = max(DefaultLinger, r.maxTTL)
	}
	if r.linger < r.maxTTL {
		// A client may cache an answer for up to MaxTTL (as we do): an
		// address must outlive every cached answer that holds it.
		return nil, fmt.Errorf("resolve: Linger %v below MaxTTL %v", r.linger, r.maxTTL)
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	switch opts.Hosts {
	case "":
		r.hosts = &hostsFile{path: DefaultHosts}
	case "-":
	default:
		r.hosts = &hostsFile{path: opts.Hosts}
	}

	if len(opts.Servers) > 0 {
		for _, s := range opts.Servers {
			srv, err := serverAddr(s)
			if err != nil {
				return nil, err
			}
			r.servers = append(r.servers, srv)
		}
	} else {
		cfg, err := dns.ClientConfigFromFile(resolvConf)
		if err != nil {
			return nil, fmt.Errorf("resolve: DNS servers: %w", err)
		}
		for _, s := range cfg.Servers {
			r.servers = append(r.servers, net.JoinHostPort(s, cfg.Port))
		}
		for _, d := range cfg.Search {
			if d = strings.Trim(d, "."); d != "" {
				r.search = append(r.search, d)
			}
		}
		r.ndots = cfg.Ndots
		if len(r.servers) == 0 {
			return nil, fmt.Errorf("resolve: no nameserver in %s", resolvConf)
		}
	}
	r.udp = &dns.Client{Net: "udp", UDPSize: udpSize, Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

func serverAddr(s string) (string, error) {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(a.String(), "53"), nil
	}
	return "", fmt.Errorf("resolve: DNS server %q: want ip:port", s)
}

// Resolve returns the A and AAAA addresses of host, sorted with IPv4 first,
// and how long they may be used: the smallest TTL in the answers (CNAMEs
// included) clamped to [MinTTL, MaxTTL]. Hosts-file entries win and get
// MinTTL. If only one address family could be looked up (the other query
// failed), its addresses are returned without error.
func (r *Resolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	ans := r.lookup(ctx, host)
	if len(ans.addrs) > 0 {
		return ans.addrs, ans.ttl, nil
	}
	return nil, 0, ans.err
}

// answer is the outcome of looking up one host.
type answer struct {
	addrs []netip.Addr  // sorted, unique
	ttl   time.Duration // clamped; meaningful with addrs
	// err is why there are no addrs or, with addrs, why one family is
	// missing. failed4/failed6 say a family's query failed (timeout,
	// SERVFAIL...) rather than answered: its addresses are unknown, not absent.
	err              error
	failed4, failed6 bool
}

func (r *Resolver) lookup(ctx context.Context, host string) answer {
	name := normalize(host)
	if name == "" {
		return answer{err: errors.New("resolve: empty host")}
	}
	if a, err := netip.ParseAddr(name); err == nil {
		return answer{addrs: []netip.Addr{a}, ttl: r.maxTTL}
	}
	if _, ok := dns.IsDomainName(name); !ok || len(name) > 253 {
		return answer{err: fmt.Errorf("resolve %q: invalid host name", host)}
	}
	if addrs := r.hosts.lookup(name); len(addrs) > 0 {
		addrs = slices.Clone(addrs)
		slices.SortFunc(addrs, netip.Addr.Compare)
		return answer{addrs: addrs, ttl: r.minTTL}
	}

	cands := r.candidates(host, name)
	var first answer
	for i, fqdn := range cands {
		ans := r.lookupName(ctx, fqdn)
		if len(ans.addrs) > 0 || ans.failed4 || ans.failed6 || ctx.Err() != nil {
			if ans.err != nil && strings.TrimSuffix(fqdn, ".") != name {
				ans.err = fmt.Errorf("resolve %q: as %s: %w", host, strings.TrimSuffix(fqdn, "."), ans.err)
			} else if ans.err != nil {
				ans.err = fmt.Errorf("resolve %q: %w", host, ans.err)
			}
			return ans
		}
		if i == 0 {
			first = ans
		}
	}
	// Every candidate is NXDOMAIN or has no addresses. Report the first
	// (for a qualified name, the name itself).
	if len(cands) > 1 {
		first.err = fmt.Errorf("resolve %q: %w (tried %s)", host, first.err, strings.Join(trimDots(cands), ", "))
	} else {
		first.err = fmt.Errorf("resolve %q: %w", host, first.err)
	}
	return first
}

func trimDots(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = strings.TrimSuffix(x, ".")
	}
	return out
}

// normalize lower-cases a host name and drops trailing dots.
func normalize(host string) string {
	return strings.ToLower(strings.TrimRight(strings.TrimSpace(host), "."))
}

// candidates returns the fully qualified names to try for host, as
// resolv.conf(5) says: a rooted name is tried as is; a name with at least
// ndots dots is tried as is first, then with each search domain; others
// with the search domains first.
func (r *Resolver) candidates(host, name string) []string {
	abs := name + "."
	if strings.HasSuffix(strings.TrimSpace(host), ".") || len(r.search) == 0 {
		return []string{abs}
	}
	var searched []string
	for _, d := range r.search {
		if len(searched) == maxCandidates-1 {
			break
		}
		searched = append(searched, name+"."+strings.ToLower(d)+".")
	}
	if strings.Count(name, ".") >= r.ndots {
		return append([]string{abs}, searched...)
	}
	return append(searched, abs)
}

// family is the outcome of one A or AAAA lookup, CNAMEs followed.
type family struct {
	addrs []netip.Addr
	ttl   uint32 // smallest TTL on the way to addrs
	nx    bool
	err   error // the query failed: no answer
}

// lookupName queries A and AAAA for fqdn concurrently.
func (r *Resolver) lookupName(ctx context.Context, fqdn string) answer {
	var v4, v6 family
	var wg sync.WaitGroup
	wg.Go(func() { v4 = r.query(ctx, fqdn, dns.TypeA, 0) })
	v6 = r.query(ctx, fqdn, dns.TypeAAAA, 0)
	wg.Wait()

	ans := answer{failed4: v4.err != nil, failed6: v6.err != nil}
	ttl := uint32(0)
	haveTTL := false
	for _, f := range []family{v4, v6} {
		if len(f.addrs) == 0 {
			continue
		}
		ans.addrs = append(ans.addrs, f.addrs...)
		if !haveTTL || f.ttl < ttl {
			ttl, haveTTL = f.ttl, true
		}
	}
	slices.SortFunc(ans.addrs, netip.Addr.Compare)
	ans.addrs = slices.Compact(ans.addrs)
	ans.ttl = r.clamp(time.Duration(ttl) * time.Second)

	switch {
	case v4.err != nil && v6.err != nil:
		ans.err = v4.err
	case v4.err != nil:
		ans.err = fmt.Errorf("A: %w", v4.err)
	case v6.err != nil:
		ans.err = fmt.Errorf("AAAA: %w", v6.err)
	case len(ans.addrs) > 0:
	case v4.nx || v6.nx:
		ans.err = ErrNXDomain
	default:
		ans.err = ErrNoAddrs
	}
	return ans
}

func (r *Resolver) clamp(d time.Duration) time.Duration {
	return min(max(d, r.minTTL), r.maxTTL)
}

// query looks up one record type for name, following CNAMEs: those in the
// answer, then, if the chain ends at a name without records in the answer,
// by asking for that name.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16, depth int) family {
	in, err := r.exchange(ctx, name, qtype)
	if err != nil {
		return family{err: err}
	}
	f := family{ttl: ^uint32(0)}
	cur := name
	links := depth
	for {
		for _, rr := range in.Answer {
			h := rr.Header()
			if h.Rrtype != qtype || !strings.EqualFold(h.Name, cur) {
				continue
			}
			var a netip.Addr
			switch rr := rr.(type) {
			case *dns.A:
				a, _ = netip.AddrFromSlice(rr.A.To4())
			case *dns.AAAA:
				a, _ = netip.AddrFromSlice(rr.AAAA.To16())
			}
			if a.IsValid() {
				f.addrs = append(f.addrs, a)
				f.ttl = min(f.ttl, h.Ttl)
			}
		}
		if len(f.addrs) > 0 {
			return f
		}
		next := ""
		for _, rr := range in.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
				next = c.Target
				f.ttl = min(f.ttl, c.Hdr.Ttl)
				break
			}
		}
		if next == "" {
			break
		}
		if links++; links > maxCNAME {
			return family{err: fmt.Errorf("more than %d CNAMEs", maxCNAME)}
		}
		cur = next
	}
	if in.Rcode == dns.RcodeNameError {
		return family{nx: true}
	}
	if cur != name {
		// The answer's chain stops at a name it has no records for: ask
		// for that name.
		sub := r.query(ctx, cur, qtype, links)
		if len(sub.addrs) > 0 {
			sub.ttl = min(sub.ttl, f.ttl)
		}
		return sub
	}
	return family{} // NODATA
}

// exchange sends one query to each server in turn until one answers with
// NOERROR or NXDOMAIN. A truncated UDP answer is retried over TCP.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(udpSize, false)
	var lastErr error
	for _, srv := range r.servers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		in, err := r.exchangeOne(ctx, r.udp, m, srv)
		if err == nil && in.Truncated {
			in, err = r.exchangeOne(ctx, r.tcp, m, srv)
		}
		if err != nil {
			lastErr = fmt.Errorf("%s: %w", srv, err)
			continue
		}
		if in.Rcode == dns.RcodeSuccess || in.Rcode == dns.RcodeNameError {
			return in, nil
		}
		lastErr = fmt.Errorf("%s: %s", srv, dns.RcodeToString[in.Rcode])
	}
	return nil, lastErr
}

// exchangeOne is one query with Timeout, abandoned as soon as ctx is done.
func (r *Resolver) exchangeOne(ctx context.Context, c *dns.Client, m *dns.Msg, srv string) (*dns.Msg, error) {
	qctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	conn, err := c.DialContext(qctx, srv)
	if err == nil {
		defer conn.Close()
		stop := context.AfterFunc(qctx, func() { conn.Close() })
		defer stop()
		var in *dns.Msg
		if in, _, err = c.ExchangeWithConnContext(qctx, m, conn); err == nil {
			return in, nil
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var ne net.Error
	if qctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return nil, fmt.Errorf("timeout: no answer within %v", r.timeout)
	}
	return nil, err
}

// Snapshot returns the current results of Watch (none before it starts).
func (r *Resolver) Snapshot() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneResults(r.snap)
}

func cloneResults(rs []Result) []Result {
	out := slices.Clone(rs)
	for i := range out {
		out[i].Addrs = slices.Clone(out[i].Addrs)
		out[i].Lingering = slices.Clone(out[i].Lingering)
	}
	return out
}
