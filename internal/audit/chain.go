package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// genesis is the prev_hash of a daemon's first record.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

// hashRecord is the chain link: SHA-256 of the previous hash and the
// record's content. The seq is deliberately not hashed: a row's place is
// fixed by its predecessor's hash, so a row moved elsewhere still verifies
// on its own and is reported as reordered, not as edited.
func hashRecord(prev string, r *Record) string {
	var raw [sha256.Size]byte
	// As hex.DecodeString would: what decodes before any bad digit.
	var pb []byte
	if hex.DecodedLen(len(prev)) <= len(raw) {
		n, _ := hex.Decode(raw[:], []byte(prev))
		pb = raw[:n]
	} else {
		pb = make([]byte, hex.DecodedLen(len(prev)))
		n, _ := hex.Decode(pb, []byte(prev))
		pb = pb[:n]
	}
	sum := hashLink(pb, r)
	var out [2 * sha256.Size]byte
	hexSum(&out, &sum)
	return string(out[:])
}

// hashLink is hashRecord over the previous hash's bytes: verify's form,
// which allocates one buffer for a large record rather than a digest.
func hashLink(prev []byte, r *Record) [sha256.Size]byte {
	n := len(prev) + linkHeaderMax(r) + len(r.Data)
	if n <= linkJoined {
		return linkOnStack(prev, r)
	}
	b := appendLinkHeader(make([]byte, 0, n), prev, r)
	return sha256.Sum256(append(b, r.Data...))
}

// linkJoined is the largest hash input hashed from one buffer on the
// stack; a larger record streams through the linker's reused digest.
const linkJoined = 512

// linker computes chain links. The shipper keeps one: a record's link is
// the SHA-256 of its header and data, and a record with a result sample
// (a kilobyte or more) used to be copied into a buffer allocated for it
// before hashing; streamed, it is hashed where it lies.
type linker struct {
	d   hash.Hash // made on first use
	hdr []byte
	sum []byte
}

// link is the link of r after the previous hash prev (its bytes).
func (l *linker) link(prev []byte, r *Record) [sha256.Size]byte {
	if len(prev)+linkHeaderMax(r)+len(r.Data) <= linkJoined {
		return linkOnStack(prev, r)
	}
	if l.d == nil {
		l.d = sha256.New()
	}
	l.hdr = appendLinkHeader(l.hdr[:0], prev, r)
	l.d.Reset()
	l.d.Write(l.hdr)
	l.d.Write(r.Data)
	l.sum = l.d.Sum(l.sum[:0])
	return [sha256.Size]byte(l.sum)
}

// linkOnStack is the link of a small record: one Sum256 over a stack
// buffer, a little cheaper than the streaming digest's calls through an
// interface and its partial blocks.
func linkOnStack(prev []byte, r *Record) [sha256.Size]byte {
	var stack [linkJoined]byte
	b := appendLinkHeader(stack[:0], prev, r)
	return sha256.Sum256(append(b, r.Data...))
}

// linkHeaderMax bounds what appendLinkHeader writes, but for prev.
func linkHeaderMax(r *Record) int {
	return len(Schema) + len(r.Daemon) + len(r.Kind) + len(r.Session) + 2*20 + 6
}

// appendLinkHeader appends what the chain hashes before a record's data
// (docs/AUDIT.md, Tamper evidence). The time's digits are the journal
// frame's when the record came from one: not formatted again.
func appendLinkHeader(b, prev []byte, r *Record) []byte {
	b = append(b, prev...)
	b = append(b, Schema+"\n"...)
	b = append(b, r.Daemon...)
	b = append(b, '\n')
	if r.frame.ns != nil {
		b = append(b, r.frame.ns...)
	} else {
		b = strconv.AppendInt(b, r.Time.UnixNano(), 10)
	}
	b = append(b, '\n')
	b = append(b, r.Kind...)
	b = append(b, '\n')
	b = append(b, r.Session...)
	b = append(b, '\n')
	b = strconv.AppendInt(b, int64(len(r.Data)), 10)
	return append(b, '\n')
}

// chainRecords links recs (in order) after prev, setting each one's
// PrevHash and Hash as hashRecord would, and returns the last hash. The
// shipper's form: the previous hash is carried as bytes rather than
// decoded from hex for every record, and the batch's hex hashes share one
// string instead of an allocation each.
func chainRecords(prev string, recs []Record) string {
	// A buffer of their own, which nothing writes again.
	var l linker
	last, _ := l.chainInto(nil, prev, recs)
	return last
}

