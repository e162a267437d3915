// Package approval decides what a human must approve: statements a policy
// holds inside a live session, and just-in-time access to connections that
// require a grant. Requests wait in the Broker until an approver (a member
// of the configured group, proven by their own `airlock login`) decides, or
// until they time out, which denies them.
//
// A request lives in the Broker of the daemon that holds it. With a team
// store (package team) it is also published to the team's database, where
// approvers on other machines see and decide it; the holding Broker still
// re-checks every such decision (DecideRemote) before honouring it.
package approval

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

// Request kinds.
const (
	KindStatement = "statement" // a held statement in a live session
	KindAccess    = "access"    // a just-in-time access request
)

// Request states.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateDenied   = "denied"
	StateExpired  = "expired"
	StateCanceled = "canceled"
)

// Process is the client process behind a held statement.
type Process struct {
	Exe   string `json:"exe,omitempty"`
	PID   uint32 `json:"pid,omitempty"`
	UID   uint32 `json:"uid"`
	Class string `json:"class,omitempty"` // agent | person
}

// Request is one approval request, as approvers and webhooks see it. It
// carries the requester's statement text (redacted of literal secrets),
// never bound parameters.
type Request struct {
	ID         string          `json:"id"`
	Kind       string          `json:"kind"`
	Person     identity.Person `json:"person"`
	Process    Process         `json:"process"`
	Connection string          `json:"connection"`
	Session    string          `json:"session,omitempty"`
	Database   string          `json:"database,omitempty"`
	Statement  string          `json:"statement,omitempty"`
	Class      string          `json:"class,omitempty"`
	Rule       string          `json:"rule,omitempty"`
	Reason     string          `json:"reason,omitempty"`
	// For is the access asked for (access requests).
	For     time.Duration `json:"for,omitempty"`
	Created time.Time     `json:"created"`
	Expires time.Time     `json:"expires"`

	// Daemon and Host are where the request is held (the audit chain id
	// of that airlockd and its host name).
	Daemon string `json:"daemon,omitempty"`
	Host   string `json:"host,omitempty"`
	// Team says whether approvers on other machines can see the request:
	// "" (no team store), TeamShared, or TeamLocalOnly (the team store
	// could not be reached: only this machine's approvers can decide).
	Team string `json:"team,omitempty"`
	// Remote marks a request that another daemon holds, as listed here.
	Remote bool `json:"remote,omitempty"`

	State    string    `json:"state"`
	By       string    `json:"by,omitempty"`       // who decided
	Why      string    `json:"why,omitempty"`      // the decider's reason
	Decided  time.Time `json:"decided,omitzero"`   // when
	GrantEnd time.Time `json:"grant_end,omitzero"` // approved access: until when
}

// Team visibility of a request.
const (
	TeamShared    = "shared"
	TeamLocalOnly = "local-only"
)

// HoldRequest is what a policy stage hands the Broker for a held statement.
type HoldRequest struct {
	Session *session.Session
	SQL     string
	Class   string // classification summary
	Rule    string
	Reason  string
	Timeout time.Duration // zero: the Broker's
}

// Notifier is told of each new request, off the data path.
type Notifier interface {
	Notify(r Request)
}

// Options configures a Broker.
type Options struct {
	// ApproversGroup is the group whose members decide. Empty: nobody can
	// approve, so every hold times out denied.
	ApproversGroup string
	Timeout        time.Duration // default 5m
	Notifier       Notifier      // nil: none
	// Grants persists approved access (nil: in memory only).
	Grants *GrantStore
	// Record receives approval events (a session's, or "" for access).
	Record func(session.Event)
	Logger *slog.Logger
	Now    func() time.Time

	// Daemon and Host stamp each request with where it is held.
	Daemon, Host string
	// Shared, when set, marks new requests local-only until the team store
	// has them, and is called (it must not block) whenever a request is
	// filed or ends, so that the team store catches up.
	Shared func()
}

// Errors of deciding.
var (
	ErrNotFound    = errors.New("no such pending request")
	ErrNotApprover = errors.New("not an approver")
	ErrSelf        = errors.New("requesters never decide their own requests")
)

type pending struct {
	req   Request
	done  func(approved bool, by, reason string)
	timer *time.Timer
	stop  func() bool // detaches the ctx watcher
}

// Broker holds pending requests and decides them.
type Broker struct {
	o Options

	mu      sync.Mutex
	pending map[string]*pending
	recent  []Request // decided, newest last, bounded
}

const recentMax = 200

