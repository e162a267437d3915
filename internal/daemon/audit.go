package daemon

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"time"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/pgcred"
	"github.com/airlockhq/airlock/internal/session"
)

// openAudit opens the session record. A team store that is down is not an
// error (records spool); a local one that cannot be opened is.
func (d *Daemon) openAudit(ctx context.Context) error {
	a := d.cfg.Audit
	var password string
	if a.PasswordFile != "" {
		var err error
		if password, err = pgcred.ReadSecretFile(a.PasswordFile); err != nil {
			return fmt.Errorf("audit.password_file: %w", err)
		}
	}
	w, err := audit.Open(ctx, audit.Options{
		StateDir: d.cfg.StateDir, Store: a.Store, Password: password,
		Policy:             audit.Policy{RecordParams: a.RecordParams},
		CommitInterval:     a.CommitInterval.D(),
		CheckpointInterval: a.CheckpointInterval.D(),
		Retention:          time.Duration(a.RetentionDays) * 24 * time.Hour,
		SpoolMax:           int64(a.SpoolMaxMB) << 20,
		Logger:             d.log,
		Bench:              benchAuditSkip(),
	})
	if err != nil {
		return fmt.Errorf("open the audit record: %w", err)
	}
	d.audit = w
	// The writer outlives the sessions: it stops only after every session
	// has ended and recorded its end (closers run after serve returns).
	d.closers = append(d.closers, d.watch(context.WithoutCancel(ctx), w.Run))
	return nil
}

// auditor reports whether the caller may see every session: root, or a
// member of the configured auditor group.
func (d *Daemon) auditor(p control.Peer) bool {
	if p.UID == 0 {
		return true
	}
	name := d.cfg.Audit.AuditorGroup
	if name == "" {
		return false
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return false
	}
	if strconv.FormatUint(uint64(p.GID), 10) == g.Gid {
		return true
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(p.UID), 10))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	return err == nil && slices.Contains(gids, g.Gid)
}

var errNotAuditor = errors.New("only root and members of audit.auditor_group may do this; you can list and replay your own sessions")

// Audit implements control.AuditHandler.
func (d *Daemon) Audit(ctx context.Context, p control.Peer, op string, q *control.AuditQuery) (*control.AuditReply, error) {
	if d.audit == nil {
		return nil, errors.New("the audit record is not open")
	}
	st := d.audit.Store()
	all := d.auditor(p)
	var own *uint32
	if !all {
		uid := p.UID
		own = &uid
	}
	rep := &control.AuditReply{}
	var err error
	if op == "sessions" || op == "session" || (op == "audit.export" && q.AfterDaemon == "" && q.AfterSeq == 0) {
		// The store lags the journal by up to a shipping interval: a
		// reader sees everything recorded so far (unless the store is
		// down, when it sees what the store has).
		if d.audit.Status().Reachable {
			if ferr := d.audit.Flush(ctx); ferr != nil {
				d.log.Warn("audit: ship before reading", "err", ferr)
			}
		}
	}
	switch op {
	case "sessions":
		f := q.Filter
		f.UID = own
		rep.Sessions, err = st.Sessions(ctx, f)
	case "session":
		rep.Session, err = st.Session(ctx, q.ID, own)
		if err == nil && rep.Session == nil {
			err = fmt.Errorf("no session %q that you may see (`airlock sessions` lists them)", q.ID)
		}
	case "audit.export":
		if !all {
			return nil, errNotAuditor
		}
		limit := q.Limit
		if limit <= 0 || limit > 5000 {
			limit = 5000
		}
		rep.Records, err = st.Scan(ctx, q.AfterDaemon, q.AfterSeq, limit)
	case "audit.verify":
		if !all {
			return nil, errNotAuditor
		}
		// Everything written so far goes in and is signed first, so that
		// the whole record is sealed by a checkpoint.
		if ferr := d.audit.Seal(ctx); ferr != nil {
			d.log.Warn("audit: ship before verify", "err", ferr)
		}
		rep.Verify, err = audit.Verify(ctx, st, "", d.audit.Expect())
	case "audit.reveal":
		rep.Copies, err = d.reveal(ctx, p, all, q)
	case "audit.keys":
		rep.Keys, err = st.Keys(ctx, "")
	case "audit.rotate-key":
		if p.UID != 0 {
			return nil, errors.New("only root may rotate the audit signing key")
		}
		rep.KeyID, err = d.audit.RotateKey()
		if err == nil {
			d.log.Info("audit: signing key rotated", "key_id", rep.KeyID)
		}
	default:
		err = fmt.Errorf("unknown audit op %q", op)
	}
	if err != nil {
		return nil, err
	}
	if rep.Session != nil {
		d.renderSamples(rep.Session.Records)
	}
	d.renderSamples(rep.Records)
	return rep, nil
}

// renderSamples turns the result samples of statement records, stored as
// the wire bytes the client got, into the text rows the export schema has
// (docs/AUDIT.md, Result samples). A record whose stored sample does not
// read (the store was edited) is handed out as stored, and said so here;
// `airlock audit verify` names the edit.
func (d *Daemon) renderSamples(recs []audit.Record) {
	for i := range recs {
		if err := audit.RenderSample(&recs[i]); err != nil {
			d.log.Warn("audit: a stored result sample does not read; the record is handed out as stored",
				"daemon", recs[i].Daemon, "err", err)
		}
	}
}

// reveal hands an auditor a session's compliance copies, still encrypted,
// once the audit record says who fetched which: decrypting them needs the
// private key, which only the caller has.
func (d *Daemon) reveal(ctx context.Context, p control.Peer, all bool, q *control.AuditQuery) (*audit.Copies, error) {
	if !all {
		return nil, errNotAuditor
	}
	// What the daemon wrote so far is in the store before it is read.
	if err := d.audit.Flush(ctx); err != nil {
		return nil, fmt.Errorf("audit store: %w", err)
	}
	c, err := d.audit.Store().Copies(ctx, q.ID, q.Statements)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("no session %q in the audit record (`airlock sessions` lists them)", q.ID)
	}
	who := d.caller(ctx, p).Person
	if who.Name == "" {
		who.Name = "uid " + strconv.FormatUint(uint64(p.UID), 10)
	}
	d.audit.Record(session.Event{Time: time.Now(), Kind: session.KindAuditReveal, Session: c.Session, Person: &who,
		Reveal: &session.Reveal{UID: p.UID, Person: who.Name, Session: c.Session, Statements: q.Statements, Copies: len(c.Copies)}})
	// The record is durable in the journal already; shipping it now lets
	// the next read of the session (sessions show) see it too.
	if err := d.audit.Flush(ctx); err != nil {
		d.log.Warn("audit: ship the reveal record", "err", err)
	}
	return c, nil
}