// chainInto is chainRecords with the hex hashes written into buf (grown
// if needed, and returned): the hashes set in recs, and the one returned,
// are strings over buf, valid until buf is written again. The shipper
// reuses buf from batch to batch, copying only the head it keeps.
func (l *linker) chainInto(buf []byte, prev string, recs []Record) (string, []byte) {
	if len(recs) == 0 {
		return prev, buf[:0]
	}
	var raw [sha256.Size]byte
	link := raw[:]
	hexPrev := true // prev is what the first record of the loop below links to
	if n := hex.DecodedLen(len(prev)); n == len(raw) {
		k, _ := hex.Decode(raw[:], []byte(prev))
		link, hexPrev = raw[:k], k == len(raw)
	} else {
		// Not a hash this daemon wrote (genesis and its own hashes are
		// 64 hex digits): the general form decodes it.
		recs[0].PrevHash = prev
		recs[0].Hash = hashRecord(prev, &recs[0])
		prev = recs[0].Hash
		n, _ := hex.Decode(raw[:], []byte(prev))
		link, recs = raw[:n], recs[1:]
	}
	const hx = 2 * sha256.Size
	if need := len(recs) * hx; cap(buf) < need {
		buf = make([]byte, need)
	}
	text := buf[:len(recs)*hx]
	for i := range recs {
		sum := l.link(link, &recs[i])
		hexSum((*[hx]byte)(text[i*hx:]), &sum)
		raw, link = sum, raw[:]
	}
	all := unsafe.String(unsafe.SliceData(text), len(text))
	for i := range recs {
		recs[i].PrevHash = prev
		recs[i].Hash = all[i*hx : (i+1)*hx]
		recs[i].hexLinks = i > 0 || hexPrev
		prev = recs[i].Hash
	}
	return prev, text
}

// hexPairs holds each byte's two lower-case hex digits.
var hexPairs = func() (t [256][2]byte) {
	const digits = "0123456789abcdef"
	for i := range t {
		t[i] = [2]byte{digits[i>>4], digits[i&15]}
	}
	return t
}()

// hexSum writes sum's hex digits into dst, as hex.Encode would. hex.Encode's
// loop (two table loads and bounds checks a byte) was most of chainInto's
// own time in the shipper's profile (~3% of it, beside SHA-256's 15%); a
// pair a byte between fixed-size arrays needs no checks.
func hexSum(dst *[2 * sha256.Size]byte, sum *[sha256.Size]byte) {
	for i, v := range sum {
		p := hexPairs[v]
		dst[2*i], dst[2*i+1] = p[0], p[1]
	}
}

// Checkpoint is a daemon's signature over the head of its chain.
type Checkpoint struct {
	Daemon    string    `json:"daemon"`
	Seq       int64     `json:"seq"`
	Hash      string    `json:"hash"`
	Time      time.Time `json:"time"`
	KeyID     string    `json:"key_id"`
	Signature string    `json:"signature"`
}

func (c *Checkpoint) message() []byte {
	return []byte(Schema + " checkpoint\n" + c.Daemon + "\n" + strconv.FormatInt(c.Seq, 10) + "\n" + c.Hash + "\n" +
		strconv.FormatInt(c.Time.UnixNano(), 10))
}

// Key is a daemon's signing key as the store keeps it (public half).
type Key struct {
	Daemon      string    `json:"daemon"`
	KeyID       string    `json:"key_id"`
	PublicKey   string    `json:"public_key"`
	Seq         int64     `json:"seq"` // first record seq it signs for
	Time        time.Time `json:"time"`
	PreviousKey string    `json:"previous_key,omitempty"`
	Signature   string    `json:"signature,omitempty"` // by PreviousKey over keyMessage
}

func keyMessage(daemon, keyID, pub string) []byte {
	return []byte(Schema + " key\n" + daemon + "\n" + keyID + "\n" + pub)
}

func keyIDOf(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

func (k *Key) public() (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(k.PublicKey)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("key %s: malformed public key", k.KeyID)
	}
	return ed25519.PublicKey(b), nil
}

// signer holds the daemon's private key, kept in the state dir readable by
// root only.
type signer struct {
	path string
	priv ed25519.PrivateKey
	id   string
}

func (s *signer) pubB64() string {
	return base64.StdEncoding.EncodeToString(s.priv.Public().(ed25519.PublicKey))
}

// loadSigner reads the key at path, or creates one; created reports which.
func loadSigner(path string) (*signer, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		s, err := newSigner(path)
		return s, true, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("read audit signing key: %w", err)
	}
	if err := checkPrivate(path); err != nil {
		return nil, false, err
	}
	seed, err := base64.StdEncoding.DecodeString(string(trimSpace(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, false, fmt.Errorf("audit signing key %s is malformed (move it aside to make a new one; verification then records a key change without a signature)", path)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return &signer{path: path, priv: priv, id: keyIDOf(priv.Public().(ed25519.PublicKey))}, false, nil
}

func newSigner(path string) (*signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate audit signing key: %w", err)
	}
	if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write audit signing key: %w", err)
	}
	return &signer{path: path, priv: priv, id: keyIDOf(priv.Public().(ed25519.PublicKey))}, nil
}

func (s *signer) sign(msg []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(s.priv, msg))
}

func verifySig(pub ed25519.PublicKey, msg []byte, sig string) bool {
	b, err := base64.StdEncoding.DecodeString(sig)
	return err == nil && ed25519.Verify(pub, msg, b)
}

// checkPrivate refuses a key file others could read or replace.
func checkPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != uint32(os.Geteuid()) || fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s must be owned by the daemon's user and readable by nobody else (chown root %s; chmod 600 %s)", path, path, path)
	}
	return nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b, 0o600)
}

func readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, json.Unmarshal(b, v)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
