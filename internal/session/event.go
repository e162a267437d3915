package session

import (
	"fmt"
	"log/slog"
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
	// KindDecision is a policy decision on a statement other than a plain
	// allow: refused, held, approved or denied by a person, or allowed by
	// a named rule.
	KindDecision Kind = "decision"
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
	Decision   *Decision   `json:"decision,omitempty"`
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

// End closes a session.
type End struct {
	Reason   string        `json:"reason"`
	Duration time.Duration `json:"duration"`
	BytesIn  int64         `json:"bytes_in"`  // client to upstream
	BytesOut int64         `json:"bytes_out"` // upstream to client
}

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
}

// LogSink writes events as structured log lines until the audit store lands.
// Statement parameters are values from the database's users (names, emails,
// tokens): they are left out unless Params is set.
type LogSink struct {
	Logger *slog.Logger
	Params bool // log statement parameters too
}

// Record logs ev at info level.
func (l LogSink) Record(ev Event) {
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
		attrs = append(attrs, "reason", ev.End.Reason, "duration", ev.End.Duration,
			"bytes_in", ev.End.BytesIn, "bytes_out", ev.End.BytesOut)
	case ev.Statement != nil:
		st := ev.Statement
		attrs = append(attrs, "protocol", st.Protocol, "sql", st.SQL)
		if l.Params {
			attrs = append(attrs, "params", st.Params)
		} else if len(st.Params) > 0 {
			attrs = append(attrs, "params", fmt.Sprintf("<%d not logged>", len(st.Params)))
		}
		if st.FunctionOID != 0 {
			attrs = append(attrs, "function_oid", st.FunctionOID)
		}
		attrs = append(attrs, "tag", st.Tag, "rows", st.Rows, "bytes", st.Bytes, "duration", st.Duration,
			"sqlstate", st.SQLState)
		if st.Decision != "" {
			attrs = append(attrs, "decision", st.Decision)
		}
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
