package guard

import (
	"testing"

	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// FuzzStage: whatever bodies a client sends in Parse, Bind, Close, Query
// and FunctionCall messages, the stage answers without panicking, and a
// refusal always carries an error for the client.
func FuzzStage(f *testing.F) {
	f.Add([]byte("wipe\x00DELETE FROM t\x00\x00\x00"), []byte("\x00wipe\x00\x00\x00\x00\x00\x00\x00"), []byte("Swipe\x00"), []byte("EXECUTE wipe\x00"))
	f.Add([]byte("\x00ALTER ROLE x PASSWORD 'y'\x00\x00\x00"), []byte("\x00\x00"), []byte("S"), []byte("PREPARE a AS DROP TABLE t\x00"))
	f.Add([]byte{}, []byte{}, []byte{}, []byte{})
	store, err := policy.NewStore("")
	if err != nil {
		f.Fatal(err)
	}
	g := &Guard{Connection: "c", Policies: store, Classifier: sqlclass.New(sqlclass.Options{})}
	f.Fuzz(func(t *testing.T, parse, bind, closeBody, query []byte) {
		sess := session.New(nil)
		sess.Origin.Class = session.ClassAgent
		st := g.Stages(sess)
		v := st.Batch[0].Batch(&pgwire.Batch{Complete: true, Msgs: []pgwire.ClientMsg{
			{Type: 'P', Body: parse, Session: sess}, {Type: 'B', Body: bind, Session: sess},
			{Type: 'C', Body: closeBody, Session: sess}, {Type: 'S', Session: sess},
		}})
		if v.Action == pgwire.Reply && v.Error == nil {
			t.Fatal("a refusal without an error")
		}
		for _, typ := range []byte{'Q', 'F'} {
			v := st.Client[0].Client(&pgwire.ClientMsg{Type: typ, Body: query, Session: sess})
			if v.Action == pgwire.Reply && v.Error == nil {
				t.Fatal("a refusal without an error")
			}
		}
	})
}
