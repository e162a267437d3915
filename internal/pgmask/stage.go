// Package pgmask is the masking stage of the PostgreSQL pipeline: it finds
// where each result column comes from and masks values on their way to the
// client, with the rules of internal/mask.
//
// Where each output leaves, and what happens to it:
//
//   - DataRow, text format: each column whose source a rule names is masked
//     whole; computed columns (table OID 0) and columns of views computed
//     from expressions go through the detectors (masked whole when the
//     statement is tainted, below); other columns are
//     forwarded untouched, and a result with no such column is forwarded
//     without decoding a value (the fast path). A masked value of a type
//     that has no text form for a marker (numbers, dates, uuids, arrays,
//     bytea...) is sent as NULL, so typed clients still parse the row.
//   - DataRow, binary format: text-like types (text, varchar, bpchar, name,
//     json, jsonb) are masked as in text; integers, floats and numeric are
//     read as text and sent NULL when a detector finds something; any other
//     binary value of a masked column is sent NULL. The stage does not
//     force text format in Bind: pgx decodes results in the format it asked
//     for, without a Describe, and would misread text.
//   - COPY TO STDOUT: rows carry no column sources. When a rule in force
//     names columns, or the format is binary, the COPY is refused (the
//     client gets an ErrorResponse, as if the statement had failed). With
//     detector rules only, text and CSV rows go through the detectors.
//   - NoticeResponse and ErrorResponse: message, detail, hint, context and
//     internal query go through the detectors, and lose their quoted values
//     when the statement reads a masked column; a detail echoing values of
//     the table in the error ("Key (...)=(...)", "Failing row contains")
//     has its values withheld when a rule could name that table's columns.
//   - NotificationResponse payloads and fast-path function results go
//     through the detectors.
//
// To know which description applies to which DataRow in the extended
// protocol, the stage follows the client's requests in order and takes
// every portal's description from a Describe of the portal: the client's
// own when its next message after the Bind is one (libpq's way), else one
// the stage sends before that next message, whose answer it consumes. The
// description then always matches the portal's formats.
//
// Source lookup uses a Resolver (Catalog: its own connections, never the
// session's, which is mid-stream); the server side of this session waits
// for it, bounded, other sessions do not. A column whose source cannot be
// looked up is sent NULL (fail closed). Lookups are cached per session and
// dropped when the session runs DDL.
//
// Partitions and inheritance children: a column of one is also read as the
// same column of each ancestor, so a rule on the parent masks it.
//
// Views: a view's column is followed to the table column it shows (the
// origin PostgreSQL stored with the view's query), through views over
// views; a view column computed from an expression, and a whole-row value,
// is masked whole when it reads a column a rule masks whole.
//
// Lineage (taint.go): while a rule masks named columns, each statement's
// lineage is read before it reaches the server. A statement whose output
// can name a masked column has its computed columns masked whole; one
// that would copy a masked column elsewhere (a table, a setting, a
// function body) is refused; one reading a masked column anywhere has the
// quoted values of its error and notice texts withheld. The planner's
// sample values (pg_stats and the catalogs under it) are masked whole.
//
// Limits: a WHERE, ORDER BY or join on a masked column still runs, so
// many statements together can confirm or bisect a value (an oracle the
// audit record and rate limits answer, not masking). Functions and views
// already in the database are not read: a function returning a masked
// column is a computed column of a statement naming none. Data someone
// else copied is the copy's table's, for its own rules and grants. A
// relation created in a transaction not yet committed is not in the
// catalog the stage reads: its columns are masked whole until then, and a
// view replaced in such a transaction is judged by its committed
// definition. Grants on the upstream are the guarantee for those.
//
// The stage is the last client stage of a pipeline: it sends its Describe
// in place of the message it goes before, and later stages would not see
// that message as the client sent it.
package pgmask

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// lookupTimeout bounds how long a result waits for its column sources.
var lookupTimeout = 5 * time.Second

// The descriptions a session keeps decided: at most maxDescs of at most
// maxDescBytes each (a wider one is decided again when it comes back).
const (
	maxDescs     = 64
	maxDescBytes = 2048
)

// Subject is who the session belongs to, for the rules' scopes. A session
// whose origin class is not known yet counts as an agent's.
func Subject(sess *session.Session) mask.Subject {
	class := sess.Origin.Class
	if class == "" {
		class = session.ClassAgent
	}
	groups := sess.Person.Groups
	if g := sess.Attrs()["access_groups"]; g != "" && len(groups) == 0 {
		groups = strings.Split(g, ",")
	}
	return mask.Subject{Connection: sess.Connection, Groups: groups, Process: class}
}

