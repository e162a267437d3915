package audit

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The journal is the durable spool in front of the store. A record is
// copied into it before the response that completes its statement is
// forwarded, so it is in the kernel's page cache, and survives the daemon's
// death (kill -9, a panic, the OOM killer), before the client can see the
// result. The writer fsyncs it at most one commit interval later (the bound
// on what a machine crash can take), ships it to the store, and deletes
// segments once the store has them. While a team store is down the journal
// simply grows, up to its bound.
//
// Segments are preallocated (fallocate) and mapped shared: an append is a
// copy into the mapping, with no system call. The mapping's pages are the
// file's page cache pages, so a copied frame outlives the process exactly as
// a write(2) would; fsync of the file writes them back. Where a segment
// cannot be mapped (or a page of it faults: an I/O error), the journal falls
// back to one write(2) per record for the rest of its life.
//
// Frame: 4-byte big-endian payload length, 4-byte CRC-32C of the payload,
// payload (the pending record as JSON). A mapped segment's unused tail is
// zeros; a zero length ends a segment. The header is copied after the
// payload, so a copy cut short by the process's death leaves no frame.

const (
	frameHeader = 8
	maxFrame    = 64 << 20
	segmentMax  = 8 << 20
	memMax      = 50000 // records kept in memory for the shipper
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type segment struct {
	first, last int64 // seqs; last < first while empty
	path        string
	size        int64 // bytes of frames (a mapped segment's file is longer)
}

// mapped is a segment file open and mapped for appends.
type mapped struct {
	f *os.File
	m []byte // nil: appended to with write(2)
}

type journal struct {
	dir string
	max int64 // total bytes at which appends wait for the shipper

	mu       sync.Mutex
	space    *sync.Cond
	f        *os.File // active segment
	m        []byte   // its shared mapping; nil in write(2) mode
	noMap    bool     // mapping failed once: write(2) from then on
	segs     []segment
	total    int64
	nextSeq  int64
	closed   bool
	unsynced []mapped // rotated segments not yet fsynced
	spare    *mapped  // the next segment, zero-filled and mapped ahead of need
	dirDirty bool     // a segment was created since the folder was synced
	making   bool     // prepareSpare is at work
	// mem holds recent records, in seq order, so that the shipper need not
	// read back and decode what it was just handed; the files stay the
	// truth, used whenever mem does not reach back far enough.
	mem     []pending
	memFull bool
	waiting bool // an append is waiting for space

	// The reader's place, so each read starts where the last ended
	// (the shipper is the only reader).
	cur struct {
		path string
		off  int64
		seq  int64 // of the frame that ends at off
	}
}

// openJournal opens dir, drops a torn frame at the very end (a write the
// machine lost half of), and returns the journal with its records.
func openJournal(dir string, max int64, after int64) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create audit journal %s: %w", dir, err)
	}
	j := &journal{dir: dir, max: max, nextSeq: after + 1}
	j.space = sync.NewCond(&j.mu)
	names, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names) // zero-padded first seqs sort numerically
	for i, name := range names {
		first, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(name), ".seg"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("audit journal: unexpected file %s", name)
		}
		s := segment{first: first, last: first - 1, path: name}
		good, last, err := scanSegment(name)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(name)
		if err != nil {
			return nil, err
		}
		if good < fi.Size() {
			zeros, err := zeroFrom(name, good)
			if err != nil {
				return nil, err
			}
			switch {
			case zeros && i != len(names)-1:
				// A mapped segment's unused tail.
			case i != len(names)-1:
				return nil, fmt.Errorf("audit journal segment %s is damaged at byte %d (not at its end): refusing to guess; move it aside to start", name, good)
			default:
				// Only the last frame of the last segment can be torn:
				// by a machine crash inside the fsync window, or by the
				// process dying inside a copy. A mapped tail is extended
				// again when the segment is mapped.
				if err := os.Truncate(name, good); err != nil {
					return nil, fmt.Errorf("drop torn frame at the end of %s: %w", name, err)
				}
			}
		}
		if last >= first {
			s.last = last
		}
		s.size = good
		j.total += good
		if s.last+1 > j.nextSeq {
			j.nextSeq = s.last + 1
		}
		j.segs = append(j.segs, s)
	}
	if err := j.openActive(); err != nil {
		return nil, err
	}
	return j, nil
}

// scanSegment returns the length of the valid frames at the start of path
// and the seq of the last one (-1 if none).
func scanSegment(path string) (int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("open audit journal segment: %w", err)
	}
	defer f.Close()
	var off int64
	last := int64(-1)
	r := &frameReader{f: f}
	for {
		p, n, err := r.next()
		if err != nil {
			return off, last, nil
		}
		off += n
		last = p.Seq
	}
}

