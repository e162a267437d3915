package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ring is where a record goes first: a file on tmpfs mapped shared, so
// that appending is a copy into memory, with no system call. The kernel
// keeps a MAP_SHARED mapping's pages when the process dies (kill -9, the
// OOM killer, a panic), and on tmpfs they are never written back, so
// stores into them never fault after the first touch (an ext4 mapping is
// write-protected again by every fsync: that made the mapped journal
// slower than write(2)). The journal's sync moves the ring's frames into
// the on-disk segments with one large write and fsyncs them on the commit
// interval, which keeps the power-loss bound; at start, the frames a
// killed predecessor left in the ring and not in the segments are moved
// into them, in order, before anything else is appended.
//
// Layout: a header page, then the ring. The frames in the ring are the
// journal's frames, byte for byte, and may wrap around its end, but for
// statements copied in raw (rawframe.go), which never wrap and are
// encoded as they move into the segments. head and
// tail count bytes since the ring was last emptied: head is advanced
// (atomically, after the frame is copied) once a frame is complete, tail
// once the frames before it are in a segment. So [tail, head) holds
// complete frames only, whenever the process dies.

const (
	ringHeader  = 4096
	ringDefault = 8 << 20
	ringMagic   = "AIRLRNG1"

	offSize = 8  // uint64: bytes of ring after the header
	offDev  = 16 // uint64: device of the journal folder
	offIno  = 24 // uint64: inode of the journal folder
	offHead = 32 // uint64
	offTail = 40 // uint64
)

type ring struct {
	path string
	f    *os.File // held open for its lock: one journal per ring
	mem  []byte   // the whole mapping
	buf  []byte   // mem[ringHeader:]
	size uint64
}

// errRingInUse is a ring another live process holds: a second daemon on
// the same state dir, which must not take the first one's records.
var errRingInUse = errors.New("the audit journal is in use by another process (a second airlockd on the same state_dir?)")

func (r *ring) word(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.mem[off])) }

func (r *ring) head() uint64 { return atomic.LoadUint64(r.word(offHead)) }
func (r *ring) tail() uint64 { return atomic.LoadUint64(r.word(offTail)) }

// setHead publishes everything copied before it: a frame is in the ring,
// for recovery, only once head covers it.
func (r *ring) setHead(v uint64) { atomic.StoreUint64(r.word(offHead), v) }
func (r *ring) setTail(v uint64) { atomic.StoreUint64(r.word(offTail), v) }

// free is how many bytes can be appended now.
func (r *ring) free() uint64 { return r.size - (r.head() - r.tail()) }

// put copies b in at head and advances head. The caller made sure it fits
// and is the only one appending.
func (r *ring) put(b []byte) {
	h := r.head()
	at := h % r.size
	n := copy(r.buf[at:], b)
	copy(r.buf, b[n:])
	r.publish(h + uint64(len(b)))
}

// room returns head and the ring's free bytes there that are contiguous
// (up to its end), to encode a frame into in place.
func (r *ring) room() (uint64, []byte) {
	h := r.head()
	at := h % r.size
	n := min(r.size-(h-r.tail()), r.size-at)
	return h, r.buf[at : at : at+n]
}

// publish advances head to h, over frames already in the ring's memory.
func (r *ring) publish(h uint64) {
	r.setHead(h)
	// The next frame's lines, fetched now rather than by its stores: the
	// ring is megabytes, written once every few seconds, so its lines are
	// long out of cache, and the barrier of setHead (an XCHG on amd64; the
	// lock's release after it is another) waited for the stores' misses,
	// a sixth of Writer.Record in a profile. A prefetch does not wait, and
	// has until the next record to complete.
	if at := h % r.size; at+prefetchSpan <= r.size {
		prefetchLines(unsafe.Pointer(&r.buf[at]))
	}
}

// appendInRing journals the frame enc encodes (as appendFrameHead starts
// it, returning it and its seq's offset), encoded straight into the ring
// at head under mu: no pooled frame to write and copy, and the checksum
// reads lines just written. Head moves over the frame only once it is
// numbered and checksummed, as put's copy does, so a process killed
// mid-encoding leaves the ring as it was. ok says it is journaled, with
// seq; otherwise frame is what enc encoded (into memory of its own, when
// it outgrew the room before the ring's end) for appendFrame, or nil
// when enc was not called (no ring, the journal closed or at its bound).
func (j *journal) appendInRing(enc func([]byte) ([]byte, int)) (seq int64, frame []byte, seqAt int, ok bool) {
	j.mu.Lock()
	// Deferred, not inline: a panic while encoding must not leave every
	// session waiting for the journal.
	defer j.mu.Unlock()
	if j.rg == nil || j.closed || j.total >= j.max {
		return 0, nil, 0, false
	}
	h, room := j.rg.room()
	if cap(room) < minRoom {
		return 0, nil, 0, false
	}
	b, seqAt := enc(room)
	if len(b) == 0 || &b[0] != &room[:1][0] || len(b)-frameHeader > maxFrame {
		return 0, b, seqAt, false
	}
	seq = j.numberLocked(b, seqAt)
	j.rg.publish(h + uint64(len(b)))
	j.ringSeq = seq
	j.notePressureLocked()
	return seq, nil, 0, true
}

