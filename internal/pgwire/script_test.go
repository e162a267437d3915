package pgwire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/session"
)

// TestScripts runs the message scripts in testdata/*.script through the
// proxy against a real PostgreSQL: what the client sends, what it must
// receive, under each pipeline decision. The format is described in
// testdata/README.md. Scripts that say `direct` run against the server
// directly as well, with the same expectations: the proxy must not be
// visible in what the client receives.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.script")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	pg := pgtest.Start(t, pgtest.Options{})
	for _, f := range files {
		sc, err := parseScript(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		name := strings.TrimSuffix(filepath.Base(f), ".script")
		t.Run(name, func(t *testing.T) {
			st := &scriptStages{holds: make(chan *Holding, 16)}
			for _, d := range sc.stages {
				st.add(t, d)
			}
			h := newHarness(t, pg, func(o *Options) {
				o.Stages = func(*session.Session) Stages { return st.Stages }
				if sc.budget > 0 {
					o.MaxPreparedBytes = sc.budget
				}
			})
			sc.run(t, "proxy", h.addr, proxyStartup, st)
			if sc.direct {
				sc.run(t, "direct", net.JoinHostPort(pg.Addr, strconv.Itoa(pg.Port)), directStartup(pg), nil)
			}
		})
	}
}

// script is a parsed .script file.
type script struct {
	file   string
	stages [][]string
	direct bool
	budget int
	steps  []step
}

type step struct {
	line int
	verb string   // send, until, expect, approve, deny, cancel, wait
	args []string // tokens after the verb
}

func parseScript(path string) (*script, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := &script{file: path}
	s := bufio.NewScanner(f)
	for ln := 1; s.Scan(); ln++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		toks, err := tokenize(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", ln, err)
		}
		switch toks[0] {
		case "stage":
			if len(toks) < 2 {
				return nil, fmt.Errorf("line %d: stage needs a kind", ln)
			}
			sc.stages = append(sc.stages, toks[1:])
		case "direct":
			sc.direct = true
		case "budget":
			if len(toks) != 2 {
				return nil, fmt.Errorf("line %d: budget BYTES", ln)
			}
			sc.budget, err = strconv.Atoi(toks[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", ln, err)
			}
		case "send", "until", "expect", "approve", "deny", "cancel", "wait", "silent":
			sc.steps = append(sc.steps, step{line: ln, verb: toks[0], args: toks[1:]})
		default:
			return nil, fmt.Errorf("line %d: unknown command %q", ln, toks[0])
		}
	}
	return sc, s.Err()
}

// tokenize splits a line into words and "quoted strings" (Go escapes).
func tokenize(line string) ([]string, error) {
	var out []string
	for {
		line = strings.TrimLeft(line, " \t")
		if line == "" || line[0] == '#' {
			return out, nil
		}
		if line[0] == '"' {
			end := 1
			for ; end < len(line); end++ {
				if line[end] == '\\' {
					end++
					continue
				}
				if line[end] == '"' {
					break
				}
			}
			if end >= len(line) {
				return nil, fmt.Errorf("unterminated string")
			}
			s, err := strconv.Unquote(line[:end+1])
			if err != nil {
				return nil, fmt.Errorf("bad string %s: %w", line[:end+1], err)
			}
			out = append(out, s)
			line = line[end+1:]
			continue
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			i = len(line)
		}
		out = append(out, line[:i])
		line = line[i:]
	}
}

// startupFunc logs in on addr and returns the connection ready for queries
// with the cancel key the client was given.
type startupFunc func(t *testing.T, addr string) (net.Conn, *pgproto3.BackendKeyData)

// proxyStartup logs in to the proxy as a client would: no password.
func proxyStartup(t *testing.T, addr string) (net.Conn, *pgproto3.BackendKeyData) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var key *pgproto3.BackendKeyData
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus:
		case *pgproto3.BackendKeyData:
			key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
		case *pgproto3.ReadyForQuery:
			return conn, key
		default:
			t.Fatalf("startup: unexpected %T", m)
		}
	}
}

// directStartup logs in to the server itself (SCRAM, through pgconn) and
// takes the connection over.
func directStartup(pg *pgtest.Server) startupFunc {
	return func(t *testing.T, _ string) (net.Conn, *pgproto3.BackendKeyData) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		pc, err := pgconn.Connect(ctx, pg.AdminURL("postgres"))
		if err != nil {
			t.Fatalf("connect directly: %v", err)
		}
		hc, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		return hc.Conn, &pgproto3.BackendKeyData{ProcessID: hc.PID, SecretKey: hc.SecretKey}
	}
}

