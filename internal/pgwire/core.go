package pgwire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// Bounds on what a client can make a session hold. Past the pending bounds
// the proxy stops reading from the client until the server has answered
// (backpressure): nothing is ever left unrecorded to save memory.
const (
	maxPending        = 10000   // forwarded requests awaiting their responses
	maxPendingBytes   = 8 << 20 // parameter text held for those requests
	maxPrepared       = 4096    // live prepared statements (and, apart, portals)
	defaultStmtBudget = 16 << 20
	maxParamShown     = 1024 // bytes of one text parameter kept in an event
	maxParamsShown    = 4096 // bytes of all parameters of one statement
	maxBinShown       = 64   // bytes of one binary parameter shown as hex
)

// poisonSQL is what the server gets in place of a refused statement: a
// syntax error, raised before anything runs, so the server fails exactly as
// if the refused statement had failed (a transaction block becomes failed,
// an extended batch is skipped up to Sync) with no other effect. Its
// ErrorResponse is replaced by the proxy's own on the way back.
const (
	poisonSQL  = "AIRLOCK REFUSED THIS STATEMENT"
	poisonStmt = "airlock_refused"
)

// Client messages the pipe decodes for its own bookkeeping.
const (
	clientDecoded   = "QPBECFSX"
	serverDecoded   = "CEZ"
	serverDecodeMax = 1 << 20
)

// actKind is what the driver does with a message.
type actKind uint8

const (
	actForward actKind = iota
	actDrop
	actReplace
	actHold
)

// act is the pipe's instruction to its driver for one message. It is
// returned for every message: kept to nine words or fewer, it comes back
// in registers rather than copied through memory at each return (a
// measurable share of a row's cost). Whether a hold is within a batch unit
// is the unit's state (pipe.inUnit), not a field.
type act struct {
	kind  actKind
	wait  bool     // the pending queue is full: wait for room before reading on
	out   []byte   // actReplace: bytes to send instead
	hold  *Holding // actHold
	stage int      // actHold: the stage that holds
	err   error    // stop after this message
}

// pending is a request forwarded to the server whose response has yet to
// come, in the order the server will answer.
type pending struct {
	kind     byte        // Q P B D E C S F
	refusal  *ErrorReply // the server's error for it is replaced with this
	poison   bool        // a Parse of ours: never a statement
	sql      string
	name     string // P: statement; B, E: portal; C: object
	stmt     string // B: statement
	ctype    byte   // C: 'S' or 'P'
	params   paramList
	oid      uint32  // F
	formats  []int16 // B: result formats, kept while sampling
	decision string
	size     int // bytes counted against maxPendingBytes and the statement budget
	start    time.Time
}

type bound struct {
	sql, name, decision string
	params              paramList
	desc                *rowDesc // sampling: the portal's (or its statement's) description
	formats             []int16  // sampling: Bind's result formats
}

// portalTable is a session's open portals. The unnamed one, which every
// extended-protocol query of libpq and pgx binds, has a field of its own: a
// map's first entry costs a group of eight slots (about 1 KB with bound's
// size), which every idle session that ever ran such a query would hold.
type portalTable struct {
	unnamed    bound
	hasUnnamed bool
	named      map[string]bound // nil until a named portal is bound
}

func (t *portalTable) get(name string) (bound, bool) {
	if name == "" {
		return t.unnamed, t.hasUnnamed
	}
	b, ok := t.named[name]
	return b, ok
}

func (t *portalTable) set(name string, b bound) {
	if name == "" {
		t.unnamed, t.hasUnnamed = b, true
		return
	}
	if t.named == nil {
		t.named = map[string]bound{}
	}
	t.named[name] = b
}

func (t *portalTable) del(name string) {
	if name == "" {
		t.unnamed, t.hasUnnamed = bound{}, false
		return
	}
	delete(t.named, name)
}

// clear forgets every portal, as the end of a transaction does.
func (t *portalTable) clear() {
	t.unnamed, t.hasUnnamed = bound{}, false
	clear(t.named)
}

// len is how many named portals are open (the unnamed one is always
// room for one more).
func (t *portalTable) len() int { return len(t.named) }

// evictOne forgets one named portal.
func (t *portalTable) evictOne() {
	for k := range t.named {
		delete(t.named, k)
		return
	}
}

// stmtTable is the statements the server has, by name. The unnamed one
// has a field of its own, for the reason portalTable's has.
type stmtTable struct {
	unnamed    prepared
	hasUnnamed bool
	named      map[string]prepared // nil until a named statement is parsed
}

func (t *stmtTable) get(name string) (prepared, bool) {
	if name == "" {
		return t.unnamed, t.hasUnnamed
	}
	st, ok := t.named[name]
	return st, ok
}

func (t *stmtTable) set(name string, st prepared) {
	if name == "" {
		t.unnamed, t.hasUnnamed = st, true
		return
	}
	if t.named == nil {
		t.named = map[string]prepared{}
	}
	t.named[name] = st
}

func (t *stmtTable) del(name string) {
	if name == "" {
		t.unnamed, t.hasUnnamed = prepared{}, false
		return
	}
	delete(t.named, name)
}

func (t *stmtTable) clear() {
	t.unnamed, t.hasUnnamed = prepared{}, false
	clear(t.named)
}

// len counts the statements, the unnamed one too.
func (t *stmtTable) len() int {
	if t.hasUnnamed {
		return len(t.named) + 1
	}
	return len(t.named)
}

// prepared is a statement the server has under a name.
type prepared struct {
	sql, decision string
	desc          *rowDesc // sampling: its description, once Described
}

