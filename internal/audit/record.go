// Package audit is Airlock's record of every session: a hash-chained,
// checkpoint-signed store (SQLite in the state dir, or a team PostgreSQL),
// fed through a durable local journal so that a statement whose result
// reached the client survives the daemon being killed.
package audit

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/airlockhq/airlock/internal/redact"
	"github.com/airlockhq/airlock/internal/session"
)

// Schema names the record format of the store and of `airlock audit export`.
// Fields are only ever added to it; a rename or a change of meaning gets a
// new schema name.
const Schema = "airlock.audit/1"

// Kinds recorded by the audit writer itself, beside the session kinds.
const (
	KindKey           = "audit.key"        // a signing key came into use (first, or a rotation)
	KindPrune         = "audit.prune"      // retention removed a signed prefix of the chain
	KindCredSweep     = "credential.sweep" // a role of ours found and dropped outside any session
	KindAlert         = "audit.alert"      // the daemon found its chain not as it left it
	ReasonInterrupted = "interrupted"
)

// Record is one link of a daemon's chain, as stored and exported.
type Record struct {
	Schema   string          `json:"schema"`
	Daemon   string          `json:"daemon"`
	Seq      int64           `json:"seq"`
	Time     time.Time       `json:"time"`
	Kind     string          `json:"kind"`
	Session  string          `json:"session,omitempty"`
	Data     json.RawMessage `json:"data"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
	// HashedData is set only on a record handed out with its data
	// rewritten for reading (RenderSample: a result sample stored as wire
	// bytes, rendered): the data as stored, the bytes the chain hashed, so
	// that an export can still be checked link by link without the store.
	HashedData json.RawMessage `json:"hashed_data,omitempty"`

	// frame is set on a record the shipper read from the journal: the
	// frame's bytes that stand as they are in the record's hash and line.
	frame frameText
	// hexLinks says PrevHash and Hash are hex digits, as the shipper's
	// chaining set them: the line quotes them without looking at them.
	hexLinks bool
}

// frameText is what of a journal frame a record's hash and block line can
// take as it is, instead of formatting the seq and the time again and
// quoting the kind and session: slices of the frame, valid as long as its
// data. nil slices where the frame cannot stand in (a frame of the
// previous version, a kind or session the line would escape).
type frameText struct {
	seq  []byte // the seq's digits
	ns   []byte // the time's Unix nanoseconds, as AppendInt writes them
	head []byte // ,"time_ns":…,"kind":"…","session":"…" exactly as the line has them
}

// SessionStart is the data of a session.start record.
type SessionStart struct {
	Connection string    `json:"connection"`
	Target     string    `json:"target"`
	Protocol   string    `json:"protocol"`
	Dest       string    `json:"dest"`   // original destination the process dialled
	Client     string    `json:"client"` // its address as the proxy saw it
	Person     Person    `json:"person"`
	Process    Process   `json:"process"`
	Ancestry   []Parent  `json:"ancestry,omitempty"` // parent first, up to the tracked root
	Started    time.Time `json:"started"`
}

// Person is who the session acted for.
type Person struct {
	Name    string   `json:"name"`
	UID     uint32   `json:"uid"`
	Issuer  string   `json:"issuer,omitempty"`
	Subject string   `json:"subject,omitempty"`
	Email   string   `json:"email,omitempty"`
	Groups  []string `json:"groups,omitempty"`
}

// Process is the process that connected, from the kernel's record.
type Process struct {
	PID       uint32    `json:"pid"`
	TID       uint32    `json:"tid"`
	UID       uint32    `json:"uid"`
	GID       uint32    `json:"gid"`
	Comm      string    `json:"comm"`
	Exe       string    `json:"exe"`
	Cmdline   []string  `json:"cmdline,omitempty"`
	CgroupID  uint64    `json:"cgroup_id"`
	Cgroup    string    `json:"cgroup,omitempty"`
	ConnectAt time.Time `json:"connect_at"`
}

// Parent is one ancestor of the connecting process.
type Parent struct {
	PID     uint32   `json:"pid"`
	Exe     string   `json:"exe"`
	Cmdline []string `json:"cmdline,omitempty"`
	UID     uint32   `json:"uid"`
}

// SessionEnd is the data of a session.end record.
type SessionEnd struct {
	Reason       string `json:"reason"` // client_quit, interrupted, upstream_lost, ttl, identity_lost, grant_expired, daemon_restart, refused, protocol_error, error
	Detail       string `json:"detail,omitempty"`
	DurationMS   int64  `json:"duration_ms"`
	BytesIn      int64  `json:"bytes_in"`
	BytesOut     int64  `json:"bytes_out"`
	Database     string `json:"database,omitempty"`
	UpstreamRole string `json:"upstream_role,omitempty"`
	// Masked counts the values masking replaced, per rule and detector.
	Masked []session.MaskCount `json:"masked,omitempty"`
}

// Statement is the data of a statement record.
type Statement struct {
	Protocol   string   `json:"protocol"`
	SQL        string   `json:"sql"`
	Name       string   `json:"name,omitempty"`
	Params     []string `json:"params,omitempty"`
	ParamCount int      `json:"param_count,omitempty"` // parameters bound, recorded or not
	Tag        string   `json:"tag,omitempty"`
	SQLState   string   `json:"sqlstate,omitempty"`
	Error      string   `json:"error,omitempty"`
	Rows       int64    `json:"rows"`
	Bytes      int64    `json:"bytes"`
	DurationUS int64    `json:"duration_us"`
	// Filled by the policy pipeline when it lands; empty until then.
	Class    string        `json:"class,omitempty"`    // read, write, ddl, dcl, ...
	Decision string        `json:"decision,omitempty"` // allowed, blocked, held, approved, denied
	Rule     string        `json:"rule,omitempty"`
	Sample   *ResultSample `json:"sample,omitempty"`
	// Number is the statement's place in its session, from 1.
	Number int64 `json:"number,omitempty"`
}

// MaskOriginals is the data of a mask.originals record: one statement's
// compliance copy, age-encrypted to Recipients (package compliance).
type MaskOriginals struct {
	Statement  int64    `json:"statement"` // the statement's number in the session
	Recipients []string `json:"recipients"`
	Values     int      `json:"values"`
	Truncated  bool     `json:"truncated,omitempty"`
	Ciphertext []byte   `json:"ciphertext"` // base64 in JSON
}

// RevealData is the data of an audit.reveal record: who fetched which
// compliance copies, before they got them.
type RevealData = session.Reveal

// ResultSample is a bounded prefix of a result exactly as the client saw it
// (after masking): column names, the first rows (null for SQL NULL), and
// whether the caps (audit.sample_rows, audit.sample_bytes) left some out.
//
// It has two forms. Rendered (what export, replay and records written
// before the stored form have): Rows. Stored (what the daemon writes):
// Rows null, the rows as the wire bytes they were in Data (package
// rowsample's form, base64 in JSON), with each column's type (OIDs) and
// format (Formats, by Bind's rules); Render turns it into the rendered
// form when a record is read, so the data path neither renders nor
// escapes values.
type ResultSample struct {
	Columns   []string    `json:"columns"`
	Rows      [][]*string `json:"rows"`
	Truncated bool        `json:"truncated,omitempty"`
	OIDs      []uint32    `json:"oids,omitempty"`
	Formats   []int16     `json:"formats,omitempty"`
	Data      []byte      `json:"data,omitempty"`
}

// Credential is the data of credential.create, .revoke and .sweep records.
type Credential struct {
	Mode    string    `json:"mode"`
	Role    string    `json:"role"`
	Groups  []string  `json:"groups,omitempty"`
	Expires time.Time `json:"expires,omitempty"`
	Outcome string    `json:"outcome"`
	Error   string    `json:"error,omitempty"`
	// Leftovers says what became of objects the role owned when it was
	// revoked (reassigned to the orphans owner, or dropped).
	Leftovers *session.Leftovers `json:"leftovers,omitempty"`
}

// Decision is the data of a decision record: the SQL policy refused, held,
// or (by a named rule) allowed a statement. The SQL is redacted.
type Decision = session.Decision

// Approval is the data of an approval record: a held statement's or an
// access request's life (pending, approved, denied, expired, canceled).
type Approval = session.Approval

// IdentityChange is the data of an identity.login, identity.logout,
// identity.refresh or identity.lost record: a uid's person changed or was
// renewed, or a live session's person could not be. Never a token.
type IdentityChange struct {
	UID     uint32  `json:"uid"`
	By      uint32  `json:"by"` // the caller's uid; differs for root's --for-uid
	Person  *Person `json:"person,omitempty"`
	Outcome string  `json:"outcome"`
	Error   string  `json:"error,omitempty"`
}

// Refusal is the data of a session.refused record.
type Refusal struct {
	Reason   string `json:"reason"`
	SQLState string `json:"sqlstate,omitempty"`
	// For a connection refused before its session started, which no
	// session.start describes: the short reason and what is known of the
	// connection (no process for one the kernel did not redirect).
	Code       string   `json:"code,omitempty"`
	Connection string   `json:"connection,omitempty"`
	Target     string   `json:"target,omitempty"`
	Dest       string   `json:"dest,omitempty"`
	Client     string   `json:"client,omitempty"`
	Process    *Process `json:"process,omitempty"`
}

// KeyData is the data of an audit.key record: a signing key, signed by the
// key it replaces (none for the daemon's first key).
type KeyData struct {
	KeyID       string `json:"key_id"`
	PublicKey   string `json:"public_key"` // base64 Ed25519
	PreviousKey string `json:"previous_key,omitempty"`
	Signature   string `json:"signature,omitempty"` // by the previous key over keyStatement
}

// AlertData is the data of an audit.alert record.
type AlertData struct {
	Message string `json:"message"`
	FromSeq int64  `json:"from_seq,omitempty"`
	ToSeq   int64  `json:"to_seq,omitempty"`
}

// PruneData is the data of an audit.prune record.
type PruneData struct {
	ThroughSeq int64     `json:"through_seq"`
	Before     time.Time `json:"before"`
}

// Policy says what may go into a record.
type Policy struct {
	// RecordParams keeps statement parameters (secrets redacted); off by
	// default, since parameters carry the data itself.
	RecordParams bool
}

// pending is a record before it is chained: what the journal holds.
type pending struct {
	Seq     int64           `json:"seq"`
	Time    time.Time       `json:"time"`
	Kind    string          `json:"kind"`
	Session string          `json:"session,omitempty"`
	Data    json.RawMessage `json:"data"`
	frame   frameText
}

// fromEvent turns a session event into record data, applying pol.
func fromEvent(ev session.Event, pol Policy) (kind string, data any, err error) {
	kind = string(ev.Kind)
	switch {
	case ev.Start != nil:
		return kind, startOf(ev.Start), nil
	case ev.End != nil:
		e := ev.End
		return kind, SessionEnd{Reason: e.Reason, Detail: redactSQL(e.Detail), DurationMS: e.Duration.Milliseconds(),
			BytesIn: e.BytesIn, BytesOut: e.BytesOut, Database: e.Database, UpstreamRole: e.UpstreamRole, Masked: e.Masked}, nil
	case ev.Statement != nil:
		st, _ := statementOf(ev.Statement, pol)
		if s := ev.Statement.Sample; s != nil {
			rs := sampleOf(s)
			st.Sample = &rs
		}
		return kind, st, nil
	case ev.Originals != nil:
		o := ev.Originals
		return kind, MaskOriginals{Statement: o.Statement, Recipients: o.Recipients, Values: o.Values,
			Truncated: o.Truncated, Ciphertext: o.Sealed}, nil
	case ev.Reveal != nil:
		return kind, *ev.Reveal, nil
	case ev.Credential != nil:
		c := ev.Credential
		return kind, Credential{Mode: c.Mode, Role: c.Role, Groups: c.Groups, Expires: c.Expires,
			Outcome: c.Outcome, Error: redactSQL(c.Error), Leftovers: c.Leftovers}, nil
	case ev.Refusal != nil:
		return kind, refusalOf(ev.Refusal), nil
	case ev.Decision != nil:
		d := *ev.Decision
		d.SQL, d.Reason = redactSQL(d.SQL), redactSQL(d.Reason)
		return kind, d, nil
	case ev.Approval != nil:
		a := *ev.Approval
		a.Reason = redactSQL(a.Reason)
		return kind, a, nil
	case ev.Identity != nil:
		id := ev.Identity
		ch := IdentityChange{UID: id.UID, By: id.By, Outcome: id.Outcome, Error: redactSQL(id.Error)}
		if p := ev.Person; p != nil {
			ch.Person = &Person{Name: p.Name, UID: p.UID, Issuer: p.Issuer, Subject: p.Subject,
				Email: p.Email, Groups: p.Groups}
		}
		return kind, ch, nil
	}
	return "", nil, fmt.Errorf("event %q carries no data", ev.Kind)
}

// statementOf is a statement's record data, applying pol, but for its
// result sample (sampleOf): built on the caller's stack, it allocates
// nothing unless parameters are recorded. sqlPlain is how many bytes at the
// start of its text are known plain (appendStatementPlain), found by the
// same pass over the text as its redaction.
func statementOf(s *session.Statement, pol Policy) (st Statement, sqlPlain int) {
	return statementOfCount(s, len(s.Params), pol.RecordParams)
}

// statementOfCount is statementOf for a statement that bound paramCount
// parameters, of which s.Params holds those to record, if record: a raw
// frame (rawframe.go) holds the parameters only where the policy records
// them, and their count.
func statementOfCount(s *session.Statement, paramCount int, record bool) (st Statement, sqlPlain int) {
	sql, sqlPlain := redact.SQLPlain(s.SQL)
	st = Statement{Protocol: s.Protocol, SQL: sql, Name: s.Name, ParamCount: paramCount,
		Tag: s.Tag, SQLState: s.SQLState, Error: redactSQL(s.Error), Rows: s.Rows, Bytes: s.Bytes,
		DurationUS: s.Duration.Microseconds(), Class: s.Class, Decision: s.Decision, Rule: s.Rule, Number: s.Number}
	if record {
		st.Params = redactParams(s.SQL, s.Params)
	}
	return st, sqlPlain
}

// sampleOf is a sample's record data in the stored form (it shares s's
// memory: the record is encoded before Record returns).
func sampleOf(s *session.Sample) ResultSample {
	return ResultSample{Columns: s.Columns, Truncated: s.Truncated, OIDs: s.OIDs, Formats: s.Formats, Data: s.Data}
}

func refusalOf(r *session.Refusal) Refusal {
	out := Refusal{Reason: redactSQL(r.Reason), SQLState: r.SQLState, Code: r.Code}
	a := r.Attempt
	if a == nil {
		return out
	}
	out.Connection, out.Target = a.Connection, a.Target
	if a.Dest.IsValid() {
		out.Dest = a.Dest.String()
	}
	if a.Client.IsValid() {
		out.Client = a.Client.String()
	}
	if o := a.Origin; o.PID != 0 {
		out.Process = &Process{PID: o.PID, TID: o.TID, UID: o.UID, GID: o.GID, Comm: o.Comm, Exe: o.Exe,
			Cmdline: redactArgs(o.Cmdline), CgroupID: o.CgroupID, Cgroup: o.CgroupPath, ConnectAt: o.ConnectAt}
	}
	return out
}

func startOf(s *session.Session) SessionStart {
	o := s.Origin
	st := SessionStart{
		Connection: s.Connection, Target: s.Target, Protocol: s.Protocol,
		Dest: s.Dest.String(), Client: s.Client.String(), Started: s.Started,
		Person: Person{Name: s.Person.Name, UID: s.Person.UID, Issuer: s.Person.Issuer,
			Subject: s.Person.Subject, Email: s.Person.Email, Groups: s.Person.Groups},
		Process: Process{PID: o.PID, TID: o.TID, UID: o.UID, GID: o.GID, Comm: o.Comm, Exe: o.Exe,
			Cmdline: redactArgs(o.Cmdline), CgroupID: o.CgroupID, Cgroup: o.CgroupPath, ConnectAt: o.ConnectAt},
	}
	for _, p := range o.Parents {
		st.Ancestry = append(st.Ancestry, Parent{PID: p.PID, Exe: p.Exe, Cmdline: redactArgs(p.Cmdline), UID: p.UID})
	}
	return st
}

const redacted = "<redacted>"

// Secrets in command lines and parameters. Statement text goes through
// package redact.
var (
	// password=… in libpq connection strings and user:password@ in URLs,
	// which command lines carry.
	connPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"]+)`)
	urlPassword  = regexp.MustCompile(`(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@`)
	secretWords  = regexp.MustCompile(`(?i)password|passwd|secret|token|api_?key|credential|private_?key`)
	// The credentials of an HTTP Authorization header (curl -H
	// "Authorization: Bearer …"), with or without a scheme.
	authHeader = regexp.MustCompile(`(?i)(\bauthorization\s*:\s*(?:[a-z][a-z0-9_-]*\s+)?)\S+`)
	// KEY=value where KEY is a word naming a secret, anywhere in an
	// argument: a variable (PGPASSWORD=…, also inside sh -c "…"), an
	// option (--client-secret=…). The value quoted or not.
	secretAssign = regexp.MustCompile(`(?i)([a-z0-9_.-]*(?:pass|secret|token|api[_-]?key|credential|private[_-]?key)[a-z0-9_.-]*\s*=\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)`)
	// --option value inside one argument (sh -c "mysql --password x").
	secretFlagValue = regexp.MustCompile(`(?i)(--[a-z0-9_.-]*(?:pass|secret|token|api[_-]?key|credential|private[_-]?key)[a-z0-9_.-]*\s+)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"-][^\s'"]*)`)
	secretValue     = regexp.MustCompile(`^(?:SCRAM-SHA-256\$|md5[0-9a-f]{32}$|eyJ[A-Za-z0-9_-]+\.|-----BEGIN |AKIA[0-9A-Z]{16}$|gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}|xox[abpr]-)`)
)

