package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// The head file is the daemon's durable note of the newest record the
// store has: journal segments are released against it, and it is how the
// daemon notices records removed from the store. It is rewritten after
// every shipment. Replacing it through a new file and a rename, as it was,
// made ext4 allocate an inode per shipment, which cost several
// milliseconds of CPU each here (its search for a free inode steps over
// recently deleted ones): more than the shipment's store transaction. So
// it is two fixed slots of one file, rewritten in place in turn, each
// with a checksum: a write cut short by a crash spoils only the slot being
// written, and the other still holds the head before it (which the store,
// read at start, brings up to date).

// headSlot is a slot's size: the JSON, padded with spaces, then the
// CRC-32 of that in hex. It fits a disk sector.
const (
	headSlot    = 512
	headPayload = headSlot - 8
)

// headNote writes the head file. Only the shipper uses it.
type headNote struct {
	path string
	gen  uint64 // of the newest slot
	next int    // slot to write next
}

// readHead reads the head file at path: the valid slot of the highest
// generation, or a head file of the previous layout (one JSON object), or
// nothing if there is no file.
func readHead(path string) (headFile, *headNote, error) {
	h := &headNote{path: path, next: 0}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return headFile{}, h, nil
	}
	if err != nil {
		return headFile{}, nil, err
	}
	if unwritten(b) {
		// The first write creates the file, then writes its slot: a
		// kill between the two (or a machine crash before the slot's
		// data reached the disk) leaves it empty or zeroed, which no
		// finished write does. That is the state before the first head:
		// the journal still holds every record (segments are released
		// only against a written head) and the store is read at start.
		return headFile{}, h, nil
	}
	best, found := headFile{}, -1
	for i := 0; i < 2 && len(b) >= (i+1)*headSlot; i++ {
		hf, ok := parseHeadSlot(b[i*headSlot : (i+1)*headSlot])
		if ok && (found < 0 || hf.Gen > best.Gen) {
			best, found = hf, i
		}
	}
	if found >= 0 {
		h.gen, h.next = best.Gen, 1-found
		return best, h, nil
	}
	// The previous layout: one JSON object. Slot 1 is written first, so
	// that it stays readable until a slot holds the head.
	var hf headFile
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&hf); err != nil {
		return headFile{}, nil, fmt.Errorf("%s holds no readable head (neither slot checks out): %w", path, err)
	}
	h.next = 1
	return hf, h, nil
}

// unwritten says b, a head file's content, is empty or all zero bytes.
func unwritten(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func parseHeadSlot(s []byte) (headFile, bool) {
	var sum [4]byte
	if _, err := hex.Decode(sum[:], s[headPayload:]); err != nil {
		return headFile{}, false
	}
	c := crc32.ChecksumIEEE(s[:headPayload])
	if sum != [4]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)} {
		return headFile{}, false
	}
	var hf headFile
	if json.Unmarshal(bytes.TrimRight(s[:headPayload], " "), &hf) != nil {
		return headFile{}, false
	}
	return hf, true
}

// write notes hf durably in the next slot.
func (h *headNote) write(hf headFile) error {
	hf.Gen = h.gen + 1
	p, err := json.Marshal(hf)
	if err != nil {
		return err
	}
	if len(p) > headPayload {
		return fmt.Errorf("audit head of %d bytes does not fit its slot", len(p))
	}
	var s [headSlot]byte
	copy(s[:], p)
	for i := len(p); i < headPayload; i++ {
		s[i] = ' '
	}
	c := crc32.ChecksumIEEE(s[:headPayload])
	hex.Encode(s[headPayload:], []byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
	_, statErr := os.Stat(h.path)
	f, err := os.OpenFile(h.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(s[:], int64(h.next*headSlot)); err != nil {
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
	if statErr != nil {
		// A new file is durable once its directory entry is.
		if d, err := os.Open(filepath.Dir(h.path)); err == nil {
			_ = d.Sync()
			_ = d.Close()
		}
	}
	h.gen, h.next = hf.Gen, 1-h.next
	return nil
}
