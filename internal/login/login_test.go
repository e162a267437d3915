package login_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/airlockhq/airlock/internal/login"
	"github.com/airlockhq/airlock/internal/oidctest"
)

func provider(t *testing.T) (*oidctest.Provider, *oauth2.Config, context.Context) {
	t.Helper()
	idp, err := oidctest.Start("airlock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	cfg, err := login.Config(ctx, login.Issuer{Name: "corp", URL: idp.URL, ClientID: "airlock", Scopes: []string{"openid"}})
	if err != nil {
		t.Fatal(err)
	}
	return idp, cfg, ctx
}

func TestPKCE(t *testing.T) {
	_, cfg, ctx := provider(t)
	var authURL string
	toks, err := login.PKCE(ctx, cfg, func(u string) {
		authURL = u
		go func() { // the browser
			if resp, err := http.Get(u); err == nil {
				resp.Body.Close()
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	if toks.IDToken == "" || toks.RefreshToken == "" {
		t.Fatalf("tokens = %+v", toks)
	}
	q, _ := url.Parse(authURL)
	if q.Query().Get("code_challenge_method") != "S256" || !strings.HasPrefix(q.Query().Get("redirect_uri"), "http://127.0.0.1:") || q.Query().Get("state") == "" {
		t.Fatalf("authorization URL lacks PKCE, loopback redirect or state: %s", authURL)
	}
}

// A redirect with the wrong state (a page forging the callback) is refused
// and does not end the login; the real one still completes it.
func TestPKCEStateChecked(t *testing.T) {
	_, cfg, ctx := provider(t)
	toks, err := login.PKCE(ctx, cfg, func(u string) {
		q, _ := url.Parse(u)
		redirect := q.Query().Get("redirect_uri")
		go func() {
			resp, err := http.Get(redirect + "?code=forged&state=wrong")
			if err != nil || resp.StatusCode != http.StatusBadRequest {
				t.Errorf("forged callback: %v %v", resp, err)
			}
			if resp != nil {
				resp.Body.Close()
			}
			if resp, err := http.Get(u); err == nil {
				resp.Body.Close()
			}
		}()
	})
	if err != nil || toks.IDToken == "" {
		t.Fatalf("login after a forged callback: %v", err)
	}
}

func TestDevice(t *testing.T) {
	_, cfg, ctx := provider(t)
	toks, err := login.Device(ctx, cfg, func(da *oauth2.DeviceAuthResponse) {
		go func() { // the person approving on their phone
			resp, err := http.PostForm(da.VerificationURI, url.Values{"user_code": {da.UserCode}})
			if err == nil {
				resp.Body.Close()
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	if toks.IDToken == "" {
		t.Fatal("no ID token")
	}
}

func TestDeviceDenied(t *testing.T) {
	_, cfg, ctx := provider(t)
	_, err := login.Device(ctx, cfg, func(da *oauth2.DeviceAuthResponse) {
		go func() {
			resp, err := http.PostForm(da.VerificationURI, url.Values{"user_code": {da.UserCode}, "deny": {"1"}})
			if err == nil {
				resp.Body.Close()
			}
		}()
	})
	if err == nil || !strings.Contains(err.Error(), "access_denied") {
		t.Fatalf("denied device login = %v", err)
	}
}