// zeroFrom reports whether path holds only zero bytes from off on.
func zeroFrom(path string, off int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("open audit journal segment: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(io.NewSectionReader(f, off, 1<<62), 64<<10)
	for {
		b, err := r.ReadByte()
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("read audit journal segment: %w", err)
		}
		if b != 0 {
			return false, nil
		}
	}
}

func (j *journal) openActive() error {
	if n := len(j.segs); n > 0 && j.segs[n-1].size < segmentMax {
		s := j.segs[n-1]
		f, err := os.OpenFile(s.path, os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("open audit journal segment: %w", err)
		}
		j.f, j.m = f, j.mapSegment(f, segmentMax)
		if j.m == nil {
			if _, err := f.Seek(s.size, io.SeekStart); err != nil {
				return fmt.Errorf("open audit journal segment: %w", err)
			}
		}
		return nil
	}
	return j.rotateLocked(0)
}

var zeros [1 << 20]byte

// zeroFill writes zeros into f from off to size and syncs them: the blocks
// are then allocated (a full disk cannot fault a later copy) and written,
// which makes the first store into each page a cheap fault. Preallocating
// with fallocate instead leaves unwritten extents whose conversion makes
// every page's first store cost tens of microseconds.
func zeroFill(f *os.File, off, size int64) error {
	for off < size {
		n, err := f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return f.Sync()
}

// mapSegment extends f to size (zero-filled, see zeroFill) and maps it
// shared; nil if it cannot, after which the journal stays in write(2) mode.
func (j *journal) mapSegment(f *os.File, size int64) []byte {
	if j.noMap {
		return nil
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() < size {
		err = zeroFill(f, fi.Size(), size)
	}
	if err == nil {
		if fi, err = f.Stat(); err == nil {
			size = fi.Size()
		}
	}
	var m []byte
	if err == nil {
		m, err = unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	if err != nil {
		j.noMap = true
		return nil
	}
	return m
}

// rotateLocked starts a new segment with room for at least need bytes.
func (j *journal) rotateLocked(need int) error {
	if j.f != nil {
		// Synced (and closed) by the next sync, outside the lock: an
		// fsync here would hold every session's append for its duration.
		j.unsynced = append(j.unsynced, mapped{f: j.f, m: j.m})
		j.f, j.m = nil, nil
	}
	path := filepath.Join(j.dir, fmt.Sprintf("%020d.seg", j.nextSeq))
	if sp := j.spare; sp != nil && need <= len(sp.m) && !j.noMap {
		// The usual case: the spare becomes the segment; a rename is
		// all the data path pays.
		j.spare = nil
		if err := os.Rename(filepath.Join(j.dir, spareName), path); err == nil {
			j.f, j.m = sp.f, sp.m
		} else {
			_ = unix.Munmap(sp.m)
			_ = sp.f.Close()
		}
	}
	if j.f == nil {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("create audit journal segment: %w", err)
		}
		j.f, j.m = f, j.mapSegment(f, max(segmentMax, int64(need)))
	}
	if n := len(j.segs); n > 0 && j.segs[n-1].path == path {
		// The segment being replaced held nothing: the new one takes its
		// name.
		j.segs = j.segs[:n-1]
	}
	j.segs = append(j.segs, segment{first: j.nextSeq, last: j.nextSeq - 1, path: path})
	// The folder is synced by the next sync, with the segment's frames:
	// a machine crash before it loses only what that sync would cover.
	j.dirDirty = true
	return nil
}

// spareName is the next segment while it waits to be used.
const spareName = "next.spare"

// prepareSpare makes the next segment ahead of need, outside the lock: the
// data path then never waits for a segment's zero-fill.
func (j *journal) prepareSpare() {
	j.mu.Lock()
	skip := j.spare != nil || j.noMap || j.closed || j.making
	j.making = !skip
	j.mu.Unlock()
	if skip {
		return
	}
	defer func() {
		j.mu.Lock()
		j.making = false
		j.mu.Unlock()
	}()
	f, err := os.OpenFile(filepath.Join(j.dir, spareName), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return
	}
	if err := zeroFill(f, 0, segmentMax); err != nil {
		_ = f.Close()
		return
	}
	m, err := unix.Mmap(int(f.Fd()), 0, segmentMax, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		_ = f.Close()
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.spare != nil || j.closed {
		_ = unix.Munmap(m)
		_ = f.Close()
		return
	}
	j.spare = &mapped{f: f, m: m}
}

// seqWidth is the room left for the seq in an encoded frame: it is known
// only under the lock, after the rest is encoded. JSON allows the spaces
// that pad it.
const seqWidth = 19

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// encodeFrame encodes p as a frame into b, with spaces where the seq goes;
// it returns the frame and the seq's offset in it.
func encodeFrame(b []byte, p *pending) ([]byte, int) {
	// Encoded by hand: Data is already JSON, and re-validating it on the
	// data path (as json.Marshal of a RawMessage does) costs more than
	// the copy itself.
	b = append(b[:0], 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, `{"seq":`...)
	at := len(b)
	b = append(b, "                   "[:seqWidth]...)
	b = append(b, `,"time":"`...)
	b = p.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, p.Kind)
	b = append(b, `,"session":`...)
	b = appendJSONString(b, p.Session)
	b = append(b, `,"data":`...)
	b = append(b, p.Data...)
	b = append(b, '}')
	return b, at
}

// append numbers p and copies it into the journal; it waits while the
// journal is over its bound (a team store long down): sessions slow down,
// nothing is dropped.
func (j *journal) append(p *pending) error {
	bp := frameBufs.Get().(*[]byte)
	b, at := encodeFrame(*bp, p)
	defer func() {
		if cap(b) <= 64<<10 {
			*bp = b
			frameBufs.Put(bp)
		}
	}()
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.total >= j.max && !j.closed {
		j.waiting = true
		j.space.Wait()
	}
	if j.closed {
		return errors.New("audit journal is closed")
	}
	p.Seq = j.nextSeq
	strconv.AppendInt(b[at:at], p.Seq, 10) // in place, over the spaces
	payload := b[frameHeader:]
	binary.BigEndian.PutUint32(b[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[4:], crc32.Checksum(payload, crcTable))
	s := &j.segs[len(j.segs)-1]
	if j.m != nil && s.size+int64(len(b)) > int64(len(j.m)) {
		if err := j.rotateLocked(len(b)); err != nil {
			return err
		}
		s = &j.segs[len(j.segs)-1]
	}
	if j.m != nil && !j.copyFrame(s.size, b) {
		// The page could not be written (an I/O error under the
		// mapping): drop what the copy may have left, go on with write(2)
		// in a fresh segment.
		j.noMap = true
		_ = os.Truncate(s.path, s.size)
		if err := j.rotateLocked(0); err != nil {
			return err
		}
		s = &j.segs[len(j.segs)-1]
	}
	if j.m == nil {
		if _, err := j.f.Write(b); err != nil {
			// A short write leaves a torn frame that the next start drops;
			// start a fresh segment so later frames stay readable.
			_ = j.rotateLocked(0)
			return fmt.Errorf("write audit journal: %w", err)
		}
	}
	j.nextSeq++
	switch {
	case len(j.mem) >= memMax:
		j.memFull = true
	case !j.memFull:
		j.mem = append(j.mem, *p)
	}
	s.last, s.size = p.Seq, s.size+int64(len(b))
	j.total += int64(len(b))
	if j.m == nil && s.size >= segmentMax {
		if err := j.rotateLocked(0); err != nil {
			return err
		}
	}
	return nil
}

// copyFrame copies frame b into the mapping at off, header last; false if
// a page of the mapping faulted (the runtime turns that into a panic here
// instead of killing the daemon).
func (j *journal) copyFrame(off int64, b []byte) (ok bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	copy(j.m[off+frameHeader:], b[frameHeader:])
	copy(j.m[off:off+frameHeader], b[:frameHeader])
	return true
}

// appendJSONString appends s as a JSON string; kinds and session ids are
// plain ASCII, anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// sync makes everything appended so far durable.
func (j *journal) sync() error {
	j.mu.Lock()
	f, old, dir := j.f, j.unsynced, j.dirDirty
	j.unsynced, j.dirDirty = nil, false
	j.mu.Unlock()
	var errs []error
	if dir {
		if d, err := os.Open(j.dir); err == nil {
			errs = append(errs, d.Sync())
			_ = d.Close()
		}
	}
	for _, o := range old {
		if err := o.f.Sync(); err != nil {
			errs = append(errs, err)
		}
		if o.m != nil {
			_ = unix.Munmap(o.m)
		}
		_ = o.f.Close()
	}
	if f != nil {
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	j.prepareSpare()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sync audit journal: %w", err)
	}
	return nil
}

// skipTo makes the next record's seq at least seq+1.
func (j *journal) skipTo(seq int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.nextSeq <= seq {
		j.nextSeq = seq + 1
	}
}

// lastSeq is the seq of the newest record appended.
func (j *journal) lastSeq() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextSeq - 1
}

func (j *journal) bytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.total
}

// read returns up to max records with seq > after, in order.
func (j *journal) read(after int64, max int) ([]pending, error) {
	j.mu.Lock()
	if n := len(j.mem); n > 0 && j.mem[0].Seq <= after+1 && j.mem[n-1].Seq > after {
		i := int(after + 1 - j.mem[0].Seq)
		out := append([]pending(nil), j.mem[i:min(n, i+max)]...)
		j.mu.Unlock()
		return out, nil
	}
	segs := append([]segment(nil), j.segs...)
	j.mu.Unlock()
	var out []pending
	for _, s := range segs {
		if s.last <= after || s.last < s.first {
			continue
		}
		f, err := os.Open(s.path)
		if err != nil {
			return out, fmt.Errorf("read audit journal: %w", err)
		}
		var off int64
		if j.cur.path == s.path && j.cur.seq <= after {
			off = j.cur.off
		}
		r := &frameReader{f: bufio.NewReaderSize(io.NewSectionReader(f, off, s.size-off), 256<<10)}
		for len(out) < max {
			p, n, err := r.next()
			if err != nil {
				break
			}
			off += n
			j.cur.path, j.cur.off, j.cur.seq = s.path, off, p.Seq
			if p.Seq > after {
				out = append(out, p)
			}
		}
		_ = f.Close()
		if len(out) >= max {
			break
		}
	}
	return out, nil
}

// release deletes the segments whose records are all at or below seq,
// except the active one.
func (j *journal) release(seq int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := 0
	for i < len(j.mem) && j.mem[i].Seq <= seq {
		i++
	}
	if i > 0 {
		n := copy(j.mem, j.mem[i:])
		clear(j.mem[n:])
		j.mem = j.mem[:n]
	}
	if len(j.mem) == 0 {
		j.memFull = false
	}
	keep := j.segs[:0]
	for i, s := range j.segs {
		if i < len(j.segs)-1 && s.last <= seq {
			if err := os.Remove(s.path); err == nil || errors.Is(err, os.ErrNotExist) {
				j.total -= s.size
				continue
			}
		}
		keep = append(keep, s)
	}
	j.segs = keep
	if n := len(j.segs); n == 1 && j.segs[0].last <= seq && j.segs[0].size > 0 && j.waiting {
		// Everything is shipped but the active segment holds the bound:
		// start a new one so the old can go.
		if err := j.rotateLocked(0); err == nil {
			old := j.segs[0]
			if os.Remove(old.path) == nil {
				j.total -= old.size
				j.segs = j.segs[1:]
			}
		}
	}
	if j.total < j.max {
		j.waiting = false
		j.space.Broadcast()
	}
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closed = true
	j.space.Broadcast()
	var errs []error
	if sp := j.spare; sp != nil {
		_ = unix.Munmap(sp.m)
		_ = sp.f.Close()
		j.spare = nil
	}
	for _, o := range j.unsynced {
		errs = append(errs, o.f.Sync())
		if o.m != nil {
			_ = unix.Munmap(o.m)
		}
		_ = o.f.Close()
	}
	j.unsynced = nil
	if j.f != nil {
		if j.m != nil {
			_ = unix.Munmap(j.m)
			j.m = nil
			// A clean stop leaves the segment as long as its frames.
			if n := len(j.segs); n > 0 {
				errs = append(errs, j.f.Truncate(j.segs[n-1].size))
			}
		}
		errs = append(errs, j.f.Sync())
		_ = j.f.Close()
		j.f = nil
	}
	return errors.Join(errs...)
}

type frameReader struct {
	f   io.Reader
	hdr [frameHeader]byte
}

// next reads one frame; any damage is an error (the caller stops there).
func (r *frameReader) next() (pending, int64, error) {
	if _, err := io.ReadFull(r.f, r.hdr[:]); err != nil {
		return pending{}, 0, err
	}
	n := binary.BigEndian.Uint32(r.hdr[:4])
	if n == 0 || n > maxFrame {
		return pending{}, 0, fmt.Errorf("bad frame length %d", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r.f, payload); err != nil {
		return pending{}, 0, err
	}
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(r.hdr[4:]) {
		return pending{}, 0, errors.New("frame checksum mismatch")
	}
	var p pending
	if err := json.Unmarshal(payload, &p); err != nil {
		return pending{}, 0, fmt.Errorf("decode frame: %w", err)
	}
	return p, int64(frameHeader) + int64(n), nil
}
