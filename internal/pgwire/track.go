package pgwire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// Bounds on what a client can make the tracker hold. Past them the proxy
// still relays everything; it only forgets or stops recording.
const (
	maxPending    = 10000 // queued requests awaiting their responses
	maxPrepared   = 4096  // remembered prepared statements
	maxParamShown = 1024  // bytes of one text parameter kept in an event
	maxBinShown   = 64    // bytes of one binary parameter shown as hex
)

// pending is a request whose response the server has yet to send, in the
// order the client sent them: 'Q' simple query, 'E' Execute, 'S' Sync,
// 'F' function call.
type pending struct {
	kind   byte
	sql    string
	name   string
	params []string
	start  time.Time
}

type bound struct {
	sql, name string
	params    []string
}

// tracker turns the two directions of a session into statement events. The
// client pump owns the prepared and portal maps; the queue is shared.
type tracker struct {
	sess *session.Session

	// client pump only
	stmts     map[string]string
	portals   map[string]bound
	lastParse string // SQL of the last Parse since the last Sync
	lastQuery string // SQL of the last simple Query, reused when repeated

	mu       sync.Mutex
	queue    []pending
	head     int
	disabled bool

	// server pump only
	rows, bytes int64
	out         []session.Event // statement events held until flush
	fatalSeen   atomic.Bool     // the upstream told the client it is ending
}

func newTracker(sess *session.Session) *tracker {
	return &tracker{sess: sess, stmts: map[string]string{}, portals: map[string]bound{}}
}

func (t *tracker) push(p pending) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.disabled {
		return
	}
	if len(t.queue)-t.head >= maxPending {
		// A client pipelining this far ahead would make us hold memory
		// without bound; losing the events is the lesser harm.
		t.disabled, t.queue, t.head = true, nil, 0
		return
	}
	if t.head > 64 && t.head*2 > len(t.queue) {
		n := copy(t.queue, t.queue[t.head:])
		clear(t.queue[n:])
		t.queue, t.head = t.queue[:n], 0
	}
	t.queue = append(t.queue, p)
}

// front returns the oldest pending request.
func (t *tracker) front() (pending, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head >= len(t.queue) {
		return pending{}, false
	}
	return t.queue[t.head], true
}

func (t *tracker) pop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.popLocked()
}

func (t *tracker) popLocked() {
	if t.head < len(t.queue) {
		t.queue[t.head] = pending{}
		t.head++
	}
	if t.head == len(t.queue) {
		t.queue, t.head = t.queue[:0], 0
	}
}

// skipToSync drops the Executes the server will ignore after an error.
func (t *tracker) skipToSync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.head < len(t.queue) && t.queue[t.head].kind == 'E' {
		t.popLocked()
	}
}

// readyForQuery retires everything up to and including the request the
// ReadyForQuery answers.
func (t *tracker) readyForQuery() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.head < len(t.queue) {
		k := t.queue[t.head].kind
		t.popLocked()
		if k != 'E' {
			return
		}
	}
}

// client sees one client message; body is nil unless the type is decoded.
func (t *tracker) client(typ byte, body []byte) error {
	switch typ {
	case 'Q':
		q, ok := cstring(body)
		if !ok || len(q) != len(body)-1 {
			t.push(pending{kind: 'Q', start: time.Now()})
			return nil
		}
		// The event keeps the SQL, so it is copied out of the read
		// buffer, unless it repeats the last query.
		if string(q) != t.lastQuery {
			t.lastQuery = string(q)
		}
		t.push(pending{kind: 'Q', sql: t.lastQuery, start: time.Now()})
	case 'P':
		name, query, ok := decodeParse(body)
		if !ok {
			return nil
		}
		// Clients that re-Parse the same statement (the unnamed one, each
		// time) get the SQL they sent before, not a new copy of it.
		sql, known := t.stmts[string(name)]
		if !known || sql != string(query) {
			if !known && len(t.stmts) >= maxPrepared {
				for k := range t.stmts {
					delete(t.stmts, k)
					break
				}
			}
			sql = string(query)
			t.stmts[string(name)] = sql
		}
		t.lastParse = sql
	case 'B':
		var m pgproto3.Bind
		if body == nil || m.Decode(body) != nil {
			return nil
		}
		if _, ok := t.portals[m.DestinationPortal]; !ok && len(t.portals) >= maxPrepared {
			for k := range t.portals {
				delete(t.portals, k)
				break
			}
		}
		t.portals[m.DestinationPortal] = bound{sql: t.stmts[m.PreparedStatement], name: m.PreparedStatement,
			params: formatParams(&m)}
	case 'E':
		var m pgproto3.Execute
		if body == nil || m.Decode(body) != nil {
			t.push(pending{kind: 'E', start: time.Now()})
			return nil
		}
		b := t.portals[m.Portal]
		t.push(pending{kind: 'E', sql: b.sql, name: b.name, params: b.params, start: time.Now()})
	case 'S':
		t.push(pending{kind: 'S', sql: t.lastParse, start: time.Now()})
		t.lastParse = ""
		// The server drops the unnamed portal at Sync; so do we.
		delete(t.portals, "")
	case 'F':
		t.push(pending{kind: 'F', start: time.Now()})
	case 'C':
		var m pgproto3.Close
		if body == nil || m.Decode(body) != nil {
			return nil
		}
		if m.ObjectType == 'S' {
			delete(t.stmts, m.Name)
		} else {
			delete(t.portals, m.Name)
		}
	case 'X':
		return errClientTerminate
	}
	return nil
}