// Stage masks one session's results. It is both a client stage (to follow
// the requests) and a server stage.
type Stage struct {
	m    *mask.Masker
	res  Resolver
	sess *session.Session
	log  *slog.Logger

	mu    sync.Mutex
	queue requests // client requests awaiting their answers

	// Client side only.
	cbuf []byte // the stage's Describe and the message it goes before
	// The portal of the last Bind, until the stage knows its description
	// will come: the client's next message is the client's own Describe
	// of it (libpq sends one after every Bind), or the stage sends its own
	// Describe before that message.
	pending     bool
	pendingName []byte
	lin         *lineage // nil: no rule masks named columns, or lineage not tracked

	// gen counts the session's DDL (server side), after which the
	// client side's lineage caches are stale.
	gen atomic.Uint64
	// ddlOpen: the session may have schema changes not committed yet,
	// which the catalog's connections do not see: a view it replaced is
	// shown as it was. Set by either side (a DDL statement sent, a DDL
	// tag answered), cleared by the server side at an idle ReadyForQuery
	// with no DDL request left; written under mu.
	ddlOpen atomic.Bool

	// Server side only.
	cache      map[Attr]decided // decided columns by source
	missing    []Attr
	portals    map[string][]field
	cur        []field
	curAny     bool
	curUnknown bool // the last description could not be read
	copying    bool // rows of a COPY TO STDOUT go through the detectors
	refusing   bool // a refused COPY's messages are dropped up to its CommandComplete
	buf        []byte
	vbuf       []byte
	// The fields rows are masked with, decided at a result's first row
	// and kept until the next message that is not a DataRow: every row of
	// a result answers the same request, so the request queue (and its
	// lock) is read once per result, not once per row.
	rowsSet    bool
	rowsCur    []field
	rowsAny    bool
	rowsEnd    int  // 1 + the last field of rowsCur that acts: the walk stops there
	rowsPortal bool // rows of an Execute: no description means fail closed
	// The last description decided, and its fields: a statement run again
	// (pgbench, a prepared statement's every Execute) is described by the
	// same bytes, decided once. Dropped with the cache.
	lastDesc   []byte
	lastFields []field
	// Every description decided, by its bytes, so statements run in
	// turn (a transaction's, a pooled client's) are each decided once; a
	// map lookup that does not allocate. Bounded; dropped with the cache.
	descs map[string][]field
	// The last description decided for a tainted statement, with its
	// computed columns masked whole.
	taintDesc   []byte
	taintFields []field
	unresolved  atomic.Uint64
	// unseen: a column the catalog did not show was decided (masked
	// whole); decided again once the session is out of its transaction.
	unseen     bool
	wholeCols  bool          // a rule masks named columns whole
	derived    atomic.Uint64 // computed values of tainted statements
	binaryNull atomic.Uint64
	orig       *Originals // the compliance copy; nil: none kept
}

type request struct {
	kind   byte // Q, P, B, d (our Describe), D, E, S, F, C
	portal string
	// A client's Describe of a portal: its answer is also the portal's
	// description for the stage, which then need not ask itself.
	capture bool
	// The statement's taint (taint.go): computed columns masked whole;
	// error texts lose their quoted values; ddl: it changes the schema.
	out, echo, ddl bool
}

// decided is a column's decision by its source.
type decided struct {
	col mask.Column
	// derived: masked whole by the stage itself (the planner's sample
	// values, a source the catalog does not show).
	derived bool
}

type field struct {
	col    mask.Column
	oid    uint32
	format int16
	null   bool // source unknown: fail closed
	// text: a masked value in text format can go as masked (textual),
	// decided with the description rather than per value.
	text bool
	// acts is null or col.Masks(): the row walk looks at this value.
	// Decided with the description, not per row.
	acts bool
	// computed: no source (table OID 0); derived: masked whole by the
	// stage (a tainted statement's computed column, a statistics value).
	computed, derived bool
}

