// Package guard is the pipeline stage that enforces the SQL policy on a
// PostgreSQL session: every simple Query, every extended batch and every
// fast-path FunctionCall is classified (internal/sqlclass), decided
// (internal/policy) and forwarded, refused with SQLSTATE 42501 naming the
// rule, or held for a person's approval.
//
// Extended batches are decided whole, before any of their messages reaches
// the server: a batch with one refused Parse fails entirely, so nothing of
// it runs. Statements prepared by name (a protocol Parse, or SQL PREPARE)
// keep their decision under the name; a later Bind or EXECUTE of the name
// gets the same decision, so re-using a prepared statement does not get
// around a rule.
package guard

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// Approver takes a held statement to a person. done may be called from any
// goroutine, once; a request nobody decides before req.Timeout is denied by
// the pipeline itself.
type Approver interface {
	Ask(ctx context.Context, req HoldRequest, done func(approved bool, by string, reason string))
}

// HoldRequest is a statement waiting for a person's approval.
type HoldRequest struct {
	Session *session.Session
	SQL     string           // redacted: never carries a secret
	Class   *sqlclass.Result // nil for a fast-path call
	Rule    string
	Reason  string
	Timeout time.Duration
}

// Guard enforces a connection's policy. One Guard serves every session of
// the connection; Stages gives each session its own stage.
type Guard struct {
	Connection string
	Policies   *policy.Store
	Classifier *sqlclass.Classifier
	// Ctx bounds approval requests (the daemon's lifetime).
	Ctx context.Context

	approver atomic.Pointer[approverBox] // nil: holds are denied
}

type approverBox struct{ a Approver }

// SetApprover sets who decides holds (nil: holds are refused), for
// sessions live and new, from any goroutine.
func (g *Guard) SetApprover(a Approver) {
	if a == nil {
		g.approver.Store(nil)
		return
	}
	g.approver.Store(&approverBox{a})
}

func (g *Guard) currentApprover() Approver {
	if b := g.approver.Load(); b != nil {
		return b.a
	}
	return nil
}

// Stages returns the session's guard stage, for pgwire.Options.Stages.
func (g *Guard) Stages(sess *session.Session) pgwire.Stages {
	s := &Stage{g: g, sess: sess}
	return pgwire.Stages{Batch: []pgwire.BatchStage{s}, Client: []pgwire.ClientStage{s}}
}

// Stage is one session's guard. The pipeline calls it from the session's
// client pump only.
type Stage struct {
	g    *Guard
	sess *session.Session
	// prepared maps a prepared statement's name to its decision. SQL
	// PREPARE and protocol Parse share PostgreSQL's one namespace.
	prepared stmtTable
	memo     *policy.Memo // decisions of the policy in force, per classification
}

// stmtTable maps prepared statement names to their decisions. The unnamed
// statement, which every extended query of libpq and pgx parses, has a
// field of its own: a map's first entry costs a group of eight slots (about
// 800 bytes), which every idle session that ever ran such a query would
// hold.
type stmtTable struct {
	unnamed    preparedStmt
	hasUnnamed bool
	named      map[string]preparedStmt // nil until a named statement is prepared
}

func (t *stmtTable) get(name string) (preparedStmt, bool) {
	if name == "" {
		return t.unnamed, t.hasUnnamed
	}
	ps, ok := t.named[name]
	return ps, ok
}

func (t *stmtTable) set(name string, ps preparedStmt) {
	if name == "" {
		t.unnamed, t.hasUnnamed = ps, true
		return
	}
	if t.named == nil {
		t.named = map[string]preparedStmt{}
	}
	t.named[name] = ps
}

func (t *stmtTable) del(name string) {
	if name == "" {
		t.unnamed, t.hasUnnamed = preparedStmt{}, false
		return
	}
	delete(t.named, name)
}

func (t *stmtTable) clear() {
	t.unnamed, t.hasUnnamed = preparedStmt{}, false
	clear(t.named)
}

// decider is the session's memo of the policy in force; a reload starts a
// new one at the next statement.
func (s *Stage) decider() *policy.Memo {
	if p := s.g.Policies.Policy(); s.memo == nil || s.memo.Policy() != p {
		s.memo = p.Memo(s.who())
	}
	return s.memo
}

func (s *Stage) who() policy.Who {
	return policy.Who{Connection: s.g.Connection, Groups: s.sess.Person.Groups, Class: classOf(s.sess)}
}

// classOf is the session's process class as the policy reads it: a
// session whose origin has none is a person's.
func classOf(sess *session.Session) string {
	if sess.Origin.Class == "" {
		return policy.ClassPerson
	}
	return sess.Origin.Class
}