// pipe is one session's pipeline core: stages, protocol state and record.
// The client side (fromClient) runs on one goroutine, the server side
// (fromServer) on another; what both touch is under mu.
//
// The statement record is the pipeline's first consumer but not a stage
// that sees messages before the others: it is built from what actually went
// to the server (after every stage decided, replacements and poisons
// included) and from the server's answers, matched in order. A statement
// name exists once ParseComplete says so, a portal once BindComplete does;
// so the record names the SQL the server ran, whatever the client or a
// stage sent that the server rejected or never saw.
//
// A refused message always becomes a poison for the server, never an answer
// made up by the proxy, even when the session is idle: the server's own
// ReadyForQuery then carries the right transaction status, answers stay in
// order without the two pumps sharing the client socket, and the cost is
// one round trip for a statement that is refused anyway.
type pipe struct {
	sess   *session.Session
	stages Stages
	cwant  []typeSet // per client stage
	swant  []typeSet // per server stage
	anyS   typeSet   // union of swant
	// rowStages are the server stages that declared DataRow, in order:
	// a row goes to them without a test per stage, through Row where
	// they have it (rowFns, nil where not).
	rowStages []ServerStage
	rowFns    []RowStage
	// publishers are the server stages to Publish at every flush.
	publishers []Publisher
	// rowSkip marks the row stages that said (ServerMsg.SkipRows) that
	// the rest of the current result's rows are nothing to them; rowLive
	// counts the others. Any other message ends the skip.
	rowSkip []bool
	rowLive int
	budget  int // bytes of prepared statement text the session may keep

	holding atomic.Pointer[Holding] // the hold in progress, for cancel

	// client side only
	cmsg        ClientMsg
	unit        unit   // the extended batch gathered for batch stages
	decision    string // recorded on the next request pushed
	lastParse   string
	lastQuery   string
	parseText   string  // the last Parse's text as SQLText gave it
	lastBound   string  // the statement name of the last Bind
	lastFormats []int16 // the result formats of the last Bind
	bind        bindMsg
	pbuf        []byte // where parameters are rendered

	mu           sync.Mutex
	queue        []pending
	head         int
	pendBytes    int
	stmts        stmtTable // statements the server has, by name
	stmtBytes    int
	pendingParse int // statement bytes of Parses not yet answered
	portals      portalTable
	copyRefusal  *ErrorReply // a refused CopyData: the error ending the COPY is ours
	txStatus     byte
	space        chan struct{} // signalled when the queue drains below its bounds

	// samp records result samples; nil when sampling is off.
	samp *sampler

	// server side only
	smsg        ServerMsg
	rows, bytes int64
	out         []session.Event // statement events held until flush
	recs        []*stmtRec      // their memory, reused (see rec)
	fatalSeen   atomic.Bool     // the upstream told the client it is ending
	scratch     []byte
	lastTag     string // the last CommandComplete's tag (mu held)
}

func newPipe(sess *session.Session, st Stages, budget int) *pipe {
	if budget <= 0 {
		budget = defaultStmtBudget
	}
	pl := &pipe{sess: sess, stages: st, budget: budget,
		txStatus: 'I', space: make(chan struct{}, 1)}
	for _, s := range st.Client {
		var t typeSet
		t.add(s.ClientTypes())
		pl.cwant = append(pl.cwant, t)
	}
	for _, s := range st.Server {
		var t typeSet
		t.add(s.ServerTypes())
		pl.swant = append(pl.swant, t)
		for i := range t {
			pl.anyS[i] |= t[i]
		}
	}
	for _, s := range st.Server {
		if p, ok := s.(Publisher); ok {
			pl.publishers = append(pl.publishers, p)
		}
	}
	for i, s := range st.Server {
		if pl.swant[i].has('D') {
			pl.rowStages = append(pl.rowStages, s)
			r, _ := s.(RowStage)
			pl.rowFns = append(pl.rowFns, r)
			pl.rowSkip = append(pl.rowSkip, false)
		}
	}
	pl.rowLive = len(pl.rowStages)
	pl.smsg.Session = sess
	return pl
}

// clientTypes is what the client pump must decode.
func (pl *pipe) clientTypes() string {
	var t typeSet
	t.add(clientDecoded)
	if len(pl.stages.Batch) > 0 {
		t.add("PBDECSH") // a unit is gathered whole
	}
	if pl.samp != nil {
		t.add("D") // Describe: which description a portal's rows have
	}
	for i := range pl.cwant {
		for j := range t {
			t[j] |= pl.cwant[i][j]
		}
	}
	return t.String()
}

// serverTypes is what the server pump must decode.
func (pl *pipe) serverTypes() string {
	t := pl.anyS
	t.add(serverDecoded)
	if pl.samp != nil {
		t.add("TDHd") // descriptions, rows, COPY starts and rows
	}
	return t.String()
}

// fromClient runs one client message through the stages and the
// bookkeeping. body is nil for types nobody decodes (and for decoded types
// too large to hold, which the pump refuses before this).
func (pl *pipe) fromClient(typ byte, n int, body []byte) act {
	if len(pl.stages.Batch) > 0 && body != nil {
		if a, ok := pl.gather(typ, body); ok {
			return a
		}
	}
	return pl.clientFrom(0, typ, body)
}

func (pl *pipe) clientFrom(i int, typ byte, body []byte) act {
	if body != nil { // stages see only what is decoded, which is all they declared
		for ; i < len(pl.stages.Client); i++ {
			if !pl.cwant[i].has(typ) {
				continue
			}
			// One ClientMsg per session, reused: a stage call costs no
			// allocation.
			pl.cmsg = ClientMsg{Type: typ, Body: body, TxStatus: pl.tx(), Session: pl.sess, pl: pl}
			v := pl.stages.Client[i].Client(&pl.cmsg)
			if v.Action == Hold {
				if v.Hold == nil {
					return pl.refuse(typ, body, &ErrorReply{Code: codeInternal, Message: "Airlock: a stage held a statement without a hold"}, "refused")
				}
				return act{kind: actHold, hold: v.Hold, stage: i}
			}
			if v.Action != Forward {
				return pl.decided(v, typ, body, "")
			}
		}
	}
	return pl.track(typ, body)
}

