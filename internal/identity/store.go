package identity

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Record is what the daemon keeps per uid. It holds secrets (the tokens):
// it is only ever written encrypted and never logged.
type Record struct {
	UID          uint32    `json:"uid"`
	IDToken      string    `json:"id_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Person       Person    `json:"person"`
	Expiry       time.Time `json:"expiry"`
	VerifiedAt   time.Time `json:"verified_at"`
	// LoggedInBy is the uid that handed the token over (root for
	// `airlock login --for-uid`).
	LoggedInBy uint32 `json:"logged_in_by"`
}

// Store keeps records under dir, one file per uid, sealed with AES-256-GCM
// under a key kept in the same root-only directory. The uid is the
// additional data, so a file renamed to another uid's name does not open.
type Store struct {
	dir  string
	aead cipher.AEAD
}

// OpenStore opens (creating) the store in dir; dir and the key must be
// root-only.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create identity store %s: %w", dir, err)
	}
	if err := rootOnly(dir, true); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, "store.key")
	key, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := io.ReadFull(rand.Reader, key); err != nil {
			return nil, fmt.Errorf("create identity store key: %w", err)
		}
		if err := writeFileAtomic(keyPath, key); err != nil {
			return nil, fmt.Errorf("write identity store key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read identity store key: %w", err)
	}
	if err := rootOnly(keyPath, false); err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("identity store key %s is %d bytes, not 32: remove it (every stored login is then lost) and restart", keyPath, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Store{dir: dir, aead: aead}, nil
}

func rootOnly(path string, dir bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != uint32(os.Geteuid()) || fi.Mode().Perm()&0o077 != 0 || fi.IsDir() != dir || fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s must be owned by the daemon's user (root) and accessible by nobody else (chown root; chmod %s)", path, map[bool]string{true: "700", false: "600"}[dir])
	}
	return nil
}

func (s *Store) path(uid uint32) string {
	return filepath.Join(s.dir, strconv.FormatUint(uint64(uid), 10)+".tok")
}

// Load returns uid's record, or nil when there is none.
func (s *Store) Load(uid uint32) (*Record, error) {
	b, err := os.ReadFile(s.path(uid))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read stored identity of uid %d: %w", uid, err)
	}
	n := s.aead.NonceSize()
	if len(b) < n {
		return nil, fmt.Errorf("stored identity of uid %d is truncated", uid)
	}
	plain, err := s.aead.Open(nil, b[:n], b[n:], aad(uid))
	if err != nil {
		return nil, fmt.Errorf("stored identity of uid %d does not decrypt (tampered with, or not this uid's): run `airlock login`", uid)
	}
	var r Record
	if err := json.Unmarshal(plain, &r); err != nil {
		return nil, fmt.Errorf("stored identity of uid %d is unreadable: %w", uid, err)
	}
	if r.UID != uid {
		return nil, fmt.Errorf("stored identity file of uid %d belongs to uid %d", uid, r.UID)
	}
	return &r, nil
}

// Save seals and writes r.
func (s *Store) Save(r *Record) error {
	plain, err := json.Marshal(r)
	if err != nil {
		return err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return err
	}
	sealed := s.aead.Seal(nonce, nonce, plain, aad(r.UID))
	if err := writeFileAtomic(s.path(r.UID), sealed); err != nil {
		return fmt.Errorf("store identity of uid %d: %w", r.UID, err)
	}
	return nil
}

// Delete removes uid's record; no record is not an error.
func (s *Store) Delete(uid uint32) error {
	if err := os.Remove(s.path(uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stored identity of uid %d: %w", uid, err)
	}
	return nil
}

func aad(uid uint32) []byte {
	return []byte("airlock-identity uid=" + strconv.FormatUint(uint64(uid), 10))
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
