package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// The message pipeline. Between the two sockets, each session runs an
// ordered chain of stages (policy, approval, masking, metrics). A client
// stage sees the frontend messages of the types it declares and decides what
// reaches the server; a server stage sees the backend messages it declares
// and may rewrite them on their way to the client. Types no stage declared
// are relayed as bytes, never decoded.
//
// The pipeline's core (the pipe type) does no I/O and never blocks: it turns
// a message into an action for its driver (forward, drop, write these bytes
// instead, park until a hold is decided). Today's driver is the pair of
// goroutine pumps in relay.go; an event loop can drive the same core.

// Action is what a stage decides for a message.
type Action uint8

const (
	// Forward passes the message on to the next stage, and to the peer.
	Forward Action = iota
	// Drop discards the message. Only for messages the peer does not
	// answer (Flush, CopyData): dropping one it would answer leaves the
	// client waiting.
	Drop
	// Reply refuses the message: the client gets Verdict.Error as an
	// ErrorResponse where the server's answer would have been, and both
	// sides end in the state PostgreSQL would be in had the statement
	// failed (a transaction block becomes failed, the rest of an extended
	// batch is skipped up to Sync). Client stages only.
	Reply
	// Hold parks the message, and everything the client sends after it,
	// until Verdict.Hold is resolved, times out, or the client cancels.
	// Client stages only.
	Hold
	// Replace sends Verdict.Msgs (encoded protocol messages) in place of
	// the message.
	Replace
)

// ErrorReply is an error the proxy gives the client in its own protocol.
type ErrorReply struct {
	Code    string // SQLSTATE
	Message string
	Detail  string
	Hint    string
}

func (e *ErrorReply) encode(dst []byte) []byte {
	out, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: e.Code,
		Message: e.Message, Detail: e.Detail, Hint: e.Hint}).Encode(dst)
	return out
}

// Verdict is a stage's answer for one message.
type Verdict struct {
	Action Action
	Error  *ErrorReply // for Reply
	Hold   *Holding    // for Hold
	Msgs   []byte      // for Replace: whole encoded messages, sent as they are
	// Record, for Reply, is the statement text the session's record keeps
	// instead of the client's (e.g. with a password redacted).
	Record string
}

// Refuse is the Verdict that answers the client with an error.
func Refuse(code, message string) Verdict {
	return Verdict{Action: Reply, Error: &ErrorReply{Code: code, Message: message}}
}

// ReplaceWith is the Verdict that sends msgs instead of the message.
func ReplaceWith(msgs ...interface{ Encode([]byte) ([]byte, error) }) Verdict {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			return Refuse(codeInternal, "Airlock could not encode a rewritten message: "+err.Error())
		}
	}
	return Verdict{Action: Replace, Msgs: b}
}

// ClientMsg is one frontend message shown to a client stage.
type ClientMsg struct {
	Type byte
	// Body is the message after its length word. It is valid only during
	// the call (and while the message is held): copy what you keep.
	Body []byte
	// TxStatus is the server's transaction status at its last
	// ReadyForQuery: 'I' idle, 'T' in a block, 'E' in a failed block.
	TxStatus byte
	Session  *session.Session

	pl *pipe // the pipe that shows it, whose copies of the SQL text SQLText shares
}

// SQL returns the statement text of a Query or Parse (a slice of Body),
// or nil for other types.
func (m *ClientMsg) SQL() []byte {
	switch m.Type {
	case 'Q':
		q, _ := cstring(m.Body)
		return q
	case 'P':
		_, q, _ := decodeParse(m.Body)
		return q
	}
	return nil
}

// SQLText is SQL() as a string. The pipe keeps the text of the statements
// it records, and a client repeats its texts (the unnamed Parse of each
// extended query): the string is shared with the pipe's where it can be, so
// that a stage that needs the text as a string does not copy it each time.
// Like Body, call it only during the stage's call.
func (m *ClientMsg) SQLText() string {
	q := m.SQL()
	switch {
	case m.pl == nil:
		return string(q)
	case m.Type == 'Q':
		return m.pl.keepQuery(q)
	}
	if string(q) != m.pl.parseText {
		m.pl.parseText = string(q)
	}
	return m.pl.parseText
}

// ServerMsg is one backend message shown to a server stage.
type ServerMsg struct {
	Type byte
	// Body is valid only during the call; nil when the message is larger
	// than the decoding limit (the stage may still Replace it unseen).
	//
	// A stage may rewrite Body in place, keeping its length, and answer
	// Forward: the client, the sample and the stages after it then get
	// the rewrite, and nothing is copied (a value masked to one of the
	// same length).
	Body    []byte
	Len     int // body length
	Session *session.Session

	skip bool // SkipRows was called
}

// SkipRows, called by a stage on a DataRow, says that the rest of the
// rows of the current result are nothing to it: the pipeline stops calling
// it for rows until another message (the result's end, or a notice in the
// middle of it) comes, so that a result the stage has nothing to do with
// costs it one call, not one per row. The row it is called on is decided
// by the stage's answer as usual.
func (m *ServerMsg) SkipRows() { m.skip = true }

// ClientStage decides on frontend messages.
type ClientStage interface {
	// ClientTypes lists the message type bytes the stage sees, e.g. "QP".
	ClientTypes() string
	Client(m *ClientMsg) Verdict
}

