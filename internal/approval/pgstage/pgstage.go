// Package pgstage is the PostgreSQL pipeline's side of approvals: a hold
// that asks the approval Broker and resumes or refuses on its answer. It is
// apart from package approval so that the CLI, which shares approval's
// types, does not link the proxy.
package pgstage

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// Asker is the Broker as a stage needs it.
type Asker interface {
	Ask(ctx context.Context, req approval.HoldRequest, done func(approved bool, by, reason string))
	Timeout() time.Duration
}

// PatternStage holds Query and Parse messages whose SQL matches one of its
// patterns and asks the Broker. It stands in for the policy engine's stage
// (which classifies SQL with PostgreSQL's parser and decides holds by rule)
// until that lands, and lets the approval path be tested end to end; a
// regex is no guardrail against rewording.
type PatternStage struct {
	Patterns []*regexp.Regexp
	Broker   Asker
	Session  *session.Session
}

// ClientTypes implements pgwire.ClientStage.
func (s *PatternStage) ClientTypes() string { return "QP" }

// Client implements pgwire.ClientStage.
func (s *PatternStage) Client(m *pgwire.ClientMsg) pgwire.Verdict {
	sql := string(m.SQL())
	for _, re := range s.Patterns {
		if re.MatchString(sql) {
			return HoldFor(s.Broker, approval.HoldRequest{Session: s.Session, SQL: sql, Rule: "approvals.hold_statements",
				Reason: "matches " + re.String()})
		}
	}
	return pgwire.Verdict{Action: pgwire.Forward}
}

// HoldFor is the Verdict that holds a message until an approver decides
// req: the statement then runs, or the client gets SQLSTATE 42501 saying
// who denied it and why, or that nobody decided in time. The client's
// cancel ends the hold and withdraws the request.
func HoldFor(b Asker, req approval.HoldRequest) pgwire.Verdict {
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = b.Timeout()
	}
	req.Timeout = timeout
	// The Broker's timeout decides; the hold's own is a backstop.
	h := pgwire.NewHold(timeout+30*time.Second, pgwire.ErrorReply{Code: "42501",
		Message: "Airlock: no approver decided in time; the statement was not run"})
	ctx, cancel := context.WithCancel(context.Background())
	// Owned by the hold: it ends when the hold is decided, which the
	// Broker's timeout guarantees.
	go func() { <-h.Done(); cancel() }()
	b.Ask(ctx, req, func(approved bool, by, reason string) {
		if approved {
			h.Approve()
			return
		}
		h.Resolve(pgwire.Verdict{Action: pgwire.Reply, Error: denial(by, reason)})
	})
	return pgwire.Verdict{Action: pgwire.Hold, Hold: h}
}

func denial(by, reason string) *pgwire.ErrorReply {
	if by == "" {
		return &pgwire.ErrorReply{Code: "42501", Message: "Airlock: statement not approved: " + reason + "; it was not run",
			Hint: "ask an approver to watch `airlock approvals`, then run it again"}
	}
	msg := fmt.Sprintf("Airlock: statement denied by %s", by)
	if reason != "" {
		msg += ": " + reason
	}
	return &pgwire.ErrorReply{Code: "42501", Message: msg + "; it was not run"}
}