// New returns the stage for a session with masker m (nil when m is Empty:
// the session needs no stage).
func New(m *mask.Masker, res Resolver, sess *session.Session, log *slog.Logger) *Stage {
	if m == nil || m.Empty() {
		return nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stage{m: m, res: res, sess: sess, log: log, cache: map[Attr]decided{}, portals: map[string][]field{},
		descs: map[string][]field{}, wholeCols: m.WholeColumns()}
	sess.SetMaskCounter(s.Counts)
	return s
}

// Publish makes the values masked so far visible to Counts
// (pgwire.Publisher: the pipe calls it before every write to the client
// and at the session's end).
func (s *Stage) Publish() { s.m.Publish() }

// Counts is the masker's counters and the stage's own NULLs.
func (s *Stage) Counts() []session.MaskCount {
	var out []session.MaskCount
	for _, c := range s.m.Counts() {
		out = append(out, session.MaskCount{Rule: c.Rule, Detector: c.Detector, Strategy: string(c.Strategy), Values: c.Values})
	}
	if n := s.unresolved.Load(); n > 0 {
		out = append(out, session.MaskCount{Rule: "airlock", Detector: "unresolved", Strategy: "null", Values: n})
	}
	if n := s.binaryNull.Load(); n > 0 {
		out = append(out, session.MaskCount{Rule: "airlock", Detector: "binary", Strategy: "null", Values: n})
	}
	if n := s.derived.Load(); n > 0 {
		out = append(out, session.MaskCount{Rule: "airlock", Detector: "derived", Strategy: "redact", Values: n})
	}
	return out
}

// ClientTypes: the requests whose answers the server side must match.
func (s *Stage) ClientTypes() string { return "QPBDESFC" }

// Client records each request. Every bound portal's description reaches
// the server side before its rows: the client's own Describe of it when
// that is the client's next message, else a Describe the stage sends
// before that next message, whose answer the server side consumes.
func (s *Stage) Client(m *pgwire.ClientMsg) pgwire.Verdict {
	r := request{kind: m.Type}
	if s.lin != nil {
		if v, refused := s.lineageClient(m, &r); refused {
			// In place of m the server gets the pipeline's poison, whose
			// error the request stands for. A Describe the stage owed
			// the last Bind is not sent: that portal's rows, were any
			// to come, fail closed.
			s.pending = false
			s.push(r)
			return v
		}
	}
	var pre []byte // the stage's Describe, sent before m
	if m.Type == 'D' {
		if portal, ok := describedPortal(m.Body); ok {
			r.portal, r.capture = string(portal), true
			if s.pending && bytes.Equal(portal, s.pendingName) {
				s.pending = false
			}
		}
	}
	var ours request
	if s.pending {
		s.pending = false
		ours = request{kind: 'd', portal: string(s.pendingName)}
		if s.lin != nil {
			mk, known := s.lin.portals.get(s.pendingName)
			if !known {
				mk = tainted.marks()
			}
			ours.out, ours.echo = mk.out, mk.echo
		}
		pre = append(s.cbuf[:0], 'D', 0, 0, 0, 0, 'P')
		pre = append(append(pre, s.pendingName...), 0)
		binary.BigEndian.PutUint32(pre[1:], uint32(len(pre)-1))
	}
	switch m.Type {
	case 'B':
		if portal, ok := bindPortal(m.Body); ok {
			s.pending, s.pendingName = true, append(s.pendingName[:0], portal...)
		} // else the server rejects it; its error skips to Sync
	case 'E':
		if portal, ok := executePortal(m.Body); ok {
			r.portal = string(portal)
		}
	}
	if pre == nil {
		s.push(r)
		return pgwire.Verdict{}
	}
	s.push(ours, r) // in the order they go to the server
	// The pipeline copies a replacement before the next message, so one
	// buffer serves every statement.
	msg := append(pre, m.Type, 0, 0, 0, 0)
	msg = append(msg, m.Body...)
	binary.BigEndian.PutUint32(msg[len(pre)+1:], uint32(len(m.Body)+4))
	s.cbuf = msg
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: msg}
}

func (s *Stage) push(rs ...request) {
	s.mu.Lock()
	s.queue.push(rs...)
	for i := range rs {
		if rs[i].ddl {
			s.ddlOpen.Store(true)
		}
	}
	s.mu.Unlock()
}

func (s *Stage) front() (request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queue.len() == 0 {
		return request{}, false
	}
	return s.queue.front(), true
}

// popIf pops the oldest request if it is of kind k.
func (s *Stage) popIf(k byte) (request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queue.len() == 0 || s.queue.front().kind != k {
		return request{}, false
	}
	return s.queue.pop(), true
}

func (s *Stage) pop() request {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queue.len() == 0 {
		return request{}
	}
	return s.queue.pop()
}

// ServerTypes: descriptions, rows, request completions, copy, notices,
// errors, notifications, function results.
func (s *Stage) ServerTypes() string { return "T123nDCsIZEHWdcNAV" }

var drop = pgwire.Verdict{Action: pgwire.Replace, Msgs: []byte{}}

