package session

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Statement text and parameters are users' data and belong in the audit
// store only: the log sink writes session-level events and no statement.
func TestLogSinkLeavesStatementsOut(t *testing.T) {
	tests := []struct {
		name  string
		ev    Event
		want  string // "" = nothing logged
		never string
	}{
		{"statement", Event{Kind: KindStatement, Session: "s1", Statement: &Statement{Protocol: "extended",
			SQL: "select $1", Params: []string{"alice@example.com"}, Tag: "SELECT 1", Rows: 1}}, "", "alice@example.com"},
		{"end", Event{Kind: KindSessionEnd, Session: "s1", End: &End{Reason: "client_quit", Duration: time.Second,
			BytesIn: 10, BytesOut: 20}}, "reason=client_quit", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			LogSink{Logger: slog.New(slog.NewTextHandler(&b, nil))}.Record(tc.ev)
			if tc.want == "" && b.Len() != 0 {
				t.Errorf("logged %q, want nothing", b.String())
			}
			if tc.want != "" && !strings.Contains(b.String(), tc.want) {
				t.Errorf("log %q lacks %q", b.String(), tc.want)
			}
			if tc.never != "" && strings.Contains(b.String(), tc.never) {
				t.Errorf("log %q holds %q", b.String(), tc.never)
			}
		})
	}
}

// The session end carries the masking counters, from the stage's reader.
func TestEndMaskCounts(t *testing.T) {
	s := New(nil)
	if s.MaskCounts() != nil {
		t.Fatal("counts without a masking stage")
	}
	s.SetMaskCounter(func() []MaskCount {
		return []MaskCount{{Rule: "pii", Detector: "column", Strategy: "redact", Values: 3}}
	})
	ev := Event{Kind: KindSessionEnd, End: &End{Reason: "closed", Masked: s.MaskCounts()}}
	var b bytes.Buffer
	LogSink{Logger: slog.New(slog.NewTextHandler(&b, nil))}.Record(ev)
	if !strings.Contains(b.String(), "masked.pii.column=3") {
		t.Errorf("log %q lacks the counts", b.String())
	}
}

type keepSink struct{ evs []Event }

func (k *keepSink) Record(ev Event) { k.evs = append(k.evs, ev) }

// Events share one copy of the session's person until it changes; each
// keeps the person it was emitted for, and a change to the session's
// groups afterwards does not reach an event already emitted.
func TestEmitPerson(t *testing.T) {
	k := &keepSink{}
	s := New(k)
	steps := []struct {
		name   string
		change func(*Session)
		want   string // the event's person name, "" for none
		shared bool   // the same copy as the previous event's
	}{
		{"no person yet", func(*Session) {}, "", false},
		{"set", func(s *Session) { s.Person.Name, s.Person.Groups = "alice", []string{"eng"} }, "alice", false},
		{"unchanged", func(*Session) {}, "alice", true},
		{"groups changed in place", func(s *Session) { s.Person.Groups[0] = "dba" }, "alice", false},
		{"renamed", func(s *Session) { s.Person.Name = "bob" }, "bob", false},
		{"unchanged again", func(*Session) {}, "bob", true},
	}
	for i, st := range steps {
		st.change(s)
		s.Emit(Event{Kind: KindStatement})
		ev := k.evs[i]
		switch {
		case st.want == "" && ev.Person != nil:
			t.Errorf("%s: person %+v, want none", st.name, ev.Person)
		case st.want != "" && (ev.Person == nil || ev.Person.Name != st.want):
			t.Errorf("%s: person %+v, want %s", st.name, ev.Person, st.want)
		case i > 0 && st.shared != (ev.Person == k.evs[i-1].Person):
			t.Errorf("%s: shared copy %v, want %v", st.name, !st.shared, st.shared)
		}
	}
	if g := k.evs[2].Person.Groups; len(g) != 1 || g[0] != "eng" {
		t.Errorf("an emitted event's groups became %v", g)
	}
}