// ClientTypes: simple queries and fast-path calls; extended batches come
// through Batch.
func (s *Stage) ClientTypes() string { return "QF" }

// Client decides a simple Query or a FunctionCall.
func (s *Stage) Client(m *pgwire.ClientMsg) pgwire.Verdict {
	if m.Type == 'F' {
		d := s.g.Policies.Policy().DecideFastPath("", s.who())
		return s.verdict(d, "function", fastPathText(m.Body), nil)
	}
	sql := m.SQLText()
	d, res, err := s.decide(s.decider(), sql)
	if silent(d) {
		if res != nil {
			s.remember(res, d)
		}
		return pgwire.Verdict{Action: pgwire.Forward}
	}
	v := s.verdict(d, "simple", redacted(res, err, sql), res)
	if v.Action != pgwire.Reply && res != nil {
		s.remember(res, d)
	}
	return v
}

// silent is the decision of nearly every statement: allowed by no rule,
// nothing to record or show.
func silent(d policy.Decision) bool { return d.Action == policy.Allow && d.Rule == "" }

// decide classifies sql and decides it. A text the classifier serves by
// its shape (sqlclass.Classifier.ClassifyShape) is decided on the shape's
// Result, which the memo has seen before, unless a rule matches the text;
// res is then the shape's, good for nothing but remember, and only when
// the decision is silent: a decision that is shown or kept gets sql's own
// Result.
func (s *Stage) decide(dec *policy.Memo, sql string) (policy.Decision, *sqlclass.Result, error) {
	res, shape, err := s.g.Classifier.ClassifyShape(sql)
	if shape && dec.Policy().ReadsText() {
		res, err = s.g.Classifier.Classify(sql)
		shape = false
	}
	d := dec.Decide(res, err)
	d = s.withPrepared(d, res, err == nil)
	if shape && !silent(d) {
		res, err = s.g.Classifier.Classify(sql)
	}
	return d, res, err
}

// Batch decides an extended batch as a whole.
func (s *Stage) Batch(b *pgwire.Batch) pgwire.Verdict {
	dec := s.decider()
	best := policy.Decision{Action: policy.Allow}
	var bestSQL string
	var bestRes *sqlclass.Result
	var names batchNames // statements parsed or closed in this batch
	consider := func(d policy.Decision, sql string, res *sqlclass.Result) {
		if strictness(d.Action) > strictness(best.Action) || (bestSQL == "" && d.Rule != "") {
			best, bestSQL, bestRes = d, sql, res
		}
	}
	for i := range b.Msgs {
		m := &b.Msgs[i]
		switch m.Type {
		case 'P':
			name, qb, ok := parseBody(m.Body)
			if !ok {
				continue // the pipeline refuses malformed messages itself
			}
			q := m.SQLText()
			if len(q) != len(qb) {
				q = string(qb) // the rest of the Parse is malformed: judge its text all the same
			}
			d, res, err := s.decide(dec, q)
			if silent(d) {
				// Nothing of it is ever shown (res may be its shape's).
				names.parse(name, preparedStmt{d: d})
				continue
			}
			sql := redacted(res, err, q)
			if d.Action == policy.Deny {
				consider(d, sql, res)
				continue
			}
			// A Parse that is only prepared runs nothing: a hold waits
			// for the Bind that runs it (in this batch or a later one).
			names.parse(name, preparedStmt{d, heldText{sql, res}})
			if d.Rule != "" && d.Action == policy.Allow {
				consider(d, sql, res)
			}
		case 'B':
			stmt, ok := bindStatement(m.Body)
			if !ok {
				continue
			}
			ps, known := names.parsed(stmt)
			if !known {
				ps, known = s.prepared.get(string(stmt))
			}
			if known && ps.d.Action != policy.Allow {
				consider(ps.d, ps.sql, ps.res)
			}
		case 'C':
			if len(m.Body) > 1 && m.Body[0] == 'S' {
				name, _ := cstr(m.Body[1:])
				names.close(name)
			}
		}
	}
	v := s.verdict(best, "extended", bestSQL, bestRes)
	if v.Action != pgwire.Reply {
		for i := range names.len() {
			if e := names.at(i); e.closed {
				s.prepared.del(e.name)
			} else {
				s.prepared.set(e.name, e.ps)
			}
		}
	}
	return v
}