// New returns a Broker.
func New(o Options) *Broker {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Record == nil {
		o.Record = func(session.Event) {}
	}
	if o.Grants == nil {
		o.Grants = MemoryGrants()
	}
	return &Broker{o: o, pending: map[string]*pending{}}
}

// Timeout is how long a request waits by default.
func (b *Broker) Timeout() time.Duration { return b.o.Timeout }

// Ask files an approval request for a held statement. done is called
// exactly once, from any goroutine: on a decision, on the timeout
// (denied), or when ctx ends (the client cancelled or left; denied).
func (b *Broker) Ask(ctx context.Context, h HoldRequest, done func(approved bool, by, reason string)) {
	s := h.Session
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = b.o.Timeout
	}
	now := b.o.Now()
	r := Request{ID: newID(), Kind: KindStatement, Created: now, Expires: now.Add(timeout), State: StatePending,
		Statement: Redact(h.SQL), Class: h.Class, Rule: h.Rule, Reason: h.Reason}
	b.stamp(&r)
	if s != nil {
		r.Person, r.Connection, r.Session, r.Database = s.Person, s.Connection, s.ID, s.Database()
		r.Process = Process{Exe: s.Origin.Exe, PID: s.Origin.PID, UID: s.Origin.UID, Class: s.Origin.Class}
	}
	p := &pending{req: r, done: done}
	b.mu.Lock()
	if b.countLocked(r.Process.UID) >= MaxPendingPerUID {
		b.mu.Unlock()
		done(false, "", fmt.Sprintf("uid %d already has %d requests waiting for approval", r.Process.UID, MaxPendingPerUID))
		return
	}
	b.pending[r.ID] = p
	p.timer = time.AfterFunc(timeout, func() { b.expire(r.ID) })
	b.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { b.finish(r.ID, StateCanceled, "", "the client cancelled the statement") })
	b.mu.Lock()
	p.stop = stop
	b.mu.Unlock()
	b.o.Logger.Info("approval requested", "id", r.ID, "kind", r.Kind, "person", r.Person.Name, "connection", r.Connection,
		"session", r.Session, "rule", r.Rule, "expires", r.Expires)
	b.record(r, StatePending, "", "")
	if b.o.Notifier != nil {
		b.o.Notifier.Notify(r)
	}
	b.changed()
}

// RequestAccess files a just-in-time access request for p (at uid) to
// connection, for d. It waits for a decision no longer than the Broker's
// timeout.
func (b *Broker) RequestAccess(p identity.Person, uid uint32, connection string, d time.Duration, reason string) (Request, error) {
	now := b.o.Now()
	r := Request{ID: newID(), Kind: KindAccess, Person: p, Process: Process{UID: uid}, Connection: connection,
		For: d, Reason: reason, Created: now, Expires: now.Add(b.o.Timeout), State: StatePending}
	b.stamp(&r)
	pe := &pending{req: r}
	b.mu.Lock()
	if b.countLocked(uid) >= MaxPendingPerUID {
		b.mu.Unlock()
		return Request{}, fmt.Errorf("uid %d already has %d requests waiting for approval; wait for a decision", uid, MaxPendingPerUID)
	}
	b.pending[r.ID] = pe
	pe.timer = time.AfterFunc(b.o.Timeout, func() { b.expire(r.ID) })
	b.mu.Unlock()
	b.o.Logger.Info("access requested", "id", r.ID, "person", p.Name, "uid", uid, "connection", connection, "for", d)
	b.record(r, StatePending, "", "")
	if b.o.Notifier != nil {
		b.o.Notifier.Notify(r)
	}
	b.changed()
	return r, nil
}

func (b *Broker) stamp(r *Request) {
	r.Daemon, r.Host = b.o.Daemon, b.o.Host
	if b.o.Shared != nil {
		r.Team = TeamLocalOnly
	}
}

func (b *Broker) changed() {
	if b.o.Shared != nil {
		b.o.Shared()
	}
}

// MaxPendingPerUID bounds the requests one uid may have waiting: a process
// that floods holds must not exhaust the daemon or bury the approvers.
const MaxPendingPerUID = 32

func (b *Broker) countLocked(uid uint32) int {
	n := 0
	for _, p := range b.pending {
		if p.req.Process.UID == uid {
			n++
		}
	}
	return n
}

// Approver is who decides, as the daemon resolved the caller.
type Approver struct {
	Person identity.Person
	UID    uint32
}

func (a Approver) name() string {
	if a.Person.Email != "" {
		return a.Person.Name + " <" + a.Person.Email + ">"
	}
	return a.Person.Name
}

