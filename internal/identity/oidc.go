package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// IssuerConfig is one trusted OIDC issuer.
type IssuerConfig struct {
	Name     string
	URL      string // the "iss" of its tokens
	ClientID string
	Audience string   // required "aud"
	Kind     string   // "people" (login flows, refresh) or "workload" (CI tokens)
	Scopes   []string // asked for by `airlock login`
	// Claim names for the person's attributes.
	NameClaim, EmailClaim, GroupsClaim string
}

// Problem is why an identity cannot be used, worded for the person who
// must fix it: what is wrong and what to run.
type Problem struct {
	Code string // not_logged_in, expired, audience, issuer, signature, unknown_key, rotated_key, not_yet_valid, unreachable, malformed, refresh_failed
	Msg  string
}

func (p *Problem) Error() string { return p.Msg }

// IsProblem reports whether err is a Problem with code.
func IsProblem(err error, code string) bool {
	var p *Problem
	return errors.As(err, &p) && p.Code == code
}

const loginHint = "run `airlock login`"

// signingAlgs are the algorithms accepted on ID tokens; "none" and HMAC
// never are.
var signingAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.EdDSA}

// Issuers verifies ID tokens against the trusted issuers. Discovery
// documents and signing keys are fetched lazily and cached; keys are fetched
// again when a token names a key not in the cache and every KeysRefresh, so
// that keys an issuer withdrew stop verifying.
type Issuers struct {
	list        []*Issuer
	client      *http.Client
	keysRefresh time.Duration
	minRefetch  time.Duration
	now         func() time.Time
}

// IssuersOptions configures Issuers.
type IssuersOptions struct {
	Issuers     []IssuerConfig
	HTTPClient  *http.Client  // default: 10s timeout
	KeysRefresh time.Duration // default 15m
	// MinRefetch bounds how often an unknown key triggers a fetch, so a
	// flood of forged tokens does not become a flood of requests to the
	// issuer. Default 1s; negative: no bound (tests).
	MinRefetch time.Duration
	Now        func() time.Time
}

// Issuer is one trusted issuer and its cached discovery and keys.
type Issuer struct {
	Config IssuerConfig
	parent *Issuers

	mu        sync.Mutex
	provider  *oidc.Provider
	jwksURL   string
	keys      []jose.JSONWebKey
	fetched   time.Time
	everSeen  map[string]bool // kids this issuer published at some point
	lastError error
}

// NewIssuers returns the verifier of cfgs.
func NewIssuers(opts IssuersOptions) *Issuers {
	s := &Issuers{client: opts.HTTPClient, keysRefresh: opts.KeysRefresh, minRefetch: opts.MinRefetch, now: opts.Now}
	if s.client == nil {
		s.client = &http.Client{Timeout: 10 * time.Second}
	}
	if s.keysRefresh <= 0 {
		s.keysRefresh = 15 * time.Minute
	}
	if s.minRefetch == 0 {
		s.minRefetch = time.Second
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, c := range opts.Issuers {
		s.list = append(s.list, &Issuer{Config: c, parent: s, everSeen: map[string]bool{}})
	}
	return s
}

// All returns the trusted issuers in configuration order.
func (s *Issuers) All() []*Issuer { return s.list }

// ByName returns the issuer called name.
func (s *Issuers) ByName(name string) (*Issuer, bool) {
	for _, is := range s.list {
		if is.Config.Name == name {
			return is, true
		}
	}
	return nil, false
}

func (s *Issuers) byURL(iss string) (*Issuer, bool) {
	for _, is := range s.list {
		if is.Config.URL == iss {
			return is, true
		}
	}
	return nil, false
}

// Provider returns the issuer's discovery, fetched once and cached.
func (is *Issuer) Provider(ctx context.Context) (*oidc.Provider, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.providerLocked(ctx)
}

func (is *Issuer) providerLocked(ctx context.Context) (*oidc.Provider, error) {
	if is.provider != nil {
		return is.provider, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, is.parent.client), is.Config.URL)
	if err != nil {
		return nil, &Problem{Code: "unreachable", Msg: fmt.Sprintf(
			"identity issuer %s (%s) cannot be reached to check your token: %v; try again shortly, or ask your Airlock admin",
			is.Config.Name, is.Config.URL, err)}
	}
	var extra struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := p.Claims(&extra); err != nil || extra.JWKS == "" {
		return nil, &Problem{Code: "unreachable", Msg: fmt.Sprintf("identity issuer %s publishes no jwks_uri; ask your Airlock admin", is.Config.Name)}
	}
	is.provider, is.jwksURL = p, extra.JWKS
	return p, nil
}

