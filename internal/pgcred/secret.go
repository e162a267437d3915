package pgcred

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// maxSecretFile bounds what ReadSecretFile reads: a secret is a line, not a
// file full of data.
const maxSecretFile = 64 << 10

// ReadSecretFile reads a secret (a password) from path. The file must be a
// regular file owned by root and readable by nobody else (mode 0600 or 0400):
// anything else is refused with an error naming the file and the fix. A single
// trailing newline (\n or \r\n) is trimmed; an empty secret is refused. The
// error never contains the file's content.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("secret file %s: %w", path, err)
	}
	defer f.Close()
	// Check the opened file, not the path, so that a swap between the check
	// and the read cannot slip a different file in.
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("secret file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("secret file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("secret file %s has mode %04o: it must not be readable by group or others (fix: chmod 600 %s)",
			path, perm, path)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("secret file %s: cannot read its owner", path)
	}
	if st.Uid != 0 {
		return "", fmt.Errorf("secret file %s is owned by uid %d, not root (fix: chown root:root %s)", path, st.Uid, path)
	}
	if fi.Size() > maxSecretFile {
		return "", fmt.Errorf("secret file %s is %d bytes: too large for a secret", path, fi.Size())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("secret file %s: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("secret file %s: too large for a secret", path)
	}
	s := string(b)
	s = strings.TrimSuffix(s, "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}
