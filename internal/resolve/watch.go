package resolve

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// target is one distinct host among the specs: specs naming the same host
// share its lookups.
type target struct {
	host     string
	specs    []int // indexes into the specs
	addrs    []netip.Addr
	ttl      time.Duration
	resolved time.Time
	err      string
	next     time.Time
	// seen is when each of addrs was last in a good answer; lingering are
	// addresses good answers no longer have, until they expire.
	seen      map[netip.Addr]time.Time
	lingering map[netip.Addr]Lingering
}

// lingeringList returns t's lingering addresses, sorted.
func (t *target) lingeringList() []Lingering {
	out := make([]Lingering, 0, len(t.lingering))
	for _, l := range t.lingering {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Lingering) int { return a.Addr.Compare(b.Addr) })
	return out
}

// prune forgets lingering addresses that expired by now, and reports
// whether any did.
func (r *Resolver) prune(t *target, now time.Time) bool {
	changed := false
	for a, l := range t.lingering {
		if !l.Expires.After(now) {
			delete(t.lingering, a)
			changed = true
			r.log.Info("dropped target address no longer in DNS answers after lingering", "host", t.host, "addr", a,
				"last_seen", l.LastSeen, "linger", r.linger)
		}
	}
	return changed
}

// nextExpiry is the earliest time a lingering address of t expires; zero
// if none lingers.
func (t *target) nextExpiry() time.Time {
	var first time.Time
	for _, l := range t.lingering {
		if first.IsZero() || l.Expires.Before(first) {
			first = l.Expires
		}
	}
	return first
}

// Watch resolves every spec now, and each again when its TTL runs out. It
// calls onChange with all current results once after the first round and
// then whenever an address set changes. A failed re-resolution keeps the
// last good addresses (and, when only one family failed, that family's) and
// is retried after MinTTL. Specs naming the same host share lookups; at most
// a few lookups run at once. onChange runs on Watch's goroutine and gets its
// own copy. Watch returns when ctx is done.
func (r *Resolver) Watch(ctx context.Context, specs []Spec, onChange func([]Result)) {
	var targets []*target
	byHost := map[string]*target{}
	for i, s := range specs {
		key := strings.ToLower(strings.TrimSpace(s.Host))
		t := byHost[key]
		if t == nil {
			t = &target{host: s.Host}
			byHost[key] = t
			targets = append(targets, t)
		}
		t.specs = append(t.specs, i)
	}
	results := func() []Result {
		out := make([]Result, len(specs))
		for _, t := range targets {
			for _, i := range t.specs {
				s := specs[i]
				out[i] = Result{
					Name: s.Name, Host: s.Host, Port: s.Port,
					Addrs: slices.Clone(t.addrs), Lingering: t.lingeringList(),
					TTL: t.ttl, Resolved: t.resolved, Err: t.err,
				}
			}
		}
		return out
	}

	timer := time.NewTimer(0)
	defer timer.Stop()
	for first := true; ; first = false {
		now := time.Now()
		var due []*target
		pruned := false
		for _, t := range targets {
			if !t.next.After(now) {
				due = append(due, t)
			}
			if r.prune(t, now) {
				pruned = true
			}
		}
		changed := r.round(ctx, due) || pruned
		if ctx.Err() != nil {
			return
		}
		snap := results()
		r.mu.Lock()
		r.snap = snap
		r.mu.Unlock()
		if first || changed {
			onChange(cloneResults(snap))
		}

		wait := time.Duration(-1)
		for _, t := range targets {
			if d := time.Until(t.next); wait < 0 || d < wait {
				wait = d
			}
			if e := t.nextExpiry(); !e.IsZero() && time.Until(e) < wait {
				wait = time.Until(e)
			}
		}
		if wait < 0 && len(targets) == 0 {
			<-ctx.Done()
			return
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// round looks up the due targets, a few at a time, and updates them. It
// reports whether any address set changed.
func (r *Resolver) round(ctx context.Context, due []*target) bool {
	answers := make([]answer, len(due))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, t := range due {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			answers[i] = r.lookup(ctx, t.host)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return false
	}
	changed := false
	for i, t := range due {
		if r.apply(t, answers[i], time.Now()) {
			changed = true
		}
	}
	return changed
}

// apply records one lookup's answer in t, and reports whether t's addresses
// changed.
func (r *Resolver) apply(t *target, ans answer, now time.Time) bool {
	old := t.addrs
	prevErr := t.err
	switch {
	case ans.err == nil:
		t.addrs, t.ttl, t.resolved, t.err = ans.addrs, ans.ttl, now, ""
		t.next = now.Add(ans.ttl)
		if prevErr != "" {
			r.log.Info("target resolves again", "host", t.host, "addrs", t.addrs, "ttl", t.ttl)
		}
	case len(ans.addrs) > 0:
		// One family answered, the other failed: take the new addresses of
		// the one, keep the last good ones of the other.
		var merged []netip.Addr
		for _, a := range old {
			if a.Is4() && ans.failed4 || !a.Is4() && ans.failed6 {
				merged = append(merged, a)
			}
		}
		for _, a := range ans.addrs {
			if a.Is4() && !ans.failed4 || !a.Is4() && !ans.failed6 {
				merged = append(merged, a)
			}
		}
		slices.SortFunc(merged, netip.Addr.Compare)
		t.addrs, t.ttl, t.resolved, t.err = slices.Compact(merged), ans.ttl, now, ans.err.Error()
		t.next = now.Add(r.minTTL)
		r.logFailure(t, prevErr)
	default:
		t.err = ans.err.Error()
		t.next = now.Add(r.minTTL)
		r.logFailure(t, prevErr)
	}
	if ans.err == nil || len(ans.addrs) > 0 {
		r.track(t, old, ans, now)
	}
	if !slices.Equal(old, t.addrs) {
		if old != nil {
			r.log.Info("target addresses changed", "host", t.host, "old", old, "new", t.addrs,
				"lingering", t.lingeringList())
		}
		return true
	}
	return false
}

// track updates when each address was last seen after a good (or partly
// good) answer, and lets the addresses it dropped linger: a client that
// resolved the name a moment ago may still dial them.
func (r *Resolver) track(t *target, old []netip.Addr, ans answer, now time.Time) {
	if t.seen == nil {
		t.seen = map[netip.Addr]time.Time{}
		t.lingering = map[netip.Addr]Lingering{}
	}
	for _, a := range ans.addrs {
		if a.Is4() && ans.failed4 || !a.Is4() && ans.failed6 {
			continue
		}
		t.seen[a] = now
		delete(t.lingering, a)
	}
	for _, a := range old {
		if slices.Contains(t.addrs, a) {
			continue
		}
		last := t.seen[a]
		if last.IsZero() {
			last = now
		}
		t.lingering[a] = Lingering{Addr: a, LastSeen: last, Expires: now.Add(r.linger)}
		delete(t.seen, a)
	}
}

// logFailure logs a failed lookup: a new error as a warning, a repeated one
// at debug level, so a long outage does not flood the log.
func (r *Resolver) logFailure(t *target, prevErr string) {
	level := r.log.Warn
	if t.err == prevErr {
		level = r.log.Debug
	}
	msg := "cannot resolve target; keeping last good addresses"
	if len(t.addrs) == 0 {
		msg = "cannot resolve target; not redirected until it resolves"
	}
	level(msg, "host", t.host, "err", t.err, "addrs", t.addrs, "retry", r.minTTL)
}