// resume continues a held message with the hold's verdict.
func (pl *pipe) resume(a act, v Verdict, typ byte, body []byte) act {
	if pl.inUnit() {
		return pl.resumeUnit(a, v)
	}
	return pl.resumeMsg(a.stage, v, typ, body)
}

// resumeMsg continues a message held by client stage i.
func (pl *pipe) resumeMsg(i int, v Verdict, typ byte, body []byte) act {
	switch v.Action {
	case Forward:
		pl.decision = "approved"
		return pl.clientFrom(i+1, typ, body)
	case Hold:
		return pl.refuse(typ, body, &ErrorReply{Code: codeInternal, Message: "Airlock: a hold was resolved with another hold"}, "denied")
	}
	return pl.decided(v, typ, body, "denied")
}

// decided applies a stage's Drop, Reply or Replace.
func (pl *pipe) decided(v Verdict, typ byte, body []byte, why string) act {
	switch v.Action {
	case Drop:
		pl.decision = ""
		return act{kind: actDrop}
	case Replace:
		if err := splitMessages(v.Msgs, nil); err != nil {
			return pl.refuse(typ, body, &ErrorReply{Code: codeInternal, Message: "Airlock: a stage rewrote a message badly: " + err.Error()}, "refused")
		}
		a := act{kind: actReplace}
		_ = splitMessages(v.Msgs, func(t byte, msg, b []byte) {
			pl.decision = "replaced"
			r := pl.track(t, b)
			if r.kind == actReplace {
				// The bookkeeping refused a replacement (a budget):
				// its poison goes in its place.
				a.out = append(a.out, r.out...)
			} else {
				a.out = append(a.out, msg...)
			}
			a.wait = a.wait || r.wait
			if r.err != nil {
				a.err = r.err
			}
		})
		return a
	}
	e := v.Error
	if e == nil || e.Code == "" {
		e = &ErrorReply{Code: "42501", Message: "Airlock refused this statement"}
	}
	if why == "" {
		why = "refused"
	}
	a := pl.refuse(typ, body, e, why)
	if v.Record != "" {
		pl.mu.Lock()
		if n := len(pl.queue); n > pl.head && pl.queue[n-1].refusal == e {
			pl.queue[n-1].sql = v.Record
		}
		pl.mu.Unlock()
	}
	return a
}

// refuse puts a poison in place of a client message, so that the server
// fails where the message would have been, and marks the poison's error to
// be replaced by e.
func (pl *pipe) refuse(typ byte, body []byte, e *ErrorReply, why string) act {
	pl.decision = ""
	now := time.Now()
	var out []byte
	switch typ {
	case 'Q':
		q, _ := cstring(body)
		out, _ = (&pgproto3.Query{String: poisonSQL}).Encode(nil)
		pl.push(pending{kind: 'Q', refusal: e, sql: pl.keepQuery(q), size: len(q), decision: why, start: now})
	case 'F':
		var m pgproto3.FunctionCall
		_ = m.Decode(body)
		out, _ = (&pgproto3.Query{String: poisonSQL}).Encode(nil)
		pl.push(pending{kind: 'Q', refusal: e, oid: m.Function, sql: functionSQL(m.Function), decision: why, start: now})
	case 'P', 'B', 'D', 'E', 'C':
		sql := ""
		switch typ {
		case 'P':
			_, q, _ := decodeParse(body)
			sql = string(q)
		case 'B':
			var m pgproto3.Bind
			if m.Decode(body) == nil {
				pl.mu.Lock()
				st, _ := pl.stmts.get(m.PreparedStatement)
				sql = st.sql
				pl.mu.Unlock()
			}
		case 'E':
			var m pgproto3.Execute
			if m.Decode(body) == nil {
				pl.mu.Lock()
				b, _ := pl.portals.get(m.Portal)
				sql = b.sql
				pl.mu.Unlock()
			}
		}
		out, _ = (&pgproto3.Parse{Name: poisonStmt, Query: poisonSQL}).Encode(nil)
		pl.push(pending{kind: 'P', poison: true, refusal: e, sql: sql, decision: why, start: now})
	case 'd', 'c':
		// In COPY FROM STDIN the server takes only copy messages:
		// CopyFail ends the COPY with an error and nothing copied.
		out, _ = (&pgproto3.CopyFail{Message: "refused by Airlock"}).Encode(nil)
		pl.mu.Lock()
		pl.copyRefusal = e
		pl.mu.Unlock()
	default:
		// Sync, Flush, Terminate and CopyFail cannot fail on their own:
		// relaying them keeps the protocol whole.
		return pl.track(typ, body)
	}
	return act{kind: actReplace, out: out, wait: pl.full()}
}

func functionSQL(oid uint32) string { return fmt.Sprintf("<fast-path function call, oid %d>", oid) }

// keepQuery returns q as a string, reusing the last one when it repeats.
func (pl *pipe) keepQuery(q []byte) string {
	if string(q) != pl.lastQuery {
		pl.lastQuery = string(q)
	}
	return pl.lastQuery
}

