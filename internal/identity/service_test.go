package identity_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/login"
	"github.com/airlockhq/airlock/internal/oidctest"
)

type fixture struct {
	idp   *oidctest.Provider
	svc   *identity.Service
	store *identity.Store
	dir   string
	audit []identity.Change
}

func newFixture(t *testing.T, grace time.Duration) *fixture {
	t.Helper()
	idp, err := oidctest.Start("airlock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	dir := filepath.Join(t.TempDir(), "identities")
	store, err := identity.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{idp: idp, store: store, dir: dir}
	iss := identity.NewIssuers(identity.IssuersOptions{MinRefetch: -1, Issuers: []identity.IssuerConfig{{
		Name: "corp", URL: idp.URL, ClientID: "airlock", Audience: "airlock", Kind: "people",
		Scopes: []string{"openid"}, NameClaim: "preferred_username", EmailClaim: "email", GroupsClaim: "groups",
	}}})
	f.svc = identity.NewService(identity.ServiceOptions{Issuers: iss, Store: store, RefreshBefore: time.Second,
		ExpiryGrace: grace, Audit: func(c identity.Change) { f.audit = append(f.audit, c) }})
	return f
}

func (f *fixture) token(t *testing.T, o oidctest.TokenOptions) string {
	t.Helper()
	tok, err := f.idp.IDToken(oidctest.User{Subject: "u-1", Name: "alice", Email: "alice@example.com", Groups: []string{"dba", "analysts"}}, o)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestLoginVerifiesAndBindsToUID(t *testing.T) {
	f := newFixture(t, time.Second)
	ctx := context.Background()
	rec, err := f.svc.Login(ctx, 1001, 1001, f.token(t, oidctest.TokenOptions{}), "")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Person.Name != "alice" || rec.Person.Email != "alice@example.com" || rec.Person.Subject != "u-1" ||
		rec.Person.Issuer != f.idp.URL || strings.Join(rec.Person.Groups, ",") != "analysts,dba" || rec.Person.UID != 1001 {
		t.Fatalf("person = %+v", rec.Person)
	}
	p, err := f.svc.Resolve(ctx, 1001)
	if err != nil || p.Subject != "u-1" {
		t.Fatalf("Resolve(1001) = %+v, %v", p, err)
	}
	// Another uid gets nothing from uid 1001's login.
	if _, err := f.svc.Resolve(ctx, 1002); !identity.IsProblem(err, "not_logged_in") || !strings.Contains(err.Error(), "airlock login") {
		t.Fatalf("Resolve(1002) = %v, want not_logged_in naming airlock login", err)
	}
	// At rest: 0600, and no token in clear.
	b, err := os.ReadFile(filepath.Join(f.dir, "1001.tok"))
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(f.dir, "1001.tok"))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", fi.Mode().Perm())
	}
	if strings.Contains(string(b), "alice") || strings.Contains(string(b), rec.IDToken[:20]) {
		t.Fatal("stored identity is readable without the key")
	}
	// A file moved to another uid's name does not open as that uid.
	if err := os.Rename(filepath.Join(f.dir, "1001.tok"), filepath.Join(f.dir, "1002.tok")); err != nil {
		t.Fatal(err)
	}
	if r, err := f.store.Load(1002); err == nil {
		t.Fatalf("uid 1002 opened uid 1001's identity: %+v", r.Person)
	}
	if len(f.audit) == 0 || f.audit[0].Action != "login" || f.audit[0].Outcome != "ok" {
		t.Fatalf("audit = %+v", f.audit)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, time.Second)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts oidctest.TokenOptions
		raw  string
		code string
		want string
	}{
		{"expired", oidctest.TokenOptions{Expiry: time.Now().Add(-time.Minute)}, "", "expired", "expired at"},
		{"wrong audience", oidctest.TokenOptions{Audience: "someone-else"}, "", "audience", "not meant for Airlock"},
		{"wrong issuer", oidctest.TokenOptions{Issuer: "https://evil.example.com"}, "", "issuer", "does not trust"},
		{"bad signature", oidctest.TokenOptions{Key: other}, "", "signature", "does not verify"},
		{"unknown key", oidctest.TokenOptions{Key: other, Kid: "nobody-knows"}, "", "unknown_key", "does not publish"},
		{"not yet valid", oidctest.TokenOptions{NotBefore: time.Now().Add(time.Hour)}, "", "not_yet_valid", "not valid yet"},
		{"garbage", oidctest.TokenOptions{}, "not.a-jwt", "malformed", "airlock login"},
		{"alg none", oidctest.TokenOptions{}, "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.", "issuer", "does not trust"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := c.raw
			if raw == "" {
				raw = f.token(t, c.opts)
			}
			_, err := f.svc.Login(context.Background(), 1001, 1001, raw, "")
			if !identity.IsProblem(err, c.code) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "airlock login") {
				t.Fatalf("Login = %v, want problem %s mentioning %q and `airlock login`", err, c.code, c.want)
			}
		})
	}
}

