package pgwire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/session"
)

// skipStage rewrites column 0 of every row it is shown to "*" until it sees
// a row whose column 0 is "skip", which it lets through and then skips the
// rest of the result's rows. seen lists the rows it was shown.
type skipStage struct {
	seen []string
	buf  []byte
}

func (s *skipStage) ServerTypes() string { return "D" }
func (s *skipStage) Server(m *ServerMsg) Verdict {
	if out := s.Row(m); out != nil {
		return Verdict{Action: Replace, Msgs: out}
	}
	return Verdict{}
}

func (s *skipStage) Row(m *ServerMsg) []byte {
	var r pgproto3.DataRow
	if err := r.Decode(m.Body); err != nil || len(r.Values) == 0 {
		return nil
	}
	s.seen = append(s.seen, string(r.Values[0]))
	if string(r.Values[0]) == "skip" {
		m.SkipRows()
		return nil
	}
	r.Values[0] = []byte("*")
	s.buf, _ = r.Encode(s.buf[:0])
	return s.buf
}

// TestSkipRows: a stage that skips the rest of a result's rows is not
// shown them, and they go as the server sent them; any other message (a
// notice in the middle of the result, its end) ends the skip, and a stage
// without Row skips the same way. A stage after it still sees every row.
func TestSkipRows(t *testing.T) {
	row := func(v string) *pgproto3.DataRow { return &pgproto3.DataRow{Values: [][]byte{[]byte(v)}} }
	stream := encodeAll(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v")}}},
		row("a"), row("skip"), row("b"), row("c"),
		&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "mid-result"},
		row("d"), row("skip"), row("e"),
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 8")},
		row("f"),
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	for _, tt := range []struct {
		name  string
		wrap  func(ServerStage) ServerStage
		after bool // a counting stage after the skipping one
	}{
		{"Row", func(s ServerStage) ServerStage { return s }, false},
		{"Server", func(s ServerStage) ServerStage { return serverOnly{s} }, false},
		{"Row then another stage", func(s ServerStage) ServerStage { return s }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sk := &skipStage{}
			st := Stages{Server: []ServerStage{tt.wrap(sk)}}
			cnt := &countRows{}
			if tt.after {
				st.Server = append(st.Server, cnt)
			}
			pl := newPipe(session.New(nil), st, 0)
			pl.push(pending{kind: 'Q', sql: "select"})
			var out bytes.Buffer
			p := newPump(bytes.NewReader(stream), &out, pl.fromServer, pl.serverTypes(), serverDecodeMax, 0)
			if err := p.run(); !errors.Is(err, io.EOF) {
				t.Fatalf("pump: %v", err)
			}
			if got, want := strings.Join(sk.seen, " "), "a skip d skip f"; got != want {
				t.Errorf("stage shown %q, want %q", got, want)
			}
			var sent []string
			if err := splitMessages(out.Bytes(), func(typ byte, _, body []byte) {
				if typ == 'D' {
					var r pgproto3.DataRow
					_ = r.Decode(body)
					sent = append(sent, string(r.Values[0]))
				}
			}); err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(sent, " "), "* skip b c * skip e *"; got != want {
				t.Errorf("client got %q, want %q", got, want)
			}
			if tt.after && cnt.rows.Load() != 8 {
				t.Errorf("the stage after saw %d rows, want 8", cnt.rows.Load())
			}
		})
	}
}
