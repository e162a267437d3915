package pgcred

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// scramIterations is the PBKDF2 iteration count of the verifiers Acquire
// makes. Iterations only slow down guessing a password from a stolen
// verifier or a recorded SCRAM exchange; they matter for passwords people
// pick, not for 32 random bytes (2^256 guesses stay out of reach at any
// count). They do cost every login: the client computes PBKDF2 with the
// stored count to prove it knows the password (the server only checks a
// hash), and Acquire computes it once more to build the verifier. At
// PostgreSQL's default of 4096 that was about 3-4 ms of CPU per session on a
// small VM, on the same cores as the server; 16 costs microseconds. 16
// rather than 1: no cost to speak of either way, and a count of 1 reads as
// an unstretched hash to anyone auditing pg_authid. PostgreSQL accepts any
// count of at least 1 in a verifier, pgx's SCRAM client likewise. (RFC 7677
// asks servers to announce at least 4096; a client that insisted would
// refuse these roles, but only Airlock's proxy logs in as them.)
const scramIterations = 16

// newPassword returns 32 random bytes, base64url-encoded (43 characters).
func newPassword() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("no randomness for a password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// scramVerifier computes the SCRAM-SHA-256 verifier PostgreSQL stores for
// password (the rolpassword format). Handing the server the verifier instead
// of the password keeps the password out of the server's statement logs,
// pg_stat_activity and any error that might echo the statement. A server
// whose pg_hba says md5 authenticates a SCRAM verifier with SCRAM.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("no randomness for a salt: %w", err)
	}
	return scramVerifierSalt(password, salt, scramIterations)
}

func scramVerifierSalt(password string, salt []byte, iter int) (string, error) {
	// The password is ASCII (base64url), so SASLprep leaves it unchanged.
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return "", err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, enc(salt), enc(storedKey[:]), enc(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
