package pgwire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

func encodeAll(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

func clientSeeds() [][]byte {
	return [][]byte{
		encodeAll(&pgproto3.Query{String: "select 1; select 2"}, &pgproto3.Terminate{}),
		encodeAll(&pgproto3.Parse{Name: "s1", Query: "select $1"}, &pgproto3.Bind{PreparedStatement: "s1",
			ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 1}, nil}}, &pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Flush{}),
		encodeAll(&pgproto3.Query{String: "copy t from stdin"}, &pgproto3.CopyData{Data: []byte("1\tx\n")},
			&pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "no"}),
		{'Q', 0, 0, 0, 3},
		{'Q', 0x7f, 0xff, 0xff, 0xff, 's'},
		{'P', 0, 0, 0, 4},
		{'B', 0, 0, 0, 8, 0, 0, 0xff, 0xff},
	}
}

func serverSeeds() [][]byte {
	return [][]byte{
		encodeAll(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a")}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte("1")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		encodeAll(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012"},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		encodeAll(&pgproto3.NoticeResponse{Message: "n"}, &pgproto3.NotificationResponse{Channel: "c"},
			&pgproto3.ParameterStatus{Name: "a", Value: "b"}, &pgproto3.PortalSuspended{}, &pgproto3.EmptyQueryResponse{},
			&pgproto3.CopyOutResponse{}, &pgproto3.CopyData{Data: []byte("x")}, &pgproto3.CopyDone{}),
		{'C', 0, 0, 0, 4},
		{'E', 0, 0, 0, 5, 0},
	}
}

// FuzzClientMessages relays arbitrary client bytes: the pump must forward an
// exact prefix of its input, never panic, and stop.
func FuzzClientMessages(f *testing.F) {
	for _, s := range clientSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pl := newPipe(session.New(&capSink{}), Stages{}, 0)
		var out bytes.Buffer
		p := newPump(bytes.NewReader(data), &out, pl.fromClient, pl.clientTypes(), 1<<16, 1<<16)
		p.space = func() error { return errStopped }
		_ = p.run()
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("forwarded bytes are not a prefix of the input")
		}
	})
}

// FuzzSessionStreams feeds a client stream and then a server stream through
// one tracker, as the two pumps of a session would.
func FuzzSessionStreams(f *testing.F) {
	for _, c := range clientSeeds() {
		for _, s := range serverSeeds() {
			f.Add(c, s)
		}
	}
	f.Fuzz(func(t *testing.T, client, server []byte) {
		pl := newPipe(session.New(&capSink{}), Stages{}, 0)
		c2s := newPump(bytes.NewReader(client), io.Discard, pl.fromClient, pl.clientTypes(), 1<<16, 1<<16)
		c2s.space = func() error { return errStopped }
		_ = c2s.run()
		var out bytes.Buffer
		s2c := newPump(bytes.NewReader(server), &out, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
		_ = s2c.run()
		pl.abandon("fuzz")
		if !bytes.HasPrefix(server, out.Bytes()) {
			t.Fatalf("forwarded bytes are not a prefix of the input")
		}
	})
}

type failCreds struct{}

func (failCreds) Acquire(context.Context, *session.Session, string) (Lease, error) {
	return nil, errors.New("no credentials in fuzzing")
}

// FuzzClientStartup serves arbitrary pre-startup bytes: Serve must answer
// or close, and return, without panicking.
func FuzzClientStartup(f *testing.F) {
	f.Add(startupPacket(3<<16, "user", "x", "database", "postgres"))
	f.Add(startupPacket(3<<16|2, "user", "x", "_pq_.opt", "1"))
	f.Add(startupPacket(2<<16, "user", "x"))
	f.Add(append(append([]byte{}, sslReq...), startupPacket(3<<16, "database", "postgres")...))
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30, 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 2, 3, 4, 5})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5})
	p, err := New(Options{Name: "fuzz", Upstream: Upstream{Host: "127.0.0.1", Port: 1}, Databases: []string{"postgres"},
		Credentials: failCreds{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		sess := session.New(&capSink{})
		sess.Person = identity.Person{Name: "fuzz"}
		go func() { _, _ = io.Copy(io.Discard, b) }()
		go func() {
			_, _ = b.Write(data)
			_ = b.Close() // the client goes once it has said its piece
		}()
		done := make(chan struct{})
		go func() {
			_ = p.Serve(context.Background(), a, sess)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after the client left")
		}
	})
}

// fuzzHold holds every Query and Parse that mentions "h" and decides at
// once, alternating approve and deny.
type fuzzHold struct{ n int }

func (s *fuzzHold) ClientTypes() string { return "QP" }
func (s *fuzzHold) Client(m *ClientMsg) Verdict {
	if !bytes.Contains(m.SQL(), []byte("h")) {
		return Verdict{}
	}
	h := NewHold(time.Second, ErrorReply{})
	s.n++
	if s.n%2 == 0 {
		h.Approve()
	} else {
		h.Deny("42501", "no")
	}
	return Verdict{Action: Hold, Hold: h}
}

// fuzzBatchHold holds every batch that mentions "u" and decides at once.
type fuzzBatchHold struct{ fuzzHold }

