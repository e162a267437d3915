package pgmask

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/airlockhq/airlock/internal/pgwire"
)

// FuzzRowWalkLeak sends rows of a result whose columns 1 and 3 are masked
// emails (text, then binary) and whose others no rule names, with length
// words that may lie, NULLs and any column count, and reads what the
// stage sends as a client does (value after value by their length words,
// to where they stop making sense): no value the client reads in a masked
// column is the email. The walk stops after the last masked column, so
// this holds only if it reads the row up to there exactly as the client
// does.
func FuzzRowWalkLeak(f *testing.F) {
	const email = "a@corp-mail.com"
	plan := pgproto3.FieldDescription{Name: []byte("plan"), TableOID: 1, TableAttributeNumber: 2, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	mail := pgproto3.FieldDescription{Name: []byte("email"), TableOID: 1, TableAttributeNumber: 1, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	mailBin := mail
	mailBin.Format = 1
	rd := enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{plan, mail, plan, mailBin, plan}})
	masked := map[int]bool{1: true, 3: true}

	f.Add(uint16(5), []byte{0, 1, 2, 3, 4}, []byte{15, 15, 4, 15, 4})
	f.Add(uint16(5), []byte{0, 1, 2, 3, 4}, []byte{200, 15, 255, 15, 0})
	f.Add(uint16(5), []byte{0, 1, 2, 3}, []byte{3, 254, 15, 15})
	f.Add(uint16(4), []byte{0, 1, 2, 3}, []byte{4, 15, 4, 15})
	f.Fuzz(func(t *testing.T, count uint16, kinds, lens []byte) {
		if len(kinds) > 8 {
			kinds = kinds[:8]
		}
		// Each value: the email or a plain word, and a length word that
		// is its own, NULL, or a lie (lens).
		body := binary.BigEndian.AppendUint16(nil, count)
		for i, k := range kinds {
			v := "team"
			if k%2 == 1 {
				v = email
			}
			l := int32(len(v))
			if i < len(lens) {
				switch b := lens[i]; {
				case b == 255:
					l = -1
				case b == 254:
					l = -2
				case b >= 128:
					l = int32(b) - 100
				}
			}
			body = binary.BigEndian.AppendUint32(body, uint32(l))
			if l != -1 {
				body = append(body, v...)
			}
		}
		s := fuzzStage(t)
		s.push(request{kind: 'Q'})
		if v := s.Server(&pgwire.ServerMsg{Type: 'T', Body: rd[5:], Len: len(rd) - 5}); v.Action != pgwire.Forward {
			t.Fatalf("description: %v", v.Action)
		}
		in := bytes.Clone(body)
		v := s.Server(&pgwire.ServerMsg{Type: 'D', Body: in, Len: len(in)})
		got := in
		if v.Action == pgwire.Replace {
			checkWhole(t, v.Msgs)
			if len(v.Msgs) == 0 {
				return // withheld
			}
			got = v.Msgs[5:]
		}
		if len(got) < 2 {
			return
		}
		n, p := int(binary.BigEndian.Uint16(got)), 2
		for i := 0; i < n && p+4 <= len(got); i++ {
			l := int(int32(binary.BigEndian.Uint32(got[p:])))
			p += 4
			if l < 0 {
				continue
			}
			if p+l > len(got) {
				break
			}
			if masked[i] && bytes.Contains(got[p:p+l], []byte("corp-mail")) {
				t.Fatalf("row %q went out as %q: column %d carries the email", body, got, i)
			}
			p += l
		}
	})
}