// redactSQL removes secret-bearing constants from statement text (see
// package redact: a password can sit in any constant, not only after
// PASSWORD).
func redactSQL(sql string) string { return redact.SQL(sql) }

// redactArgs removes secrets from a command line: SQL password literals,
// connection-string passwords, URL user passwords, an Authorization
// header's credentials, the value of an option or variable named for a
// secret (--token=X, --api-key X, PGPASSWORD=X) and any argument that is a
// credential on its own (a JWT, an AWS key id, a GitHub token, ...).
// Command lines are the agent's to write, and auditors are not meant to
// read its credentials.
func redactArgs(args []string) []string { return redactArgsWith(args, wordsOf) }

// redactArgsWith is redactArgs with words saying which patterns may match
// an argument (tests pass one that runs them all).
func redactArgsWith(args []string, words func(string) argWords) []string {
	if len(args) == 0 {
		return nil
	}
	out := make([]string, len(args))
	for i, a := range args {
		if i > 0 && secretOption(args[i-1]) && !strings.HasPrefix(a, "-") {
			// --password hunter2: the value is the argument after the
			// option.
			out[i] = redacted
			continue
		}
		if secretValue.MatchString(a) {
			out[i] = redacted
			continue
		}
		w := words(a)
		if w.secret {
			a = secretAssign.ReplaceAllString(a, "${1}"+redacted)
			a = secretFlagValue.ReplaceAllStringFunc(a, redactFlagValue)
		}
		if w.auth {
			a = authHeader.ReplaceAllString(a, "${1}"+redacted)
		}
		// Every session's start record redacts the client's and each
		// ancestor's command line, a few KB; the two patterns, which
		// Go's regexp cannot anchor on a literal, were a tenth of a new
		// connection's CPU. They run only where they could match.
		if w.password {
			a = connPassword.ReplaceAllString(a, "${1}"+redacted)
		}
		if strings.Contains(a, "://") {
			a = urlPassword.ReplaceAllString(a, "${1}"+redacted+"@")
		}
		a = redactSQL(a)
		out[i] = a
	}
	return out
}

