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
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The journal is the durable spool in front of the store. A record is
// appended to it with one write(2) before the response that completes its
// statement is forwarded, so it is in the kernel's page cache, and survives
// the daemon's death (kill -9, a panic, the OOM killer), before the client
// can see the result. The writer fsyncs it at most one commit interval later
// (the bound on what a machine crash can take), ships it to the store, and
// deletes segments once the store has them. While a team store is down the
// journal simply grows, up to its bound.
//
// Frame: 4-byte big-endian payload length, 4-byte CRC-32C of the payload,
// payload (the pending record as JSON).

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
	size        int64
}

type journal struct {
	dir string
	max int64 // total bytes at which appends wait for the shipper

	mu       sync.Mutex
	space    *sync.Cond
	f        *os.File // active segment, O_APPEND
	segs     []segment
	total    int64
	nextSeq  int64
	closed   bool
	unsynced []*os.File // rotated segments not yet fsynced
	// mem holds recent records, in seq order, so that the shipper need not
	// read back and decode what it was just handed; the files stay the
	// truth, used whenever mem does not reach back far enough.
	mem      []pending
	memFull  bool
	waiting  bool  // an append is waiting for space
	dirDirty bool  // a segment was created since the folder was synced
	synced   int64 // nextSeq when the last sync began: nothing to sync while it holds

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
		// A killed predecessor may have left frames only in the page
		// cache: make them durable before building on them.
		if err := syncFile(name); err != nil {
			return nil, fmt.Errorf("sync audit journal segment %s: %w", name, err)
		}
		fi, err := os.Stat(name)
		if err != nil {
			return nil, err
		}
		if good < fi.Size() {
			if i != len(names)-1 {
				return nil, fmt.Errorf("audit journal segment %s is damaged at byte %d (not at its end): refusing to guess; move it aside to start", name, good)
			}
			// Only the last frame of the last segment can be torn, by a
			// machine crash inside the fsync window.
			if err := os.Truncate(name, good); err != nil {
				return nil, fmt.Errorf("drop torn frame at the end of %s: %w", name, err)
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

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
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

func (j *journal) openActive() error {
	if n := len(j.segs); n > 0 && j.segs[n-1].size < segmentMax {
		f, err := os.OpenFile(j.segs[n-1].path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open audit journal segment: %w", err)
		}
		j.f = f
		return nil
	}
	return j.rotateLocked()
}

func (j *journal) rotateLocked() error {
	if j.f != nil {
		// Synced (and closed) by the next sync, outside the lock: an
		// fsync here would hold every session's append for its duration.
		j.unsynced = append(j.unsynced, j.f)
	}
	path := filepath.Join(j.dir, fmt.Sprintf("%020d.seg", j.nextSeq))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create audit journal segment: %w", err)
	}
	j.f = f
	j.segs = append(j.segs, segment{first: j.nextSeq, last: j.nextSeq - 1, path: path})
	// The folder is synced by the next sync, with the segment's frames
	// (not here, under the lock every session's append takes): a machine
	// crash before it loses only what that sync would cover.
	j.dirDirty = true
	return nil
}

// seqWidth is the room left for the seq in an encoded frame: it is known
// only under the lock, after the rest is encoded. JSON allows the spaces
// that pad it.
const seqWidth = 19

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// encodeFrame encodes p as a frame into b, with spaces where the seq goes;
// it returns the frame and the seq's offset in it. It runs before the
// lock is taken: sessions then hold the lock only for the seq, the
// checksum and the write.
func encodeFrame(b []byte, p *pending) ([]byte, int) {
	// Encoded by hand: Data is already JSON, and re-validating it on the
	// data path (as json.Marshal of a RawMessage does) costs more than
	// the write itself.
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

// append numbers p and writes it; it waits while the journal is over its
// bound (a team store long down): sessions slow down, nothing is dropped.
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
	if _, err := j.f.Write(b); err != nil {
		// A short write leaves a torn frame that the next start drops;
		// start a fresh segment so later frames stay readable.
		_ = j.rotateLocked()
		return fmt.Errorf("write audit journal: %w", err)
	}
	j.nextSeq++
	switch {
	case len(j.mem) >= memMax:
		j.memFull = true
	case !j.memFull:
		j.mem = append(j.mem, *p)
	}
	s := &j.segs[len(j.segs)-1]
	s.last, s.size = p.Seq, s.size+int64(len(b))
	j.total += int64(len(b))
	if s.size >= segmentMax {
		if err := j.rotateLocked(); err != nil {
			return err
		}
	}
	return nil
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
	f, old, dir, upTo := j.f, j.unsynced, j.dirDirty, j.nextSeq
	if upTo == j.synced && !dir && len(old) == 0 {
		// Nothing appended since the last sync: an idle daemon does not
		// fsync twenty times a second.
		j.mu.Unlock()
		return nil
	}
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
		if err := o.Sync(); err != nil {
			errs = append(errs, err)
		}
		_ = o.Close()
	}
	if f != nil {
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sync audit journal: %w", err)
	}
	j.mu.Lock()
	j.synced = max(j.synced, upTo)
	j.mu.Unlock()
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
		if err := j.rotateLocked(); err == nil {
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
	for _, o := range j.unsynced {
		errs = append(errs, o.Sync())
		_ = o.Close()
	}
	j.unsynced = nil
	if j.f != nil {
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
