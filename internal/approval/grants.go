package approval

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/internal/identity"
)

// Grant is approved just-in-time access of one person to one connection.
type Grant struct {
	ID         string `json:"id"`
	Connection string `json:"connection"`
	// The person: issuer and subject for an OIDC identity, else the local
	// account's name and uid.
	Issuer  string    `json:"issuer,omitempty"`
	Subject string    `json:"subject,omitempty"`
	Name    string    `json:"name"`
	UID     uint32    `json:"uid"`
	Expires time.Time `json:"expires"`
	By      string    `json:"by"`
	Reason  string    `json:"reason,omitempty"`
}

func (g Grant) matches(p identity.Person, connection string) bool {
	if g.Connection != connection {
		return false
	}
	if g.Subject != "" {
		return g.Subject == p.Subject && g.Issuer == p.Issuer
	}
	return p.Subject == "" && g.Name == p.Name && g.UID == p.UID
}

// GrantStore keeps grants, in a root-only JSON file when it has a path, so
// that they survive a daemon restart: a grant an approver gave is not lost
// because the daemon was upgraded. Expired grants are pruned on write.
type GrantStore struct {
	path string
	mu   sync.Mutex
	gs   []Grant
}

// MemoryGrants is a GrantStore that forgets on restart.
func MemoryGrants() *GrantStore { return &GrantStore{} }

// OpenGrants loads the grants file at path (missing: none).
func OpenGrants(path string) (*GrantStore, error) {
	s := &GrantStore{path: path}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create grants dir: %w", err)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read access grants: %w", err)
	}
	if err := json.Unmarshal(b, &s.gs); err != nil {
		return nil, fmt.Errorf("read access grants %s: %w (move the file away to start without grants)", path, err)
	}
	return s, nil
}

// Add saves g.
func (s *GrantStore) Add(g Grant) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.gs = slices.DeleteFunc(s.gs, func(o Grant) bool { return !o.Expires.After(now) })
	s.gs = append(s.gs, g)
	return s.save()
}

// Find returns the live grant of p on connection lasting longest.
func (s *GrantStore) Find(p identity.Person, connection string, now time.Time) (Grant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best Grant
	found := false
	for _, g := range s.gs {
		if g.matches(p, connection) && g.Expires.After(now) && (!found || g.Expires.After(best.Expires)) {
			best, found = g, true
		}
	}
	return best, found
}

// All returns the stored grants.
func (s *GrantStore) All() []Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gs)
}

func (s *GrantStore) save() error {
	if s.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(s.gs, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write access grants: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write access grants: %w", err)
	}
	return nil
}

// newID is a short random id people can type: 8 lowercase base32 letters.
func newID() string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("approval: no randomness: " + err.Error())
	}
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// GrantEnded is the cause that ends a live session when its grant
// expires; pgwire tells the client with it.
type GrantEnded struct {
	Connection string
	Expires    time.Time
}

func (e *GrantEnded) Error() string {
	return fmt.Sprintf("access grant to %s expired at %s", e.Connection, e.Expires.UTC().Format(time.RFC3339))
}

// EndReason implements session.Reasoner: the record says why the session
// ended in its fixed vocabulary.
func (e *GrantEnded) EndReason() string { return "grant_expired" }

// SessionEnd implements pgwire.SessionEnder.
func (e *GrantEnded) SessionEnd() (string, string) {
	return "57P01", fmt.Sprintf("Airlock: your access grant to %s expired at %s; run `airlock request %s --for 1h --reason \"…\"` to ask again",
		e.Connection, e.Expires.UTC().Format(time.RFC3339), e.Connection)
}
