package policy

import (
	"fmt"
	"sync/atomic"
)

// Store holds the policy in force. Sessions read it on every decision, so
// a reload applies to live sessions at their next statement without
// dropping them.
type Store struct {
	path string
	cur  atomic.Pointer[Policy]
}

// NewStore loads the policy at path (the built-in defaults when empty).
func NewStore(path string) (*Store, error) {
	s := &Store{path: path}
	p := Default()
	if path != "" {
		var err error
		if p, err = Load(path); err != nil {
			return nil, err
		}
	}
	s.cur.Store(p)
	return s, nil
}

// Policy is the policy in force.
func (s *Store) Policy() *Policy { return s.cur.Load() }

// Reload reads the file again. A file that does not load is reported and
// the policy in force stays.
func (s *Store) Reload() error {
	if s.path == "" {
		return nil
	}
	p, err := Load(s.path)
	if err != nil {
		return fmt.Errorf("reload policy (the previous policy stays in force): %w", err)
	}
	s.cur.Store(p)
	return nil
}