// argWords says which of the patterns that redactArgs runs could match an
// argument: each starts from a word (matched case-insensitively), and an
// argument without the word cannot match. Found in one pass over the
// argument, ASCII only: any other byte makes every pattern run (the
// regexps' case folding also matches, say, the long s U+017F for "s" or
// the Kelvin sign for "k").
type argWords struct {
	secret   bool // secretAssign, secretFlagValue: pass, secret, token, key, credential
	password bool // connPassword
	auth     bool // authHeader
}

func wordsOf(a string) argWords {
	var w argWords
	for i := 0; i < len(a); i++ {
		if a[i] >= utf8.RuneSelf {
			return argWords{secret: true, password: true, auth: true}
		}
	}
	has := func(i int, word string) bool {
		return len(a)-i >= len(word) && strings.EqualFold(a[i:i+len(word)], word)
	}
	for i := 0; i < len(a); i++ {
		if w.secret && w.auth && w.password {
			break
		}
		switch a[i] | 0x20 {
		case 'p':
			if has(i, "pass") {
				w.secret = true
				w.password = w.password || has(i, "password")
			}
		case 's':
			w.secret = w.secret || has(i, "secret")
		case 't':
			w.secret = w.secret || has(i, "token")
		case 'k':
			w.secret = w.secret || has(i, "key")
		case 'c':
			w.secret = w.secret || has(i, "credential")
		case 'a':
			w.auth = w.auth || has(i, "authorization")
		}
	}
	return w
}