// ServerStage may rewrite backend messages.
type ServerStage interface {
	// ServerTypes lists the message type bytes the stage sees, e.g. "D".
	ServerTypes() string
	// Server answers Forward or Replace.
	Server(m *ServerMsg) Verdict
}

// RowStage is a ServerStage that takes DataRows through a narrower call
// than Server: rows are most of the messages of a result, and a call per
// row that returns a whole Verdict costs a stage that rewrites nothing
// more than its own work (issue 7). A ServerStage that declared DataRow
// and implements RowStage gets its rows through Row, its other types
// through Server.
type RowStage interface {
	// Row answers nil to forward the row (as it is, or rewritten in
	// place as ServerMsg.Body allows), or the encoded messages to send
	// instead: Replace with those Msgs (none: the row is dropped). The
	// slice is the stage's until its next call.
	Row(m *ServerMsg) []byte
}

// Publisher is a server stage that keeps bookkeeping of the messages it
// handles (counters) where only its own goroutine touches it, and makes it
// visible to others in Publish. The pipe calls Publish on the server side
// before it writes anything to the client and when the session ends, so
// whatever the client has seen is published.
type Publisher interface {
	Publish()
}

// Stages is one session's pipeline, in order.
type Stages struct {
	Batch  []BatchStage // see each extended batch whole, before Client
	Client []ClientStage
	Server []ServerStage
}

// ChainStages builds a session's pipeline from several builders, their
// stages in the order given (nil builders are skipped).
func ChainStages(builders ...func(*session.Session) Stages) func(*session.Session) Stages {
	var bs []func(*session.Session) Stages
	for _, b := range builders {
		if b != nil {
			bs = append(bs, b)
		}
	}
	if len(bs) == 0 {
		return nil
	}
	return func(sess *session.Session) Stages {
		var out Stages
		for _, b := range bs {
			st := b(sess)
			out.Batch = append(out.Batch, st.Batch...)
			out.Client = append(out.Client, st.Client...)
			out.Server = append(out.Server, st.Server...)
		}
		return out
	}
}

// Holding is a parked message awaiting a decision. Resolve it from any
// goroutine; the first resolution wins.
type Holding struct {
	timeout   time.Duration
	onTimeout ErrorReply
	ch        chan Verdict
	once      sync.Once
	parked    chan struct{}
	parkOnce  sync.Once
	done      chan struct{}
}

const defaultHoldTimeout = 5 * time.Minute

// NewHold returns a hold that ends with onTimeout after timeout (default
// five minutes when zero).
func NewHold(timeout time.Duration, onTimeout ErrorReply) *Holding {
	if timeout <= 0 {
		timeout = defaultHoldTimeout
	}
	if onTimeout.Code == "" {
		onTimeout = ErrorReply{Code: codeQueryCanceled, Message: "Airlock: no decision in time for this statement"}
	}
	return &Holding{timeout: timeout, onTimeout: onTimeout, ch: make(chan Verdict, 1), parked: make(chan struct{}), done: make(chan struct{})}
}

// Parked is closed once the session is parked on the hold: from then on a
// cancel from the client ends the hold instead of reaching the server.
func (h *Holding) Parked() <-chan struct{} { return h.parked }

func (h *Holding) park() { h.parkOnce.Do(func() { close(h.parked) }) }

// Resolve decides the hold: Forward resumes the message at the next stage;
// Reply, Drop and Replace act as if the holding stage had answered them.
// It reports whether this call decided.
func (h *Holding) Resolve(v Verdict) bool {
	won := false
	h.once.Do(func() {
		won = true
		h.ch <- v
		close(h.done)
	})
	return won
}

// Done is closed once the hold is decided, by whoever decided it (the
// holding stage's approver, the timeout, the client's cancel): an approver
// waiting elsewhere learns that its question is moot.
func (h *Holding) Done() <-chan struct{} { return h.done }

// Approve resolves the hold with Forward.
func (h *Holding) Approve() bool { return h.Resolve(Verdict{Action: Forward}) }

// Deny resolves the hold with an error for the client.
func (h *Holding) Deny(code, message string) bool { return h.Resolve(Refuse(code, message)) }

// splitMessages checks that b is a sequence of whole protocol messages and
// calls fn for each with the whole message and its body.
func splitMessages(b []byte, fn func(typ byte, msg, body []byte)) error {
	for len(b) > 0 {
		if len(b) < 5 {
			return errors.New("truncated message header")
		}
		n := int(binary.BigEndian.Uint32(b[1:]))
		if n < 4 || n+1 > len(b) {
			return errors.New("bad message length")
		}
		if fn != nil {
			fn(b[0], b[:1+n], b[5:1+n])
		}
		b = b[1+n:]
	}
	return nil
}

// typeSet is a set of message type bytes.
type typeSet [256 / 64]uint64

func (s *typeSet) add(types string) {
	for i := 0; i < len(types); i++ {
		s[types[i]/64] |= 1 << (types[i] % 64)
	}
}

func (s *typeSet) has(t byte) bool { return s[t/64]&(1<<(t%64)) != 0 }

func (s *typeSet) String() string {
	var b bytes.Buffer
	for i := 0; i < 256; i++ {
		if s.has(byte(i)) {
			b.WriteByte(byte(i))
		}
	}
	return b.String()
}