// Server masks what leaves and keeps the request queue in step.
func (s *Stage) Server(m *pgwire.ServerMsg) pgwire.Verdict {
	if m.Type == 'D' {
		if out := s.row(m); out != nil {
			return pgwire.Verdict{Action: pgwire.Replace, Msgs: out}
		}
		return pgwire.Verdict{}
	}
	s.rowsSet = false
	if s.orig != nil {
		s.resultDone(m.Type)
	}
	if m.Body == nil && m.Type != 'D' && m.Type != 'd' {
		if m.Type == 'T' {
			// A description too large to decode: its rows cannot
			// be masked, so they are withheld.
			if r, ok := s.popIf('d'); ok {
				s.portals[r.portal] = nil
				return drop
			}
			if r, ok := s.popIf('D'); ok {
				if r.capture {
					s.portals[r.portal] = nil
				}
				return pgwire.Verdict{}
			}
			s.setCur(nil)
			s.curUnknown = true
		}
		return pgwire.Verdict{}
	}
	switch m.Type {
	case '1', '2', '3':
		s.pop()
	case 'T', 'n':
		r, _ := s.front()
		switch r.kind {
		case 'd': // ours: the portal's description, consumed
			s.pop()
			if m.Type == 'T' {
				// An unreadable description is nil: its rows fail closed.
				s.portals[r.portal], _ = s.describeFor(m.Body, r.out)
			} else {
				delete(s.portals, r.portal)
			}
			return drop
		case 'D': // the client's; a portal's is also the stage's
			s.pop()
			if r.capture && m.Type == 'T' {
				s.portals[r.portal], _ = s.describeFor(m.Body, r.out)
			} else if r.capture {
				delete(s.portals, r.portal)
			}
		case 'Q':
			if m.Type == 'T' {
				// A description that cannot be read withholds its rows
				// rather than letting them pass as if nothing were masked.
				f, ok := s.describeFor(m.Body, r.out)
				s.setCur(f)
				s.curUnknown = !ok
			}
		}
	case 'C', 's', 'I':
		if m.Type == 'C' {
			if s.refusing {
				s.refusing = false
				s.curDone()
				return drop
			}
			s.ddl(m.Body)
		}
		s.copying = false
		s.curDone()
	case 'Z':
		s.popThroughSync()
		if len(m.Body) > 0 && m.Body[0] == 'I' {
			clear(s.portals)
			if s.unseen || s.ddlOpen.Load() {
				// A relation the catalog did not show, or showed as
				// it was, may have committed since.
				s.forget()
				s.closeDDL()
			}
		}
		s.refusing, s.copying = false, false
	case 'E':
		s.refusing, s.copying = false, false
		r, ok := s.front()
		if ok && r.kind != 'Q' && r.kind != 'F' && r.kind != 'S' {
			s.skipToSync()
		}
		return s.notice(m, ok && r.echo)
	case 'N':
		r, ok := s.front()
		return s.notice(m, ok && r.echo)
	case 'H', 'W':
		return s.copyOut(m)
	case 'd':
		if s.refusing {
			return drop
		}
		if s.copying && m.Body != nil {
			return s.text('d', nil, m.Body)
		}
		if s.copying {
			// Too large to decode: it cannot be read, so it is not sent.
			s.binaryNull.Add(1)
			s.log.Warn("pgmask: a COPY row too large to mask was withheld", "session", s.sess.ID, "bytes", m.Len)
			return drop
		}
	case 'c':
		if s.refusing {
			return drop
		}
	case 'A':
		return s.notification(m.Body)
	case 'V':
		return s.functionResult(m.Body)
	}
	return pgwire.Verdict{}
}

func (s *Stage) popThroughSync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.queue.len() > 0 {
		k := s.queue.pop().kind
		if k == 'S' || k == 'Q' || k == 'F' {
			return
		}
	}
}

// skipToSync drops what the server skips after an error in an extended
// batch.
func (s *Stage) skipToSync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.queue.len() > 0 {
		if k := s.queue.front().kind; k == 'S' || k == 'Q' || k == 'F' {
			return
		}
		s.queue.pop()
	}
}

// curDone ends an Execute's answer.
func (s *Stage) curDone() {
	s.popIf('E')
}

func (s *Stage) setCur(f []field) {
	s.cur = f
	s.curUnknown = false
	s.curAny = false
	for i := range f {
		if f[i].acts {
			s.curAny = true
		}
	}
}

// ddl drops the cached sources after a statement that may have changed
// them.
func (s *Stage) ddl(body []byte) {
	if len(body) == 0 || body[0] == 'U' || body[0] == 'F' || body[0] == 'M' ||
		bytes.HasPrefix(body, []byte("SELECT ")) && !bytes.HasPrefix(body, []byte("SELECT INTO")) {
		return // UPDATE, FETCH, MOVE, MERGE and SELECT n, the commonest tags, settled at once
	}
	tag, _, _ := bytes.Cut(body, []byte{0})
	for _, p := range []string{"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "IMPORT", "SELECT INTO"} {
		if bytes.HasPrefix(tag, []byte(p)) {
			s.forget()
			if s.wholeCols {
				s.mu.Lock()
				s.ddlOpen.Store(true)
				s.mu.Unlock()
			}
			return
		}
	}
}

// closeDDL: out of any transaction, the session's DDL is committed (or
// rolled back), unless a DDL request is still on its way.
func (s *Stage) closeDDL() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.queue.len() {
		if s.queue.at(i).ddl {
			return
		}
	}
	s.ddlOpen.Store(false)
}

// forget drops every decision kept, the client side's lineage ones too.
func (s *Stage) forget() {
	clear(s.cache)
	clear(s.descs)
	s.lastDesc, s.lastFields = s.lastDesc[:0], nil
	s.taintDesc, s.taintFields = s.taintDesc[:0], nil
	s.unseen = false
	s.gen.Add(1)
}

// describeFor is describe for a statement's result: a tainted statement's
// computed columns are masked whole.
func (s *Stage) describeFor(body []byte, tainted bool) ([]field, bool) {
	f, ok := s.describe(body)
	if !ok || !tainted {
		return f, ok
	}
	if s.taintFields != nil && bytes.Equal(body, s.taintDesc) {
		return s.taintFields, true
	}
	var out []field
	for i := range f {
		if f[i].computed && !f[i].derived {
			if out == nil {
				out = append([]field(nil), f...)
			}
			out[i].derived, out[i].acts, out[i].null = true, true, false
		}
	}
	if out == nil {
		return f, true
	}
	s.taintDesc, s.taintFields = append(s.taintDesc[:0], body...), out
	return out, true
}

