package pgcred

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// HostIDFile is the file in the daemon's state directory that keeps the
// random part of its host id across restarts.
const HostIDFile = "host-id"

var hostIDRE = regexp.MustCompile(`^[a-z0-9]{8,64}$`)

// LoadOrCreateHostID returns the id that tags the roles this daemon creates,
// so that its start-up sweep drops its own leftovers and never another
// machine's live roles (many workstations share one admin and prefix).
//
// The id mixes a random value kept in stateDir/host-id (created on first
// use) with /etc/machine-id when there is one: a VM image cloned after the
// daemon's first run carries the same state file, but systemd gives each
// clone a machine-id of its own on first boot. machineIDFile "" means
// /etc/machine-id. The machine id itself never leaves the host: only a hash
// of it lands in role comments.
func LoadOrCreateHostID(stateDir, machineIDFile string) (string, error) {
	if machineIDFile == "" {
		machineIDFile = "/etc/machine-id"
	}
	path := filepath.Join(stateDir, HostIDFile)
	seed, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		seed, err = createHostSeed(stateDir, path)
		if err != nil {
			return "", err
		}
	case err != nil:
		return "", fmt.Errorf("read host id %s: %w", path, err)
	}
	s := strings.TrimSpace(string(seed))
	if !hostIDRE.MatchString(s) {
		return "", fmt.Errorf("host id file %s holds %d bytes that are not a host id (delete it to make a new one; roles of the old id are then swept once their VALID UNTIL passes)", path, len(seed))
	}
	h := sha256.New()
	h.Write([]byte("airlock host id\x00" + s + "\x00"))
	if mid, err := os.ReadFile(machineIDFile); err == nil {
		h.Write([]byte(strings.TrimSpace(string(mid))))
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

func createHostSeed(stateDir, path string) ([]byte, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory for the host id: %w", err)
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	seed := []byte(hex.EncodeToString(b[:]) + "\n")
	// Written aside and linked into place: two daemons starting at once (or a
	// crash mid-write) never leave a torn or differing id behind.
	tmp, err := os.CreateTemp(stateDir, ".host-id-*")
	if err != nil {
		return nil, fmt.Errorf("write host id: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(seed); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write host id: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write host id: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("write host id: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return os.ReadFile(path) // another start won the race: use its id
		}
		return nil, fmt.Errorf("write host id %s: %w", path, err)
	}
	return seed, nil
}