// appendCopied journals the frame b (encoded, as appendFrameHead starts
// it, into memory of the caller's) into the ring: numbered and
// checksummed there, then copied in as put copies. ok says it is
// journaled, with seq; otherwise nothing was (no ring, the journal closed
// or at its bound, no room) and the caller journals b with appendFrame.
// Only the benchmark's "ringcopy" step records this way (BenchSkip.Copy):
// appendInRing is the data path's.
func (j *journal) appendCopied(b []byte, seqAt int) (seq int64, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.rg == nil || j.closed || j.total >= j.max || len(b)-frameHeader > maxFrame || j.rg.free() < uint64(len(b)) {
		return 0, false
	}
	seq = j.numberLocked(b, seqAt)
	j.rg.put(b)
	j.ringSeq = seq
	j.notePressureLocked()
	return seq, true
}

// notePressureLocked signals pressure when the ring is more than half
// full. The caller holds mu and has just appended to the ring.
func (j *journal) notePressureLocked() {
	if j.rg.free() < j.rg.size/2 && len(j.pressure) == 0 {
		select {
		case j.pressure <- struct{}{}:
		default:
		}
	}
}

// minRoom is the least room appendInRing encodes into: with less (the
// ring's end near, or the ring full), the frame is encoded into a pooled
// buffer rather than outgrow the room (an allocation) most of the time.
const minRoom = 1024

// prefetchSpan is what prefetchLines fetches: a statement record or two.
const prefetchSpan = 512

// bytes returns the ring's bytes from stream offset from to to (at most
// size apart), as one or two slices of the mapping.
func (r *ring) bytes(from, to uint64) (a, b []byte) {
	if to <= from {
		return nil, nil
	}
	s, e := from%r.size, from%r.size+(to-from)
	if e <= r.size {
		return r.buf[s:e], nil
	}
	return r.buf[s:], r.buf[:e-r.size]
}

// close unmaps the ring and lets go of its lock, as the kernel does for a
// process that dies.
func (r *ring) close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem, r.buf = nil, nil
	return errors.Join(err, r.f.Close())
}

// RingPath is where the journal ring of the daemon with this state dir
// lives ("" if none): outside the state dir, so whoever removes a state
// dir for good (tests) removes the ring too.
func RingPath(stateDir string) string {
	return ringPath(filepath.Join(stateDir, "audit", "journal"))
}

// ringPath says where the ring of the journal in dir lives: in dir itself
// if it is on tmpfs, else in /dev/shm under a name derived from dir; ""
// if there is no tmpfs (the journal then writes each frame with write(2)).
func ringPath(dir string) string {
	if isTmpfs(dir) {
		return filepath.Join(dir, "ring")
	}
	const shm = "/dev/shm"
	if !isTmpfs(shm) {
		return ""
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(shm, "airlock-journal-"+hex.EncodeToString(sum[:12]))
}

func isTmpfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// openRingFile opens path as a file only this user can read or write. In
// a shared, sticky folder (/dev/shm) anyone may create the name first: a
// link, or a file of another owner or with wider permissions, is removed
// (the daemon runs as root, which may) and the file created afresh, so a
// ring is never one another user could have read or planted frames in.
func openRingFile(path string) (*os.File, bool, error) {
	euid := uint32(os.Geteuid())
	for attempt := 0; attempt < 3; attempt++ {
		created := false
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			fd, err = unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			created = true
		}
		if err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			// A link, a socket, a directory, a file we may not open.
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.EISDIR) ||
				errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				if uerr := removeName(path); uerr != nil {
					return nil, false, fmt.Errorf("remove %s, not the daemon's own: %w", path, uerr)
				}
				continue
			}
			return nil, false, fmt.Errorf("open audit journal ring %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			_ = unix.Close(fd)
			return nil, false, fmt.Errorf("stat audit journal ring %s: %w", path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != euid || st.Mode&0o077 != 0 || st.Nlink != 1 {
			_ = unix.Close(fd)
			if err := removeName(path); err != nil {
				return nil, false, fmt.Errorf("remove %s, not the daemon's own: %w", path, err)
			}
			continue
		}
		return os.NewFile(uintptr(fd), path), created, nil
	}
	return nil, false, fmt.Errorf("open audit journal ring %s: the name keeps being taken", path)
}

