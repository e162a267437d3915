package session

import (
	"log/slog"
	"slices"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
)

// Kind names an event type. The audit log stores it as is: never rename one.
type Kind string

const (
	KindSessionStart     Kind = "session.start"
	KindSessionEnd       Kind = "session.end"
	KindStatement        Kind = "statement"
	KindCredentialCreate Kind = "credential.create"
	KindCredentialRevoke Kind = "credential.revoke"
	KindRefused          Kind = "session.refused"
	// Identity changes of a uid (no session): login, logout, refresh, and
	// an identity lost by a live session.
	KindIdentityLogin   Kind = "identity.login"
	KindIdentityLogout  Kind = "identity.logout"
	KindIdentityRefresh Kind = "identity.refresh"
	KindIdentityLost    Kind = "identity.lost"
	// An approval request's life: filed (pending), then approved, denied,
	// expired or canceled. Statement holds carry their session; access
	// requests none.
	KindApproval Kind = "approval"
	// KindDecision is a policy decision on a statement other than a plain
	// allow: refused, held, approved or denied by a person, or allowed by
	// a named rule.
	KindDecision Kind = "decision"
	// KindMaskOriginals is a statement's compliance copy: the originals
	// of what masking replaced, encrypted to the compliance public key.
	KindMaskOriginals Kind = "mask.originals"
	// KindAuditReveal records that someone fetched compliance copies to
	// decrypt them (`airlock audit reveal`).
	KindAuditReveal Kind = "audit.reveal"

	// KindCredentialSweep is a role of ours found outside any session (a
	// leftover of a daemon that died, or one past its VALID UNTIL) and
	// dropped, or not, by a sweep. It belongs to no session.
	KindCredentialSweep Kind = "credential.sweep"
)

// Event is one recorded fact about a session. Exactly the pointer fields that
// fit Kind are set. No field may ever hold a secret.
type Event struct {
	Time       time.Time   `json:"time"`
	Kind       Kind        `json:"kind"`
	Session    string      `json:"session"`
	Start      *Session    `json:"start,omitempty"`
	End        *End        `json:"end,omitempty"`
	Statement  *Statement  `json:"statement,omitempty"`
	Credential *Credential `json:"credential,omitempty"`
	Refusal    *Refusal    `json:"refusal,omitempty"`
	Identity   *Identity   `json:"identity,omitempty"`
	Approval   *Approval   `json:"approval,omitempty"`
	Decision   *Decision   `json:"decision,omitempty"`
	Originals  *Originals  `json:"originals,omitempty"`
	Reveal     *Reveal     `json:"reveal,omitempty"`
	// Person is who the session acts for, on every session event.
	Person *identity.Person `json:"person,omitempty"`
}

// Identity is a change to the identity bound to a uid. Never a token.
type Identity struct {
	UID     uint32 `json:"uid"`
	By      uint32 `json:"by"` // the caller's uid; differs for root's --for-uid
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// Approval is a step of an approval request (a held statement or an access
// request).
type Approval struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"`     // statement | access
	Decision   string `json:"decision"` // pending, approved, denied, expired, canceled
	By         string `json:"by,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Connection string `json:"connection,omitempty"`
	Rule       string `json:"rule,omitempty"`
	// Holder is the daemon holding the request when it is not this one
	// (a decision sent through the team store).
	Holder string `json:"holder,omitempty"`
}

// End closes a session.
type End struct {
	// Reason is one of client_quit, interrupted, upstream_lost, ttl,
	// identity_lost, grant_expired, daemon_restart, refused, protocol_error, error;
	// Detail says more.
	Reason   string        `json:"reason"`
	Detail   string        `json:"detail,omitempty"`
	Duration time.Duration `json:"duration"`
	BytesIn  int64         `json:"bytes_in"`  // client to upstream
	BytesOut int64         `json:"bytes_out"` // upstream to client
	// Upstream database and role, when the session got that far.
	Database     string `json:"database,omitempty"`
	UpstreamRole string `json:"upstream_role,omitempty"`
	// Masked counts the values masking replaced, per rule and detector.
	Masked []MaskCount `json:"masked,omitempty"`
}

// MaskCount is how many values one masking rule replaced with one detector
// ("column" for values masked whole, "unresolved" for columns whose source
// could not be looked up and were sent NULL).
type MaskCount struct {
	Rule     string `json:"rule"`
	Detector string `json:"detector"`
	Strategy string `json:"strategy"`
	Values   uint64 `json:"values"`
}

// Reasoner is an error that says which End reason it stands for.
type Reasoner interface{ EndReason() string }

// Statement is one SQL statement and its outcome.
type Statement struct {
	Protocol string        `json:"protocol"` // "simple" or "extended"
	SQL      string        `json:"sql"`
	Name     string        `json:"name,omitempty"` // prepared statement name
	Params   []string      `json:"params,omitempty"`
	Tag      string        `json:"tag,omitempty"`
	Rows     int64         `json:"rows"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration"`
	SQLState string        `json:"sqlstate,omitempty"`
	Error    string        `json:"error,omitempty"`
	// FunctionOID is set for a fast-path FunctionCall (protocol
	// "function"), which carries no SQL.
	FunctionOID uint32 `json:"function_oid,omitempty"`
	// Decision is what the proxy did other than relay it: "refused" (the
	// client got the proxy's error and the server never ran it), "held"
	// then "approved", "replaced" (the server ran the SQL recorded here,
	// not the client's), or "unknown: client left" (sent, outcome never
	// seen).
	Decision string `json:"decision,omitempty"`
	// Set by the policy pipeline; the audit record has a place for each.
	Class  string  `json:"class,omitempty"`
	Rule   string  `json:"rule,omitempty"`
	Sample *Sample `json:"sample,omitempty"`
	// Number is the statement's place in its session, from 1: what a
	// compliance copy (Originals.Statement) refers to.
	Number int64 `json:"number,omitempty"`
}

