package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// Change is an identity fact for the audit trail: a login, logout,
// renewal, or an identity lost by a live session. It never holds a token.
type Change struct {
	Action  string // login, logout, refresh, lost
	UID     uint32 // whose identity
	By      uint32 // who asked (differs from UID for root's --for-uid)
	Person  Person
	Outcome string // ok, failed
	Error   string
}

// Service binds verified OIDC identities to local uids: logins arrive over
// the control socket with the caller's uid from SO_PEERCRED, and every new
// session asks for its uid's person.
type Service struct {
	issuers       *Issuers
	store         *Store
	refreshBefore time.Duration
	grace         time.Duration
	client        *http.Client
	log           *slog.Logger
	audit         func(Change)
	now           func() time.Time

	mu      sync.Mutex
	byUID   map[uint32]*Record // decrypted cache of the store
	refresh map[uint32]*sync.Mutex
}

// ServiceOptions configures a Service.
type ServiceOptions struct {
	Issuers       *Issuers
	Store         *Store
	RefreshBefore time.Duration // default 5m
	ExpiryGrace   time.Duration // default 1m
	HTTPClient    *http.Client
	Logger        *slog.Logger
	Audit         func(Change)
	Now           func() time.Time
}

// NewService returns a Service.
func NewService(o ServiceOptions) *Service {
	s := &Service{issuers: o.Issuers, store: o.Store, refreshBefore: o.RefreshBefore, grace: o.ExpiryGrace,
		client: o.HTTPClient, log: o.Logger, audit: o.Audit, now: o.Now,
		byUID: map[uint32]*Record{}, refresh: map[uint32]*sync.Mutex{}}
	if s.refreshBefore <= 0 {
		s.refreshBefore = 5 * time.Minute
	}
	if s.grace <= 0 {
		s.grace = time.Minute
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 10 * time.Second}
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.audit == nil {
		s.audit = func(Change) {}
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Issuers returns the trusted issuers.
func (s *Service) Issuers() *Issuers { return s.issuers }

// Login verifies idToken and binds it (with refreshToken, if any) to uid.
// by is the caller's uid as the kernel reported it; the caller of Login
// has already checked that by may act for uid.
func (s *Service) Login(ctx context.Context, uid, by uint32, idToken, refreshToken string) (*Record, error) {
	v, err := s.issuers.Verify(ctx, idToken)
	if err != nil {
		s.audit(Change{Action: "login", UID: uid, By: by, Outcome: "failed", Error: err.Error()})
		return nil, err
	}
	if v.Issuer.Config.Kind == "workload" && refreshToken != "" {
		refreshToken = "" // workload tokens are renewed by the pipeline, not by us
	}
	p := v.Person
	p.UID = uid
	rec := &Record{UID: uid, IDToken: idToken, RefreshToken: refreshToken, Person: p,
		Expiry: v.Expiry, VerifiedAt: s.now(), LoggedInBy: by}
	if err := s.store.Save(rec); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.byUID[uid] = rec
	s.mu.Unlock()
	s.audit(Change{Action: "login", UID: uid, By: by, Person: p, Outcome: "ok"})
	s.log.Info("identity: logged in", "uid", uid, "by", by, "person", p.Name, "issuer", p.Issuer, "subject", p.Subject, "expires", v.Expiry)
	return rec, nil
}

// Logout forgets uid's identity.
func (s *Service) Logout(uid, by uint32) error {
	s.mu.Lock()
	rec := s.byUID[uid]
	delete(s.byUID, uid)
	s.mu.Unlock()
	if err := s.store.Delete(uid); err != nil {
		return err
	}
	var p Person
	if rec != nil {
		p = rec.Person
	}
	s.audit(Change{Action: "logout", UID: uid, By: by, Person: p, Outcome: "ok"})
	return nil
}

func (s *Service) record(uid uint32) (*Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.byUID[uid]; ok {
		return r, nil
	}
	r, err := s.store.Load(uid)
	if err != nil {
		return nil, err
	}
	if r != nil {
		s.byUID[uid] = r
	}
	return r, nil
}

// Current returns uid's record after verification (renewing it first if
// due), or why there is no usable identity.
func (s *Service) Current(ctx context.Context, uid uint32) (*Record, error) {
	rec, err := s.record(uid)
	if err != nil {
		return nil, &Problem{Code: "not_logged_in", Msg: err.Error()}
	}
	if rec == nil {
		return nil, &Problem{Code: "not_logged_in", Msg: fmt.Sprintf(
			"no Airlock identity for uid %d%s: %s", uid, localName(uid), loginHint)}
	}
	if rec.RefreshToken != "" && !s.now().Before(s.renewAt(rec)) {
		if r2, err := s.Refresh(ctx, uid); err == nil {
			rec = r2
		} else {
			s.log.Warn("identity: renewal failed", "uid", uid, "person", rec.Person.Name, "err", err)
		}
	}
	v, err := s.issuers.Verify(ctx, rec.IDToken)
	if err != nil {
		// An issuer that cannot be reached does not take away an identity
		// this daemon verified and that has not expired.
		if IsProblem(err, "unreachable") && s.now().Before(rec.Expiry) && !rec.VerifiedAt.IsZero() {
			s.log.Warn("identity: issuer unreachable, using the identity verified at login", "uid", uid,
				"person", rec.Person.Name, "verified_at", rec.VerifiedAt, "err", err)
			return rec, nil
		}
		return nil, err
	}
	if v.Person.Subject != rec.Person.Subject || v.Person.Issuer != rec.Person.Issuer {
		return nil, &Problem{Code: "malformed", Msg: "stored identity does not match its token: " + loginHint}
	}
	return rec, nil
}

// Resolve implements the front door's People: the verified person of uid.
func (s *Service) Resolve(ctx context.Context, uid uint32) (Person, error) {
	rec, err := s.Current(ctx, uid)
	if err != nil {
		return Person{}, err
	}
	return rec.Person, nil
}

// Refresh renews uid's identity from its refresh token. A refused refresh
// token (revoked, expired) is dropped so it is not tried again.
func (s *Service) Refresh(ctx context.Context, uid uint32) (*Record, error) {
	s.mu.Lock()
	lk := s.refresh[uid]
	if lk == nil {
		lk = &sync.Mutex{}
		s.refresh[uid] = lk
	}
	s.mu.Unlock()
	lk.Lock()
	defer lk.Unlock()

	rec, err := s.record(uid)
	if err != nil || rec == nil {
		return nil, &Problem{Code: "not_logged_in", Msg: fmt.Sprintf("no Airlock identity for uid %d: %s", uid, loginHint)}
	}
	if s.now().Before(s.renewAt(rec)) {
		return rec, nil // someone else renewed it meanwhile
	}
	if rec.RefreshToken == "" {
		return nil, &Problem{Code: "refresh_failed", Msg: fmt.Sprintf("your identity cannot be renewed (no refresh token): %s", loginHint)}
	}
	fail := func(err error) (*Record, error) {
		s.audit(Change{Action: "refresh", UID: uid, By: 0, Person: rec.Person, Outcome: "failed", Error: err.Error()})
		return nil, err
	}
	is, ok := s.issuers.byURL(rec.Person.Issuer)
	if !ok {
		return fail(&Problem{Code: "issuer", Msg: fmt.Sprintf("issuer %s is no longer trusted: %s", rec.Person.Issuer, loginHint)})
	}
	prov, err := is.Provider(ctx)
	if err != nil {
		return fail(err)
	}
	oc := &oauth2.Config{ClientID: is.Config.ClientID, Endpoint: prov.Endpoint(), Scopes: is.Config.Scopes}
	tctx := context.WithValue(ctx, oauth2.HTTPClient, s.client)
	tok, err := oc.TokenSource(tctx, &oauth2.Token{RefreshToken: rec.RefreshToken, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			next := *rec
			next.RefreshToken = ""
			_ = s.store.Save(&next)
			s.mu.Lock()
			s.byUID[uid] = &next
			s.mu.Unlock()
			return fail(&Problem{Code: "refresh_failed", Msg: fmt.Sprintf(
				"issuer %s refused to renew your identity (refresh token revoked or expired): %s", is.Config.Name, loginHint)})
		}
		return fail(&Problem{Code: "refresh_failed", Msg: fmt.Sprintf("renewing your identity at %s failed: %s", is.Config.Name, scrubToken(err.Error(), rec.RefreshToken))})
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return fail(&Problem{Code: "refresh_failed", Msg: fmt.Sprintf("issuer %s renewed without a new ID token: %s", is.Config.Name, loginHint)})
	}
	v, err := s.issuers.Verify(ctx, raw)
	if err != nil {
		return fail(err)
	}
	if v.Person.Subject != rec.Person.Subject || v.Person.Issuer != rec.Person.Issuer {
		return fail(&Problem{Code: "refresh_failed", Msg: "renewal returned another person: " + loginHint})
	}
	next := *rec
	next.IDToken, next.Expiry, next.VerifiedAt = raw, v.Expiry, s.now()
	next.Person = v.Person
	next.Person.UID = uid
	if tok.RefreshToken != "" {
		next.RefreshToken = tok.RefreshToken
	}
	if err := s.store.Save(&next); err != nil {
		return fail(err)
	}
	s.mu.Lock()
	s.byUID[uid] = &next
	s.mu.Unlock()
	s.audit(Change{Action: "refresh", UID: uid, Person: next.Person, Outcome: "ok"})
	s.log.Info("identity: renewed", "uid", uid, "person", next.Person.Name, "expires", next.Expiry)
	return &next, nil
}

// renewAt is when rec is due for renewal: refresh_before ahead of expiry,
// but no earlier than halfway through the token's life, so that issuers
// with short-lived tokens are not asked for a renewal on every session.
func (s *Service) renewAt(rec *Record) time.Time {
	ahead := s.refreshBefore
	if life := rec.Expiry.Sub(rec.VerifiedAt); life > 0 && life/2 < ahead {
		ahead = life / 2
	}
	return rec.Expiry.Add(-ahead)
}

// ErrLost ends a live session whose person's identity expired and could
// not be renewed within the grace.
var ErrLost = errors.New("identity expired and could not be renewed")

// Keep watches a live session's identity: it renews it before expiry and
// returns (wrapping ErrLost, with why) once it has been expired for the
// grace without a renewal or a new login of the same person. It returns
// nil when ctx is done.
func (s *Service) Keep(ctx context.Context, uid uint32, p Person) error {
	var lostSince time.Time
	var why string
	for {
		rec, _ := s.record(uid)
		now := s.now()
		same := rec != nil && rec.Person.Issuer == p.Issuer && rec.Person.Subject == p.Subject
		var wait time.Duration
		switch {
		case same && now.Before(s.renewAt(rec)):
			lostSince = time.Time{}
			wait = s.renewAt(rec).Sub(now)
		case same && rec.RefreshToken != "":
			if _, err := s.Refresh(ctx, uid); err == nil {
				lostSince = time.Time{}
				continue
			} else {
				why = err.Error()
			}
			fallthrough
		default:
			if same && now.Before(rec.Expiry) {
				wait = rec.Expiry.Sub(now)
				break
			}
			if lostSince.IsZero() {
				lostSince = now
				if why == "" {
					why = "no valid identity for this person any more: " + loginHint
				}
			}
			if now.Sub(lostSince) >= s.grace {
				s.audit(Change{Action: "lost", UID: uid, Person: p, Outcome: "failed", Error: why})
				return fmt.Errorf("%w: %s", ErrLost, why)
			}
			// Poll within the grace: a new `airlock login` saves the session.
			wait = min(s.grace-now.Sub(lostSince), time.Second)
		}
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func localName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return " (" + u.Username + ")"
	}
	return ""
}

func scrubToken(msg, tok string) string {
	if tok != "" {
		msg = strings.ReplaceAll(msg, tok, "********")
	}
	return msg
}