// run plays the script. st is nil when no stage runs (direct).
func (sc *script) run(t *testing.T, target, addr string, start startupFunc, st *scriptStages) {
	t.Helper()
	conn, key := start(t, addr)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	var got []string // received, not yet matched by expect
	var all []string // received since the last until
	gotLine := 0
	check := func(s step) {
		if len(got) > 0 {
			t.Fatalf("%s:%d (%s): received but not expected:\n  %s", sc.file, gotLine, target, strings.Join(got, "\n  "))
		}
	}
	for _, s := range sc.steps {
		where := fmt.Sprintf("%s:%d (%s)", sc.file, s.line, target)
		switch s.verb {
		case "send":
			check(s)
			msg, err := buildMessage(s.args)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			fe.Send(msg)
			if err := fe.Flush(); err != nil {
				t.Fatalf("%s: send: %v", where, err)
			}
		case "until":
			check(s)
			if len(s.args) < 1 {
				t.Fatalf("%s: until TYPE [COUNT]", where)
			}
			want, count := s.args[0], 1
			if len(s.args) > 1 {
				count, _ = strconv.Atoi(s.args[1])
			}
			gotLine = s.line
			all = nil
			for count > 0 {
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("%s: receive: %v (so far: %q)", where, err, got)
				}
				r := render(m)
				got = append(got, r)
				all = append(all, r)
				if strings.SplitN(r, " ", 2)[0] == want {
					count--
				}
			}
		case "expect":
			if len(got) == 0 {
				t.Fatalf("%s: expected %q, received nothing more", where, strings.Join(s.args, " "))
			}
			gt, _ := tokenize(got[0])
			if !matches(gt, s.args) {
				t.Fatalf("%s: received %s\n  want %s\n  (received since line %d: %s)", where, got[0], renderTokens(s.args),
					gotLine, strings.Join(all, " | "))
			}
			got = got[1:]
		case "silent":
			// Nothing may arrive for a while: a held statement has not
			// reached the server. (It can only fail when something does
			// arrive, never by timing.)
			check(s)
			d, err := time.ParseDuration(s.args[0])
			if err != nil {
				t.Fatalf("%s: silent DURATION: %v", where, err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(d))
			var b [1]byte
			if n, err := conn.Read(b[:]); n > 0 || err == nil {
				t.Fatalf("%s: received %q while nothing should come", where, b[:n])
			}
			_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		case "wait", "approve", "deny", "cancel":
			if st == nil {
				continue // nothing is held on a direct run
			}
			check(s)
			var h *Holding
			select {
			case h = <-st.holds:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no hold within 10s", where)
			}
			switch s.verb {
			case "wait":
				st.holds <- h // still held: put it back
			case "approve":
				if !h.Approve() {
					t.Fatalf("%s: hold already decided", where)
				}
			case "deny":
				if len(s.args) != 2 {
					t.Fatalf("%s: deny CODE MESSAGE", where)
				}
				h.Deny(s.args[0], s.args[1])
			case "cancel":
				// The way a client cancels: a CancelRequest on a new
				// connection with the key it was given.
				waitHeld(t, h)
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := (&pgproto3.CancelRequest{ProcessID: key.ProcessID, SecretKey: key.SecretKey}).Encode(nil)
				_, _ = c.Write(b)
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, _ = c.Read(make([]byte, 1)) // the proxy closes when done
				_ = c.Close()
			}
		}
	}
	if len(got) > 0 {
		t.Fatalf("%s:%d (%s): received but not expected:\n  %s", sc.file, gotLine, target, strings.Join(got, "\n  "))
	}
}

// waitHeld waits until the session is parked on h (the stage hands the
// hold out before the pump starts waiting on it; a cancel sent earlier
// would go to the server, as it should).
func waitHeld(t *testing.T, h *Holding) {
	select {
	case <-h.Parked():
	case <-time.After(10 * time.Second):
		t.Fatal("the hold was never waited on")
	}
}

