package audit

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

// Identity changes of a uid are records of their own (no session), with the
// person and the outcome, and never a token.
func TestIdentityEventsAreRecorded(t *testing.T) {
	alice := &identity.Person{Name: "alice", UID: 1001, Issuer: "https://idp", Subject: "sub-alice",
		Email: "alice@example.com", Groups: []string{"analysts"}}
	tests := []struct {
		kind session.Kind
		id   session.Identity
		want []string
	}{
		{session.KindIdentityLogin, session.Identity{UID: 1001, By: 0, Outcome: "ok"},
			[]string{`"uid":1001`, `"by":0`, `"subject":"sub-alice"`, `"outcome":"ok"`}},
		{session.KindIdentityLost, session.Identity{UID: 1001, Outcome: "failed", Error: "refresh token revoked"},
			[]string{`"outcome":"failed"`, `"error":"refresh token revoked"`}},
	}
	for _, tc := range tests {
		t.Run(string(tc.kind), func(t *testing.T) {
			id := tc.id
			kind, data, err := fromEvent(session.Event{Kind: tc.kind, Identity: &id, Person: alice}, Policy{})
			if err != nil {
				t.Fatalf("fromEvent: %v", err)
			}
			if kind != string(tc.kind) {
				t.Errorf("kind %q, want %q", kind, tc.kind)
			}
			b, _ := json.Marshal(data)
			for _, w := range tc.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("record %s lacks %s", b, w)
				}
			}
		})
	}
}