// track records a message that goes to the server as it is.
func (pl *pipe) track(typ byte, body []byte) act {
	now := time.Now()
	d := pl.decision
	pl.decision = ""
	switch typ {
	case 'Q':
		q, ok := cstring(body)
		if !ok {
			q = nil
		}
		// The text counts against the pending bound: a pipeline of
		// big queries must not hold unbounded memory.
		pl.push(pending{kind: 'Q', sql: pl.keepQuery(q), size: len(q), decision: d, start: now})
	case 'P':
		name, query, ok := decodeParse(body)
		if !ok {
			pl.push(pending{kind: 'P', poison: true, start: now}) // the server rejects it
			break
		}
		pl.mu.Lock()
		prev, known := pl.stmts.get(string(name))
		old := prev.sql
		// Clients that re-Parse the same statement (the unnamed one, each
		// time) share one copy of its text.
		sql := old
		if !known || old != string(query) {
			size := len(query)
			if known {
				size -= len(old)
			}
			if pl.stmtBytes+pl.pendingParse+size > pl.budget || (!known && pl.stmts.len() >= maxPrepared) {
				pl.mu.Unlock()
				return pl.refuse('P', body, &ErrorReply{Code: codeProgramLimit,
					Message: fmt.Sprintf("Airlock: this session holds %d prepared statements (%d bytes of SQL), its limit", pl.stmts.len(), pl.stmtBytes),
					Hint:    "Close or DEALLOCATE prepared statements you no longer use."}, "refused")
			}
			if pl.lastParse == string(query) {
				sql = pl.lastParse
			} else {
				sql = string(query)
			}
		}
		pl.pendingParse += len(sql)
		pl.mu.Unlock()
		pl.lastParse = sql
		pl.push(pending{kind: 'P', name: string(name), sql: sql, size: len(sql), decision: d, start: now})
	case 'B':
		m := &pl.bind
		if body == nil || !m.decode(body) {
			pl.push(pending{kind: 'B', start: now})
			break
		}
		var params paramList
		var size int
		params, pl.pbuf, size = formatParams(pl.pbuf[:0], m.params, m.paramFormats)
		var formats []int16
		if pl.samp != nil {
			// Portals keep their result formats; a client binds
			// alike each time, so the last list is shared (never
			// written once made).
			// Never nil: a nil list means the portal is unknown.
			if pl.lastFormats == nil || !slices.Equal(m.resultFormats, pl.lastFormats) {
				pl.lastFormats = append(make([]int16, 0, len(m.resultFormats)), m.resultFormats...)
			}
			formats = pl.lastFormats
		}
		if string(m.stmt) != pl.lastBound {
			pl.lastBound = string(m.stmt)
		}
		pl.push(pending{kind: 'B', name: string(m.portal), stmt: pl.lastBound, params: params, size: size,
			formats: formats, decision: d, start: now})
	case 'D':
		var m pgproto3.Describe
		if pl.samp != nil && body != nil && m.Decode(body) == nil {
			pl.push(pending{kind: 'D', ctype: m.ObjectType, name: m.Name, start: now})
			break
		}
		pl.push(pending{kind: 'D', start: now})
	case 'E':
		portal, ok := decodeExecute(body)
		if !ok {
			pl.push(pending{kind: 'E', start: now})
			break
		}
		pl.push(pending{kind: 'E', name: string(portal), decision: d, start: now})
	case 'C':
		var m pgproto3.Close
		if body == nil || m.Decode(body) != nil {
			pl.push(pending{kind: 'C', start: now})
			break
		}
		pl.push(pending{kind: 'C', ctype: m.ObjectType, name: m.Name, start: now})
	case 'S':
		pl.push(pending{kind: 'S', sql: pl.lastParse, start: now})
		pl.lastParse = ""
	case 'F':
		var m pgproto3.FunctionCall
		if body == nil || m.Decode(body) != nil {
			pl.push(pending{kind: 'F', sql: functionSQL(0), start: now})
			break
		}
		formats := make([]int16, len(m.ArgFormatCodes))
		for i, f := range m.ArgFormatCodes {
			formats[i] = int16(f)
		}
		var params paramList
		var size int
		params, pl.pbuf, size = formatParams(pl.pbuf[:0], m.Arguments, formats)
		pl.push(pending{kind: 'F', oid: m.Function, sql: functionSQL(m.Function), params: params, size: size,
			decision: d, start: now})
	case 'X':
		return act{err: errClientTerminate}
	default:
		return act{}
	}
	return act{wait: pl.full()}
}

func (pl *pipe) tx() byte {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.txStatus
}

func (pl *pipe) push(p pending) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.head > 64 && pl.head*2 > len(pl.queue) {
		n := copy(pl.queue, pl.queue[pl.head:])
		clear(pl.queue[n:])
		pl.queue, pl.head = pl.queue[:n], 0
	}
	pl.queue = append(pl.queue, p)
	pl.pendBytes += p.size
}

// full reports whether the client must wait for answers before sending
// more: the bound that replaces giving up on the record.
func (pl *pipe) full() bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.fullLocked()
}

func (pl *pipe) fullLocked() bool {
	return len(pl.queue)-pl.head >= maxPending || pl.pendBytes >= maxPendingBytes
}

// outstanding is how many requests await an answer.
func (pl *pipe) outstanding() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.queue) - pl.head
}

// front returns the oldest pending request; mu held.
func (pl *pipe) front() *pending {
	if pl.head >= len(pl.queue) {
		return nil
	}
	return &pl.queue[pl.head]
}

// pop retires the oldest pending request; mu held.
func (pl *pipe) pop() {
	if pl.head >= len(pl.queue) {
		return
	}
	was := pl.fullLocked()
	p := &pl.queue[pl.head]
	pl.pendBytes -= p.size
	if p.kind == 'P' && !p.poison {
		pl.pendingParse -= len(p.sql)
	}
	*p = pending{}
	pl.head++
	if pl.head == len(pl.queue) {
		pl.queue, pl.head = pl.queue[:0], 0
	}
	if was && !pl.fullLocked() {
		select {
		case pl.space <- struct{}{}:
		default:
		}
	}
}

