package control

import (
	"context"
	"errors"
	"time"

	"github.com/airlockhq/airlock/internal/approval"
)

// ApprovalCall names a request to decide, or asks for access.
type ApprovalCall struct {
	ID         string `json:"id,omitempty"`         // approve, deny
	Reason     string `json:"reason,omitempty"`     // deny, request
	Connection string `json:"connection,omitempty"` // request
	For        string `json:"for,omitempty"`        // request: a duration
}

// ApprovalHandler is implemented by daemons that hold requests for
// approval. The caller is the peer's uid and the person bound to it.
type ApprovalHandler interface {
	Approvals(ctx context.Context, p Peer) ([]approval.Request, error)
	Decide(ctx context.Context, p Peer, id string, approve bool, reason string) (*approval.Request, error)
	RequestAccess(ctx context.Context, p Peer, connection string, d time.Duration, reason string) (*approval.Request, error)
}

func (s *Server) approval(ctx context.Context, peer Peer, req *Request, rep *Reply) error {
	h, ok := s.h.(ApprovalHandler)
	if !ok {
		return errors.New("this airlockd does not hold approvals")
	}
	c := req.Approval
	if c == nil {
		c = &ApprovalCall{}
	}
	var err error
	switch req.Op {
	case "approvals":
		rep.Approvals, err = h.Approvals(ctx, peer)
		if rep.Approvals == nil {
			rep.Approvals = []approval.Request{}
		}
	case "approve", "deny":
		if c.ID == "" {
			return errors.New("name the request: airlock " + req.Op + " ID (see `airlock approvals`)")
		}
		rep.Approval, err = h.Decide(ctx, peer, c.ID, req.Op == "approve", c.Reason)
	case "request":
		d, perr := time.ParseDuration(c.For)
		if perr != nil || d <= 0 {
			return errors.New("--for takes a positive duration, e.g. 30m or 2h")
		}
		rep.Approval, err = h.RequestAccess(ctx, peer, c.Connection, d, c.Reason)
	}
	return err
}
