package audit

import (
	"context"
	"database/sql"
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
	q := `SELECT ` + sessionCols + ` FROM audit_sessions WHERE 1 = 1`
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
	starts, err := scanSessions(rows)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	out := make([]SessionSummary, 0, len(starts))
	for _, r := range starts {
		sum := SessionSummary{ID: r.Session, Daemon: r.Daemon}
		if err := json.Unmarshal([]byte(r.Data), &sum.Start); err != nil {
			return nil, fmt.Errorf("session %s: decode start: %w", r.Session, err)
		}
		if err := s.fillSummary(ctx, &sum); err != nil {
			return nil, err
		}
		out = append(out, sum)
	}
	return out, nil
}

// fillSummary adds the end and the statement count, from the session's
// rows in audit_session_blocks.
func (s *Store) fillSummary(ctx context.Context, sum *SessionSummary) error {
	var data string
	var ns int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT end_data, end_ns FROM audit_session_blocks WHERE session = ? AND daemon = ? AND end_seq > 0 ORDER BY end_seq DESC LIMIT 1`),
		sum.ID, sum.Daemon).Scan(&data, &ns)
	if err == nil {
		var e SessionEnd
		if json.Unmarshal([]byte(data), &e) == nil {
			sum.End, sum.EndTime = &e, time.Unix(0, ns).UTC()
		}
	}
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT COALESCE(SUM(statements), 0) FROM audit_session_blocks WHERE session = ? AND daemon = ?`),
		sum.ID, sum.Daemon).Scan(&sum.Statements); err != nil {
		return fmt.Errorf("session %s: count statements: %w", sum.ID, err)
	}
	return nil
}

// Session returns one session with its records; uid, if set, restricts it
// to that user's sessions. Not found is (nil, nil).
func (s *Store) Session(ctx context.Context, id string, uid *uint32) (*SessionDetail, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+sessionCols+` FROM audit_sessions WHERE session = ? ORDER BY daemon, seq`), id)
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	starts, err := scanSessions(rows)
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	if len(starts) == 0 {
		return nil, nil
	}
	d := &SessionDetail{}
	for _, r := range starts {
		if uid != nil && r.cols.uid != int64(*uid) {
			return nil, nil
		}
	}
	if len(starts) > 1 {
		// Two sessions under one id (a clash of random ids, or a start
		// written twice): their records, and the reveal records naming
		// the id, cannot be told apart by id, and merging them would show
		// one session's statements as the other's person's.
		where := make([]string, len(starts))
		for i, r := range starts {
			where[i] = fmt.Sprintf("%s seq %d", r.Daemon, r.Seq)
		}
		return nil, fmt.Errorf("session id %s names %d sessions (started at %s): not read as one; `airlock audit export` has each with its daemon", id, len(starts), strings.Join(where, ", "))
	}
	for _, r := range starts {
		d.ID, d.Daemon = r.Session, r.Daemon
		if err := json.Unmarshal([]byte(r.Data), &d.Start); err != nil {
			return nil, fmt.Errorf("session %s: decode start: %w", id, err)
		}
	}
	// The blocks that hold the session's records, read and filtered.
	brows, err := s.db.QueryContext(ctx, s.q(`SELECT b.daemon, b.first_seq, b.records, b.file, b.file_off, b.file_len, b.text_crc FROM audit_session_blocks sb
		JOIN audit_blocks b ON b.daemon = sb.daemon AND b.first_seq = sb.first_seq
		WHERE sb.session = ? ORDER BY b.daemon, b.first_seq`), id)
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	defer brows.Close()
	for brows.Next() {
		var daemon, text string
		var first int64
		var file, sum sql.NullString
		var off, length sql.NullInt64
		if err := brows.Scan(&daemon, &first, &text, &file, &off, &length, &sum); err != nil {
			return nil, fmt.Errorf("read session %s: %w", id, err)
		}
		text, err := s.blockText(text, file, off, length, sum)
		if err != nil {
			return nil, fmt.Errorf("read session %s: the block at seq %d of %s cannot be read (airlock audit verify names the damage): %w", id, first, daemon, err)
		}
		recs, err := parseBlock(daemon, text)
		if err != nil {
			return nil, fmt.Errorf("read session %s: the block at seq %d of %s cannot be read (airlock audit verify names the damage): %w", id, first, daemon, err)
		}
		for _, r := range recs {
			if r.Session == id {
				d.Records = append(d.Records, r)
			}
		}
	}
	if err := brows.Err(); err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	if err := s.fillSummary(ctx, &d.SessionSummary); err != nil {
		return nil, err
	}
	return d, nil
}

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
