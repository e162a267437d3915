package identity

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/oidctest"
)

// TestKeySetChecksAllButTheCheckedToken: Verify lets go-oidc skip the
// signature check only for the exact token it has just checked; a token
// that differs in any byte is checked, and a forged one refused.
func TestKeySetChecksAllButTheCheckedToken(t *testing.T) {
	idp, err := oidctest.Start("airlock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	iss := NewIssuers(IssuersOptions{MinRefetch: -1, Issuers: []IssuerConfig{{
		Name: "corp", URL: idp.URL, ClientID: "airlock", Audience: "airlock", Kind: "people",
		Scopes: []string{"openid"}, NameClaim: "preferred_username", EmailClaim: "email",
	}}})
	is, ok := iss.byURL(idp.URL)
	if !ok {
		t.Fatal("issuer not configured")
	}
	good, err := idp.IDToken(oidctest.User{Subject: "u-1", Name: "alice"}, oidctest.TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The same signature over another payload: the subject changed.
	parts := strings.Split(good, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"u-1"`, `"u-2"`, 1))) + "." + parts[2]
	if forged == good {
		t.Fatal("forgery changed nothing")
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name           string
		checked, token string
		ok             bool
	}{
		{"the checked token", good, good, true},
		{"nothing checked", "", good, true},
		{"forged, nothing checked", "", forged, false},
		{"forged, another token checked", good, forged, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload, err := keySet{is: is, checked: tc.checked}.VerifySignature(ctx, tc.token)
			if tc.ok != (err == nil) {
				t.Fatalf("VerifySignature: %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && !strings.Contains(string(payload), `"u-1"`) {
				t.Fatalf("payload %q", payload)
			}
		})
	}
	// Through Verify: the forged token is refused for its signature.
	if _, err := iss.Verify(ctx, forged); !IsProblem(err, "signature") {
		t.Fatalf("Verify(forged) = %v, want a signature problem", err)
	}
	if v, err := iss.Verify(ctx, good); err != nil || v.Person.Subject != "u-1" {
		t.Fatalf("Verify(good) = %+v, %v", v, err)
	}
}
