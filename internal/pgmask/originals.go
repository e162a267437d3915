package pgmask

import (
	"encoding/hex"
	"log/slog"

	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/session"
)

// Originals keeps the compliance copy of one session: the values the stage
// replaced in DataRows, per statement, sealed to the compliance public key
// when the statement completes and recorded as a mask.originals event. The
// plaintext lives only here, between the row and the statement's end, and
// is cleared once sealed. Server side of the stage only.
type Originals struct {
	sealer *compliance.Sealer
	sess   *session.Session
	max    int
	log    *slog.Logger

	cp   compliance.Copy
	used int
	row  int
	any  bool // a value of the current row was kept
}

// NewOriginals returns the collector for sess; max bounds the bytes of
// originals kept per statement.
func NewOriginals(s *compliance.Sealer, sess *session.Session, max int, log *slog.Logger) *Originals {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Originals{sealer: s, sess: sess, max: max, log: log}
}

// KeepOriginals makes the stage hand every value it replaces in a DataRow
// to o.
func (s *Stage) KeepOriginals(o *Originals) { s.orig = o }

// keep notes that column col's value v became masked (nil: sent NULL).
func (o *Originals) keep(col int, f *field, v, masked []byte) {
	if o.used >= o.max {
		o.cp.Truncated = true
		return
	}
	orig := string(v)
	if f.format == 1 && !textual(f.oid) {
		orig = `\x` + hex.EncodeToString(v)
	}
	rule := f.col.RuleName()
	if f.null {
		rule = "airlock: source unknown"
	} else if f.derived {
		rule = "airlock: derived"
	}
	o.add(col, rule, orig, masked)
}

func (o *Originals) add(col int, rule, orig string, masked []byte) {
	if o.used >= o.max {
		o.cp.Truncated = true
		return
	}
	e := compliance.Entry{Row: o.row, Column: col, Rule: rule, Original: orig}
	if masked != nil {
		m := string(masked)
		e.Masked = &m
	}
	o.used += len(orig) + len(masked) + len(e.Rule) + 16
	o.cp.Entries = append(o.cp.Entries, e)
}

// line notes a COPY TO STDOUT line the detectors read: kept whole (column
// -1) when they masked something in it.
func (o *Originals) line(v, masked []byte, changed bool) {
	if changed {
		o.add(-1, "detectors", string(v), masked)
	}
	o.endRow()
}

// endRow moves on to the next row of the result.
func (o *Originals) endRow() { o.row++ }

// end seals the statement's copy, if it kept anything, and records it. The
// pipe numbers a statement before its server stages see the message that
// completes it, so the session's count is that statement's number.
func (o *Originals) end() {
	o.row = 0
	if len(o.cp.Entries) == 0 {
		o.cp.Truncated = false
		return
	}
	n := len(o.cp.Entries)
	sealed, err := o.sealer.Seal(&o.cp)
	for i := range o.cp.Entries {
		o.cp.Entries[i] = compliance.Entry{}
	}
	ev := &session.Originals{Statement: o.sess.Stats.Statements.Load(), Recipients: o.sealer.Recipients(),
		Values: n, Truncated: o.cp.Truncated, Sealed: sealed}
	o.cp = compliance.Copy{Entries: o.cp.Entries[:0]}
	o.used = 0
	if err != nil {
		// The client already has its masked result; what is lost is
		// the copy, and the record says so.
		o.log.Error("pgmask: compliance copy not sealed", "session", o.sess.ID, "err", err)
		ev.Sealed = nil
	}
	o.sess.Emit(session.Event{Kind: session.KindMaskOriginals, Originals: ev})
}

// resultDone ends the compliance copy's statement at a message that
// completes one.
func (s *Stage) resultDone(typ byte) {
	switch typ {
	case 'C', 's', 'I', 'E', 'Z':
		s.orig.end()
	}
}
