package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/airlockhq/airlock/internal/session"
)

// Kinds of the compliance copy and of reading it.
const (
	KindMaskOriginals = string(session.KindMaskOriginals)
	KindAuditReveal   = string(session.KindAuditReveal)
)

// Copies is what `airlock audit reveal` gets: a session's compliance copies
// (still encrypted: only the caller's private key opens them) and the
// statements they belong to.
type Copies struct {
	Session    string          `json:"session"`
	Start      SessionStart    `json:"start"`
	Statements []Statement     `json:"statements"`
	Copies     []MaskOriginals `json:"copies"`
}

// Copies returns session id's compliance copies, of the statements
// numbered in only (every statement when empty). Not found is (nil, nil).
func (s *Store) Copies(ctx context.Context, id string, only []int64) (*Copies, error) {
	d, err := s.Session(ctx, id, nil)
	if err != nil || d == nil {
		return nil, err
	}
	out := &Copies{Session: d.ID, Start: d.Start}
	want := func(n int64) bool { return len(only) == 0 || slices.Contains(only, n) }
	for _, r := range d.Records {
		switch r.Kind {
		case "statement":
			var st Statement
			if err := json.Unmarshal(r.Data, &st); err != nil {
				return nil, fmt.Errorf("session %s: decode statement at seq %d: %w", id, r.Seq, err)
			}
			if want(st.Number) {
				out.Statements = append(out.Statements, st)
			}
		case KindMaskOriginals:
			var c MaskOriginals
			if err := json.Unmarshal(r.Data, &c); err != nil {
				return nil, fmt.Errorf("session %s: decode compliance copy at seq %d: %w", id, r.Seq, err)
			}
			if want(c.Statement) {
				out.Copies = append(out.Copies, c)
			}
		}
	}
	return out, nil
}
