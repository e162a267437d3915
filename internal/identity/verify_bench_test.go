package identity_test

import (
	"context"
	"testing"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/oidctest"
)

// BenchmarkIssuersVerify is what an OIDC person's new session pays to have
// its stored ID token checked (Service.Current verifies it on every
// session): an RS256 token, keys already fetched.
func BenchmarkIssuersVerify(b *testing.B) {
	idp, err := oidctest.Start("airlock")
	if err != nil {
		b.Fatal(err)
	}
	defer idp.Close()
	iss := identity.NewIssuers(identity.IssuersOptions{MinRefetch: -1, Issuers: []identity.IssuerConfig{{
		Name: "corp", URL: idp.URL, ClientID: "airlock", Audience: "airlock", Kind: "people",
		Scopes: []string{"openid"}, NameClaim: "preferred_username", EmailClaim: "email", GroupsClaim: "groups",
	}}})
	tok, err := idp.IDToken(oidctest.User{Subject: "u-1", Name: "alice", Email: "alice@example.com"}, oidctest.TokenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := iss.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := iss.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