func (s *fuzzBatchHold) Batch(b *Batch) Verdict {
	for _, m := range b.Msgs {
		if bytes.Contains(m.Body, []byte("u")) {
			h := NewHold(time.Second, ErrorReply{})
			s.n++
			if s.n%2 == 0 {
				h.Approve()
			} else {
				h.Deny("42501", "no")
			}
			return Verdict{Action: Hold, Hold: h}
		}
	}
	return Verdict{}
}

// FuzzPipeline runs arbitrary client and server streams through a pipe
// whose stages take every decision: the pipe must not panic, and whatever
// it sends either way must be whole protocol messages when its input was.
func FuzzPipeline(f *testing.F) {
	for _, c := range clientSeeds() {
		for _, s := range serverSeeds() {
			f.Add(c, s)
		}
	}
	f.Add(encodeAll(&pgproto3.Query{String: "select 'x'"}, &pgproto3.Query{String: "select 'h'"},
		&pgproto3.Query{String: "select 'h2'"}, &pgproto3.Query{String: "select 'r'"}, &pgproto3.Flush{},
		&pgproto3.Parse{Name: "x", Query: "select 1"}, &pgproto3.FunctionCall{Function: 1, Arguments: [][]byte{{1}}},
		&pgproto3.CopyData{Data: []byte("x")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}),
		encodeAll(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601"}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
			&pgproto3.DataRow{Values: [][]byte{[]byte("a"), nil}}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
			&pgproto3.CloseComplete{}, &pgproto3.FunctionCallResponse{Result: []byte("1")}))
	f.Fuzz(func(t *testing.T, client, server []byte) {
		st := Stages{
			Batch: []BatchStage{&batchStage{match: "b", refuse: true}, &fuzzBatchHold{}},
			Client: []ClientStage{
				&refuseStage{types: "QPBEFd", match: "x", code: "42501"},
				&dropStage{types: "H"},
				&fuzzHold{},
				&rewriteStage{from: "r", to: "rr"},
			},
			Server: []ServerStage{&maskStage{column: 0, with: []byte("*")}, serverOnly{&maskStage{column: 1, with: []byte("**")}}},
		}
		pl := newPipe(session.New(&capSink{}), st, 64)
		var up, down bytes.Buffer
		c2s := newPump(bytes.NewReader(client), &up, pl.fromClient, pl.clientTypes(), 1<<16, 1<<16)
		c2s.space = func() error { return errStopped }
		c2s.hold = func(a act, typ byte, body []byte) act {
			for a.kind == actHold {
				a = pl.resume(a, <-a.hold.ch, typ, body)
			}
			return a
		}
		cerr := c2s.run()
		s2c := newPump(bytes.NewReader(server), &down, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
		serr := s2c.run()
		pl.abandon("fuzz")
		if errors.Is(cerr, io.EOF) && splitMessages(client, nil) == nil {
			if err := splitMessages(up.Bytes(), nil); err != nil {
				t.Fatalf("client side sent broken messages: %v", err)
			}
		}
		if errors.Is(serr, io.EOF) && splitMessages(server, nil) == nil {
			if err := splitMessages(down.Bytes(), nil); err != nil {
				t.Fatalf("server side sent broken messages: %v", err)
			}
		}
	})
}

// FuzzDecodeBind holds the in-place Bind and Execute readers to pgproto3's
// decoders: the same bodies accepted, the same fields read.
func FuzzDecodeBind(f *testing.F) {
	for _, m := range []*pgproto3.Bind{
		{},
		{DestinationPortal: "p", PreparedStatement: "s1", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{{0, 0, 0, 1}, nil, {}}, ResultFormatCodes: []int16{0, 1}},
	} {
		b, _ := m.Encode(nil)
		f.Add(b[5:])
	}
	f.Add([]byte("p\x00s\x00\x00\x00\x00\x01\xff\xff\xff\xfe"))
	f.Add([]byte("\x00\x00"))
	f.Add([]byte("portal\x00\x00\x00\x00\x10"))
	var m bindMsg
	f.Fuzz(func(t *testing.T, body []byte) {
		var want pgproto3.Bind
		wantOK := want.Decode(body) == nil
		if ok := m.decode(body); ok != wantOK {
			t.Fatalf("bind accepted %v, pgproto3 %v", ok, wantOK)
		}
		if wantOK {
			if string(m.portal) != want.DestinationPortal || string(m.stmt) != want.PreparedStatement ||
				!slices.Equal(m.paramFormats, want.ParameterFormatCodes) || !slices.Equal(m.resultFormats, want.ResultFormatCodes) {
				t.Fatalf("bind read %q %q %v %v, pgproto3 %+v", m.portal, m.stmt, m.paramFormats, m.resultFormats, want)
			}
			if len(m.params) != len(want.Parameters) {
				t.Fatalf("%d parameters, pgproto3 %d", len(m.params), len(want.Parameters))
			}
			for i, p := range m.params {
				if (p == nil) != (want.Parameters[i] == nil) || !bytes.Equal(p, want.Parameters[i]) {
					t.Fatalf("parameter %d: %q, pgproto3 %q", i, p, want.Parameters[i])
				}
			}
		}
		var e pgproto3.Execute
		eOK := e.Decode(body) == nil
		portal, ok := decodeExecute(body)
		if ok != eOK || (ok && string(portal) != e.Portal) {
			t.Fatalf("execute %q %v, pgproto3 %q %v", portal, ok, e.Portal, eOK)
		}
	})
}
