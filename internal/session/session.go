// Package session holds what Airlock knows about one intercepted connection:
// where it was going, which process opened it, and the person behind it. It
// also carries the session's event stream towards the audit log.
package session

import (
	"crypto/rand"
	"encoding/base32"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
)

// Proc is one process in an origin's ancestry.
type Proc struct {
	PID     uint32   `json:"pid"`
	Exe     string   `json:"exe"`
	Cmdline []string `json:"cmdline,omitempty"`
	UID     uint32   `json:"uid"`
}

// Origin is who connected, as the kernel recorded it at connect() time and
// as /proc described it when the proxy accepted the connection.
type Origin struct {
	PID        uint32    `json:"pid"` // the process (thread group) id
	TID        uint32    `json:"tid"` // the thread that called connect()
	UID        uint32    `json:"uid"`
	GID        uint32    `json:"gid"`
	Comm       string    `json:"comm"`
	Exe        string    `json:"exe"`
	Cmdline    []string  `json:"cmdline,omitempty"`
	CgroupID   uint64    `json:"cgroup_id"`
	CgroupPath string    `json:"cgroup_path,omitempty"`
	Parents    []Proc    `json:"parents,omitempty"`
	ConnectAt  time.Time `json:"connect_at"`

	// PodUID and ContainerID name a Kubernetes pod's container when
	// CgroupPath is a kubelet's (a client in a pod's network namespace).
	PodUID      string `json:"pod_uid,omitempty"`
	ContainerID string `json:"container_id,omitempty"`

	// Class says who is at the keyboard, for rules that differ between an
	// agent and a person's own tools (ClassAgent, ClassPerson; empty until
	// the front door has decided).
	Class string `json:"class,omitempty"`
}

// Process classes of an Origin.
const (
	ClassAgent  = "agent"  // an AI agent's process: Cursor's tree, a configured agent executable
	ClassPerson = "person" // a person's own tools
)

// Session is one intercepted connection.
type Session struct {
	ID         string          `json:"id"`
	Target     string          `json:"target"`
	Connection string          `json:"connection"`
	Protocol   string          `json:"protocol"`
	Dest       netip.AddrPort  `json:"dest"`
	Client     netip.AddrPort  `json:"client"`
	Origin     Origin          `json:"origin"`
	Person     identity.Person `json:"person"`
	Started    time.Time       `json:"started"`

	// Stats are the session's live counters. The data path adds to them
	// once per read batch; `airlock status` reads them while it runs.
	Stats Stats `json:"-"`

	sink Sink

	// person is the copy of Person that events point to, made once and
	// shared: a copy per event was an allocation per statement.
	person atomic.Pointer[identity.Person]

	mu           sync.Mutex
	database     string
	upstreamRole string
	attrs        map[string]string // other live facts for `airlock status`
	maskCounts   func() []MaskCount
}

// SetMaskCounter gives the session the masking stage's counters, read at
// any time (they are atomic) and put in the session's end event.
func (s *Session) SetMaskCounter(f func() []MaskCount) {
	s.mu.Lock()
	s.maskCounts = f
	s.mu.Unlock()
}

// MaskCounts returns the values masked so far, per rule and detector.
func (s *Session) MaskCounts() []MaskCount {
	s.mu.Lock()
	f := s.maskCounts
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return f()
}

// Stats counts what a session relayed. Handlers add to them as they go, so
// a status query sees a live session's figures, not only an ended one's.
type Stats struct {
	BytesIn    atomic.Int64 // client to upstream
	BytesOut   atomic.Int64 // upstream to client
	MsgsIn     atomic.Int64 // protocol messages from the client (PostgreSQL only)
	MsgsOut    atomic.Int64 // protocol messages to the client (PostgreSQL only)
	Statements atomic.Int64 // statements recorded
	Rows       atomic.Int64 // rows returned or affected, per command tags
}

// Counters is a copy of Stats at one moment.
type Counters struct {
	BytesIn    int64 `json:"bytes_in"`
	BytesOut   int64 `json:"bytes_out"`
	MsgsIn     int64 `json:"messages_in,omitempty"`
	MsgsOut    int64 `json:"messages_out,omitempty"`
	Statements int64 `json:"statements,omitempty"`
	Rows       int64 `json:"rows,omitempty"`
}