// skipToSync drops what the server skips after an error in an extended
// batch: everything up to the next Sync. mu held.
func (pl *pipe) skipToSync() {
	for f := pl.front(); f != nil && f.kind != 'S' && f.kind != 'Q' && f.kind != 'F'; f = pl.front() {
		pl.pop()
	}
}

// fromServer sees one server message of n bytes (length word included);
// body is nil unless the type is decoded.
func (pl *pipe) fromServer(typ byte, n int, body []byte) act {
	if typ == 'D' {
		// Rows are most of a result's messages: their path does no more
		// than the counts unless a stage or the sampler wants them, and
		// then calls only the stages that asked for rows.
		pl.rows++
		pl.bytes += int64(n - 4)
		if pl.rowLive == 0 {
			if pl.samp != nil {
				pl.sampleOut(typ, body)
			}
			return act{}
		}
		if out := pl.toRowStages(n, body); out != nil {
			if len(out) == len(brokenRewrite) {
				return act{kind: actDrop, err: errBrokenRewrite}
			}
			return act{kind: actReplace, out: out}
		}
		return act{}
	}
	if pl.rowLive != len(pl.rowStages) {
		// The rows a stage skipped have ended (or paused for a notice:
		// the stage is asked again at the next row).
		clear(pl.rowSkip)
		pl.rowLive = len(pl.rowStages)
	}
	var a act
	switch typ {
	case 'd':
		pl.bytes += int64(n - 4)
	case 'T', 'n', 't', 'S', 'N', 'A', 'G', 'H', 'W', 'c', 'K', 'v', 'R':
		// Row and parameter descriptions, status, notices, COPY starts:
		// only a Describe ends at T or n.
		if typ == 'T' || typ == 'n' {
			pl.mu.Lock()
			if pl.samp != nil && typ == 'T' {
				pl.sampleDesc(body)
			}
			if f := pl.front(); f != nil && f.kind == 'D' {
				pl.pop()
			}
			pl.mu.Unlock()
		}
	default:
		a = pl.response(typ, body)
	}
	if a.kind != actForward {
		return a
	}
	if len(pl.stages.Server) == 0 || !pl.anyS.has(typ) {
		if pl.samp != nil {
			pl.sampleOut(typ, body)
		}
		return a
	}
	return pl.toStages(typ, n, body)
}

// toStages shows a message the core forwards to the server stages that
// declared its type, in order. A stage that rewrote Body in place (same
// length) and answered Forward has the later stages, the sample and the
// client see its rewrite; one that answered Replace with one message of the
// same type has the later stages see that message instead (a chain of
// rewrites composes); another Replace (several messages, none, another
// type) is what the client gets, unseen by the stages after it.
func (pl *pipe) toStages(typ byte, n int, body []byte) act {
	m := &pl.smsg
	var out []byte
	for i, s := range pl.stages.Server {
		if !pl.swant[i].has(typ) {
			continue
		}
		m.Type, m.Body, m.Len = typ, body, n-4
		if v := s.Server(m); v.Action == Replace {
			o, b, k, ok := pl.replaced(typ, v.Msgs)
			if !ok {
				return act{kind: actDrop, err: errBrokenRewrite}
			}
			if out = o; b == nil {
				break
			}
			body, n = b, k
		}
	}
	if pl.sample(typ, body, out); out != nil {
		return act{kind: actReplace, out: out}
	}
	return act{}
}

// toRowStages is toStages for a DataRow, through Row where a stage has it.
// It returns what replaces the row, nil when the row goes as it is (or as
// rewritten in place). Its result is a slice, not an act, and the common
// answer (nothing) is decided without a call: this runs for every row.
func (pl *pipe) toRowStages(n int, body []byte) []byte {
	m := &pl.smsg
	var out []byte
	for i, s := range pl.rowStages {
		if pl.rowSkip[i] {
			continue
		}
		m.Type, m.Body, m.Len, m.skip = 'D', body, n-4, false
		var msgs []byte
		if r := pl.rowFns[i]; r != nil {
			msgs = r.Row(m)
		} else if v := s.Server(m); v.Action == Replace {
			msgs = v.Msgs
		}
		if m.skip {
			pl.rowSkip[i] = true
			pl.rowLive--
		}
		if msgs == nil {
			continue
		}
		o, b, k, ok := pl.replaced('D', msgs)
		if !ok {
			return brokenRewrite
		}
		if out = o; b == nil {
			break
		}
		body, n = b, k
	}
	if pl.samp != nil {
		pl.sample('D', body, out)
	}
	return out
}

// errBrokenRewrite ends a session whose server stage answered Replace with
// bytes that are not whole messages. Neither the broken bytes nor the
// original go out: the original is what a masking stage meant to keep
// from the client, so the session fails closed.
var errBrokenRewrite = errors.New("a server stage replaced a message with bytes that are not whole messages")

// brokenRewrite is toRowStages' answer for errBrokenRewrite: one byte, a
// length no real replacement has (none is empty or at least 5 bytes).
var brokenRewrite = []byte{0}

// replaced takes a stage's Replace with msgs: what now goes to the client
// (out, never nil; not ok when msgs are not whole messages: a broken
// rewrite ends the session), and, when msgs is one message of type typ, its body
// and length for the stages after it (body nil when they do not see it).
func (pl *pipe) replaced(typ byte, msgs []byte) (out, body []byte, n int, ok bool) {
	if oneMessage(msgs) {
		if msgs[0] == typ {
			return msgs, msgs[5:], len(msgs) - 1, true
		}
		return msgs, nil, 0, true
	}
	if splitMessages(msgs, nil) != nil {
		return nil, nil, 0, false
	}
	if msgs == nil {
		msgs = []byte{} // Replace with nothing: dropped
	}
	return msgs, nil, 0, true
}