// Clone copies st and everything it points to, for a sink that keeps it
// past Record (see Sink).
func (st *Statement) Clone() *Statement {
	if st == nil {
		return nil
	}
	c := *st
	c.Params = slices.Clone(st.Params)
	if st.Sample != nil {
		sm := *st.Sample
		sm.Columns = slices.Clone(sm.Columns)
		sm.OIDs = slices.Clone(sm.OIDs)
		sm.Formats = slices.Clone(sm.Formats)
		sm.Data = slices.Clone(sm.Data)
		c.Sample = &sm
	}
	return &c
}

// Originals is one statement's compliance copy: the original values
// masking replaced, sealed with age to the compliance public keys. Only
// ciphertext: the originals never travel in the clear past the stage.
type Originals struct {
	Statement  int64    `json:"statement"` // Statement.Number of the statement
	Recipients []string `json:"recipients"`
	Values     int      `json:"values"`
	Truncated  bool     `json:"truncated,omitempty"`
	Sealed     []byte   `json:"sealed"`
}

// Reveal is a read of compliance copies: who fetched which.
type Reveal struct {
	UID        uint32  `json:"uid"`
	Person     string  `json:"person"`
	Session    string  `json:"session"`
	Statements []int64 `json:"statements,omitempty"` // empty: every statement of the session
	Copies     int     `json:"copies"`
}

// Sample is a bounded prefix of a statement's result as the client saw it
// (after masking), as the wire bytes it was: Data holds the rows in
// package rowsample's stored form (each value's bytes behind a short tag
// that marks NULL and values the caps cut), OIDs and Formats say how to
// render them (Formats by Bind's rules: none is all text). Nothing is
// rendered until the record is read (rowsample.Render). Truncated says
// rows, or parts of values, were left out by the caps.
type Sample struct {
	Columns   []string `json:"columns"`
	OIDs      []uint32 `json:"oids,omitempty"`
	Formats   []int16  `json:"formats,omitempty"`
	Data      []byte   `json:"data,omitempty"`
	Truncated bool     `json:"truncated,omitempty"`
}

// Decision is what the SQL policy decided for a statement.
type Decision struct {
	Action   string `json:"action"` // allow, deny, hold
	Rule     string `json:"rule"`
	Reason   string `json:"reason,omitempty"`
	Protocol string `json:"protocol"` // simple, extended, function
	SQL      string `json:"sql"`      // redacted: secrets replaced
	Class    string `json:"class,omitempty"`
	By       string `json:"by,omitempty"` // the person who approved or denied a hold
}

// Credential is a just-in-time upstream credential being created or revoked.
type Credential struct {
	Mode    string    `json:"mode"` // "ephemeral" or "static"
	Role    string    `json:"role"`
	Groups  []string  `json:"groups,omitempty"`
	Expires time.Time `json:"expires,omitempty"`
	Outcome string    `json:"outcome"` // "ok", "nologin", "failed"
	Error   string    `json:"error,omitempty"`
	// Leftovers (revoke only) are the objects the role still owned.
	Leftovers *Leftovers `json:"leftovers,omitempty"`
}

