package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/session"
)

// TestSessionIDClash: two daemons sharing a store each record a session
// under the same id (ids are 60 random bits and the second they were made
// in: a clash is unlikely, not impossible). The list keeps them apart by
// daemon; reading one by id must not hand out one session's statements
// under the other's start (who, which process), nor show a person another
// person's statements.
func TestSessionIDClash(t *testing.T) {
	for _, sk := range stores(t) {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			spec, pw := sk.open(t)
			if spec == "" {
				spec = filepath.Join(t.TempDir(), "team.db")
			}
			wa, cancelA, doneA := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancelA(); <-doneA }()
			wb, cancelB, doneB := openWriter(t, t.TempDir(), spec, pw, Policy{})
			defer func() { cancelB(); <-doneB }()

			record := func(w *Writer, s *session.Session, sql string, n int) {
				t.Helper()
				s.Emit(session.Event{Kind: session.KindSessionStart, Start: s})
				for i := 0; i < n; i++ {
					s.Emit(session.Event{Kind: session.KindStatement, Statement: &session.Statement{Protocol: "simple", SQL: fmt.Sprintf("%s %d", sql, i), Tag: "SELECT 1"}})
				}
				s.Emit(session.Event{Kind: session.KindSessionEnd, End: &session.End{Reason: "client_quit"}})
				if err := w.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			a := fakeSession(wa, 1001, "alice", "/usr/bin/psql")
			b := fakeSession(wb, 1002, "bob", "/usr/bin/python3")
			b.ID = a.ID
			record(wa, a, "SELECT alice", 2)
			record(wb, b, "SELECT bob", 3)
			st := wa.Store()

			sums, err := st.Sessions(ctx, Filter{})
			if err != nil || len(sums) != 2 {
				t.Fatalf("sessions: %v %+v", err, sums)
			}
			for _, want := range []struct {
				daemon, person string
				statements     int64
			}{{wa.Daemon(), "alice", 2}, {wb.Daemon(), "bob", 3}} {
				i := slices.IndexFunc(sums, func(s SessionSummary) bool { return s.Daemon == want.daemon })
				if i < 0 || sums[i].Start.Person.Name != want.person || sums[i].Statements != want.statements {
					t.Errorf("the list has %+v, want %s's session of daemon %s with %d statements", sums, want.person, want.daemon, want.statements)
				}
			}

			for _, tc := range []struct {
				name string
				uid  *uint32
			}{{"auditor", nil}, {"alice", new(uint32(1001))}, {"bob", new(uint32(1002))}, {"someone else", new(uint32(1003))}} {
				t.Run(tc.name, func(t *testing.T) {
					d, err := st.Session(ctx, a.ID, tc.uid)
					if tc.uid == nil && (err == nil || !strings.Contains(err.Error(), wa.Daemon()) || !strings.Contains(err.Error(), wb.Daemon())) {
						t.Errorf("the auditor reading the clashing id: %v, want an error naming both daemons", err)
					}
					if d == nil {
						return
					}
					// Whatever is handed out is one session, whole.
					person := d.Start.Person.Name
					for _, r := range d.Records {
						if r.Kind == kindStatement && !strings.Contains(string(r.Data), "SELECT "+person) {
							t.Fatalf("%s's session (daemon %s) holds %s of daemon %s", person, d.Daemon, r.Data, r.Daemon)
						}
						if r.Daemon != d.Daemon {
							t.Fatalf("%s's session of daemon %s holds a record of daemon %s", person, d.Daemon, r.Daemon)
						}
					}
					if tc.uid != nil && d.Start.Person.UID != *tc.uid {
						t.Fatalf("uid %d is shown %s's session", *tc.uid, person)
					}
				})
			}
			if c, err := st.Copies(ctx, a.ID, nil); err == nil {
				t.Errorf("reveal of the clashing id: %+v, want an error", c)
			}
		})
	}
}
