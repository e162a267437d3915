package pgmask

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
)

// rowRules masks each column of table 1 its own way: attribute 1 hashed, 2
// partial, 3 redacted, 4 NULL, 5 named by no rule; a column without a
// source (table 0) goes through the detectors.
const rowRules = `
rules:
  - name: hashed
    columns: [public.t.hashed]
    detectors: [email, card]
    strategy: hash
  - name: starred
    columns: [public.t.starred]
    strategy: partial
    keep: 4
  - name: redacted
    columns: [public.t.redacted]
    strategy: redact
  - name: nulled
    columns: [public.t.nulled]
    strategy: "null"
`

// TestRowEachStrategy masks rows whose columns come in every order and mix
// of strategies (values that keep their length, values that do not, NULLs,
// detector columns where nothing or something is found) and checks each
// row against the row made by masking each value alone with the same
// rules, and the compliance copy against the values as the server sent
// them: the row walk may write in place, build the row anew or switch from
// one to the other in the middle of a row, and none of it may show.
func TestRowEachStrategy(t *testing.T) {
	rs := compileRules(t, rowRules)
	subject := mask.Subject{Process: "agent"}
	names := []string{"", "hashed", "starred", "redacted", "nulled", "plain"}
	cat := fixedCatalog{}
	for a := 1; a <= 5; a++ {
		cat[Attr{1, int16(a)}] = []mask.Source{{Schema: "public", Table: "t", Column: names[a]}}
	}
	// values of each column, by attribute (0: the computed column).
	values := map[int][]string{
		0: {"no secret here", "mail a@corp-mail.com now", "card 4111111111111111", ""},
		1: {"user41000@corp-mail.com", "x", "", "4111111111111111"},
		2: {"4000000000041000", "ab", "naïve-1234", ""},
		3: {"secret", ""},
		4: {"gone"},
		5: {"free", ""},
	}
	orders := [][]int{
		{5, 0, 1, 2, 3, 4}, // the bench's shape: plain, then a hash, then partial
		{2, 1, 5},          // in place first, then rebuilt
		{1, 2},             // rebuilt first, then a value of the same length
		{0, 2, 0},          // detectors around partial
		{4, 2, 3, 1, 0, 5},
		{2, 2, 5, 2},
		{5},
		{0},
	}
	for oi, order := range orders {
		var fields []pgproto3.FieldDescription
		for i, a := range order {
			fd := pgproto3.FieldDescription{Name: fmt.Appendf(nil, "c%d", i), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
			if a > 0 {
				fd.TableOID, fd.TableAttributeNumber = 1, uint16(a)
			}
			fields = append(fields, fd)
		}
		rd := enc(&pgproto3.RowDescription{Fields: fields})
		ref := rs.ForSubject(subject)
		cols := make([]mask.Column, len(order))
		for i, a := range order {
			if a == 0 {
				cols[i] = ref.Column(mask.Source{})
			} else {
				cols[i] = ref.Column(cat[Attr{1, int16(a)}][0])
			}
		}
		// Every combination of each column's values, NULL among them,
		// bounded: at most 64 rows an order.
		for r := range 64 {
			vals := make([][]byte, len(order))
			k := r
			for i, a := range order {
				choices := len(values[a]) + 1
				if c := k % choices; c < len(values[a]) {
					vals[i] = []byte(values[a][c])
				}
				k /= choices
			}
			t.Run(fmt.Sprintf("order%d/row%d", oi, r), func(t *testing.T) {
				s := New(rs.ForSubject(subject), cat, session.New(nil), nil)
				o := NewOriginals(nil, s.sess, 1<<20, nil)
				s.KeepOriginals(o)
				s.push(request{kind: 'Q'})
				if v := s.Server(&pgwire.ServerMsg{Type: 'T', Body: rd[5:], Len: len(rd) - 5}); v.Action != pgwire.Forward {
					t.Fatalf("description: %v", v.Action)
				}
				want := []byte{'D', 0, 0, 0, 0}
				want = binary.BigEndian.AppendUint16(want, uint16(len(vals)))
				var kept []string
				for i, v := range vals {
					if v == nil {
						want = append(want, 0xff, 0xff, 0xff, 0xff)
						continue
					}
					m, res := cols[i].Mask(nil, v)
					switch res {
					case mask.Unchanged:
						want = appendValue(want, v)
					case mask.Masked:
						want = appendValue(want, m)
						kept = append(kept, fmt.Sprintf("%d %q→%q", i, v, m))
					default:
						want = append(want, 0xff, 0xff, 0xff, 0xff)
						kept = append(kept, fmt.Sprintf("%d %q→NULL", i, v))
					}
				}
				binary.BigEndian.PutUint32(want[1:], uint32(len(want)-1))

				body := rowBody(uint16(len(vals)))
				for _, v := range vals {
					if v == nil {
						body = append(body, value(-1, "")...)
					} else {
						body = append(body, text(string(v))...)
					}
				}
				sent := bytes.Clone(body)
				v := s.Server(&pgwire.ServerMsg{Type: 'D', Body: body, Len: len(body)})
				got := v.Msgs
				switch v.Action {
				case pgwire.Forward:
					got = message(body)
				case pgwire.Replace:
				default:
					t.Fatalf("action %v", v.Action)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("row %q\ngot  %q\nwant %q", sent, got, want)
				}
				var gotKept []string
				for _, e := range o.cp.Entries {
					if e.Masked == nil {
						gotKept = append(gotKept, fmt.Sprintf("%d %q→NULL", e.Column, e.Original))
					} else {
						gotKept = append(gotKept, fmt.Sprintf("%d %q→%q", e.Column, e.Original, *e.Masked))
					}
				}
				if fmt.Sprint(gotKept) != fmt.Sprint(kept) {
					t.Fatalf("compliance copy of %q\ngot  %v\nwant %v", sent, gotKept, kept)
				}
			})
		}
	}
}
