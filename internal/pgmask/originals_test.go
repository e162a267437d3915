package pgmask

import (
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/session"
)

func TestOriginalsSealedPerStatement(t *testing.T) {
	file, pub, err := compliance.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ids, err := age.ParseIdentities(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := compliance.ParseRecipients(pub)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		max       int
		values    int
		kept      int
		truncated bool
	}{
		{"all kept", 1 << 10, 3, 3, false},
		{"capped", 60, 5, 2, true},
		{"nothing masked", 1 << 10, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snk := &sink{}
			sess := session.New(snk)
			sess.Stats.Statements.Store(7) // the pipe numbered the statement
			o := NewOriginals(sealer, sess, tc.max, nil)
			for i := 0; i < tc.values; i++ {
				o.keep(1, &field{}, []byte("user"+string(rune('0'+i))+"@example.com"), []byte("[redacted]"))
				o.endRow()
			}
			o.end()
			o.end() // a second end with nothing new records nothing
			var got []*session.Originals
			for _, ev := range snk.evs {
				if ev.Originals != nil {
					got = append(got, ev.Originals)
				}
			}
			if tc.values == 0 {
				if len(got) != 0 {
					t.Fatalf("a copy for a statement with nothing masked: %+v", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%d copies, want 1", len(got))
			}
			c := got[0]
			if c.Statement != 7 || c.Values != tc.kept || c.Truncated != tc.truncated || c.Recipients[0] != pub {
				t.Fatalf("copy %+v: want statement 7, %d values, truncated %v", c, tc.kept, tc.truncated)
			}
			if strings.Contains(string(c.Sealed), "@example.com") {
				t.Fatal("plaintext in the sealed copy")
			}
			plain, err := compliance.Open(c.Sealed, ids)
			if err != nil {
				t.Fatal(err)
			}
			if len(plain.Entries) != tc.kept || plain.Entries[0].Original != "user0@example.com" || *plain.Entries[0].Masked != "[redacted]" ||
				plain.Entries[len(plain.Entries)-1].Row != tc.kept-1 || plain.Truncated != tc.truncated {
				t.Fatalf("opened copy %+v", plain)
			}
		})
	}
}

func TestOriginalsCopyLines(t *testing.T) {
	file, pub, err := compliance.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := age.ParseIdentities(strings.NewReader(file))
	sealer, _ := compliance.ParseRecipients(pub)
	snk := &sink{}
	sess := session.New(snk)
	sess.Stats.Statements.Store(1)
	o := NewOriginals(sealer, sess, 1<<10, nil)
	o.line([]byte("1\tplain"), nil, false)
	o.line([]byte("2\tann@example.com"), []byte("2\t[redacted]"), true)
	o.end()
	if len(snk.evs) != 1 || snk.evs[0].Originals == nil {
		t.Fatalf("events %+v", snk.evs)
	}
	plain, err := compliance.Open(snk.evs[0].Originals.Sealed, ids)
	if err != nil {
		t.Fatal(err)
	}
	e := plain.Entries
	if len(e) != 1 || e[0].Row != 1 || e[0].Column != -1 || e[0].Rule != "detectors" || e[0].Original != "2\tann@example.com" || *e[0].Masked != "2\t[redacted]" {
		t.Fatalf("entries %+v", e)
	}
}