// Snapshot reads the counters.
func (s *Stats) Snapshot() Counters {
	return Counters{BytesIn: s.BytesIn.Load(), BytesOut: s.BytesOut.Load(), MsgsIn: s.MsgsIn.Load(),
		MsgsOut: s.MsgsOut.Load(), Statements: s.Statements.Load(), Rows: s.Rows.Load()}
}

// SetUpstreamRole records the database role the session runs as upstream.
// This is the one place it is kept: credentials set it, status reads it.
func (s *Session) SetUpstreamRole(role string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upstreamRole = role
}

// UpstreamRole is the role set by SetUpstreamRole ("" before).
func (s *Session) UpstreamRole() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upstreamRole
}

// SetDatabase records the database the client asked for.
func (s *Session) SetDatabase(db string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.database = db
}

// Database is the database set by SetDatabase ("" before).
func (s *Session) Database() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.database
}

// Sink receives a session's events. Implementations must not block for long:
// they are called on the data path.
//
// A statement event's Statement, and what it points to (parameters,
// sample), is valid only during Record: the data path reuses that memory
// for the session's next statements, so that recording one allocates
// nothing. A sink that keeps a statement past Record keeps
// Statement.Clone().
type Sink interface {
	Record(Event)
}

// Filter is a Sink that records only some events. A Queue in front of one
// holds only those.
type Filter interface {
	Sink
	Wants(Event) bool
}

// New returns a session with a fresh random ID.
func New(sink Sink) *Session {
	return &Session{ID: NewID(), Started: time.Now(), sink: sink}
}

// NewID returns a fresh session id: 16 lowercase characters of a-z and
// 2-7, so also a valid SQL identifier fragment (no quoting needed; role
// names are a prefix and the id).
//
// The first 4 characters are the time in seconds, modulo 2^20 (12 days),
// and the other 12 are 60 random bits. Ids made around the same time sort
// next to each other, so the audit store's indexes keyed by session id
// take a new session's rows on the few pages they were last written to,
// not on a random page each (issue 9). Ids are not secrets (the upstream
// sees them in role names and application_name): the random part is for
// uniqueness. Two sessions can only share an id if they started in the
// same second of the cycle: for sessions spread over time that is as
// unlikely as with 80 random bits, and a burst of a thousand sessions in
// one second has one chance in two trillion of a clash.
func NewID() string { return newID(time.Now()) }

// idAlphabet is base32's characters in byte order, so that ids sort like
// the numbers they encode (the standard alphabet puts 2-7 after z).
const idAlphabet = "234567abcdefghijklmnopqrstuvwxyz"

var idEncoding = base32.NewEncoding(idAlphabet).WithPadding(base32.NoPadding)

// idTimeBits is how many of an id's 80 bits are the time.
const idTimeBits = 20

func newID(now time.Time) string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("session: no randomness: " + err.Error())
	}
	t := uint32(now.Unix()) & (1<<idTimeBits - 1)
	b[0], b[1], b[2] = byte(t>>12), byte(t>>4), byte(t<<4)|b[2]&0x0f
	return idEncoding.EncodeToString(b[:])
}

// Emit stamps ev with the session and hands it to the sink.
func (s *Session) Emit(ev Event) {
	if s.sink == nil {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Session = s.ID
	if ev.Person == nil && s.Person.Name != "" {
		ev.Person = s.personCopy()
	}
	s.sink.Record(ev)
}

// personCopy returns the shared copy of Person, made anew if Person was
// changed since (events keep the person they were emitted for).
func (s *Session) personCopy() *identity.Person {
	if p := s.person.Load(); p != nil && samePerson(p, &s.Person) {
		return p
	}
	p := s.Person
	p.Groups = slices.Clone(p.Groups) // a later change to Person's groups must not rewrite emitted events
	s.person.Store(&p)
	return &p
}

func samePerson(a, b *identity.Person) bool {
	return a.Name == b.Name && a.UID == b.UID && a.Issuer == b.Issuer && a.Subject == b.Subject &&
		a.Email == b.Email && slices.Equal(a.Groups, b.Groups)
}

// SetAttr records a live fact about the session (never a secret).
func (s *Session) SetAttr(k, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attrs == nil {
		s.attrs = map[string]string{}
	}
	s.attrs[k] = v
}

// Attrs returns a copy of the live facts.
func (s *Session) Attrs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.attrs))
	for k, v := range s.attrs {
		out[k] = v
	}
	return out
}
