// Package login runs the OAuth flows `airlock login` uses to obtain an ID
// token from a person's identity provider: authorization code with PKCE on
// a loopback redirect (RFC 8252) and the device-code flow (RFC 8628). It
// runs in the user's process; the tokens then go to airlockd, which
// verifies them and binds them to the caller's uid.
package login

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Issuer is what the daemon tells the CLI about a people issuer.
type Issuer struct {
	Name     string
	URL      string
	ClientID string
	Scopes   []string
}

// Tokens is a flow's outcome. They are secrets: never print them.
type Tokens struct {
	IDToken      string
	RefreshToken string
}

// Config discovers the issuer's endpoints and returns the OAuth client.
func Config(ctx context.Context, is Issuer) (*oauth2.Config, error) {
	p, err := oidc.NewProvider(ctx, is.URL)
	if err != nil {
		return nil, fmt.Errorf("discover identity issuer %s (%s): %w", is.Name, is.URL, err)
	}
	return &oauth2.Config{ClientID: is.ClientID, Endpoint: p.Endpoint(), Scopes: is.Scopes}, nil
}

// PKCE runs the authorization code flow: it listens on a random loopback
// port, hands open the URL the person must visit, and waits for the
// provider to redirect back with a code whose state matches.
func PKCE(ctx context.Context, cfg *oauth2.Config, open func(url string)) (*Tokens, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the login redirect on loopback: %w", err)
	}
	defer ln.Close()
	c := *cfg
	c.RedirectURL = "http://127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "/callback"
	state, verifier := random(), oauth2.GenerateVerifier()

	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/callback" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		// A page another site makes the browser load must not complete
		// someone's login: the state proves the redirect answers our request.
		if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1 {
			http.Error(w, "login state does not match; start again with `airlock login`", http.StatusBadRequest)
			return
		}
		var res result
		if e := q.Get("error"); e != "" {
			res.err = fmt.Errorf("identity provider refused the login: %s %s", e, q.Get("error_description"))
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, "<p>Login refused: %s</p>", html.EscapeString(e))
		} else if res.code = q.Get("code"); res.code == "" {
			res.err = errors.New("identity provider redirected without a code")
			http.Error(w, "no code", http.StatusBadRequest)
		} else {
			fmt.Fprint(w, "<p>Airlock login complete. You may close this window.</p>")
		}
		select {
		case got <- res:
		default:
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	open(c.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)))
	var res result
	select {
	case res = <-got:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the browser login: %w", ctx.Err())
	}
	if res.err != nil {
		return nil, res.err
	}
	tok, err := c.Exchange(ctx, res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("exchange the login code for tokens: %w", err)
	}
	return tokens(tok)
}

// Device runs the device-code flow: show tells the person where to go and
// which code to enter; Device then polls until they approve.
func Device(ctx context.Context, cfg *oauth2.Config, show func(*oauth2.DeviceAuthResponse)) (*Tokens, error) {
	if cfg.Endpoint.DeviceAuthURL == "" {
		return nil, errors.New("this identity provider does not offer the device flow; run `airlock login` without --device")
	}
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		return nil, fmt.Errorf("start the device login: %w", err)
	}
	show(da)
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		return nil, fmt.Errorf("wait for the device login to be approved: %w", err)
	}
	return tokens(tok)
}

func tokens(tok *oauth2.Token) (*Tokens, error) {
	idt, _ := tok.Extra("id_token").(string)
	if idt == "" {
		return nil, errors.New("identity provider returned no ID token (is the openid scope allowed for this client?)")
	}
	return &Tokens{IDToken: idt, RefreshToken: tok.RefreshToken}, nil
}

func random() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("login: no randomness: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}