// batchNames are the statements a batch parses or closes, by name, the
// last message for a name deciding. Nearly every batch names one (the
// unnamed statement) or a few: they live in an array on the stack and are
// found by comparing names; a batch naming more gets a slice and a map,
// so that a pipelined batch of many Parses stays linear.
type batchNames struct {
	arr   [smallBatch]batchName
	n     int            // of arr used
	more  []batchName    // past arr
	index map[string]int // every position, once more is used
}

type batchName struct {
	name   string
	ps     preparedStmt // when parsed
	closed bool
}

const smallBatch = 4

func (t *batchNames) len() int { return t.n + len(t.more) }

func (t *batchNames) at(i int) *batchName {
	if i < smallBatch {
		return &t.arr[i]
	}
	return &t.more[i-smallBatch]
}

func (t *batchNames) find(name []byte) int {
	if t.index != nil {
		if i, ok := t.index[string(name)]; ok {
			return i
		}
		return -1
	}
	for i := range t.n {
		if t.arr[i].name == string(name) {
			return i
		}
	}
	return -1
}

func (t *batchNames) set(name []byte, e batchName) {
	if i := t.find(name); i >= 0 {
		p := t.at(i)
		e.name = p.name
		*p = e
		return
	}
	e.name = string(name)
	if t.n < smallBatch {
		t.arr[t.n] = e
		t.n++
		return
	}
	if t.index == nil {
		t.index = make(map[string]int, 4*smallBatch)
		for i := range t.n {
			t.index[t.arr[i].name] = i
		}
	}
	t.more = append(t.more, e)
	t.index[e.name] = t.len() - 1
}

func (t *batchNames) parse(name []byte, ps preparedStmt) { t.set(name, batchName{ps: ps}) }

func (t *batchNames) close(name []byte) { t.set(name, batchName{closed: true}) }

// parsed is the statement the batch parsed under name, if it did and did
// not close it after.
func (t *batchNames) parsed(name []byte) (preparedStmt, bool) {
	if i := t.find(name); i >= 0 && !t.at(i).closed {
		return t.at(i).ps, true
	}
	return preparedStmt{}, false
}

type heldText struct {
	sql string
	res *sqlclass.Result
}

// preparedStmt is what a prepared statement's name stands for.
type preparedStmt struct {
	d policy.Decision
	heldText
}

// withPrepared folds in the decisions of statements the string runs by name
// (EXECUTE name, also inside EXPLAIN ANALYZE or CREATE TABLE AS).
func (s *Stage) withPrepared(d policy.Decision, res *sqlclass.Result, ok bool) policy.Decision {
	if !ok || res == nil || !res.Has(sqlclass.FlagRunsPrepared) {
		return d
	}
	res.Walk(func(st *sqlclass.Statement) {
		if !st.Flags.Has(sqlclass.FlagRunsPrepared) || st.PreparedName == "" {
			return
		}
		if ps, ok := s.prepared.get(st.PreparedName); ok && strictness(ps.d.Action) > strictness(d.Action) {
			d = ps.d
		}
	})
	return d
}

// remember keeps the decision of SQL PREPARE under its name and forgets
// DEALLOCATEd ones.
func (s *Stage) remember(res *sqlclass.Result, d policy.Decision) {
	for _, st := range res.Statements {
		switch {
		case st.Flags.Has(sqlclass.FlagPrepare) && st.PreparedName != "":
			s.prepared.set(st.PreparedName, preparedStmt{s.decider().Policy().DecidePrepared(st, s.who()), heldText{st.Redacted, res}})
		case st.Flags.Has(sqlclass.FlagDeallocate):
			if st.PreparedName == "" {
				s.prepared.clear()
			} else {
				s.prepared.del(st.PreparedName)
			}
		}
	}
	_ = d
}

func strictness(a policy.Action) int {
	switch a {
	case policy.Deny:
		return 2
	case policy.Hold:
		return 1
	}
	return 0
}

