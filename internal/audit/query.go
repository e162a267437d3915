package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Filter selects sessions for `airlock sessions`.
type Filter struct {
	Person     string    `json:"person,omitempty"`     // name or email
	Connection string    `json:"connection,omitempty"` //
	Process    string    `json:"process,omitempty"`    // pid, or part of the executable path
	Since      time.Time `json:"since,omitempty"`
	Until      time.Time `json:"until,omitempty"`
	UID        *uint32   `json:"uid,omitempty"` // set by the daemon for callers who may only see their own
	Limit      int       `json:"limit,omitempty"`
}

// SessionSummary is one line of `airlock sessions`.
type SessionSummary struct {
	ID         string       `json:"id"`
	Daemon     string       `json:"daemon"`
	Start      SessionStart `json:"start"`
	End        *SessionEnd  `json:"end,omitempty"` // nil while live
	EndTime    time.Time    `json:"end_time,omitempty"`
	Statements int64        `json:"statements"`
}

// SessionDetail is a session's every record, in order.
type SessionDetail struct {
	SessionSummary
	Records []Record `json:"records"`
}

// Sessions lists sessions, newest first.
func (s *Store) Sessions(ctx context.Context, f Filter) ([]SessionSummary, error) {
	q := `SELECT ` + recordCols + ` FROM audit_records WHERE kind = 'session.start'`
	var args []any
	if f.Person != "" {
		q += ` AND (person = ? OR data LIKE ? ESCAPE '\')`
		args = append(args, f.Person, `%"email":"`+likeEscape(f.Person)+`"%`)
	}
	if f.Connection != "" {
		q += ` AND connection = ?`
		args = append(args, f.Connection)
	}
	if f.Process != "" {
		q += ` AND (exe LIKE ? ESCAPE '\' OR CAST(pid AS TEXT) = ?)`
		args = append(args, "%"+likeEscape(f.Process)+"%", f.Process)
	}
	if !f.Since.IsZero() {
		q += ` AND time_ns >= ?`
		args = append(args, f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		q += ` AND time_ns < ?`
		args = append(args, f.Until.UnixNano())
	}
	if f.UID != nil {
		q += ` AND uid = ?`
		args = append(args, int64(*f.UID))
	}
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 200
	}
	q += ` ORDER BY time_ns DESC LIMIT ?`
	args = append(args, f.Limit)
	rows, err := s.db.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	starts, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	out := make([]SessionSummary, 0, len(starts))
	for _, r := range starts {
		sum := SessionSummary{ID: r.Session, Daemon: r.Daemon}
		if err := json.Unmarshal(r.Data, &sum.Start); err != nil {
			return nil, fmt.Errorf("session %s: decode start: %w", r.Session, err)
		}
		if err := s.fillSummary(ctx, &sum); err != nil {
			return nil, err
		}
		out = append(out, sum)
	}
	return out, nil
}

func (s *Store) fillSummary(ctx context.Context, sum *SessionSummary) error {
	var data string
	var ns int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT data, time_ns FROM audit_records WHERE session = ? AND daemon = ? AND kind = 'session.end' ORDER BY seq DESC LIMIT 1`),
		sum.ID, sum.Daemon).Scan(&data, &ns)
	if err == nil {
		var e SessionEnd
		if json.Unmarshal([]byte(data), &e) == nil {
			sum.End, sum.EndTime = &e, time.Unix(0, ns).UTC()
		}
	}
	return s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM audit_records WHERE session = ? AND daemon = ? AND kind = 'statement'`),
		sum.ID, sum.Daemon).Scan(&sum.Statements)
}

// Session returns one session with its records; uid, if set, restricts it
// to that user's sessions. Not found is (nil, nil).
func (s *Store) Session(ctx context.Context, id string, uid *uint32) (*SessionDetail, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+recordCols+` FROM audit_records WHERE session = ? ORDER BY daemon, seq`), id)
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	rs, err := scanRecords(rows)
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	d := &SessionDetail{}
	found := false
	for _, r := range rs {
		if r.Kind == "session.start" {
			if uid != nil && r.cols.uid != int64(*uid) {
				return nil, nil
			}
			found = true
			d.ID, d.Daemon = r.Session, r.Daemon
			if err := json.Unmarshal(r.Data, &d.Start); err != nil {
				return nil, fmt.Errorf("session %s: decode start: %w", id, err)
			}
		}
		d.Records = append(d.Records, r.Record)
	}
	if !found {
		return nil, nil
	}
	if err := s.fillSummary(ctx, &d.SessionSummary); err != nil {
		return nil, err
	}
	return d, nil
}

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