// decide decides a column by its chain; found is false when the catalog
// does not show the column (a relation created in a transaction not
// committed yet, or dropped meanwhile).
func (s *Stage) decide(chain []mask.Source, found bool) decided {
	if s.wholeCols {
		if !found {
			// It could be a view over a masked column: fail closed.
			s.unseen = true
			return decided{derived: true}
		}
		if len(chain) > 1 && s.ddlOpen.Load() {
			// A view's column, while the session may have replaced the
			// view: the catalog shows its committed definition.
			return decided{derived: true}
		}
		for _, src := range chain {
			if statsSource(src) {
				return decided{derived: true}
			}
		}
	}
	return decided{col: s.column(chain)}
}

// describe decides every field of a RowDescription; false if body is not
// one.
func (s *Stage) describe(body []byte) ([]field, bool) {
	if s.lastFields != nil && bytes.Equal(body, s.lastDesc) {
		return s.lastFields, true
	}
	if f, ok := s.descs[string(body)]; ok {
		s.lastDesc, s.lastFields = append(s.lastDesc[:0], body...), f
		return f, true
	}
	s.missing = s.missing[:0]
	ok := eachField(body, func(a Attr, _ uint32, _ int16) {
		if a.Table != 0 {
			if _, ok := s.cache[a]; !ok {
				s.missing = append(s.missing, a)
			}
		}
	})
	if !ok {
		return nil, false
	}
	failed := false
	if len(s.missing) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		got, err := s.res.Resolve(ctx, s.sess.Database(), s.missing)
		cancel()
		if err != nil {
			s.log.Warn("pgmask: column sources not found; their values are sent NULL", "session", s.sess.ID, "err", err)
			failed = true
		} else {
			for _, a := range s.missing {
				chain, found := got[a]
				s.cache[a] = s.decide(chain, found)
			}
		}
	}
	var out []field
	eachField(body, func(a Attr, typ uint32, format int16) {
		f := field{oid: typ, format: format, text: textual(typ), computed: a.Table == 0}
		if a.Table == 0 {
			f.col = s.m.Column(mask.Source{})
		} else if d, ok := s.cache[a]; ok {
			f.col, f.derived = d.col, d.derived
		} else {
			f.null = failed
		}
		if typ == oidJSON || typ == oidJSONB {
			f.col = f.col.JSON()
		}
		f.acts = f.null || f.derived || f.col.Masks()
		out = append(out, f)
	})
	if !failed && len(out) > 0 {
		// Shared read-only by the current result and portals.
		s.lastDesc, s.lastFields = append(s.lastDesc[:0], body...), out
		if len(body) <= maxDescBytes {
			if len(s.descs) >= maxDescs {
				clear(s.descs)
			}
			s.descs[string(body)] = out
		}
	}
	return out, true
}

// eachField walks a RowDescription without decoding names; false when it is
// malformed.
func eachField(b []byte, fn func(a Attr, typ uint32, format int16)) bool {
	if len(b) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n; i++ {
		z := bytes.IndexByte(b, 0)
		if z < 0 || len(b) < z+1+18 {
			return false
		}
		f := b[z+1:]
		fn(Attr{binary.BigEndian.Uint32(f), int16(binary.BigEndian.Uint16(f[4:]))},
			binary.BigEndian.Uint32(f[6:]), int16(binary.BigEndian.Uint16(f[16:])))
		b = f[18:]
	}
	return true
}

// column decides a column from its chain (view columns first, the table's
// last): the table's rule wins, then the views'. A chain that ends at a
// view, or is empty, is a computed value: the detectors read it.
func (s *Stage) column(chain []mask.Source) mask.Column {
	if len(chain) == 0 {
		// An attr the catalog no longer has: read it as computed.
		return s.m.Column(mask.Source{})
	}
	head, deps, computed := chain, []mask.Source(nil), false
	for i, src := range chain {
		if !src.Known() {
			head, deps, computed = chain[:i], chain[i+1:], true
			break
		}
	}
	for i := len(head) - 1; i >= 0; i-- {
		if c := s.m.Column(head[i]); c.Masks() {
			return c
		}
	}
	if !computed {
		return mask.Column{}
	}
	// A view column computed from an expression: masked whole when it
	// reads a column masked whole (the expression cannot be told apart
	// from that column), else read by the detectors.
	for _, d := range deps {
		if c := s.m.Column(d); c.Whole() {
			return c
		}
	}
	return s.m.Column(mask.Source{})
}

// Row masks a DataRow (pgwire.RowStage): the call the pipeline makes for
// each row.
func (s *Stage) Row(m *pgwire.ServerMsg) []byte { return s.row(m) }

