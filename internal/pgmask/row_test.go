package pgmask

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgwire"
)

// value is one DataRow value as on the wire: its length word (which may
// lie) and its bytes.
func value(length int32, b string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(length)), b...)
}

func text(b string) []byte { return value(int32(len(b)), b) }

// rowBody is a DataRow's body: the column count, then the values.
func rowBody(count uint16, values ...[]byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, count)
	for _, v := range values {
		b = append(b, v...)
	}
	return b
}

// message is a DataRow with body.
func message(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{'D'}, uint32(len(body)+4)), body...)
}

// allNull is the row failRow sends for a row of n columns.
func allNull(n int) []byte {
	b := []byte{'D', 0, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	for range n {
		b = append(b, 0xff, 0xff, 0xff, 0xff)
	}
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	return b
}

// TestRowWalk drives the stage's row walk with rows of a result whose middle
// column is masked and whose others no rule names: the walk stops after the
// masked column, so what follows it goes as it is, while anything wrong up
// to and in the masked value still withholds the row.
func TestRowWalk(t *testing.T) {
	const email = "a@corp-mail.com"
	plan := pgproto3.FieldDescription{Name: []byte("plan"), TableOID: 1, TableAttributeNumber: 2, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	mail := pgproto3.FieldDescription{Name: []byte("email"), TableOID: 1, TableAttributeNumber: 1, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	rd := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{plan, mail, plan}})

	for _, tt := range []struct {
		name string
		body []byte
		// want is the whole row the client gets; nil: the check below.
		want []byte
		// tail, when set, is what must follow the masked value as it was.
		tail []byte
	}{
		{name: "masked, the others kept", body: rowBody(3, text("pro"), text(email), text("team")), tail: text("team")},
		{name: "NULL stays NULL", body: rowBody(3, text("pro"), value(-1, ""), text("team")), want: message(rowBody(3, text("pro"), value(-1, ""), text("team")))},
		{name: "NULL after", body: rowBody(3, text("pro"), text(email), value(-1, "")), tail: value(-1, "")},
		{name: "a value before the masked one overruns it", body: rowBody(3, value(200, "pro"), text(email), text("team")), want: allNull(3)},
		{name: "a value before the masked one overruns the row", body: rowBody(3, value(1<<30, "pro")), want: allNull(3)},
		{name: "the masked value overruns the row", body: rowBody(3, text("pro"), value(40, email)), want: allNull(3)},
		{name: "the row ends before the masked value", body: rowBody(3, text("pro")), want: allNull(3)},
		{name: "the row ends in the masked value's length word", body: append(rowBody(3, text("pro")), 0, 0), want: allNull(3)},
		{name: "more columns than described", body: rowBody(4, text("pro"), text(email), text("team"), text("x")), want: allNull(4)},
		{name: "after the masked value, as the server sent it", body: rowBody(3, text("pro"), text(email), value(200, "team")), tail: value(200, "team")},
		{name: "after the masked value, a cut length word", body: append(rowBody(3, text("pro"), text(email)), 0, 0), tail: []byte{0, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fuzzStage(t)
			s.push(request{kind: 'Q'})
			if v := s.Server(&pgwire.ServerMsg{Type: 'T', Body: rd[5:], Len: len(rd) - 5}); v.Action != pgwire.Forward {
				t.Fatalf("description: %v", v.Action)
			}
			body := bytes.Clone(tt.body)
			v := s.Server(&pgwire.ServerMsg{Type: 'D', Body: body, Len: len(body)})
			got := v.Msgs
			if v.Action != pgwire.Replace {
				got = message(body)
			}
			checkWhole(t, got)
			if bytes.Contains(got, []byte("corp-mail")) {
				t.Fatalf("the email left: %q", got)
			}
			if tt.want != nil {
				if !bytes.Equal(got, tt.want) {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
				return
			}
			// 'D', length, count, "pro", then the masked value, then tail.
			head := append([]byte{'D', 0, 0, 0, 0}, rowBody(3, text("pro"))...)
			if len(got) < len(head)+4 || !bytes.Equal(got[5:len(head)], head[5:]) {
				t.Fatalf("got %q: not the first value kept", got)
			}
			l := int(binary.BigEndian.Uint32(got[len(head):]))
			masked := got[len(head)+4 : len(head)+4+l]
			if len(masked) == 0 || bytes.Equal(masked, []byte(email)) {
				t.Fatalf("got %q: the email not masked", got)
			}
			if rest := got[len(head)+4+l:]; !bytes.Equal(rest, tt.tail) {
				t.Fatalf("after the masked value: got %q, want %q", rest, tt.tail)
			}
			if n := int(binary.BigEndian.Uint32(got[1:])); n != len(got)-1 {
				t.Fatalf("length word %d for %d bytes", n, len(got)-1)
			}
		})
	}
}

// TestUnreadableDescriptionWithholdsRows: a simple query's RowDescription
// that does not parse (a field cut short, a count that lies) leaves the
// stage no column sources, so the result's rows are withheld (sent NULL)
// rather than passed as if nothing in them were masked.
func TestUnreadableDescriptionWithholdsRows(t *testing.T) {
	const email = "a@corp-mail.com"
	mail := pgproto3.FieldDescription{Name: []byte("email"), TableOID: 1, TableAttributeNumber: 1, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	whole := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{mail}})[5:]
	for _, tt := range []struct {
		name string
		desc []byte
	}{
		{"a field cut short", whole[:len(whole)-6]},
		{"more fields counted than sent", append([]byte{0, 2}, whole[2:]...)},
		{"a name without its end", []byte{0, 1, 'e', 'm'}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fuzzStage(t)
			s.push(request{kind: 'Q'})
			if v := s.Server(&pgwire.ServerMsg{Type: 'T', Body: tt.desc, Len: len(tt.desc)}); v.Action != pgwire.Forward {
				t.Fatalf("description: %v", v.Action)
			}
			body := rowBody(1, text(email))
			v := s.Server(&pgwire.ServerMsg{Type: 'D', Body: body, Len: len(body)})
			got := v.Msgs
			if v.Action != pgwire.Replace {
				got = message(body)
			}
			if !bytes.Equal(got, allNull(1)) {
				t.Fatalf("got %q, want the row withheld (%q)", got, allNull(1))
			}
		})
	}
}
