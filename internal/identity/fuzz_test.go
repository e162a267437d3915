package identity

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strconv"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// FuzzVerify feeds untrusted token text to the verifier (keys preloaded, so
// no network): it must never panic, and must accept only tokens that
// really are signed with the issuer's key, for it, and unexpired.
func FuzzVerify(f *testing.F) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	const iss = "http://127.0.0.1:1"
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		f.Fatal(err)
	}
	seed := func(payload string) string {
		jws, err := signer.Sign([]byte(payload))
		if err != nil {
			f.Fatal(err)
		}
		s, _ := jws.CompactSerialize()
		return s
	}
	exp := time.Now().Add(24 * time.Hour).Unix()
	good := seed(`{"iss":"` + iss + `","aud":"airlock","sub":"s","exp":` + strconv.FormatInt(exp, 10) + `,"groups":["a",1,null],"email":"e"}`)
	f.Add(good)
	f.Add(seed(`{"iss":"` + iss + `","aud":["x","airlock"],"sub":"s","exp":` + strconv.FormatInt(exp, 10) + `,"groups":"one"}`))
	f.Add(seed(`{"iss":"` + iss + `","aud":"airlock","exp":"soon"}`))
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjEifQ.")
	f.Add("a.b.c")
	f.Add("")

	s := NewIssuers(IssuersOptions{MinRefetch: time.Hour, KeysRefresh: time.Hour, Issuers: []IssuerConfig{{
		Name: "t", URL: iss, ClientID: "airlock", Audience: "airlock", Kind: "people",
		NameClaim: "name", EmailClaim: "email", GroupsClaim: "groups"}}})
	is := s.list[0]
	is.keys = []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}
	is.fetched = time.Now()
	is.everSeen["k1"] = true

	f.Fuzz(func(t *testing.T, raw string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		v, err := s.Verify(ctx, raw)
		if err != nil {
			var p *Problem
			if !errors.As(err, &p) {
				t.Fatalf("error is not a Problem: %v", err)
			}
			return
		}
		jws, perr := jose.ParseSigned(raw, signingAlgs)
		if perr != nil {
			t.Fatalf("accepted a token that does not parse: %v", perr)
		}
		if _, verr := jws.Verify(&key.PublicKey); verr != nil {
			t.Fatalf("accepted a token not signed with the issuer's key: %v", verr)
		}
		if v.Person.Issuer != iss || v.Expiry.Before(time.Now()) {
			t.Fatalf("accepted %+v", v)
		}
	})
}