// row masks one DataRow of the current result: nil when the row goes as
// it is, or as masked in place (a masked value of the original's length is
// written over it: partial keeps the length), else the row to send
// instead, in which the bytes between masked values are copied whole.
func (s *Stage) row(m *pgwire.ServerMsg) []byte {
	if !s.rowsSet {
		// An unreadable description withholds its rows (below).
		s.rowsCur, s.rowsAny, s.rowsPortal = s.cur, s.curAny || s.curUnknown, false
		r, ok := s.front()
		if ok && r.kind == 'E' {
			s.rowsCur, s.rowsPortal = s.portals[r.portal], true
		}
		s.rowsEnd = 0
		for i := range s.rowsCur {
			if s.rowsCur[i].acts {
				s.rowsEnd = i + 1
			}
		}
		if s.rowsPortal {
			s.rowsAny = s.rowsEnd > 0
		}
		// With no request in the queue a later one could still become
		// the front: decided again at the next row.
		s.rowsSet = ok
	}
	cur, any := s.rowsCur, s.rowsAny
	if s.rowsPortal && cur == nil {
		// No description for this portal: fail closed.
		return s.failRow(m, "no description for the portal")
	}
	if !any {
		if s.rowsSet {
			// The fast path: nothing in this result to mask, and
			// nothing to decide again at its next row.
			m.SkipRows()
		}
		return nil
	}
	if s.curUnknown && len(cur) == 0 {
		return s.failRow(m, "its description could not be read")
	}
	body := m.Body
	if body == nil || len(body) < 2 {
		return s.failRow(m, "too large to mask")
	}
	n := int(binary.BigEndian.Uint16(body))
	if n != len(cur) {
		return s.failRow(m, "does not match its description")
	}
	// out is started at the first value whose length changes; copied is
	// how much of body it has (the rest goes at the end). The walk ends
	// at the last value that can change: what follows goes as it is, so
	// its length words are the client's to read, as they are for a
	// result with nothing to mask.
	var out []byte
	started := false
	copied := 0
	p := 2
	// The walk's bound and fields in locals: the calls below could
	// change s for all the compiler knows, so s.rowsEnd would be read
	// again at every value.
	walk := cur[:s.rowsEnd]
	for i := range walk {
		if p+4 > len(body) {
			return s.failRow(m, "malformed")
		}
		l := int(int32(binary.BigEndian.Uint32(body[p:])))
		at := p // the value's length word
		p += 4
		f := &walk[i]
		if !f.acts {
			// Passed over: a value too long for the row is caught
			// at the next one's length word or at the walk's end.
			p += max(l, 0)
			continue
		}
		if l < 0 {
			continue // NULL stays NULL
		}
		if p+l > len(body) {
			return s.failRow(m, "malformed")
		}
		v := body[p : p+l]
		p += l
		var r mask.Result
		s.vbuf, r = s.maskValue(f, s.vbuf[:0], v)
		if s.orig != nil && r != mask.Unchanged {
			kept := s.vbuf
			if r == mask.Nulled {
				kept = nil
			} else if kept == nil {
				// Masked to nothing before s.vbuf had an array:
				// an empty value, not NULL, in the copy.
				kept = []byte{}
			}
			s.orig.keep(i, f, v, kept)
		}
		switch {
		case r == mask.Unchanged:
			continue
		case r == mask.Masked && len(s.vbuf) == l:
			copy(v, s.vbuf) // in place: the row keeps its length
			continue
		}
		if !started {
			out = append(s.buf[:0], 'D', 0, 0, 0, 0)
			started = true
		}
		out = append(out, body[copied:at]...)
		if r == mask.Masked {
			out = appendValue(out, s.vbuf)
		} else {
			out = append(out, 0xff, 0xff, 0xff, 0xff)
		}
		copied = p
	}
	if p > len(body) {
		return s.failRow(m, "malformed")
	}
	if s.orig != nil {
		s.orig.endRow()
	}
	if !started {
		return nil
	}
	out = append(out, body[copied:]...)
	s.buf = out
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return out
}

// failRow sends a row that cannot be masked as all NULLs (or not at all
// when even its width is unknown): nothing unmasked leaves.
func (s *Stage) failRow(m *pgwire.ServerMsg, why string) []byte {
	s.unresolved.Add(1)
	s.log.Warn("pgmask: a row that could not be masked was withheld", "session", s.sess.ID, "why", why)
	if len(m.Body) < 2 {
		return []byte{} // dropped
	}
	n := int(binary.BigEndian.Uint16(m.Body))
	out := append(s.buf[:0], 'D', 0, 0, 0, 0, m.Body[0], m.Body[1])
	for i := 0; i < n; i++ {
		out = append(out, 0xff, 0xff, 0xff, 0xff)
	}
	s.buf = out
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return out
}

func appendValue(out, v []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
	return append(out, v...)
}

const (
	oidBool    = 16
	oidBytea   = 17
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidNumeric = 1700
	oidJSONB   = 3802
)

// textual says whether a masked text-format value of the type can carry a
// marker and still parse: text-like built-in types, and types of
// extensions (citext, domains), which clients read as text.
func textual(oid uint32) bool {
	return mask.BinaryAsText(oid) || oid == oidJSONB || oid >= 16384
}