// Leftovers are the objects a just-in-time role owned when it was dropped,
// and what became of them.
type Leftovers struct {
	Action  string   `json:"action"`          // "reassigned" or "dropped"
	Owner   string   `json:"owner,omitempty"` // the new owner, when reassigned
	Count   int      `json:"count"`
	Objects []string `json:"objects"` // "database: object" (shared objects without database), the first 50
}

// Refusal is a connection or session that Airlock turned away.
type Refusal struct {
	Reason   string `json:"reason"`
	SQLState string `json:"sqlstate,omitempty"`
	// Code is the refusal's short reason for connections refused before
	// their session started (max_sessions, no_kernel_record, ...).
	Code string `json:"code,omitempty"`
	// Attempt is the connection refused before its session started: what
	// is known of its origin, target and addresses (no session.start
	// describes it). Nil for refusals inside a session.
	Attempt *Session `json:"-"`
}

// LogSink writes session-level events as structured log lines. Statements
// are not logged: their text and parameters (users' data: names, emails,
// tokens) belong in the audit store, not in a journal the adm group reads
// and that rate limits drop.
type LogSink struct{ Logger *slog.Logger }

// Wants is false for the events LogSink leaves out: statements and
// compliance copies.
func (LogSink) Wants(ev Event) bool { return ev.Statement == nil && ev.Originals == nil }

// Record logs ev at info level.
func (l LogSink) Record(ev Event) {
	if !l.Wants(ev) {
		return
	}
	attrs := []any{"kind", string(ev.Kind), "session", ev.Session}
	if p := ev.Person; p != nil {
		attrs = append(attrs, "person", p.Name)
		if p.Subject != "" {
			attrs = append(attrs, "person_issuer", p.Issuer, "person_subject", p.Subject, "person_email", p.Email, "person_groups", p.Groups)
		}
	}
	switch {
	case ev.Start != nil:
		s := ev.Start
		attrs = append(attrs, "uid", s.Origin.UID, "pid", s.Origin.PID,
			"exe", s.Origin.Exe, "dest", s.Dest.String(), "target", s.Target, "protocol", s.Protocol)
	case ev.End != nil:
		attrs = append(attrs, "reason", ev.End.Reason, "detail", ev.End.Detail, "duration", ev.End.Duration,
			"bytes_in", ev.End.BytesIn, "bytes_out", ev.End.BytesOut)
		for _, m := range ev.End.Masked {
			attrs = append(attrs, "masked."+m.Rule+"."+m.Detector, m.Values)
		}
	case ev.Reveal != nil:
		r := ev.Reveal
		attrs = append(attrs, "uid", r.UID, "by", r.Person, "revealed_session", r.Session, "statements", r.Statements, "copies", r.Copies)
	case ev.Credential != nil:
		c := ev.Credential
		attrs = append(attrs, "mode", c.Mode, "role", c.Role, "groups", c.Groups,
			"expires", c.Expires, "outcome", c.Outcome, "error", c.Error)
		if l := c.Leftovers; l != nil {
			attrs = append(attrs, "leftovers_action", l.Action, "leftovers_owner", l.Owner,
				"leftovers_count", l.Count, "leftovers", l.Objects)
		}
	case ev.Refusal != nil:
		attrs = append(attrs, "reason", ev.Refusal.Reason, "sqlstate", ev.Refusal.SQLState)
	case ev.Approval != nil:
		a := ev.Approval
		attrs = append(attrs, "approval_id", a.ID, "approval_kind", a.Kind, "decision", a.Decision, "by", a.By,
			"reason", a.Reason, "connection", a.Connection, "rule", a.Rule)
	case ev.Decision != nil:
		d := ev.Decision
		attrs = append(attrs, "action", d.Action, "rule", d.Rule, "reason", d.Reason, "protocol", d.Protocol,
			"sql", d.SQL, "class", d.Class)
		if d.By != "" {
			attrs = append(attrs, "by", d.By)
		}
	case ev.Identity != nil:
		attrs = append(attrs, "uid", ev.Identity.UID, "by", ev.Identity.By, "outcome", ev.Identity.Outcome, "error", ev.Identity.Error)
	}
	l.Logger.Info("event", attrs...)
}

// Fanout sends each event to every sink.
type Fanout []Sink

// Record hands ev to each sink in turn.
func (f Fanout) Record(ev Event) {
	for _, s := range f {
		s.Record(ev)
	}
}