// server sees one server message of n bytes (length field included); body
// is nil unless the type is decoded.
func (t *tracker) server(typ byte, n int, body []byte) error {
	switch typ {
	case 'D':
		t.rows++
		t.bytes += int64(n - 4)
	case 'd': // COPY TO STDOUT: bytes only, the tag has the rows
		t.bytes += int64(n - 4)
	case 'C':
		var m pgproto3.CommandComplete
		tag := ""
		if body != nil && m.Decode(body) == nil {
			tag = string(m.CommandTag)
		}
		if p, ok := t.front(); ok && (p.kind == 'Q' || p.kind == 'E') {
			if p.kind == 'E' {
				t.pop()
			}
			t.emit(p, tag, "", "")
		}
		t.rows, t.bytes = 0, 0
	case 's': // PortalSuspended: the Execute ended at its row limit
		if p, ok := t.front(); ok && p.kind == 'E' {
			t.pop()
			t.emit(p, "", "", "")
		}
		t.rows, t.bytes = 0, 0
	case 'I':
		if p, ok := t.front(); ok && p.kind == 'E' {
			t.pop()
		}
		t.rows, t.bytes = 0, 0
	case 'E':
		var m pgproto3.ErrorResponse
		if body == nil || m.Decode(body) != nil {
			m = pgproto3.ErrorResponse{Severity: "ERROR"}
		}
		sev := m.SeverityUnlocalized // m.Severity may be translated
		if sev == "" {
			sev = m.Severity
		}
		if sev == "FATAL" || sev == "PANIC" {
			t.fatalSeen.Store(true)
		}
		if p, ok := t.front(); ok {
			switch p.kind {
			case 'Q', 'S':
				t.emit(p, "", m.Code, m.Message)
			case 'E':
				t.pop()
				t.skipToSync()
				t.emit(p, "", m.Code, m.Message)
			}
		}
		t.rows, t.bytes = 0, 0
	case 'Z':
		t.readyForQuery()
		t.rows, t.bytes = 0, 0
	}
	return nil
}

// emit records the statement p as completed now. The event waits in t.out
// until flush, which the server pump calls once the messages that completed
// it have been forwarded.
func (t *tracker) emit(p pending, tag, code, msg string) {
	if p.kind == 'S' && p.sql == "" {
		return // an error from a Sync with no statement of its own
	}
	now := time.Now()
	st := &session.Statement{Protocol: "extended", SQL: p.sql, Name: p.name, Params: p.params, Tag: tag,
		Rows: rowsOf(tag, t.rows), Bytes: t.bytes, Duration: now.Sub(p.start), SQLState: code, Error: msg}
	if p.kind == 'Q' {
		st.Protocol = "simple"
	}
	t.out = append(t.out, session.Event{Time: now, Kind: session.KindStatement, Statement: st})
}

// flush hands the held statement events to the session, in order.
func (t *tracker) flush() {
	for i := range t.out {
		t.sess.Emit(t.out[i])
		t.out[i] = session.Event{}
	}
	t.out = t.out[:0]
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

// formatParams renders Bind parameters for the audit record.
func formatParams(m *pgproto3.Bind) []string {
	if len(m.Parameters) == 0 {
		return nil
	}
	out := make([]string, len(m.Parameters))
	for i, v := range m.Parameters {
		binary := false
		switch len(m.ParameterFormatCodes) {
		case 0:
		case 1:
			binary = m.ParameterFormatCodes[0] == 1
		default:
			binary = i < len(m.ParameterFormatCodes) && m.ParameterFormatCodes[i] == 1
		}
		switch {
		case v == nil:
			out[i] = "<null>"
		case binary && len(v) <= maxBinShown:
			out[i] = `\x` + hex.EncodeToString(v)
		case binary:
			out[i] = fmt.Sprintf("<binary %d bytes>", len(v))
		case len(v) > maxParamShown:
			cut := maxParamShown
			for cut > 0 && !utf8.RuneStart(v[cut]) {
				cut--
			}
			out[i] = string(v[:cut]) + fmt.Sprintf("…<%d bytes>", len(v))
		default:
			out[i] = string(v)
		}
	}
	return out
}