func (s *Stage) maskValue(f *field, dst, v []byte) ([]byte, mask.Result) {
	if f.null {
		s.unresolved.Add(1)
		return dst, mask.Nulled
	}
	if f.derived {
		return s.derivedValue(f, dst)
	}
	if f.format == 0 {
		out, r := f.col.Mask(dst, v)
		if r == mask.Masked && !f.text {
			return dst, mask.Nulled
		}
		return out, r
	}
	if out, r, ok := f.col.MaskBinary(f.oid, dst, v); ok {
		return out, r
	}
	if !f.col.Whole() {
		if t, ok := binaryAsText(f.oid, v); ok {
			if _, r := f.col.Mask(dst, t); r == mask.Unchanged {
				return dst, mask.Unchanged
			}
			return dst, mask.Nulled
		}
		switch f.oid {
		case oidBool, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 26:
			// booleans, dates, times, intervals, uuids, oids: no
			// detector reads them.
			return dst, mask.Unchanged
		}
	} else {
		_, _ = f.col.Mask(dst, v) // counted as the rule's
		return dst, mask.Nulled
	}
	s.binaryNull.Add(1)
	return dst, mask.Nulled
}

// binaryAsText renders the binary numbers the detectors can read.
func binaryAsText(oid uint32, v []byte) ([]byte, bool) {
	switch {
	case oid == oidInt2 && len(v) == 2:
		return strconv.AppendInt(nil, int64(int16(binary.BigEndian.Uint16(v))), 10), true
	case oid == oidInt4 && len(v) == 4:
		return strconv.AppendInt(nil, int64(int32(binary.BigEndian.Uint32(v))), 10), true
	case oid == oidInt8 && len(v) == 8:
		return strconv.AppendInt(nil, int64(binary.BigEndian.Uint64(v)), 10), true
	case oid == oidFloat4 && len(v) == 4:
		return strconv.AppendFloat(nil, float64(math.Float32frombits(binary.BigEndian.Uint32(v))), 'f', -1, 32), true
	case oid == oidFloat8 && len(v) == 8:
		return strconv.AppendFloat(nil, math.Float64frombits(binary.BigEndian.Uint64(v)), 'f', -1, 64), true
	case oid == oidNumeric:
		return numericText(v)
	}
	return nil, false
}

// numericText renders a binary numeric: ndigits, weight, sign, dscale,
// then base-10000 digits.
func numericText(v []byte) ([]byte, bool) {
	if len(v) < 8 {
		return nil, false
	}
	nd := int(binary.BigEndian.Uint16(v))
	weight := int(int16(binary.BigEndian.Uint16(v[2:])))
	sign := binary.BigEndian.Uint16(v[4:])
	if len(v) != 8+2*nd || nd > 1000 {
		return nil, false
	}
	if sign == 0xC000 {
		return []byte("NaN"), true
	}
	for i := 0; i < nd; i++ {
		if binary.BigEndian.Uint16(v[8+2*i:]) > 9999 {
			return nil, false // not a base-10000 digit: not PostgreSQL's numeric
		}
	}
	var b []byte
	if sign == 0x4000 {
		b = append(b, '-')
	}
	digit := func(i int) int {
		if i < nd {
			return int(binary.BigEndian.Uint16(v[8+2*i:]))
		}
		return 0
	}
	pad := func(d int) {
		x := strconv.Itoa(d)
		b = append(b, "0000"[len(x):]...)
		b = append(b, x...)
	}
	if weight < 0 {
		b = append(b, "0."...)
		for k := 0; k < -weight-1 && k < 1000; k++ {
			b = append(b, "0000"...)
		}
		for i := 0; i < nd; i++ {
			pad(digit(i))
		}
		return b, true
	}
	if weight > 1000 {
		return nil, false
	}
	b = strconv.AppendInt(b, int64(digit(0)), 10)
	for i := 1; i <= weight; i++ {
		pad(digit(i))
	}
	if nd > weight+1 {
		b = append(b, '.')
		for i := weight + 1; i < nd; i++ {
			pad(digit(i))
		}
	}
	return b, true
}

// copyOut starts a COPY TO STDOUT (or a replication stream).
func (s *Stage) copyOut(m *pgwire.ServerMsg) pgwire.Verdict {
	if m.Type == 'H' && len(m.Body) > 0 && m.Body[0] == 0 && !s.m.NamesColumns() {
		s.copying = true
		return pgwire.Verdict{}
	}
	s.refusing = true
	e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
		Message: "Airlock: COPY TO STDOUT is not available while masking applies to this session",
		Hint:    "Use SELECT (or COPY in text format with only detector rules in force): masking needs to know each column's source."}
	b, _ := e.Encode(nil)
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: b}
}

// text masks a message that is all free text after prefix (a CopyData).
func (s *Stage) text(typ byte, prefix, v []byte) pgwire.Verdict {
	out, r := s.m.Text(append(append(s.buf[:0], typ, 0, 0, 0, 0), prefix...), v)
	if s.orig != nil && typ == 'd' {
		s.orig.line(v, out[5+len(prefix):], r == mask.Masked)
	}
	if r != mask.Masked {
		return pgwire.Verdict{}
	}
	s.buf = out
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: out}
}