// matches reports whether got (a rendered message) is want, where want may
// leave out trailing arguments.
func matches(got, want []string) bool {
	if len(want) > len(got) {
		return false
	}
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func renderTokens(toks []string) string {
	var b strings.Builder
	for i, s := range toks {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i == 0 {
			b.WriteString(s)
		} else {
			b.WriteString(strconv.Quote(s))
		}
	}
	return b.String()
}

// render writes a received message as a line of the script format.
func render(m pgproto3.BackendMessage) string {
	name := strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.")
	var args []string
	switch m := m.(type) {
	case *pgproto3.RowDescription:
		for _, f := range m.Fields {
			args = append(args, string(f.Name))
		}
	case *pgproto3.DataRow:
		for _, v := range m.Values {
			if v == nil {
				args = append(args, "NULL")
			} else {
				args = append(args, string(v))
			}
		}
	case *pgproto3.CommandComplete:
		args = append(args, string(m.CommandTag))
	case *pgproto3.ErrorResponse:
		args = append(args, m.Code, m.Message)
	case *pgproto3.NoticeResponse:
		args = append(args, m.Code, m.Message)
	case *pgproto3.ReadyForQuery:
		args = append(args, string(m.TxStatus))
	case *pgproto3.ParameterStatus:
		args = append(args, m.Name, m.Value)
	case *pgproto3.NotificationResponse:
		args = append(args, m.Channel, m.Payload)
	case *pgproto3.CopyData:
		args = append(args, string(m.Data))
	case *pgproto3.FunctionCallResponse:
		if m.Result == nil {
			args = append(args, "NULL")
		} else {
			args = append(args, string(m.Result))
		}
	case *pgproto3.ParameterDescription:
		for _, o := range m.ParameterOIDs {
			args = append(args, strconv.FormatUint(uint64(o), 10))
		}
	}
	return renderTokens(append([]string{name}, args...))
}

// buildMessage makes a frontend message from a send line.
func buildMessage(a []string) (pgproto3.FrontendMessage, error) {
	if len(a) == 0 {
		return nil, fmt.Errorf("send what?")
	}
	need := func(n int) error {
		if len(a)-1 < n {
			return fmt.Errorf("%s needs %d arguments", a[0], n)
		}
		return nil
	}
	nullable := func(ss []string) [][]byte {
		var out [][]byte
		for _, s := range ss {
			if s == "NULL" {
				out = append(out, nil)
			} else {
				out = append(out, []byte(s))
			}
		}
		return out
	}
	switch a[0] {
	case "Query":
		if err := need(1); err != nil {
			return nil, err
		}
		return &pgproto3.Query{String: a[1]}, nil
	case "Parse":
		if err := need(2); err != nil {
			return nil, err
		}
		return &pgproto3.Parse{Name: a[1], Query: a[2]}, nil
	case "Bind":
		if err := need(2); err != nil {
			return nil, err
		}
		return &pgproto3.Bind{DestinationPortal: a[1], PreparedStatement: a[2], Parameters: nullable(a[3:])}, nil
	case "Describe", "Close":
		if err := need(2); err != nil {
			return nil, err
		}
		if a[0] == "Close" {
			return &pgproto3.Close{ObjectType: a[1][0], Name: a[2]}, nil
		}
		return &pgproto3.Describe{ObjectType: a[1][0], Name: a[2]}, nil
	case "Execute":
		if err := need(1); err != nil {
			return nil, err
		}
		m := &pgproto3.Execute{Portal: a[1]}
		if len(a) > 2 {
			n, err := strconv.Atoi(a[2])
			if err != nil {
				return nil, err
			}
			m.MaxRows = uint32(n)
		}
		return m, nil
	case "Sync":
		return &pgproto3.Sync{}, nil
	case "Flush":
		return &pgproto3.Flush{}, nil
	case "Terminate":
		return &pgproto3.Terminate{}, nil
	case "CopyData":
		if err := need(1); err != nil {
			return nil, err
		}
		return &pgproto3.CopyData{Data: []byte(a[1])}, nil
	case "CopyDone":
		return &pgproto3.CopyDone{}, nil
	case "CopyFail":
		if err := need(1); err != nil {
			return nil, err
		}
		return &pgproto3.CopyFail{Message: a[1]}, nil
	case "FunctionCall":
		if err := need(1); err != nil {
			return nil, err
		}
		oid, err := strconv.ParseUint(a[1], 10, 32)
		if err != nil {
			return nil, err
		}
		return &pgproto3.FunctionCall{Function: uint32(oid), Arguments: nullable(a[2:]), ResultFormatCode: 0}, nil
	}
	return nil, fmt.Errorf("unknown message %q", a[0])
}

// scriptStages builds the stages a script asks for.
type scriptStages struct {
	Stages
	holds chan *Holding
}

func (s *scriptStages) add(t *testing.T, d []string) {
	kv := map[string]string{}
	for _, a := range d[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			t.Fatalf("stage %s: argument %q is not key=value", d[0], a)
		}
		kv[k] = v
	}
	switch d[0] {
	case "refuse":
		s.Client = append(s.Client, &refuseStage{types: def(kv["types"], "QP"), match: kv["match"], code: def(kv["code"], "42501")})
	case "drop":
		s.Client = append(s.Client, &dropStage{types: kv["types"], match: kv["match"]})
	case "hold":
		timeout, _ := time.ParseDuration(kv["timeout"])
		s.Client = append(s.Client, &holdStage{match: kv["match"], timeout: timeout, holds: s.holds})
	case "rewrite":
		s.Client = append(s.Client, &rewriteStage{from: kv["from"], to: kv["to"]})
	case "mask":
		col, err := strconv.Atoi(kv["column"])
		if err != nil {
			t.Fatalf("mask column=N: %v", err)
		}
		var st ServerStage = &maskStage{column: col, with: []byte(def(kv["with"], "***"))}
		if kv["via"] == "server" {
			st = serverOnly{st}
		}
		s.Server = append(s.Server, st)
	case "batchrefuse":
		s.Batch = append(s.Batch, &batchStage{match: kv["match"], refuse: true})
	case "batchhold":
		s.Batch = append(s.Batch, &batchStage{match: kv["match"], holds: s.holds})
	default:
		t.Fatalf("unknown stage %q", d[0])
	}
}