func TestRotatedKeys(t *testing.T) {
	f := newFixture(t, time.Second)
	ctx := context.Background()
	old := f.token(t, oidctest.TokenOptions{})
	if _, err := f.svc.Login(ctx, 1001, 1001, old, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.idp.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	// A token signed with the new key makes the daemon fetch the new set...
	if _, err := f.svc.Login(ctx, 1002, 1002, f.token(t, oidctest.TokenOptions{}), ""); err != nil {
		t.Fatalf("login with a token signed by the rotated-in key: %v", err)
	}
	// ...after which the withdrawn key no longer verifies anything.
	_, err := f.svc.Resolve(ctx, 1001)
	if !identity.IsProblem(err, "rotated_key") || !strings.Contains(err.Error(), "withdrawn") {
		t.Fatalf("Resolve with a withdrawn key = %v, want rotated_key", err)
	}
}

func TestIssuerDownKeepsVerifiedIdentity(t *testing.T) {
	f := newFixture(t, time.Second)
	ctx := context.Background()
	if _, err := f.svc.Login(ctx, 1001, 1001, f.token(t, oidctest.TokenOptions{}), ""); err != nil {
		t.Fatal(err)
	}
	f.idp.SetDown(true)
	// A fresh daemon (nothing cached) over the same store.
	iss := identity.NewIssuers(identity.IssuersOptions{Issuers: []identity.IssuerConfig{{
		Name: "corp", URL: f.idp.URL, ClientID: "airlock", Audience: "airlock", Kind: "people",
		NameClaim: "preferred_username", EmailClaim: "email", GroupsClaim: "groups"}}})
	svc := identity.NewService(identity.ServiceOptions{Issuers: iss, Store: f.store})
	p, err := svc.Resolve(ctx, 1001)
	if err != nil || p.Name != "alice" {
		t.Fatalf("Resolve while the issuer is down = %+v, %v", p, err)
	}
	// A new login, though, cannot be verified.
	if _, err := svc.Login(ctx, 1003, 1003, f.token(t, oidctest.TokenOptions{}), ""); !identity.IsProblem(err, "unreachable") {
		t.Fatalf("Login while the issuer is down = %v, want unreachable", err)
	}
}

func TestKeepRenewsAndEndsOnRevokedRefresh(t *testing.T) {
	f := newFixture(t, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.idp.SetTTL(2 * time.Second)
	// A real refresh token, from the provider's token endpoint.
	rt, idt := codeLogin(t, f.idp)
	rec, err := f.svc.Login(ctx, 1001, 1001, idt, rt)
	if err != nil {
		t.Fatal(err)
	}
	first := rec.Expiry
	done := make(chan error, 1)
	go func() { done <- f.svc.Keep(ctx, 1001, rec.Person) }()
	// Keep renews before expiry: wait (bounded) for a later expiry.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := f.svc.Current(ctx, 1001)
		if err == nil && r.Expiry.After(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity was not renewed (err %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.idp.RevokeRefreshTokens()
	select {
	case err := <-done:
		if !errors.Is(err, identity.ErrLost) || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("Keep = %v, want ErrLost naming the revoked refresh token", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Keep did not end the session after the refresh token was revoked")
	}
}

// codeLogin runs the real PKCE flow against idp, the test playing the
// browser, and returns the refresh and ID tokens.
func codeLogin(t *testing.T, idp *oidctest.Provider) (refresh, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := login.Config(ctx, login.Issuer{Name: "corp", URL: idp.URL, ClientID: "airlock", Scopes: []string{"openid", "offline_access"}})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := login.PKCE(ctx, cfg, func(u string) {
		go func() {
			resp, err := http.Get(u)
			if err == nil {
				resp.Body.Close()
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	return toks.RefreshToken, toks.IDToken
}