// notice masks the free-text fields of a NoticeResponse or ErrorResponse;
// echo: the statement reads a masked column, whose values any quoted run
// of the texts may be.
func (s *Stage) notice(m *pgwire.ServerMsg, echo bool) pgwire.Verdict {
	type kv struct {
		k byte
		v []byte
	}
	var fields []kv
	var schema, table, code string
	b := m.Body
	for len(b) > 0 && b[0] != 0 {
		k := b[0]
		end := bytes.IndexByte(b[1:], 0)
		if end < 0 {
			return pgwire.Verdict{}
		}
		v := b[1 : 1+end]
		b = b[2+end:]
		switch k {
		case 's':
			schema = string(v)
		case 't':
			table = string(v)
		case 'C':
			code = string(v)
		}
		fields = append(fields, kv{k, v})
	}
	changed := false
	out := append(s.buf[:0], m.Type, 0, 0, 0, 0)
	for _, f := range fields {
		out = append(out, f.k)
		v := f.v
		if f.k == 'D' && table != "" {
			if w, ok := s.withhold(schema, table, v); ok {
				v, changed = w, true
			}
		}
		scrubbed := false
		if echo {
			switch f.k {
			case 'M', 'D', 'H', 'W', 'q':
				if w, ok := scrubValues(v); ok {
					v, changed, scrubbed = w, true, true
				}
			}
		}
		if !scrubbed && strings.HasPrefix(code, "22") && (f.k == 'M' || f.k == 'D') && s.m.NamesColumns() {
			// A data exception quotes the value it could not take
			// (invalid input syntax for type integer: "..."), which
			// may be a masked column's, cast by the query.
			if w, ok := withholdQuoted(v); ok {
				v, changed = w, true
			}
		}
		switch f.k {
		case 'M', 'D', 'H', 'W', 'q':
			var r mask.Result
			n := len(out)
			out, r = s.m.Text(out, v)
			if r == mask.Masked {
				changed = true
				out = append(out, 0)
				continue
			}
			out = out[:n]
		}
		out = append(append(out, v...), 0)
	}
	out = append(out, 0)
	s.buf = out
	if !changed {
		return pgwire.Verdict{}
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: out}
}

// withhold removes the values from a detail that echoes a row or key of
// schema.table when a rule names one of its columns.
func (s *Stage) withhold(schema, table string, d []byte) ([]byte, bool) {
	switch {
	case bytes.HasPrefix(d, []byte("Failing row contains (")):
		if s.m.NamesColumns() {
			return []byte("Failing row contains (values withheld by Airlock: the table has masked columns)."), true
		}
	case bytes.HasPrefix(d, []byte("Key (")):
		cols, _, ok := bytes.Cut(d[len("Key ("):], []byte(")=("))
		if !ok {
			return nil, false
		}
		for _, c := range strings.Split(string(cols), ", ") {
			c = strings.Trim(c, `"`)
			if s.m.Column(mask.Source{Schema: schema, Table: table, Column: c}).Masks() || !identLike(c) {
				rest := d[bytes.Index(d, []byte(")=("))+3:]
				tail := ""
				if i := bytes.LastIndex(rest, []byte(") ")); i >= 0 {
					tail = string(rest[i+1:])
				}
				return []byte("Key (" + string(cols) + ")=(values withheld by Airlock)" + tail), true
			}
		}
	}
	return nil, false
}

// withholdQuoted replaces what the message quotes.
func withholdQuoted(v []byte) ([]byte, bool) {
	i := bytes.IndexByte(v, '"')
	j := bytes.LastIndexByte(v, '"')
	if i < 0 || j <= i {
		return nil, false
	}
	out := append([]byte(nil), v[:i+1]...)
	out = append(out, "value withheld by Airlock"...)
	return append(out, v[j:]...), true
}

// identLike: a key part that is a plain column (an expression index's
// part, e.g. lower(email), could be anything).
func identLike(c string) bool {
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if !(ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch >= 0x80) {
			return false
		}
	}
	return c != ""
}

// notification masks a NOTIFY payload.
func (s *Stage) notification(body []byte) pgwire.Verdict {
	if len(body) < 4 {
		return pgwire.Verdict{}
	}
	ch := bytes.IndexByte(body[4:], 0)
	if ch < 0 {
		return pgwire.Verdict{}
	}
	head := body[:4+ch+1]
	payload, _, ok := bytes.Cut(body[len(head):], []byte{0})
	if !ok {
		return pgwire.Verdict{}
	}
	out, r := s.m.Text(append(append(s.buf[:0], 'A', 0, 0, 0, 0), head...), payload)
	if r != mask.Masked {
		return pgwire.Verdict{}
	}
	out = append(out, 0)
	s.buf = out
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: out}
}

// functionResult masks a fast-path function's result.
func (s *Stage) functionResult(body []byte) pgwire.Verdict {
	if len(body) < 4 || int32(binary.BigEndian.Uint32(body)) < 0 {
		return pgwire.Verdict{}
	}
	out, r := s.m.Text(append(s.buf[:0], 'V', 0, 0, 0, 0, 0, 0, 0, 0), body[4:])
	if r != mask.Masked {
		return pgwire.Verdict{}
	}
	s.buf = out
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	binary.BigEndian.PutUint32(out[5:], uint32(len(out)-9))
	return pgwire.Verdict{Action: pgwire.Replace, Msgs: out}
}