// sample records what the client gets of a message the stages saw: body
// when none replaced it, else out.
func (pl *pipe) sample(typ byte, body, out []byte) {
	switch {
	case pl.samp == nil:
	case out == nil:
		pl.sampleOut(typ, body)
	case oneMessage(out):
		// A rewritten row (every row of a masked result): its body is
		// out's after the type and length, with no walk or callback.
		pl.sampleOut(out[0], out[5:])
	default:
		_ = splitMessages(out, func(t byte, _, b []byte) { pl.sampleOut(t, b) })
	}
}

// oneMessage reports whether b is exactly one whole protocol message: what
// a stage that rewrites a row answers, checked without a walk.
func oneMessage(b []byte) bool {
	if len(b) < 5 {
		return false
	}
	n := int(binary.BigEndian.Uint32(b[1:]))
	return n >= 4 && n+1 == len(b)
}

// response matches an answer to the request it completes.
func (pl *pipe) response(typ byte, body []byte) act {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	f := pl.front()
	switch typ {
	case '1': // ParseComplete: the statement now exists under its name
		if f != nil && f.kind == 'P' {
			if !f.poison {
				if old, known := pl.stmts.get(f.name); known {
					pl.stmtBytes -= len(old.sql)
				}
				pl.stmts.set(f.name, prepared{sql: f.sql, decision: f.decision})
				pl.stmtBytes += len(f.sql)
			}
			pl.pop()
		}
	case '2': // BindComplete
		if f != nil && f.kind == 'B' {
			if _, ok := pl.portals.get(f.name); !ok && f.name != "" && pl.portals.len() >= maxPrepared {
				// Portals end with their transaction; thousands open
				// at once is a client gone wrong, and the oldest
				// forgotten is still recorded by name.
				pl.portals.evictOne()
			}
			st, ok := pl.stmts.get(f.stmt)
			if !ok {
				// The server has it, so SQL PREPARE made it: that
				// statement's text is in the record of the PREPARE.
				st.sql = fmt.Sprintf("<statement %q prepared in SQL>", f.stmt)
			}
			d := f.decision
			if d == "" {
				d = st.decision
			}
			pl.portals.set(f.name, bound{sql: st.sql, name: f.stmt, params: f.params, decision: d, desc: st.desc, formats: f.formats})
			pl.pop()
		}
	case '3': // CloseComplete
		if f != nil && f.kind == 'C' {
			if f.ctype == 'S' {
				if old, ok := pl.stmts.get(f.name); ok {
					pl.stmtBytes -= len(old.sql)
					pl.stmts.del(f.name)
				}
			} else {
				pl.portals.del(f.name)
			}
			pl.pop()
		}
	case 'C': // CommandComplete
		tag := pl.commandTag(body)
		if f != nil {
			switch f.kind {
			case 'Q':
				pl.emit(f, tag, "", "")
			case 'E':
				pl.emit(f, tag, "", "")
				pl.pop()
			}
			pl.sqlDeallocated(f, tag)
		}
		pl.rows, pl.bytes = 0, 0
	case 's': // PortalSuspended: the Execute ended at its row limit
		if f != nil && f.kind == 'E' {
			pl.emit(f, "", "", "")
			pl.pop()
		}
		pl.rows, pl.bytes = 0, 0
	case 'I': // EmptyQueryResponse
		if f != nil && f.kind == 'E' {
			pl.pop()
		}
		pl.rows, pl.bytes = 0, 0
	case 'V': // FunctionCallResponse
		if f != nil && f.kind == 'F' {
			pl.emit(f, "", "", "")
			f.kind = 'f' // answered; ReadyForQuery follows
		}
	case 'E':
		return pl.errorResponse(f, body)
	case 'Z':
		for f != nil && f.kind != 'S' && f.kind != 'Q' && f.kind != 'F' && f.kind != 'f' {
			pl.pop() // cannot happen with a conforming server
			f = pl.front()
		}
		if f != nil {
			pl.pop()
		}
		if len(body) == 1 {
			pl.txStatus = body[0]
			if body[0] == 'I' {
				// Portals, the unnamed one too, live until their
				// transaction ends, not until Sync.
				pl.portals.clear()
			}
		}
		pl.rows, pl.bytes = 0, 0
		if pl.samp != nil {
			pl.samp.reset()
		}
	}
	return act{}
}

// commandTag reads a CommandComplete's tag; mu held. A session's
// statements mostly end alike (SELECT 1), so the last tag's string is
// reused when it repeats rather than allocated per statement.
func (pl *pipe) commandTag(body []byte) string {
	var m pgproto3.CommandComplete
	if body == nil || m.Decode(body) != nil {
		return ""
	}
	if string(m.CommandTag) != pl.lastTag {
		pl.lastTag = string(m.CommandTag)
	}
	return pl.lastTag
}

func (pl *pipe) errorResponse(f *pending, body []byte) act {
	var m pgproto3.ErrorResponse
	if body == nil || m.Decode(body) != nil {
		m = pgproto3.ErrorResponse{Severity: "ERROR"}
	}
	sev := m.SeverityUnlocalized // m.Severity may be translated
	if sev == "" {
		sev = m.Severity
	}
	if sev == "FATAL" || sev == "PANIC" {
		pl.fatalSeen.Store(true)
	}
	var a act
	code, msg := m.Code, m.Message
	substitute := func(e *ErrorReply) {
		pl.scratch = e.encode(pl.scratch[:0])
		a = act{kind: actReplace, out: pl.scratch}
		code, msg = e.Code, e.Message
	}
	switch {
	case sev == "FATAL" || sev == "PANIC":
	case f != nil && f.refusal != nil:
		substitute(f.refusal)
	case pl.copyRefusal != nil && f != nil && (f.kind == 'Q' || f.kind == 'E'):
		substitute(pl.copyRefusal)
		pl.copyRefusal = nil
		f.decision = "refused"
	}
	if f != nil {
		switch f.kind {
		case 'Q', 'F':
			pl.emit(f, "", code, msg)
		case 'S':
			if f.sql != "" {
				pl.emit(f, "", code, msg)
			}
		case 'P', 'B', 'E':
			if f.kind == 'B' {
				st, _ := pl.stmts.get(f.stmt)
				f.sql = st.sql
			}
			pl.emit(f, "", code, msg)
			pl.pop()
			pl.skipToSync()
		case 'D', 'C':
			pl.pop()
			pl.skipToSync()
		}
	}
	pl.rows, pl.bytes = 0, 0
	return a
}

