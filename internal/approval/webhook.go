package approval

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Webhook posts each new request to a URL as JSON that a Slack incoming
// webhook accepts: a "text" summary and "attachments" fields, plus the whole
// request under "airlock" for other receivers. Posting happens on the
// webhook's own goroutine (Run), retried with backoff, never on the data
// path: a slow receiver only delays the notice.
type Webhook struct {
	URL    string
	Token  string // sent as "Authorization: Bearer"; never logged
	Client *http.Client
	Logger *slog.Logger
	// Attempts per notice (default 5); the first retry after Backoff
	// (default 1s), doubling.
	Attempts int
	Backoff  time.Duration

	q chan Request
}

// NewWebhook returns a Webhook with a bounded queue.
func NewWebhook(w Webhook) *Webhook {
	if w.Client == nil {
		w.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if w.Logger == nil {
		w.Logger = slog.New(slog.DiscardHandler)
	}
	if w.Attempts <= 0 {
		w.Attempts = 5
	}
	if w.Backoff <= 0 {
		w.Backoff = time.Second
	}
	w.q = make(chan Request, 256)
	return &w
}

// Notify queues r; a full queue drops it with a warning (the request still
// waits for `airlock approvals`).
func (w *Webhook) Notify(r Request) {
	select {
	case w.q <- r:
	default:
		w.Logger.Warn("approval webhook queue full; notice dropped", "id", r.ID)
	}
}

// Run posts queued notices until ctx ends.
func (w *Webhook) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-w.q:
			w.deliver(ctx, r)
		}
	}
}

func (w *Webhook) deliver(ctx context.Context, r Request) {
	body, err := json.Marshal(Payload(r))
	if err != nil {
		w.Logger.Error("encode approval webhook", "id", r.ID, "err", err)
		return
	}
	wait := w.Backoff
	for attempt := 1; ; attempt++ {
		err := w.post(ctx, body)
		if err == nil {
			return
		}
		if attempt >= w.Attempts || ctx.Err() != nil {
			w.Logger.Warn("approval webhook failed; giving up on this notice", "id", r.ID, "attempts", attempt, "err", err)
			return
		}
		w.Logger.Info("approval webhook failed; retrying", "id", r.ID, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait *= 2
	}
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if w.Token != "" {
		req.Header.Set("Authorization", "Bearer "+w.Token)
	}
	resp, err := w.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return nil
}

// Field is one Slack attachment field.
type Field struct {
	Title string `json:"title"`
	Value string `json:"value"`
	Short bool   `json:"short,omitempty"`
}

// Attachment is a Slack attachment.
type Attachment struct {
	Fallback string  `json:"fallback"`
	Fields   []Field `json:"fields"`
}

// Message is the webhook's JSON body.
type Message struct {
	Text        string       `json:"text"`
	Attachments []Attachment `json:"attachments"`
	Airlock     Request      `json:"airlock"`
}

// Payload is the webhook body for r.
func Payload(r Request) Message {
	who := r.Person.Name
	if r.Person.Email != "" {
		who += " <" + r.Person.Email + ">"
	}
	var text string
	fields := []Field{{Title: "Request", Value: r.ID, Short: true}, {Title: "Person", Value: who, Short: true},
		{Title: "Connection", Value: r.Connection, Short: true}, {Title: "Expires", Value: r.Expires.UTC().Format(time.RFC3339), Short: true}}
	switch r.Kind {
	case KindAccess:
		text = fmt.Sprintf("Airlock: %s asks for access to %s for %s: %s. Decide with `airlock approve %s` or `airlock deny %s --reason …`",
			who, r.Connection, r.For, r.Reason, r.ID, r.ID)
		fields = append(fields, Field{Title: "For", Value: r.For.String(), Short: true}, Field{Title: "Reason", Value: r.Reason})
	default:
		text = fmt.Sprintf("Airlock: a statement by %s on %s waits for approval (%s). Decide with `airlock approve %s` or `airlock deny %s --reason …`",
			who, r.Connection, strings.TrimSpace(r.Rule+" "+r.Reason), r.ID, r.ID)
		fields = append(fields, Field{Title: "Process", Value: fmt.Sprintf("%s (pid %d, uid %d, %s)", r.Process.Exe, r.Process.PID, r.Process.UID, r.Process.Class)},
			Field{Title: "Statement", Value: "```" + r.Statement + "```"},
			Field{Title: "Classification", Value: r.Class, Short: true}, Field{Title: "Rule", Value: r.Rule, Short: true})
	}
	// Slack reads <…> as links and mentions (<!channel>): the requester's
	// text is escaped so that it cannot ping or disguise a link.
	text = slackEscape(text)
	for i := range fields {
		fields[i].Value = slackEscape(fields[i].Value)
	}
	return Message{Text: text, Attachments: []Attachment{{Fallback: text, Fields: fields}}, Airlock: r}
}

var slackEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func slackEscape(s string) string { return slackEscaper.Replace(s) }