func def(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// refuseStage answers Reply for messages of its types whose body contains
// match ("" matches everything).
type refuseStage struct{ types, match, code string }

func (s *refuseStage) ClientTypes() string { return s.types }
func (s *refuseStage) Client(m *ClientMsg) Verdict {
	if bytes.Contains(m.Body, []byte(s.match)) {
		return Refuse(s.code, "refused by the test stage")
	}
	return Verdict{}
}

// dropStage drops messages of its types whose body contains match.
type dropStage struct{ types, match string }

func (s *dropStage) ClientTypes() string { return s.types }
func (s *dropStage) Client(m *ClientMsg) Verdict {
	if bytes.Contains(m.Body, []byte(s.match)) {
		return Verdict{Action: Drop}
	}
	return Verdict{}
}

// holdStage holds Query and Parse messages whose SQL contains match and
// hands the hold to the script, which decides from its own goroutine.
type holdStage struct {
	match   string
	timeout time.Duration
	holds   chan *Holding
}

func (s *holdStage) ClientTypes() string { return "QP" }
func (s *holdStage) Client(m *ClientMsg) Verdict {
	if !bytes.Contains(m.SQL(), []byte(s.match)) {
		return Verdict{}
	}
	h := NewHold(s.timeout, ErrorReply{})
	s.holds <- h
	return Verdict{Action: Hold, Hold: h}
}

// rewriteStage replaces from with to in the SQL of Query and Parse.
type rewriteStage struct{ from, to string }

func (s *rewriteStage) ClientTypes() string { return "QP" }
func (s *rewriteStage) Client(m *ClientMsg) Verdict {
	sql := m.SQL()
	if !bytes.Contains(sql, []byte(s.from)) {
		return Verdict{}
	}
	out := strings.ReplaceAll(string(sql), s.from, s.to)
	if m.Type == 'Q' {
		return ReplaceWith(&pgproto3.Query{String: out})
	}
	var p pgproto3.Parse
	if err := p.Decode(m.Body); err != nil {
		return Refuse("08P01", "bad Parse")
	}
	p.Query = out
	return ReplaceWith(&p)
}

// maskStage replaces one column of every DataRow, the way a masking stage
// does: in place when the new value has the old one's length, else the row
// re-encoded (the bytes around the value copied whole) and its length
// recomputed.
type maskStage struct {
	column int
	with   []byte
	buf    []byte
}

func (s *maskStage) ServerTypes() string { return "D" }
func (s *maskStage) Server(m *ServerMsg) Verdict {
	if out := s.Row(m); out != nil {
		return Verdict{Action: Replace, Msgs: out}
	}
	return Verdict{}
}

func (s *maskStage) Row(m *ServerMsg) []byte {
	if len(m.Body) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(m.Body))
	if s.column >= n {
		return nil
	}
	p := 2
	for i := 0; ; i++ {
		if p+4 > len(m.Body) {
			return nil
		}
		l := int(int32(binary.BigEndian.Uint32(m.Body[p:])))
		if i == s.column {
			if l < 0 || p+4+l > len(m.Body) {
				return nil // NULL stays NULL
			}
			if l == len(s.with) {
				copy(m.Body[p+4:], s.with)
				return nil
			}
			out := append(s.buf[:0], 'D', 0, 0, 0, 0)
			out = append(out, m.Body[:p]...)
			out = binary.BigEndian.AppendUint32(out, uint32(len(s.with)))
			out = append(out, s.with...)
			out = append(out, m.Body[p+4+l:]...)
			binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
			s.buf = out
			return out
		}
		p += 4 + max(l, 0)
	}
}

// batchStage refuses or holds a whole extended batch when any of its
// messages contains match.
type batchStage struct {
	match  string
	refuse bool
	holds  chan *Holding
}

func (s *batchStage) Batch(b *Batch) Verdict {
	for _, m := range b.Msgs {
		if bytes.Contains(m.Body, []byte(s.match)) {
			if s.refuse {
				return Refuse("42501", fmt.Sprintf("batch of %d messages refused", len(b.Msgs)))
			}
			h := NewHold(0, ErrorReply{})
			s.holds <- h
			return Verdict{Action: Hold, Hold: h}
		}
	}
	return Verdict{}
}