// sqlDeallocated forgets statements dropped in SQL (DEALLOCATE, DISCARD),
// so that they no longer count against the budget; mu held.
func (pl *pipe) sqlDeallocated(f *pending, tag string) {
	switch tag {
	case "DEALLOCATE ALL", "DISCARD ALL":
		pl.stmts.clear()
		pl.stmtBytes = 0
		return
	case "DEALLOCATE":
	default:
		return
	}
	sql := f.sql
	if f.kind == 'E' {
		b, _ := pl.portals.get(f.name)
		sql = b.sql
	}
	// DEALLOCATE [PREPARE] name, alone in its Query: anything fancier
	// keeps the statement counted, which is only conservative.
	w := strings.Fields(strings.TrimSuffix(strings.TrimSpace(sql), ";"))
	if len(w) == 0 || !strings.EqualFold(w[0], "deallocate") {
		return
	}
	w = w[1:]
	if len(w) > 0 && strings.EqualFold(w[0], "prepare") {
		w = w[1:]
	}
	if len(w) != 1 {
		return
	}
	name := w[0]
	if strings.HasPrefix(name, `"`) && strings.HasSuffix(name, `"`) && len(name) >= 2 {
		name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
	} else {
		name = strings.ToLower(name)
	}
	if old, ok := pl.stmts.get(name); ok {
		pl.stmtBytes -= len(old.sql)
		pl.stmts.del(name)
	}
}

// emit records the statement p as completed now; mu held. The event waits
// in pl.out until flush, which the server pump calls before it writes the
// messages that completed it to the client.
func (pl *pipe) emit(p *pending, tag, code, msg string) {
	now := time.Now()
	r := pl.rec()
	st := &r.st
	*st = session.Statement{Protocol: "extended", SQL: p.sql, Params: r.paramsOf(&p.params), Tag: tag,
		Rows: rowsOf(tag, pl.rows), Bytes: pl.bytes, Duration: now.Sub(p.start), SQLState: code, Error: msg,
		Decision: p.decision, FunctionOID: p.oid}
	switch {
	case p.oid != 0 || p.kind == 'F':
		st.Protocol = "function"
	case p.kind == 'Q':
		st.Protocol = "simple"
	case p.kind == 'E':
		b, ok := pl.portals.get(p.name)
		if !ok {
			// The server has it, so SQL DECLARE made it: the cursor's
			// query is in the record of the DECLARE.
			b.sql = fmt.Sprintf("<portal %q declared in SQL>", p.name)
		}
		st.SQL, st.Name, st.Params = b.sql, b.name, r.paramsOf(&b.params)
		if st.Decision == "" {
			st.Decision = b.decision
		}
	case p.kind == 'P':
		st.Name = p.name
	case p.kind == 'B':
		st.Name = p.stmt
	}
	if pl.samp != nil {
		st.Sample = pl.samp.take(r)
	}
	st.Number = pl.sess.Stats.Statements.Add(1)
	pl.sess.Stats.Rows.Add(st.Rows)
	pl.out = append(pl.out, session.Event{Time: now, Kind: session.KindStatement, Statement: st})
}

// maxRecs bounds the statement records a session keeps for reuse: a
// pipeline of more statements in one read allocates the rest.
const maxRecs = 16

// rec returns the memory for the next statement event in pl.out; mu held.
func (pl *pipe) rec() *stmtRec {
	i := len(pl.out)
	if i < len(pl.recs) {
		return pl.recs[i]
	}
	r := new(stmtRec)
	if i == len(pl.recs) && i < maxRecs {
		pl.recs = append(pl.recs, r)
	}
	return r
}

// flush hands the held statement events to the session, in order; their
// memory is then free for the next (session.Sink keeps none of it), and
// has the stages publish their counters. Server side only.
func (pl *pipe) flush() {
	for _, p := range pl.publishers {
		p.Publish()
	}
	for i := range pl.out {
		pl.sess.Emit(pl.out[i])
		pl.out[i] = session.Event{}
	}
	pl.out = pl.out[:0]
}

// abandon records every statement sent whose outcome the proxy never saw
// (the session ended first), so none goes unrecorded. Called once both
// pumps have stopped.
func (pl *pipe) abandon(why string) {
	pl.mu.Lock()
	for f := pl.front(); f != nil; f = pl.front() {
		switch f.kind {
		case 'Q', 'E', 'F':
			f.decision = why
			pl.emit(f, "", "", "")
		}
		// A Parse, Bind or Describe executes nothing: its Execute,
		// if one was sent, is recorded.
		pl.pop()
	}
	pl.mu.Unlock()
	pl.flush()
}

// cancelHold ends a hold in progress as a cancelled statement; false when
// nothing is held.
func (pl *pipe) cancelHold() bool {
	h := pl.holding.Load()
	if h == nil {
		return false
	}
	return h.Resolve(Verdict{Action: Reply, Error: &ErrorReply{Code: codeQueryCanceled,
		Message: "canceling statement due to user request"}})
}

