package control

import (
	"context"
	"slices"

	"github.com/airlockhq/airlock/internal/audit"
)

// AuditOps are the calls that read (or sign) the audit record.
var AuditOps = []string{"sessions", "session", "audit.export", "audit.verify", "audit.keys", "audit.rotate-key", "audit.reveal"}

func isAuditOp(op string) bool { return slices.Contains(AuditOps, op) }

// AuditQuery is the argument of an audit op.
type AuditQuery struct {
	Filter audit.Filter `json:"filter,omitempty"` // sessions
	ID     string       `json:"id,omitempty"`     // session
	// audit.export pages through (daemon, seq) order.
	AfterDaemon string `json:"after_daemon,omitempty"`
	AfterSeq    int64  `json:"after_seq,omitempty"`
	Limit       int    `json:"limit,omitempty"`
	// audit.reveal: the statements (by number) whose compliance copies
	// to fetch; empty: all of the session's (ID).
	Statements []int64 `json:"statements,omitempty"`
}

// AuditReply answers an audit op.
type AuditReply struct {
	Sessions []audit.SessionSummary `json:"sessions,omitempty"`
	Session  *audit.SessionDetail   `json:"session,omitempty"`
	Records  []audit.Record         `json:"records,omitempty"`
	Verify   *audit.Report          `json:"verify,omitempty"`
	Keys     []audit.Key            `json:"keys,omitempty"`
	KeyID    string                 `json:"key_id,omitempty"`
	Copies   *audit.Copies          `json:"copies,omitempty"`
}

// AuditHandler answers audit ops; the daemon implements it. Who may see
// what is its decision, made from the kernel's word on the caller (p).
type AuditHandler interface {
	Audit(ctx context.Context, p Peer, op string, q *AuditQuery) (*AuditReply, error)
}
