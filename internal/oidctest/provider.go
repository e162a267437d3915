// Package oidctest runs an OpenID Connect provider in process, on loopback
// HTTP, for tests and the demo: discovery, JWKS, authorization code with
// PKCE (S256 only), the device-code flow (RFC 8628), refresh tokens that can
// be revoked, key rotation, and hand-made tokens (expired, wrong audience,
// wrongly signed) for the refusal paths. Tokens are real RS256 JWTs.
package oidctest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// User is who the provider logs in.
type User struct {
	Subject string
	Name    string
	Email   string
	Groups  []string
}

// Provider is a running test issuer.
type Provider struct {
	URL      string // issuer, http://127.0.0.1:PORT
	ClientID string

	srv *http.Server
	ln  net.Listener

	mu       sync.Mutex
	key      *rsa.PrivateKey
	kid      string
	user     User
	others   map[string]User // AddUser: who else a device approval may sign in as
	ttl      time.Duration
	codes    map[string]pendingCode
	devices  map[string]*device // by device_code
	byUser   map[string]string  // user_code → device_code
	refresh  map[string]User    // refresh token → user
	revoked  map[string]bool
	down     bool
	nextKeyN int
}

type pendingCode struct {
	user      User
	challenge string
	redirect  string
	nonce     string
}

type device struct {
	userCode string
	approved *User
	denied   bool
}

// Start listens on 127.0.0.1:0 and serves until Close.
func Start(clientID string) (*Provider, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("oidctest: listen: %w", err)
	}
	p := &Provider{URL: "http://" + ln.Addr().String(), ClientID: clientID, ln: ln, ttl: time.Hour,
		codes: map[string]pendingCode{}, devices: map[string]*device{}, byUser: map[string]string{},
		refresh: map[string]User{}, revoked: map[string]bool{},
		user: User{Subject: "u-alice", Name: "alice", Email: "alice@example.com", Groups: []string{"analysts"}}}
	if err := p.RotateKeys(); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("/jwks", p.jwks)
	mux.HandleFunc("/authorize", p.authorize)
	mux.HandleFunc("/token", p.token)
	mux.HandleFunc("/device", p.deviceAuth)
	mux.HandleFunc("/device/approve", p.deviceApprove)
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the server.
func (p *Provider) Close() { _ = p.srv.Close() }

// AddUser lets a device approval sign in as u (by u.Name) instead of the
// current user: a second person at the same issuer.
func (p *Provider) AddUser(u User) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.others == nil {
		p.others = map[string]User{}
	}
	p.others[u.Name] = u
}

// SetUser sets who the next logins are.
func (p *Provider) SetUser(u User) { p.mu.Lock(); p.user = u; p.mu.Unlock() }

// SetTTL sets the lifetime of ID tokens issued from now on.
func (p *Provider) SetTTL(d time.Duration) { p.mu.Lock(); p.ttl = d; p.mu.Unlock() }

// SetDown makes every endpoint answer 503 (an issuer outage).
func (p *Provider) SetDown(down bool) { p.mu.Lock(); p.down = down; p.mu.Unlock() }

// RevokeRefreshTokens makes every refresh token issued so far invalid.
func (p *Provider) RevokeRefreshTokens() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for t := range p.refresh {
		p.revoked[t] = true
	}
}

// RotateKeys replaces the signing key; the old one is no longer published.
func (p *Provider) RotateKeys() error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("oidctest: generate key: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextKeyN++
	p.key, p.kid = k, fmt.Sprintf("key-%d", p.nextKeyN)
	return nil
}

// Kid is the current signing key's id.
func (p *Provider) Kid() string { p.mu.Lock(); defer p.mu.Unlock(); return p.kid }

// TokenOptions shape a hand-made ID token; zero values mean "correct".
type TokenOptions struct {
	Issuer    string
	Audience  string
	Expiry    time.Time
	NotBefore time.Time
	Key       *rsa.PrivateKey // sign with another key...
	Kid       string          // ...and/or name another key id
}

// IDToken returns an ID token for u, signed with the current key unless
// opts say otherwise.
func (p *Provider) IDToken(u User, opts TokenOptions) (string, error) {
	p.mu.Lock()
	key, kid, ttl := p.key, p.kid, p.ttl
	p.mu.Unlock()
	now := time.Now()
	claims := map[string]any{
		"iss": p.URL, "aud": p.ClientID, "sub": u.Subject, "iat": now.Unix(), "exp": now.Add(ttl).Unix(),
		"preferred_username": u.Name, "email": u.Email, "groups": u.Groups,
	}
	if opts.Issuer != "" {
		claims["iss"] = opts.Issuer
	}
	if opts.Audience != "" {
		claims["aud"] = opts.Audience
	}
	if !opts.Expiry.IsZero() {
		claims["exp"] = opts.Expiry.Unix()
	}
	if !opts.NotBefore.IsZero() {
		claims["nbf"] = opts.NotBefore.Unix()
	}
	if opts.Key != nil {
		key = opts.Key
	}
	if opts.Kid != "" {
		kid = opts.Kid
	}
	return sign(key, kid, claims)
}

func sign(key *rsa.PrivateKey, kid string, claims map[string]any) (string, error) {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid})
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return input + "." + enc.EncodeToString(sig), nil
}

func (p *Provider) isDown(w http.ResponseWriter) bool {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		http.Error(w, "issuer down", http.StatusServiceUnavailable)
	}
	return down
}