// redactFlagValue is secretFlagValue's replacement: the value after a
// secret's option goes, unless the option is a negation (--no-password),
// which takes no value.
func redactFlagValue(m string) string {
	sub := secretFlagValue.FindStringSubmatch(m)
	if len(sub) != 3 || strings.HasPrefix(strings.ToLower(sub[1]), "--no-") {
		return m
	}
	return sub[1] + redacted
}

// secretKey is whether k, the part of an argument before its first "=",
// names a secret: an option (--client-secret=…) or a variable
// (PGPASSWORD=…, as env(1) takes them). Only a single word is a key: in
// "psql -c 'SELECT a=1'" the text before "=" is not one.
func secretKey(k string) bool {
	k = strings.TrimLeft(k, "-")
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return secretWords.MatchString(strings.ReplaceAll(k, "-", "_"))
}

// secretOption is whether arg is a long option named for a secret that
// takes its value as the next argument (--password hunter2, --api-key
// …). A negated one (--no-password) takes none.
func secretOption(arg string) bool {
	if !strings.HasPrefix(arg, "--") || strings.Contains(arg, "=") || strings.HasPrefix(arg, "--no-") {
		return false
	}
	return secretKey(arg)
}

// redactParams keeps parameters, except every one of a statement that names
// a secret and any value that looks like a credential on its own.
func redactParams(sql string, params []string) []string {
	if len(params) == 0 {
		return nil
	}
	out := make([]string, len(params))
	all := secretWords.MatchString(sql)
	for i, p := range params {
		if all || secretValue.MatchString(p) {
			out[i] = redacted
			continue
		}
		out[i] = p
	}
	return out
}