// verdict turns a decision into the pipeline's answer and records it.
func (s *Stage) verdict(d policy.Decision, protocol, sql string, res *sqlclass.Result) pgwire.Verdict {
	if d.Rule == "" && d.Action == policy.Allow {
		return pgwire.Verdict{Action: pgwire.Forward}
	}
	s.record(d, protocol, sql, "")
	switch d.Action {
	case policy.Allow:
		return pgwire.Verdict{Action: pgwire.Forward}
	case policy.Hold:
		approver := s.g.currentApprover()
		if approver == nil {
			msg := fmt.Sprintf("Airlock: this statement needs a person's approval (rule %s: %s), and no approvals are configured", d.Rule, d.Reason)
			s.record(policy.Decision{Action: policy.Deny, Rule: d.Rule, Reason: "no approver configured"}, protocol, sql, "")
			return refuse(msg, "Ask an administrator to configure approvals, or change the statement.", sql)
		}
		// The most specific timeout wins: the rule's, else the policy's
		// agent_hold_timeout (both in d), else the approvers' own
		// (approvals.timeout).
		timeout := d.Timeout
		if timeout <= 0 {
			timeout = 10 * time.Minute
			if t, ok := approver.(interface{ Timeout() time.Duration }); ok && t.Timeout() > 0 {
				timeout = t.Timeout()
			}
		}
		h := pgwire.NewHold(timeout, pgwire.ErrorReply{Code: "42501",
			Message: fmt.Sprintf("Airlock: nobody approved this statement within %s (rule %s)", timeout, d.Rule)})
		ctx := s.g.Ctx
		if ctx == nil {
			ctx = context.Background()
		}
		req := HoldRequest{Session: s.sess, SQL: sql, Class: res, Rule: d.Rule, Reason: d.Reason, Timeout: timeout}
		approver.Ask(ctx, req, func(approved bool, by, reason string) {
			if approved {
				if h.Approve() {
					s.record(policy.Decision{Action: policy.Allow, Rule: d.Rule, Reason: "approved"}, protocol, sql, by)
				}
				return
			}
			msg := fmt.Sprintf("Airlock: %s denied this statement (rule %s)", nonEmpty(by, "an approver"), d.Rule)
			if reason != "" {
				msg += ": " + reason
			}
			if h.Resolve(refuse(msg, "", sql)) {
				s.record(policy.Decision{Action: policy.Deny, Rule: d.Rule, Reason: nonEmpty(reason, "denied")}, protocol, sql, by)
			}
		})
		return pgwire.Verdict{Action: pgwire.Hold, Hold: h}
	}
	return refuse(fmt.Sprintf("Airlock: statement refused by rule %s: %s", d.Rule, d.Reason),
		"The session goes on; change the statement, or ask an administrator about the rule.", sql)
}

// refuse answers 42501; record is the redacted text the session's record
// keeps in place of the client's.
func refuse(msg, hint, record string) pgwire.Verdict {
	return pgwire.Verdict{Action: pgwire.Reply, Error: &pgwire.ErrorReply{Code: "42501", Message: msg, Hint: hint}, Record: record}
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// record emits the decision as a session event.
func (s *Stage) record(d policy.Decision, protocol, sql, by string) {
	recordDecision(s.sess, s.who().Class, d, protocol, sql, by)
}

func recordDecision(sess *session.Session, class string, d policy.Decision, protocol, sql, by string) {
	sess.Emit(session.Event{Kind: session.KindDecision, Decision: &session.Decision{
		Action: d.Action.String(), Rule: d.Rule, Reason: d.Reason, Protocol: protocol,
		SQL: sql, Class: class, By: by,
	}})
}

// Refuse is how a stage other than the guard refuses a statement for a
// rule of its own (masking: a statement that would copy a masked column):
// recorded as the guard records its refusals (a deny decision naming the
// rule and why, with sql, which must already be redacted), answered with
// 42501, msg and hint.
func Refuse(sess *session.Session, rule, reason, protocol, sql, msg, hint string) pgwire.Verdict {
	recordDecision(sess, classOf(sess), policy.Decision{Action: policy.Deny, Rule: rule, Reason: reason}, protocol, sql, "")
	return refuse(msg, hint, sql)
}

// redacted is the statement text fit for records: secrets replaced, and
// nothing of a string the parser could not read (it may be a mistyped
// password statement).
func redacted(res *sqlclass.Result, err error, sql string) string {
	if err != nil || res == nil {
		return fmt.Sprintf("<unparseable SQL, %d bytes>", len(sql))
	}
	return res.Redacted()
}

func fastPathText(body []byte) string {
	if len(body) >= 4 {
		return fmt.Sprintf("<fast-path function call, oid %d>", binary.BigEndian.Uint32(body))
	}
	return "<fast-path function call>"
}

func cstr(b []byte) ([]byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, false
	}
	return b[:i], true
}

func parseBody(body []byte) (name, query []byte, ok bool) {
	name, ok = cstr(body)
	if !ok {
		return nil, nil, false
	}
	query, ok = cstr(body[len(name)+1:])
	return name, query, ok
}

func bindStatement(body []byte) ([]byte, bool) {
	portal, ok := cstr(body)
	if !ok {
		return nil, false
	}
	return cstr(body[len(portal)+1:])
}