// fetchKeysLocked replaces the key cache; on failure the old keys stay.
func (is *Issuer) fetchKeysLocked(ctx context.Context) error {
	if _, err := is.providerLocked(ctx); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, is.jwksURL, nil)
	if err != nil {
		return fmt.Errorf("fetch signing keys of %s: %w", is.Config.Name, err)
	}
	resp, err := is.parent.client.Do(req)
	if err != nil {
		is.lastError = err
		return &Problem{Code: "unreachable", Msg: fmt.Sprintf(
			"identity issuer %s cannot be reached for its signing keys: %v; try again shortly", is.Config.Name, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return &Problem{Code: "unreachable", Msg: fmt.Sprintf(
			"identity issuer %s did not serve its signing keys (HTTP %d); try again shortly", is.Config.Name, resp.StatusCode)}
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return &Problem{Code: "unreachable", Msg: fmt.Sprintf("identity issuer %s served unreadable signing keys: %v", is.Config.Name, err)}
	}
	is.keys, is.fetched = set.Keys, is.parent.now()
	for _, k := range set.Keys {
		is.everSeen[k.KeyID] = true
	}
	return nil
}

// checkSignature verifies raw's signature with the issuer's keys and says
// precisely what is wrong when it does not verify.
func (is *Issuer) checkSignature(ctx context.Context, raw string) error {
	jws, err := jose.ParseSigned(raw, signingAlgs)
	if err != nil {
		return &Problem{Code: "malformed", Msg: fmt.Sprintf("your identity token is not a signed JWT this machine accepts (%v): %s", err, loginHint)}
	}
	if len(jws.Signatures) != 1 {
		return &Problem{Code: "malformed", Msg: "your identity token must carry exactly one signature: " + loginHint}
	}
	kid := jws.Signatures[0].Header.KeyID

	is.mu.Lock()
	defer is.mu.Unlock()
	now := is.parent.now()
	if is.keys == nil || now.Sub(is.fetched) >= is.parent.keysRefresh {
		if err := is.fetchKeysLocked(ctx); err != nil && is.keys == nil {
			return err
		}
	}
	candidates := is.match(kid)
	if len(candidates) == 0 && (is.parent.minRefetch < 0 || now.Sub(is.fetched) >= is.parent.minRefetch) {
		// A key we have not seen: the issuer may have rotated.
		if err := is.fetchKeysLocked(ctx); err != nil {
			return err
		}
		candidates = is.match(kid)
	}
	if len(candidates) == 0 {
		if is.everSeen[kid] {
			return &Problem{Code: "rotated_key", Msg: fmt.Sprintf(
				"your identity token is signed with key %q, which issuer %s has withdrawn (keys rotated): %s", kid, is.Config.Name, loginHint)}
		}
		return &Problem{Code: "unknown_key", Msg: fmt.Sprintf(
			"your identity token is signed with key %q, which issuer %s does not publish: %s", kid, is.Config.Name, loginHint)}
	}
	for _, k := range candidates {
		if _, err := jws.Verify(k); err == nil {
			return nil
		}
	}
	return &Problem{Code: "signature", Msg: fmt.Sprintf(
		"the signature on your identity token does not verify with issuer %s's key %q: %s", is.Config.Name, kid, loginHint)}
}

func (is *Issuer) match(kid string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range is.keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if kid == "" || k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// keySet lets go-oidc's verifier check signatures with our cache.
// checked is the token whose signature Verify has just checked: go-oidc's
// check of the same bytes, in the same call, is not repeated (on a small VM
// each RS256 check is about a hundred microseconds of every OIDC person's
// new session). Any other token is checked.
type keySet struct {
	is      *Issuer
	checked string
}

func (k keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	if k.checked == "" || raw != k.checked {
		if err := k.is.checkSignature(ctx, raw); err != nil {
			return nil, err
		}
	}
	jws, err := jose.ParseSigned(raw, signingAlgs)
	if err != nil {
		return nil, err
	}
	return jws.UnsafePayloadWithoutVerification(), nil
}

// Verified is a checked ID token.
type Verified struct {
	Person Person
	Expiry time.Time
	Issuer *Issuer
}

// Verify checks raw (signature, issuer, audience, expiry, not-before) and
// reads the person from its claims.
func (s *Issuers) Verify(ctx context.Context, raw string) (Verified, error) {
	iss, err := unverifiedIssuer(raw)
	if err != nil {
		return Verified{}, err
	}
	is, ok := s.byURL(iss)
	if !ok {
		return Verified{}, &Problem{Code: "issuer", Msg: fmt.Sprintf(
			"your identity token was issued by %q, which this machine does not trust (trusted: %s): %s",
			iss, strings.Join(s.urls(), ", "), loginHint)}
	}
	// Signature first, with our own precise errors; go-oidc then checks
	// the claims of the same bytes.
	if err := is.checkSignature(ctx, raw); err != nil {
		return Verified{}, err
	}
	v := oidc.NewVerifier(is.Config.URL, keySet{is: is, checked: raw}, &oidc.Config{
		ClientID: is.Config.Audience, Now: s.now,
		SupportedSigningAlgs: algNames(),
	})
	tok, err := v.Verify(ctx, raw)
	if err != nil {
		var te *oidc.TokenExpiredError
		switch {
		case errors.As(err, &te):
			return Verified{}, &Problem{Code: "expired", Msg: fmt.Sprintf(
				"your identity token from %s expired at %s: %s", is.Config.Name, te.Expiry.UTC().Format(time.RFC3339), loginHint)}
		case strings.Contains(err.Error(), "expected audience"):
			return Verified{}, &Problem{Code: "audience", Msg: fmt.Sprintf(
				"your identity token from %s is not meant for Airlock (audience must be %q): %s with this machine's client",
				is.Config.Name, is.Config.Audience, loginHint)}
		case strings.Contains(err.Error(), "nbf"):
			return Verified{}, &Problem{Code: "not_yet_valid", Msg: fmt.Sprintf(
				"your identity token from %s is not valid yet (check this machine's clock): %s", is.Config.Name, loginHint)}
		case strings.Contains(err.Error(), "different provider"):
			return Verified{}, &Problem{Code: "issuer", Msg: fmt.Sprintf("your identity token names the wrong issuer: %s", loginHint)}
		}
		return Verified{}, &Problem{Code: "malformed", Msg: fmt.Sprintf("your identity token from %s was refused (%v): %s", is.Config.Name, err, loginHint)}
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return Verified{}, &Problem{Code: "malformed", Msg: fmt.Sprintf("your identity token's claims are unreadable: %s", loginHint)}
	}
	p := Person{Issuer: tok.Issuer, Subject: tok.Subject}
	p.Email, _ = claims[is.Config.EmailClaim].(string)
	p.Name, _ = claims[is.Config.NameClaim].(string)
	if p.Name == "" {
		p.Name = p.Email
	}
	if p.Name == "" {
		p.Name = p.Subject
	}
	p.Groups = stringList(claims[is.Config.GroupsClaim])
	return Verified{Person: p, Expiry: tok.Expiry, Issuer: is}, nil
}

func (s *Issuers) urls() []string {
	out := make([]string, len(s.list))
	for i, is := range s.list {
		out[i] = is.Config.URL
	}
	return out
}

func algNames() []string {
	out := make([]string, len(signingAlgs))
	for i, a := range signingAlgs {
		out[i] = string(a)
	}
	return out
}

// unverifiedIssuer reads "iss" from a JWT's payload, only to pick the
// issuer whose keys then verify it.
func unverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", &Problem{Code: "malformed", Msg: "your identity token is not a JWT (three dot-separated parts): " + loginHint}
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", &Problem{Code: "malformed", Msg: "your identity token's payload is not base64url: " + loginHint}
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Iss == "" {
		return "", &Problem{Code: "malformed", Msg: "your identity token has no issuer (iss): " + loginHint}
	}
	return c.Iss, nil
}

// stringList reads a groups claim: a list of strings, or one string.
func stringList(v any) []string {
	var out []string
	switch g := v.(type) {
	case string:
		if g != "" {
			out = append(out, g)
		}
	case []any:
		for _, x := range g {
			if s, ok := x.(string); ok && s != "" {
				out = append(out, s)
			}
		}
	}
	sort.Strings(out)
	return out
}