// removeName removes whatever is at path (an empty directory too).
func removeName(path string) error {
	err := unix.Unlink(path)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Rmdir(path)
	}
	return err
}

// mapRing maps the ring at path, of the given size for a new one. dev and
// ino name the journal folder: a ring left by another folder's journal
// (removed, recreated) holds nothing of this one.
func mapRing(path string, size uint64, dev, ino uint64) (*ring, error) {
	f, created, err := openRingFile(path)
	if err != nil {
		return nil, err
	}
	r, err := mapRingFile(f, created, size, dev, ino)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return r, nil
}

func mapRingFile(f *os.File, created bool, size uint64, dev, ino uint64) (*ring, error) {
	// Held until the journal closes or the process dies (the kernel lets
	// go of it then).
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errRingInUse
		}
		return nil, fmt.Errorf("lock audit journal ring: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	total := int64(ringHeader) + int64(size)
	fresh := created || fi.Size() < ringHeader
	if !fresh {
		// An existing ring keeps its size: its frames are where that
		// size put them.
		if have := fi.Size() - ringHeader; have > 0 && have < 1<<40 {
			total = fi.Size()
		}
	}
	// The pages are allocated and mapped now, not one by one on the data
	// path (a tmpfs page's first touch costs a fault and zeroing, more
	// than a record), and a full tmpfs fails here rather than there.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, total); err != nil {
		return nil, fmt.Errorf("allocate audit journal ring: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map audit journal ring: %w", err)
	}
	r := &ring{path: f.Name(), f: f, mem: mem, buf: mem[ringHeader:], size: uint64(total - ringHeader)}
	if fresh || string(mem[:8]) != ringMagic || binary.LittleEndian.Uint64(mem[offSize:]) != r.size ||
		binary.LittleEndian.Uint64(mem[offDev:]) != dev || binary.LittleEndian.Uint64(mem[offIno:]) != ino {
		r.reset(dev, ino)
	}
	return r, nil
}

// reset empties the ring.
func (r *ring) reset(dev, ino uint64) {
	r.setHead(0)
	r.setTail(0)
	binary.LittleEndian.PutUint64(r.mem[offSize:], r.size)
	binary.LittleEndian.PutUint64(r.mem[offDev:], dev)
	binary.LittleEndian.PutUint64(r.mem[offIno:], ino)
	copy(r.mem, ringMagic)
}

// frames walks the complete frames in [tail, head), calling each with the
// frame's bytes (header included; valid until the ring changes) and its
// seq. It stops at the first damaged frame and says where.
func (r *ring) frames(each func(frame []byte, seq int64) error) error {
	var scratch []byte
	return r.walk(r.tail(), r.head(), true, &scratch, func(off uint64, frame []byte) error {
		seq, ok := frameSeq(frame[frameHeader:])
		if !ok {
			return fmt.Errorf("audit journal ring: frame at %d has no seq", off)
		}
		return each(frame, seq)
	})
}

// walk calls each with every frame in [t, h) and its offset: the ring's
// own bytes, or a copy in *scratch (reused) for one that wraps around the
// ring's end. check says to check each frame's checksum (frames a
// predecessor left); otherwise only that its length fits. It stops at the
// first damaged frame and says where.
func (r *ring) walk(t, h uint64, check bool, scratch *[]byte, each func(off uint64, frame []byte) error) error {
	if h < t || h-t > r.size {
		return fmt.Errorf("audit journal ring: head %d and tail %d are inconsistent", h, t)
	}
	for off := t; off < h; {
		if h-off < frameHeader {
			return fmt.Errorf("audit journal ring: %d stray bytes at its end", h-off)
		}
		a, b := r.bytes(off, off+frameHeader)
		var hdr [frameHeader]byte
		copy(hdr[copy(hdr[:], a):], b)
		n := uint64(binary.BigEndian.Uint32(hdr[:4]))
		if n == 0 || n > h-off-frameHeader {
			return fmt.Errorf("audit journal ring: bad frame length %d at %d", n, off)
		}
		a, b = r.bytes(off, off+frameHeader+n)
		frame := a
		if len(b) > 0 {
			*scratch = append(append((*scratch)[:0], a...), b...)
			frame = *scratch
		}
		if check && crc32.Checksum(frame[frameHeader:], crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
			return fmt.Errorf("audit journal ring: checksum mismatch at %d", off)
		}
		if err := each(off, frame); err != nil {
			return err
		}
		off += frameHeader + n
	}
	return nil
}