func (p *Provider) discovery(w http.ResponseWriter, _ *http.Request) {
	if p.isDown(w) {
		return
	}
	writeJSON(w, 200, map[string]any{
		"issuer":                                p.URL,
		"authorization_endpoint":                p.URL + "/authorize",
		"token_endpoint":                        p.URL + "/token",
		"device_authorization_endpoint":         p.URL + "/device",
		"jwks_uri":                              p.URL + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported":      []string{"S256"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"},
	})
}

func (p *Provider) jwks(w http.ResponseWriter, _ *http.Request) {
	if p.isDown(w) {
		return
	}
	p.mu.Lock()
	pub, kid := p.key.PublicKey, p.kid
	p.mu.Unlock()
	enc := base64.RawURLEncoding
	writeJSON(w, 200, map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
		"n": enc.EncodeToString(pub.N.Bytes()), "e": enc.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}

// authorize plays the IdP's login page: the user is already "signed in",
// so it redirects straight back with a code.
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	if p.isDown(w) {
		return
	}
	q := r.URL.Query()
	redirect := q.Get("redirect_uri")
	ru, err := url.Parse(redirect)
	if err != nil || ru.Scheme != "http" || ru.Hostname() != "127.0.0.1" {
		http.Error(w, "redirect_uri must be a loopback http URL", 400)
		return
	}
	if q.Get("client_id") != p.ClientID || q.Get("response_type") != "code" {
		http.Error(w, "unknown client or response type", 400)
		return
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		http.Error(w, "PKCE with S256 is required", 400)
		return
	}
	code := randString()
	p.mu.Lock()
	p.codes[code] = pendingCode{user: p.user, challenge: q.Get("code_challenge"), redirect: redirect, nonce: q.Get("nonce")}
	p.mu.Unlock()
	v := ru.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	ru.RawQuery = v.Encode()
	http.Redirect(w, r, ru.String(), http.StatusFound)
}

func (p *Provider) deviceAuth(w http.ResponseWriter, r *http.Request) {
	if p.isDown(w) {
		return
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil || r.PostForm.Get("client_id") != p.ClientID {
		oauthError(w, "invalid_client")
		return
	}
	dc, uc := randString(), userCode()
	p.mu.Lock()
	p.devices[dc] = &device{userCode: uc}
	p.byUser[uc] = dc
	p.mu.Unlock()
	writeJSON(w, 200, map[string]any{
		"device_code": dc, "user_code": uc, "verification_uri": p.URL + "/device/approve",
		"verification_uri_complete": p.URL + "/device/approve?user_code=" + uc, "expires_in": 300, "interval": 1,
	})
}

// deviceApprove is the page a person opens on another device: a POST with
// user_code approves (deny=1 denies) as the current user.
func (p *Provider) deviceApprove(w http.ResponseWriter, r *http.Request) {
	if p.isDown(w) {
		return
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		http.Error(w, "POST user_code", 400)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.devices[p.byUser[r.PostForm.Get("user_code")]]
	if d == nil {
		http.Error(w, "unknown user code", 404)
		return
	}
	if r.PostForm.Get("deny") != "" {
		d.denied = true
	} else {
		u := p.user
		if name := r.PostForm.Get("login"); name != "" {
			var ok bool
			if u, ok = p.others[name]; !ok {
				http.Error(w, "unknown login "+name, 404)
				return
			}
		}
		d.approved = &u
	}
	_, _ = w.Write([]byte("ok\n"))
}

func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	if p.isDown(w) {
		return
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthError(w, "invalid_request")
		return
	}
	f := r.PostForm
	clientID := f.Get("client_id")
	if id, _, ok := r.BasicAuth(); ok {
		clientID = id
	}
	if clientID != p.ClientID {
		oauthError(w, "invalid_client")
		return
	}
	var u User
	switch f.Get("grant_type") {
	case "authorization_code":
		p.mu.Lock()
		pc, ok := p.codes[f.Get("code")]
		delete(p.codes, f.Get("code"))
		p.mu.Unlock()
		if !ok || pc.redirect != f.Get("redirect_uri") {
			oauthError(w, "invalid_grant")
			return
		}
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != pc.challenge {
			oauthError(w, "invalid_grant")
			return
		}
		u = pc.user
	case "refresh_token":
		p.mu.Lock()
		ru, ok := p.refresh[f.Get("refresh_token")]
		bad := p.revoked[f.Get("refresh_token")]
		p.mu.Unlock()
		if !ok || bad {
			oauthError(w, "invalid_grant")
			return
		}
		u = ru
	case "urn:ietf:params:oauth:grant-type:device_code":
		p.mu.Lock()
		d := p.devices[f.Get("device_code")]
		p.mu.Unlock()
		switch {
		case d == nil:
			oauthError(w, "invalid_grant")
			return
		case d.denied:
			oauthError(w, "access_denied")
			return
		case d.approved == nil:
			oauthError(w, "authorization_pending")
			return
		}
		u = *d.approved
		p.mu.Lock()
		delete(p.devices, f.Get("device_code"))
		p.mu.Unlock()
	default:
		oauthError(w, "unsupported_grant_type")
		return
	}
	idt, err := p.IDToken(u, TokenOptions{})
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	rt := f.Get("refresh_token")
	p.mu.Lock()
	if rt == "" {
		rt = randString()
		p.refresh[rt] = u
	}
	ttl := p.ttl
	p.mu.Unlock()
	writeJSON(w, 200, map[string]any{"access_token": randString(), "token_type": "Bearer",
		"expires_in": int(ttl.Seconds()), "id_token": idt, "refresh_token": rt})
}

func oauthError(w http.ResponseWriter, code string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// userCode is what a person types: 8 letters without vowels (RFC 8628 §6.1).
func userCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(errors.New("oidctest: no randomness"))
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

func randString() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(errors.New("oidctest: no randomness"))
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}