// CanApprove reports whether a may decide requests at all.
func (b *Broker) CanApprove(a Approver) bool {
	return b.o.ApproversGroup != "" && a.Person.Name != "" && slices.Contains(a.Person.Groups, b.o.ApproversGroup)
}

// isRequester: the same person (same issuer and subject), or the same
// local account, never decides their own request, whatever their groups.
func isRequester(a Approver, r Request) bool {
	if a.UID == r.Process.UID {
		return true
	}
	return samePerson(a.Person, r.Person)
}

// samePerson compares people across machines, where uids mean nothing:
// issuer and subject for OIDC identities, else the account name (the same
// name on two machines is taken for the same person: refusing is safe).
func samePerson(a, r identity.Person) bool {
	if a.Subject != "" && a.Subject == r.Subject && a.Issuer == r.Issuer {
		return true
	}
	if a.Subject != "" || r.Subject != "" {
		return false
	}
	return a.Name == r.Name
}

// Decide approves or denies request id as a.
func (b *Broker) Decide(a Approver, id string, approve bool, reason string) (Request, error) {
	if err := b.checkApprover(a); err != nil {
		return Request{}, err
	}
	b.mu.Lock()
	p, ok := b.pending[id]
	if !ok {
		b.mu.Unlock()
		if r, ok := b.Find(id); ok {
			return r, fmt.Errorf("%w: request %s is already %s", ErrNotFound, id, r.State)
		}
		return Request{}, fmt.Errorf("%w: %s (see `airlock approvals`)", ErrNotFound, id)
	}
	if isRequester(a, p.req) {
		b.mu.Unlock()
		return Request{}, fmt.Errorf("%w: %s asked for %s; another approver must decide", ErrSelf, p.req.Person.Name, id)
	}
	b.mu.Unlock()
	return b.decided(id, approve, a.name(), reason)
}

func (b *Broker) checkApprover(a Approver) error {
	if b.CanApprove(a) {
		return nil
	}
	if b.o.ApproversGroup == "" {
		return fmt.Errorf("%w: no approvers group is configured (approvals.approvers_group)", ErrNotApprover)
	}
	return fmt.Errorf("%w: %s is not in group %q (run `airlock login` as an approver)", ErrNotApprover, dash(a.Person.Name), b.o.ApproversGroup)
}

func (b *Broker) decided(id string, approve bool, by, reason string) (Request, error) {
	state := StateDenied
	if approve {
		state = StateApproved
	}
	r, ok := b.finish(id, state, by, reason)
	if !ok {
		return Request{}, fmt.Errorf("%w: %s was decided meanwhile", ErrNotFound, id)
	}
	return r, nil
}

// CheckRemote is what an approver's own daemon checks before it sends a
// decision on r, a request another daemon holds: a is an approver here,
// and not the requester (compared as people: uids differ across machines).
func (b *Broker) CheckRemote(a Approver, r Request) error {
	if err := b.checkApprover(a); err != nil {
		return err
	}
	if samePerson(a.Person, r.Person) {
		return fmt.Errorf("%w: %s asked for %s; another approver must decide", ErrSelf, r.Person.Name, r.ID)
	}
	return nil
}

// Remote is a decision another daemon sent through the team store.
type Remote struct {
	ID      string
	Approve bool
	Reason  string
	// Who decided, as their own daemon resolved them, and where.
	Person identity.Person
	Daemon string
	Host   string
}

// By names the decider and their machine.
func (d Remote) By() string {
	by := Approver{Person: d.Person}.name()
	if d.Host != "" {
		by += " on " + d.Host
	}
	return by
}

// DecideRemote honours a decision another daemon sent, after checking it
// again here, under this daemon's own rules: the team database is shared
// by many machines, and a decision row is only as good as the checks of
// the daemon that honours it. The decider must be in this daemon's
// approvers group and must not be the requester; the uid is not compared
// (it is another machine's).
func (b *Broker) DecideRemote(d Remote) (Request, error) {
	a := Approver{Person: d.Person}
	if err := b.checkApprover(a); err != nil {
		return Request{}, err
	}
	if d.Daemon == "" {
		return Request{}, errors.New("the decision does not say which daemon sent it")
	}
	b.mu.Lock()
	p, ok := b.pending[d.ID]
	b.mu.Unlock()
	if !ok {
		return Request{}, fmt.Errorf("%w: %s", ErrNotFound, d.ID)
	}
	if samePerson(d.Person, p.req.Person) {
		return Request{}, fmt.Errorf("%w: %s asked for %s; another approver must decide", ErrSelf, p.req.Person.Name, d.ID)
	}
	return b.decided(d.ID, d.Approve, d.By(), d.Reason)
}