// cstring returns b up to its first NUL, and whether there was one.
func cstring(b []byte) ([]byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, false
	}
	return b[:i], true
}

// decodeParse takes the statement name and SQL from a Parse body without
// copying them, checking the rest of the body as pgproto3.Parse would.
func decodeParse(body []byte) (name, query []byte, ok bool) {
	name, ok = cstring(body)
	if !ok {
		return nil, nil, false
	}
	rest := body[len(name)+1:]
	if query, ok = cstring(rest); !ok {
		return nil, nil, false
	}
	rest = rest[len(query)+1:]
	if len(rest) < 2 || len(rest) < 2+4*int(binary.BigEndian.Uint16(rest)) {
		return nil, nil, false
	}
	return name, query, true
}

// rowsOf takes the row count from a command tag that carries one and falls
// back to the DataRows seen (SHOW, or a tag-less error).
func rowsOf(tag string, counted int64) int64 {
	verb, rest, ok := strings.Cut(tag, " ")
	if !ok {
		return counted
	}
	switch verb {
	case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY":
		if i := strings.LastIndexByte(rest, ' '); i >= 0 {
			rest = rest[i+1:]
		}
		if n, err := strconv.ParseInt(rest, 10, 64); err == nil {
			return n
		}
	}
	return counted
}

// paramList is a Bind's or FunctionCall's arguments as recorded: their
// renderings in one string, each after its length (4 bytes). A list of
// strings cost an allocation for the list and one per argument, per
// statement; and this one is small enough to keep maps of portals holding
// their values inline.
type paramList struct {
	joined string
	n      int
}

// appendTo appends the arguments to dst; nil when there are none.
func (p *paramList) appendTo(dst []string) []string {
	if p.n == 0 {
		return nil
	}
	rest := p.joined
	for i := 0; i < p.n && len(rest) >= 4; i++ {
		l := int(rest[0])<<24 | int(rest[1])<<16 | int(rest[2])<<8 | int(rest[3])
		dst = append(dst, rest[4:4+l])
		rest = rest[4+l:]
	}
	return dst
}

// formatParams renders Bind or FunctionCall arguments for the record,
// bounded, in buf (returned, for reuse), and returns their size.
func formatParams(buf []byte, values [][]byte, formats []int16) (paramList, []byte, int) {
	var p paramList
	if len(values) == 0 {
		return p, buf, 0
	}
	size := 0
	for i, v := range values {
		bin := false
		switch len(formats) {
		case 0:
		case 1:
			bin = formats[0] == 1
		default:
			bin = i < len(formats) && formats[i] == 1
		}
		at := len(buf)
		buf = append(buf, 0, 0, 0, 0) // its length, once known
		start := len(buf)
		switch {
		case size >= maxParamsShown:
			buf = append(buf, "<not kept>"...)
		case v == nil:
			buf = append(buf, "<null>"...)
		case bin && len(v) <= maxBinShown:
			buf = hex.AppendEncode(append(buf, `\x`...), v)
		case bin:
			buf = fmt.Appendf(buf, "<binary %d bytes>", len(v))
		case len(v) > maxParamShown:
			cut := maxParamShown
			for cut > 0 && !utf8.RuneStart(v[cut]) {
				cut--
			}
			buf = fmt.Appendf(append(buf, v[:cut]...), "…<%d bytes>", len(v))
		default:
			buf = append(buf, v...)
		}
		binary.BigEndian.PutUint32(buf[at:], uint32(len(buf)-start))
		size += len(buf) - start + 16
	}
	p.joined, p.n = string(buf), len(values)
	return p, buf, size
}

// bindMsg is a Bind read in place: the names and values are views into the
// body, and the slices are reused from one Bind to the next, so that
// reading one allocates nothing once they have grown (pgproto3's Decode
// allocates a string per name and a slice per list).
type bindMsg struct {
	portal, stmt  []byte
	paramFormats  []int16
	params        [][]byte // nil for SQL NULL
	resultFormats []int16
}

// decode reads a Bind body, accepting exactly what pgproto3.Bind.Decode
// accepts.
func (m *bindMsg) decode(b []byte) bool {
	var ok bool
	if m.portal, ok = cstring(b); !ok {
		return false
	}
	b = b[len(m.portal)+1:]
	if m.stmt, ok = cstring(b); !ok {
		return false
	}
	b = b[len(m.stmt)+1:]
	if m.paramFormats, b, ok = int16s(m.paramFormats[:0], b); !ok {
		return false
	}
	if len(b) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	m.params = m.params[:0]
	for i := 0; i < n; i++ {
		if len(b) < 4 {
			return false
		}
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l == -1 {
			m.params = append(m.params, nil)
			continue
		}
		if l < 0 || len(b) < l {
			return false
		}
		m.params = append(m.params, b[:l:l])
		b = b[l:]
	}
	m.resultFormats, _, ok = int16s(m.resultFormats[:0], b)
	return ok
}

// int16s appends a count-prefixed list of int16s from b to dst and returns
// the rest of b.
func int16s(dst []int16, b []byte) ([]int16, []byte, bool) {
	if len(b) < 2 {
		return dst, b, false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*n {
		return dst, b, false
	}
	for i := 0; i < n; i++ {
		dst = append(dst, int16(binary.BigEndian.Uint16(b[2*i:])))
	}
	return dst, b[2*n:], true
}

// decodeExecute takes the portal name from an Execute body without copying
// it, accepting what pgproto3.Execute.Decode accepts.
func decodeExecute(body []byte) ([]byte, bool) {
	portal, ok := cstring(body)
	if !ok || len(body)-len(portal)-1 < 4 {
		return nil, false
	}
	return portal, true
}
