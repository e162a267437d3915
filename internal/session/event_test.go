package session

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Parameters are users' data: the log sink leaves them out unless told.
func TestLogSinkParams(t *testing.T) {
	ev := Event{Kind: KindStatement, Statement: &Statement{Protocol: "extended", SQL: "select $1",
		Params: []string{"alice@example.com"}, Tag: "SELECT 1", Rows: 1}}
	tests := []struct {
		params bool
		want   string
		never  string
	}{
		{false, "params=\"<1 not logged>\"", "alice@example.com"},
		{true, "alice@example.com", ""},
	}
	for _, tc := range tests {
		var b bytes.Buffer
		LogSink{Logger: slog.New(slog.NewTextHandler(&b, nil)), Params: tc.params}.Record(ev)
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("params=%v: log %q lacks %q", tc.params, b.String(), tc.want)
		}
		if tc.never != "" && strings.Contains(b.String(), tc.never) {
			t.Errorf("params=%v: log %q holds a parameter", tc.params, b.String())
		}
		if !strings.Contains(b.String(), "select $1") {
			t.Errorf("params=%v: log %q lacks the SQL", tc.params, b.String())
		}
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