// Pending returns every pending request.
func (b *Broker) Pending() []Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Request, 0, len(b.pending))
	for _, p := range b.pending {
		out = append(out, p.req)
	}
	return out
}

// SetTeam records whether request id reached the team store.
func (b *Broker) SetTeam(id, team string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.pending[id]; ok {
		p.req.Team = team
	}
}

// Record writes an approval event for r into this daemon's record: a
// decision this daemon's approver sent for another daemon's request.
func (b *Broker) Record(r Request, state, by, why string) { b.record(r, state, by, why) }

func (b *Broker) expire(id string) {
	b.finish(id, StateExpired, "", fmt.Sprintf("no approver decided within %s", b.o.Timeout))
}

// finish ends a pending request once; false when it was no longer pending.
func (b *Broker) finish(id, state, by, why string) (Request, bool) {
	now := b.o.Now()
	b.mu.Lock()
	p, ok := b.pending[id]
	if !ok {
		b.mu.Unlock()
		return Request{}, false
	}
	delete(b.pending, id)
	p.timer.Stop()
	stop := p.stop
	r := p.req
	r.State, r.By, r.Why, r.Decided = state, by, why, now
	if r.Kind == KindAccess && state == StateApproved {
		r.GrantEnd = now.Add(r.For)
	}
	b.recent = append(b.recent, r)
	if len(b.recent) > recentMax {
		b.recent = slices.Delete(b.recent, 0, len(b.recent)-recentMax)
	}
	b.mu.Unlock()
	if stop != nil {
		stop()
	}
	if r.Kind == KindAccess && state == StateApproved {
		g := Grant{ID: r.ID, Connection: r.Connection, Issuer: r.Person.Issuer, Subject: r.Person.Subject,
			Name: r.Person.Name, UID: r.Process.UID, Expires: r.GrantEnd, By: by, Reason: r.Reason}
		if err := b.o.Grants.Add(g); err != nil {
			b.o.Logger.Error("save access grant; it lasts until the daemon restarts", "id", r.ID, "err", err)
		}
	}
	b.o.Logger.Info("approval decided", "id", id, "kind", r.Kind, "state", state, "by", by, "reason", why)
	b.record(r, state, by, why)
	if p.done != nil {
		p.done(state == StateApproved, by, why)
	}
	b.changed()
	return r, true
}

func (b *Broker) record(r Request, state, by, why string) {
	ev := session.Event{Kind: session.KindApproval, Session: r.Session, Approval: &session.Approval{
		ID: r.ID, Kind: r.Kind, Decision: state, By: by, Reason: why, Connection: r.Connection, Rule: r.Rule}}
	if r.Daemon != b.o.Daemon {
		// Another daemon's request: its session is in that daemon's chain.
		ev.Session, ev.Approval.Holder = "", r.Daemon
	}
	p := r.Person
	ev.Person = &p
	ev.Time = b.o.Now()
	b.o.Record(ev)
}

// List returns the pending requests a may see: every one for an approver,
// otherwise the caller's own (pending or recently decided).
func (b *Broker) List(a Approver) []Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	approver := b.CanApprove(a)
	var out []Request
	for _, p := range b.pending {
		if approver || isRequester(a, p.req) {
			out = append(out, p.req)
		}
	}
	if !approver {
		for _, r := range b.recent {
			if isRequester(a, r) {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// Find returns a request by id, pending or recently decided.
func (b *Broker) Find(id string) (Request, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.pending[id]; ok {
		return p.req, true
	}
	for i := len(b.recent) - 1; i >= 0; i-- {
		if b.recent[i].ID == id {
			return b.recent[i], true
		}
	}
	return Request{}, false
}

// GrantFor returns p's live grant on connection, if any.
func (b *Broker) GrantFor(p identity.Person, connection string) (Grant, bool) {
	return b.o.Grants.Find(p, connection, b.o.Now())
}

// Close denies every pending request: the daemon is stopping.
func (b *Broker) Close() {
	b.mu.Lock()
	ids := make([]string, 0, len(b.pending))
	for id := range b.pending {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	for _, id := range ids {
		b.finish(id, StateCanceled, "", "Airlock is shutting down")
	}
}

func dash(s string) string {
	if s == "" {
		return "(no identity)"
	}
	return s
}
