package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
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
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The journal is the durable spool in front of the store. A record is in
// it before the response that completes its statement is forwarded, so it
// survives the daemon's death (kill -9, a panic, the OOM killer) before the
// client can see the result: copied into the ring (ring.go), a shared
// mapping of a tmpfs file, or, without tmpfs, written to the active segment
// with one write(2). sync moves the ring's frames into the segments and
// fsyncs them, at most one commit interval later (the bound on what a
// machine crash can take); the writer ships the segments to the store and
// deletes them once the store has them. While a team store is down the
// journal simply grows, up to its bound.
//
// Frame: 4-byte big-endian payload length, 4-byte CRC-32C of the payload,
// payload (the pending record as JSON):
// {"seq":N,"time_ns":N,"kind":"…","session":"…","data":…}, the seq padded
// with spaces. Frames written before 2026-11-30 carry "time" as RFC 3339
// text instead of "time_ns"; they are read as well (a journal or ring left
// by the previous version at an upgrade). In the ring only, a statement's
// frame may be raw (rawframe.go: a first byte no JSON starts with), which
// every move into the segments encodes first: segments hold JSON only.

const (
	frameHeader = 8
	maxFrame    = 64 << 20
	segmentMax  = 8 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var (
	errJournalClosed = errors.New("audit journal is closed")
	errFrameTooLarge = errors.New("audit record too large")
)

type segment struct {
	first, last int64 // seqs; last < first while empty
	path        string
	size        int64
}

// Locks: fileMu serialises writes to the segments (moving the ring's
// frames, or appending without a ring) and segment changes; mu guards the
// rest and is the only lock an append into the ring takes. fileMu is
// taken before mu.
type journal struct {
	dir string
	max int64 // total bytes at which appends wait for the shipper

	fileMu sync.Mutex
	mu     sync.Mutex
	space  *sync.Cond

	f        *os.File // active segment, O_APPEND; written holding fileMu
	segs     []segment
	total    int64 // bytes in the segments and the ring
	nextSeq  int64
	written  int64 // last seq in the segments
	closed   bool
	unsynced []*os.File // rotated segments not yet fsynced
	waiting  bool       // an append is waiting for space
	dirDirty bool       // a segment was created since the folder was synced
	// torn: the active segment ends in a torn frame that could neither be
	// cut off nor left behind in a segment of its own. A frame written
	// after it would never be read back (a reader stops at a damaged
	// frame), so no write goes there until one of the two succeeds.
	torn   bool
	synced int64 // written when the last sync began: nothing to sync while it holds

	rg      *ring // nil: no tmpfs, frames go straight to the segments
	ringSeq int64 // seq of the last frame journaled (the one the ring's head ends)
	// ringFull counts appends that found the ring full and moved its
	// frames out themselves (the shipper's thread behind): a session
	// then waits for a segment write on the data path.
	ringFull atomic.Int64
	// pressure is signalled (never blocking) by an append that leaves the
	// ring more than half full: the writer then drains it into the
	// segments at once rather than at the end of its commit interval, so
	// that a burst does not fill the ring and put sessions on the slow
	// path (ringFull).
	pressure chan struct{}
	// notes says what opening found worth a line in the log (frames
	// recovered from the ring, a ring that could not be used).
	notes []string

	// What the drains turn the ring's raw statement frames into encoded
	// ones with (rawframe.go), under fileMu: the decoder, the frames
	// encoded, and room for a frame that wraps around the ring's end.
	raw     rawDecoder
	conv    []byte
	scratch []byte

	// benchLink (BenchSkip.Fused, measurement only): each frame a drain
	// moves is chained and its hashes written into it; linkPrev is the
	// last link, linkBuf the hash input's room. Under fileMu.
	benchLink bool
	linkPrev  [sha256.Size]byte
	linkBuf   []byte

	// readMu is held by the reader for a whole read, and by drain while
	// it keeps frames for it: cur and kept are the reader's. It is taken
	// before fileMu.
	readMu sync.Mutex
	// The reader's buffers, reused: the shipper is the only reader.
	segsCopy []segment
	names    *nameCache
	// The reader's place, so each read starts where the last ended
	// (the shipper is the only reader).
	cur struct {
		path string
		off  int64
		seq  int64 // of the frame that ends at off
	}
	// kept holds the frames drain moved from the ring into the segments
	// while the reader's place was at the end of the active segment: a
	// copy taken from the ring as they are written, so the reader takes
	// them from memory instead of reading them back from the segment
	// (a system call and a copy out of the page cache, per batch, of
	// bytes that were in the shipper's hands a moment before). The
	// frames are those of the segment kept.path from kept.off up to
	// cur, whole, headers included.
	kept struct {
		buf   []byte
		path  string
		off   int64
		after int64 // seq of the frame before the first kept
	}
}

// keptMax bounds the frames kept for the reader: past it, drain stops
// keeping them and the reader reads the rest back from the segment.
const keptMax = 4 << 20

// keptSmall is the first size of a kept-frames buffer.
const keptSmall = 64 << 10

// roomKept returns b, or a copy of it, with room for n more bytes. A
// buffer that must grow past keptSmall grows to keptMax at once, which it
// never outgrows (drain keeps no more): grown by append, 1.25 times at a
// step, each of the two buffers went through a dozen sizes on its way to
// keptMax, every one of them fresh pages to fault in, most of the
// shipper's page faults under pgbench. The two buffers stay (shipBuf and
// the journal swap them), so a burst pins at most 2 × keptMax.
func roomKept(b []byte, n int) []byte {
	need := len(b) + n
	if need <= cap(b) {
		return b
	}
	c := keptMax
	if need <= keptSmall {
		c = keptSmall
	}
	grown := make([]byte, len(b), max(c, need))
	copy(grown, b)
	return grown
}

// openJournal opens dir, drops a torn frame at the very end (a write the
// machine lost half of), moves into the segments what a killed predecessor
// left in the ring, and returns the journal with its records.
func openJournal(dir string, max int64, after int64) (*journal, error) {
	return openJournalRing(dir, max, after, ringDefault)
}

// openJournalRing is openJournal with a ring of ringSize bytes (0: none).
func openJournalRing(dir string, max int64, after int64, ringSize uint64) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create audit journal %s: %w", dir, err)
	}
	j := &journal{dir: dir, max: max, nextSeq: after + 1, pressure: make(chan struct{}, 1)}
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
			// machine crash inside the fsync window (or a kill in the
			// middle of moving the ring's frames, which are still in
			// the ring).
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
	j.written = j.nextSeq - 1
	if err := j.openActive(); err != nil {
		return nil, err
	}
	if ringSize > 0 {
		if err := j.openRing(ringSize); err != nil {
			return nil, err
		}
	}
	return j, nil
}

// openRing maps the ring and moves what it holds beyond the segments into
// them. A ring that cannot be had (no tmpfs, a name another user keeps
// taking) is not an error: the journal writes each frame itself.
func (j *journal) openRing(size uint64) error {
	path := ringPath(j.dir)
	if path == "" {
		j.notes = append(j.notes, "no tmpfs for the audit journal's ring: each record costs a write(2)")
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(j.dir, &st); err != nil {
		return fmt.Errorf("stat audit journal %s: %w", j.dir, err)
	}
	rg, err := mapRing(path, size, uint64(st.Dev), st.Ino)
	if errors.Is(err, errRingInUse) {
		return err
	}
	if err != nil {
		j.notes = append(j.notes, fmt.Sprintf("audit journal ring unusable, each record costs a write(2): %v", err))
		return nil
	}
	var buf []byte
	var n int
	last := j.nextSeq - 1
	werr := rg.frames(func(frame []byte, seq int64) error {
		if seq <= last {
			return nil // moved before the kill, its tail not yet noted
		}
		if seq != last+1 && last > 0 {
			j.notes = append(j.notes, fmt.Sprintf("audit journal ring: seq %d follows %d", seq, last))
		}
		if isRaw(frame[frameHeader:]) {
			buf = j.raw.appendEncoded(buf, frame)
		} else {
			buf = append(buf, frame...)
		}
		last = seq
		n++
		return nil
	})
	if werr != nil {
		j.notes = append(j.notes, werr.Error()+"; the frames before it are kept")
	}
	if n > 0 {
		j.fileMu.Lock()
		j.mu.Lock()
		err := j.writeLocked(buf, nil, last)
		j.nextSeq = max(j.nextSeq, last+1)
		j.total += int64(len(buf))
		j.mu.Unlock()
		j.fileMu.Unlock()
		if err != nil {
			_ = rg.close()
			return fmt.Errorf("move the audit journal ring's records into the journal: %w", err)
		}
		j.notes = append(j.notes, fmt.Sprintf("moved %d records a stopped daemon left in the audit journal ring into the journal", n))
	}
	// Durable in the segments before the ring forgets them (j.rg is not
	// set yet: sync has no ring to move).
	if err := j.sync(); err != nil {
		_ = rg.close()
		return err
	}
	rg.reset(uint64(st.Dev), st.Ino)
	// Raw statement frames hold unredacted text: what a predecessor left
	// is encoded in the segments now, and goes from memory too rather
	// than wait for the ring to wrap over it.
	clear(rg.buf)
	j.rg, j.ringSeq = rg, j.nextSeq-1
	return nil
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
	r := &frameReader{f: bufio.NewReaderSize(f, 256<<10)}
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

// rotateLocked starts a new active segment; the caller holds fileMu and
// mu (or is opening the journal).
func (j *journal) rotateLocked() error {
	// Named after the first seq it can hold: names sort in seq order.
	first := j.written + 1
	path := filepath.Join(j.dir, fmt.Sprintf("%020d.seg", first))
	if n := len(j.segs); n > 0 && j.segs[n-1].path == path {
		// The active segment holds no whole frame yet (a torn one at
		// most): "rotating" would only open it again.
		return fmt.Errorf("create audit journal segment: %s is the active segment and holds no whole record", filepath.Base(path))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		// The active segment stays active (and open): handing it to the
		// next sync before the new one exists would have that sync close
		// the file every later append still goes to.
		return fmt.Errorf("create audit journal segment: %w", err)
	}
	if j.f != nil {
		// Synced (and closed) by the next sync, outside the lock: an
		// fsync here would hold every session's append for its duration.
		j.unsynced = append(j.unsynced, j.f)
	}
	j.f = f
	j.segs = append(j.segs, segment{first: first, last: first - 1, path: path})
	// The folder is synced by the next sync, with the segment's frames
	// (not here, under the lock every session's append takes): a machine
	// crash before it loses only what that sync would cover.
	j.dirDirty = true
	return nil
}

// writeLocked writes whole frames (a then b), the last of them seq last,
// to the active segment. The caller holds fileMu and mu.
func (j *journal) writeLocked(a, b []byte, last int64) error {
	if err := j.untearLocked(); err != nil {
		return err
	}
	n, err := writeBoth(j.f, a, b)
	return j.wroteLocked(n, last, err, nil)
}

// untearLocked makes the active segment fit to write to again after a
// torn frame was left at its end (torn): cut off, or left behind in a
// segment of its own. The caller holds fileMu and mu.
func (j *journal) untearLocked() error {
	if !j.torn {
		return nil
	}
	if err := j.f.Truncate(j.segs[len(j.segs)-1].size); err != nil {
		if rerr := j.rotateLocked(); rerr != nil {
			return fmt.Errorf("write audit journal: the active segment ends in a torn record that can be neither cut off (%v) nor left behind: %w", err, rerr)
		}
	}
	j.torn = false
	return nil
}

// wroteLocked notes n bytes written to the active segment, the last frame
// seq last, and runs then; a failed or short write is cut off again, so
// the segment still ends at a frame's end. The caller holds fileMu and mu.
func (j *journal) wroteLocked(n int, last int64, err error, then func()) error {
	s := &j.segs[len(j.segs)-1]
	if err != nil {
		if n > 0 {
			if terr := j.f.Truncate(s.size); terr != nil {
				// The torn frame stays at the end of this segment:
				// start another so that it stays the last frame of
				// its file and the next start drops it; failing that,
				// write nothing after it (torn).
				if j.rotateLocked() != nil {
					j.torn = true
				}
			}
		}
		return fmt.Errorf("write audit journal: %w", err)
	}
	s.last, s.size = last, s.size+int64(n)
	j.written = last
	if then != nil {
		then()
	}
	if s.size >= segmentMax {
		return j.rotateLocked()
	}
	return nil
}

// seqWidth is the room left for the seq in an encoded frame: it is known
// only under the lock, after the rest is encoded. JSON allows the spaces
// that pad it.
const seqWidth = 19

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendFrameHead starts a frame in b: the header's room, and the pending
// record's fields up to the data, with spaces where the seq goes; it
// returns the frame so far and the seq's offset in it. The data and a
// closing brace follow. Frames are encoded before the lock is taken:
// sessions then hold it only for the seq, the checksum and the copy.
func appendFrameHead(b []byte, at time.Time, kind, sess string) ([]byte, int) {
	b = append(b[:0], 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, `{"seq":`...)
	seqAt := len(b)
	b = append(b, "                   "[:seqWidth]...)
	// The time as the chain hashes it (Unix nanoseconds): formatting it
	// as text cost the data path a third of the frame's head, and reading
	// it back the shipper a tenth of its decoding.
	b = append(b, `,"time_ns":`...)
	b = appendInt(b, at.UnixNano())
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, kind)
	b = append(b, `,"session":`...)
	b = appendJSONString(b, sess)
	return append(b, `,"data":`...), seqAt
}

// encodeFrame encodes p as a frame into b; see appendFrameHead.
func encodeFrame(b []byte, p *pending) ([]byte, int) {
	// Encoded by hand: Data is already JSON, and re-validating it on the
	// data path (as json.Marshal of a RawMessage does) costs more than
	// the copy itself.
	b, at := appendFrameHead(b, p.Time, p.Kind, p.Session)
	b = append(b, p.Data...)
	return append(b, '}'), at
}

// append numbers p and journals it.
func (j *journal) append(p *pending) error {
	bp := frameBufs.Get().(*[]byte)
	b, at := encodeFrame(*bp, p)
	seq, err := j.appendFrame(b, at)
	if cap(b) <= 64<<10 {
		*bp = b
		frameBufs.Put(bp)
	}
	if err == nil {
		p.Seq = seq
	}
	return err
}

// appendFrame numbers the frame b (from appendFrameHead, the seq's room at
// seqAt), checksums it and journals it; it returns the seq. It waits while
// the journal is over its bound (a team store long down): sessions slow
// down, nothing is dropped.
func (j *journal) appendFrame(b []byte, seqAt int) (int64, error) {
	if len(b)-frameHeader > maxFrame {
		return 0, fmt.Errorf("%w: %d bytes, the journal takes %d", errFrameTooLarge, len(b)-frameHeader, maxFrame)
	}
	for {
		j.mu.Lock()
		if err := j.waitRoomLocked(); err != nil {
			j.mu.Unlock()
			return 0, err
		}
		if j.rg != nil && j.rg.free() >= uint64(len(b)) {
			seq := j.numberLocked(b, seqAt)
			j.rg.put(b)
			j.ringSeq = seq
			j.notePressureLocked()
			j.mu.Unlock()
			return seq, nil
		}
		full := j.rg != nil
		j.mu.Unlock()
		// No ring, or it is full (the shipper's thread is behind), or the
		// frame is larger than the ring: through the segment, after the
		// ring's frames, which this session moves out itself.
		if full {
			j.ringFull.Add(1)
		}
		seq, retry, err := j.appendThrough(b, seqAt)
		if !retry {
			return seq, err
		}
	}
}

// appendThrough journals b through the segment; retry says the bound was
// reached meanwhile (wait for room without holding fileMu, which the
// shipper needs to make room).
func (j *journal) appendThrough(b []byte, seqAt int) (int64, bool, error) {
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return 0, false, errJournalClosed
	}
	if j.total >= j.max {
		return 0, true, nil
	}
	if err := j.drainLocked(uint64(len(b))); err != nil {
		return 0, false, err
	}
	if j.rg != nil && j.rg.free() >= uint64(len(b)) {
		seq := j.numberLocked(b, seqAt)
		j.rg.put(b)
		j.ringSeq = seq
		return seq, false, nil
	}
	seq := j.nextSeq
	strconv.AppendInt(b[seqAt:seqAt], seq, 10)
	checksum(b)
	if err := j.writeLocked(b, nil, seq); err != nil {
		return 0, false, err
	}
	j.nextSeq++
	j.ringSeq = seq
	j.total += int64(len(b))
	return seq, false, nil
}

// waitRoomLocked waits while the journal is at its bound. The caller holds
// mu.
func (j *journal) waitRoomLocked() error {
	for j.total >= j.max && !j.closed {
		j.waiting = true
		j.space.Wait()
	}
	if j.closed {
		return errJournalClosed
	}
	return nil
}

// numberLocked takes the next seq for b, writes it and the checksum into
// b, and counts b in the journal's size. The caller holds mu and journals
// b before releasing it.
func (j *journal) numberLocked(b []byte, seqAt int) int64 {
	seq := j.nextSeq
	if b[frameHeader] == rawVersion {
		binary.LittleEndian.PutUint64(b[seqAt:], uint64(seq))
	} else {
		appendInt(b[seqAt:seqAt], seq) // in place, over the spaces
	}
	checksum(b)
	j.nextSeq++
	j.total += int64(len(b))
	return seq
}

func checksum(b []byte) {
	payload := b[frameHeader:]
	binary.BigEndian.PutUint32(b[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[4:], crc32.Checksum(payload, crcTable))
}

// drainLocked moves the ring's oldest frames into the active segment
// until the ring has need bytes free, or is empty. The caller holds
// fileMu and mu: a session that found the ring full, so every other
// waits meanwhile. Raw frames are encoded as they move (a few hundred ns
// each), so it moves no more than it needs, plus drainSlack, where moving
// the whole ring would hold them all for tens of milliseconds.
func (j *journal) drainLocked(need uint64) error {
	if j.rg == nil {
		return nil
	}
	t, h := j.rg.tail(), j.rg.head()
	if h == t {
		return nil
	}
	want := h - t
	if free := j.rg.free(); need+drainSlack < want+free {
		want = max(need+drainSlack-free, 1)
	}
	a, b, end, last, err := j.encodedRing(t, h, want)
	if err != nil {
		return err
	}
	if err := j.writeLocked(a, b, last); err != nil {
		return err
	}
	j.total += int64(len(a)+len(b)) - int64(end-t)
	j.rg.setTail(end)
	return nil
}

// drainSlack is what drainLocked frees beyond the frame it makes room
// for, so that the next appends do not find the ring full at once.
const drainSlack = 256 << 10

// convKeep bounds the encoding buffer a drain keeps for the next: a
// steady drain's (a commit interval of pgbench -S -c 10, ~2,200 frames,
// about 1 MB encoded) is kept, a burst's is not.
const convKeep = 2 << 20

// encodedRing returns the ring's oldest frames from t (up to h), at least
// want bytes of them (whole frames), as the segments hold them: the
// ring's own bytes, or, when raw statement frames are among them, a copy
// (valid until the next call) with each encoded; where the frames taken
// end, and the last one's seq. The caller holds fileMu (the ring's bytes
// there stay put while it does). A ring whose frames cannot be walked is
// an error: its bytes are not written as they are, raw text and all.
func (j *journal) encodedRing(t, h, want uint64) ([]byte, []byte, uint64, int64, error) {
	conv := j.conv[:0]
	found := j.benchLink // every frame copied, to be linked
	end := t
	var lastFrame []byte
	err := j.rg.walk(t, h, false, &j.scratch, func(off uint64, frame []byte) error {
		if off-t >= want {
			return errEnough
		}
		switch {
		case isRaw(frame[frameHeader:]):
			if !found {
				found = true
				a, b := j.rg.bytes(t, off)
				conv = append(append(conv, a...), b...)
			}
			at := len(conv)
			conv = j.raw.appendEncoded(conv, frame)
			if j.benchLink {
				conv = j.benchLinked(conv, at)
			}
		case found:
			at := len(conv)
			conv = append(conv, frame...)
			if j.benchLink {
				conv = j.benchLinked(conv, at)
			}
		}
		end, lastFrame = off+uint64(len(frame)), frame
		return nil
	})
	// The last frame taken is still where walk left it: in the ring, or
	// in scratch if it was the one that wraps (at most one does).
	var last int64
	if lastFrame != nil {
		last, _ = frameSeq(lastFrame[frameHeader:])
	}
	if cap(conv) <= convKeep {
		j.conv = conv
	} else {
		// A burst's encoding (a flush, a ring drained at half full: up
		// to several MiB) is dropped after use: kept, it stayed in the
		// daemon's live heap for good, and Go's heap goal with it (the
		// bench's idle-session figure went from 15 to 36 KiB).
		j.conv = nil
	}
	if err != nil && !errors.Is(err, errEnough) {
		return nil, nil, 0, 0, fmt.Errorf("move the audit journal ring's records: %w", err)
	}
	if !found {
		a, b := j.rg.bytes(t, end)
		return a, b, end, last, nil
	}
	return conv, nil, end, last, nil
}

// benchLinked chains the frame at conv[at:] after the last one and writes
// its previous and own hash into its payload (benchLink only).
func (j *journal) benchLinked(conv []byte, at int) []byte {
	if len(conv) <= at+frameHeader {
		return conv
	}
	payload := conv[at+frameHeader:]
	j.linkBuf = append(append(j.linkBuf[:0], j.linkPrev[:]...), payload...)
	sum := sha256.Sum256(j.linkBuf)
	var hp, hs [2 * sha256.Size]byte
	hexSum(&hp, &j.linkPrev)
	hexSum(&hs, &sum)
	j.linkPrev = sum
	conv = conv[:len(conv)-1] // the payload's closing brace
	conv = append(conv, `,"prev_hash":"`...)
	conv = append(conv, hp[:]...)
	conv = append(conv, `","hash":"`...)
	conv = append(conv, hs[:]...)
	conv = append(conv, `"}`...)
	checksum(conv[at:])
	return conv
}

// errEnough stops a walk of the ring's frames.
var errEnough = errors.New("enough frames")

// hasRing is whether the journal has a ring still: close drops it (under
// mu), possibly while the shipper drains.
func (j *journal) hasRing() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rg != nil
}

// drain moves the ring's frames into the active segment without holding
// mu for the write: sessions go on appending meanwhile.
func (j *journal) drain() error {
	if !j.hasRing() {
		return nil
	}
	j.readMu.Lock()
	defer j.readMu.Unlock()
	return j.drainKeeping()
}

// drainKeeping is drain with readMu held: when the reader has read
// everything before the frames moved, it keeps a copy of them (kept).
func (j *journal) drainKeeping() error {
	if !j.hasRing() {
		return nil
	}
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.mu.Lock()
	if j.rg == nil {
		// close ran since the look above (it drops the ring under
		// fileMu and mu, once the ring's frames are in the segments).
		j.mu.Unlock()
		return nil
	}
	if err := j.untearLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	t, h, last := j.rg.tail(), j.rg.head(), j.ringSeq
	s := j.segs[len(j.segs)-1]
	j.mu.Unlock()
	if h == t {
		return nil
	}
	// Only this thread (holding fileMu) moves tail, and appends write
	// only past head: the bytes in [t, h) stay put while they are written.
	a, b, _, _, err := j.encodedRing(t, h, h-t)
	if err != nil {
		return err
	}
	grown := int64(len(a)+len(b)) - int64(h-t)
	// What is kept lies in one segment, from kept.off on.
	keep := j.cur.path == s.path && j.cur.off == s.size && (len(j.kept.buf) == 0 || j.kept.path == s.path) &&
		len(j.kept.buf)+len(a)+len(b) <= keptMax
	n, err := writeBoth(j.f, a, b)
	keep = keep && err == nil
	if keep {
		if len(j.kept.buf) == 0 {
			j.kept.path, j.kept.off, j.kept.after = s.path, s.size, j.cur.seq
		}
		j.kept.buf = append(append(roomKept(j.kept.buf, len(a)+len(b)), a...), b...)
		j.cur.off, j.cur.seq = s.size+int64(n), last
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	err = j.wroteLocked(n, last, err, func() {
		j.rg.setTail(h)
		j.total += grown
	})
	if act := j.segs[len(j.segs)-1]; keep && act.path != s.path && act.size == 0 {
		// The segment was full and another begun: the reader's place
		// is as well its start, where the next frames go.
		j.cur.path, j.cur.off = act.path, 0
	}
	return err
}

// writeBoth writes a then b (the ring's bytes on either side of its end).
// A kill between the two leaves a torn frame at the end of the segment,
// which the next start drops: its frames are still in the ring.
func writeBoth(f *os.File, a, b []byte) (int, error) {
	n, err := f.Write(a)
	if err == nil && len(b) > 0 {
		var m int
		m, err = f.Write(b)
		n += m
	}
	return n, err
}

// appendJSONString appends s as a JSON string; kinds and session ids are
// plain ASCII, anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	if !allPlain(s) {
		q, _ := json.Marshal(s)
		return append(b, q...)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// sync makes everything appended so far durable: the ring's frames moved
// into the segments, and the segments fsynced.
func (j *journal) sync() error {
	if err := j.drain(); err != nil {
		return err
	}
	j.mu.Lock()
	f, old, dir, upTo := j.f, j.unsynced, j.dirDirty, j.written
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

// read returns up to max records with seq > after, in order. It moves the
// ring's frames into the segments first and reads them from there (the
// page cache, just written): the ring is for the data path only.
func (j *journal) read(after int64, max int) ([]pending, error) {
	return j.readWith(nil, nil, nil, after, max)
}

// shipBuf is the memory the shipper reads its batches into, reused from
// one batch to the next: a batch's records and their data are valid only
// until the next readInto. Allocating it for every batch (about 1 KB a
// record with the read buffer) was most of what the garbage collector
// had to collect in a recording daemon, whose data path allocates next to
// nothing.
type shipBuf struct {
	recs []pending
	// dirty is how many of recs' first slots hold an earlier batch's
	// records.
	dirty int
	slabs slabs
	// kept is the journal's kept frames this batch was read from; the
	// next read gives it back to the journal to keep frames in again.
	kept []byte
}

// readInto is read into buf: the shipper's form, which allocates nothing
// once buf has grown to a batch.
func (j *journal) readInto(buf *shipBuf, after int64, max int) ([]pending, error) {
	buf.slabs.reset()
	out, err := j.readWith(buf.recs[:0], &buf.slabs, &buf.kept, after, max)
	// What an earlier batch left in the slots this one did not overwrite
	// is cleared, so that it keeps no buffer alive (a large frame's own).
	// Clearing every slot before the read cost ~1% of the shipper: a
	// full batch's 2,000 pendings of 160 bytes, all overwritten anyway.
	if unsafe.SliceData(out) == unsafe.SliceData(buf.recs) {
		if buf.dirty > len(out) {
			clear(buf.recs[len(out):buf.dirty])
		}
	} else {
		clear(buf.recs[:buf.dirty])
	}
	buf.dirty = 0
	if cap(out) <= 1<<16 {
		buf.recs, buf.dirty = out[:0], len(out)
	}
	return out, err
}

// readWith reads into out, the payloads into sl; spare, if not nil, is a
// buffer the last batch was read from (no longer used), given to the
// journal to keep frames in, and gets the one this batch is read from.
func (j *journal) readWith(out []pending, sl *slabs, spare *[]byte, after int64, max int) ([]pending, error) {
	j.readMu.Lock()
	defer j.readMu.Unlock()
	if err := j.drainKeeping(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	segs := append(j.segsCopy[:0], j.segs...)
	j.segsCopy = segs
	// Sized at once: growing it by appends cost the shipper a quarter of
	// its reading (seqs may skip, so this is an upper bound).
	size := min(int64(max), j.written-after, 1<<20)
	if size < 0 {
		size = 0 // the store is ahead of the journal
	}
	if int64(cap(out)) < size {
		out = make([]pending, 0, size)
	}
	j.mu.Unlock()
	if sl == nil {
		sl = &slabs{}
	}
	if j.names == nil {
		j.names = &nameCache{}
	}
	if k := &j.kept; len(k.buf) > 0 {
		buf := k.buf
		var free []byte // to keep frames in from now on
		if spare != nil {
			free, *spare = (*spare)[:0], buf
		}
		k.buf = free
		if k.after <= after {
			// The records after after start in what was kept (or
			// before any of it): taken from there. Otherwise (a
			// shipment failed and is read again) they are read from
			// the segments, as before.
			var used int
			var last int64
			var whole bool
			out, used, last, whole = j.parseFrames(buf, out, after, max, false)
			switch {
			case !whole:
				// Not what drain kept: read from the segment
				// from here on, which stops where it is damaged.
				j.cur.path, j.cur.off, j.cur.seq = k.path, k.off+int64(used), k.after
				if used > 0 {
					j.cur.seq = last
				}
			case used < len(buf):
				// The batch is full: the rest stays kept for the
				// next read, moved to the free buffer (this one is
				// the batch's).
				k.buf = append(roomKept(k.buf, len(buf)-used), buf[used:]...)
				if used > 0 {
					k.off, k.after = k.off+int64(used), last
				}
				return out, nil
			}
			if len(out) >= max {
				return out, nil
			}
			if j.cur.seq > after {
				after = j.cur.seq
			}
		}
	}
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
		out = j.readSegment(f, s, off, out, sl, after, max)
		_ = f.Close()
		if len(out) >= max {
			break
		}
	}
	return out, nil
}

// readSegment appends to out the records after seq after in segment s
// (open as f) from byte off, until out holds max or the segment ends or is
// damaged there. The segment is read with pread straight into the slabs,
// whose bytes the records' data are: the frames are checked and decoded
// where they landed, not copied again from a read buffer.
func (j *journal) readSegment(f *os.File, s segment, off int64, out []pending, sl *slabs, after int64, max int) []pending {
	need := frameHeader // bytes the next read must bring for a frame to be whole
	for len(out) < max && off < s.size {
		buf := sl.free(need)
		if rem := s.size - off; int64(len(buf)) > rem {
			buf = buf[:rem]
		}
		if len(buf) < need {
			return out // the segment ends inside a frame
		}
		n, _ := f.ReadAt(buf, off)
		if n < need {
			return out // shorter than it was: nothing more to read
		}
		buf = buf[:n]
		var used int
		var last int64
		var whole bool
		out, used, last, whole = j.parseFrames(buf, out, after, max, true)
		if used > 0 {
			off += int64(used)
			j.cur.path, j.cur.off, j.cur.seq = s.path, off, last
		}
		// The frames' bytes stay (the records point into them); the
		// rest of what was read is read again with the next frame.
		sl.use(used)
		if !whole {
			return out // damaged here
		}
		if len(out) < max {
			need = frameHeader
			if rest := buf[used:]; len(rest) >= frameHeader {
				need += int(binary.BigEndian.Uint32(rest[:4]))
			}
		}
	}
	return out
}

// parseFrames appends to out the records after seq after of the frames
// in buf, until out holds max or buf ends. It returns how many bytes of
// buf it took (whole frames), the seq of the last frame taken, and false
// if it stopped at a damaged frame rather than at buf's end or max. The
// records' data are buf's bytes. check says to check each frame's
// checksum: frames read from a segment may be torn or damaged there;
// kept frames are this process's own copy of complete frames in the ring
// (below its head), checksummed by the session that wrote them a moment
// before, and a checksum is no defence against whoever could write into
// the ring (root: it could as well write a matching one).
func (j *journal) parseFrames(buf []byte, out []pending, after int64, max int, check bool) ([]pending, int, int64, bool) {
	used := 0
	var last int64
	for len(out) < max {
		rest := buf[used:]
		if len(rest) < frameHeader {
			break
		}
		ln := int(binary.BigEndian.Uint32(rest[:4]))
		if ln == 0 || ln > maxFrame {
			return out, used, last, false
		}
		if len(rest) < frameHeader+ln {
			break
		}
		payload := rest[frameHeader : frameHeader+ln : frameHeader+ln]
		if check && crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(rest[4:]) {
			return out, used, last, false
		}
		p, err := decodePayload(payload, j.names)
		if err != nil {
			return out, used, last, false
		}
		used += frameHeader + ln
		last = p.Seq
		if p.Seq > after {
			out = append(out, p)
		}
	}
	return out, used, last, true
}

// release deletes the segments whose records are all at or below seq,
// except the active one.
func (j *journal) release(seq int64) {
	// What the shipper took may still be in the ring only if it read
	// before the last appends: move it out so its segment can go.
	_ = j.drain()
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
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

// close moves the ring's frames into the segments, syncs them and closes
// the journal; the ring's file goes once it holds nothing the segments do
// not.
func (j *journal) close() error {
	derr := j.drain()
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closed = true
	j.space.Broadcast()
	var errs []error
	if derr != nil {
		errs = append(errs, derr)
	}
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
	if rg := j.rg; rg != nil {
		if errors.Join(errs...) == nil && rg.head() == rg.tail() {
			_ = os.Remove(rg.path)
		}
		errs = append(errs, rg.close())
		j.rg = nil
	}
	return errors.Join(errs...)
}

type frameReader struct {
	f   io.Reader
	hdr [frameHeader]byte
	one []byte // the payload read, reused for each (a scan keeps none)
	// names keeps the kinds and session ids read: a batch has few of
	// them, each in many records, so each is allocated once.
	names *nameCache
}

// nameCache interns the short strings of frames (kinds, session ids).
type nameCache struct {
	m map[string]string
	// recent holds the last names seen, by their length and two bytes:
	// a batch's few kinds and sessions mostly hit it, at a comparison
	// instead of the map's hashing (two look-ups were a fifth of
	// decoding a frame).
	recent [64]string
}

// namesKept bounds a nameCache: past it, it starts again.
const namesKept = 4096

func (c *nameCache) get(b []byte) string {
	if c == nil {
		return string(b)
	}
	if len(b) == 0 {
		return ""
	}
	slot := &c.recent[(len(b)^int(b[len(b)-1])^int(b[len(b)/2])<<2)&(len(c.recent)-1)]
	if *slot == string(b) {
		return *slot
	}
	s, ok := c.m[string(b)]
	if !ok {
		if c.m == nil || len(c.m) >= namesKept {
			c.m = make(map[string]string, 64)
		}
		s = string(b)
		c.m[s] = s
	}
	*slot = s
	return s
}

// slabChunk is the size of the chunks payloads are read into.
const slabChunk = 256 << 10

// slabsKept bounds the chunks kept for the next batch (a batch of
// pgbench-like statements takes about five).
const slabsKept = 16

// slabs is memory for payloads, in chunks: a payload never moves once
// read (records point into it), and reset reuses the chunks.
type slabs struct {
	chunks   [][]byte
	cur      int
	spill    []byte
	spilling bool   // free's room is in spill
	own      []byte // free's room is this, made for one large frame
}

func (s *slabs) reset() {
	for i := range s.chunks {
		s.chunks[i] = s.chunks[i][:0]
	}
	s.cur, s.spill, s.spilling, s.own = 0, nil, false, nil
}

// free returns the unused room of the current chunk, at least n bytes
// (another chunk if it has less); use says how much of it was taken.
func (s *slabs) free(n int) []byte {
	s.own, s.spilling = nil, false
	if n > slabChunk {
		s.own = make([]byte, n) // a large sample: its own, not kept
		return s.own
	}
	for ; s.cur < len(s.chunks); s.cur++ {
		if c := s.chunks[s.cur]; cap(c)-len(c) >= n {
			return c[len(c):cap(c)]
		}
	}
	if len(s.chunks) < slabsKept {
		s.chunks = append(s.chunks, make([]byte, 0, slabChunk))
		s.cur = len(s.chunks) - 1
		return s.chunks[s.cur][:slabChunk]
	}
	// A batch larger than what is kept: the rest in chunks of its own.
	s.spilling = true
	if cap(s.spill)-len(s.spill) < n {
		s.spill = make([]byte, 0, slabChunk)
	}
	return s.spill[len(s.spill):cap(s.spill)]
}

// use takes the first n bytes of what free returned last: they are not
// handed out again until reset.
func (s *slabs) use(n int) {
	switch {
	case s.own != nil:
		s.own = nil // the records keep it alive
	case s.spilling:
		s.spill = s.spill[:len(s.spill)+n]
	case s.cur < len(s.chunks):
		s.chunks[s.cur] = s.chunks[s.cur][:len(s.chunks[s.cur])+n]
	}
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
	if cap(r.one) < int(n) {
		r.one = make([]byte, n)
	}
	payload := r.one[:n]
	if _, err := io.ReadFull(r.f, payload); err != nil {
		return pending{}, 0, err
	}
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(r.hdr[4:]) {
		return pending{}, 0, errors.New("frame checksum mismatch")
	}
	p, err := decodePayload(payload, r.names)
	if err != nil {
		return pending{}, 0, fmt.Errorf("decode frame: %w", err)
	}
	return p, int64(frameHeader) + int64(n), nil
}

// decodePayload decodes a frame's payload. Frames are this file's own
// encoding (appendFrameHead): those are read field by field, and anything
// else goes through encoding/json, which gives the same result for valid
// JSON (a fuzz target holds the two together).
// names, if not nil, interns the kind and session strings.
func decodePayload(payload []byte, names *nameCache) (pending, error) {
	if p, ok := decodeOwn(payload, names); ok {
		return p, nil
	}
	var f struct {
		pending
		TimeNS *int64 `json:"time_ns"`
	}
	err := json.Unmarshal(payload, &f)
	if f.TimeNS != nil {
		f.Time = time.Unix(0, *f.TimeNS).UTC()
	}
	return f.pending, err
}

func decodeOwn(b []byte, names *nameCache) (pending, bool) {
	var p pending
	rest, ok := cutPrefix(b, `{"seq":`)
	if !ok {
		return p, false
	}
	seqText := rest
	var seqDigits int
	p.Seq, seqDigits, rest, ok = paddedInt(rest)
	if !ok {
		return p, false
	}
	seqText = seqText[:seqDigits]
	head := rest
	var nsText []byte
	if r, ok := cutPrefix(rest, `,"time_ns":`); ok {
		var ns int64
		if ns, rest, ok = jsonInt(r); !ok {
			return p, false
		}
		p.Time = time.Unix(0, ns).UTC()
		if nsText = r[:len(r)-len(rest)]; nsText[0] == '-' && nsText[1] == '0' {
			nsText = nil // -0: not how AppendInt writes it
		}
	} else {
		// A frame of the previous version: the time as RFC 3339 text.
		if rest, ok = cutPrefix(rest, `,"time":"`); !ok {
			return p, false
		}
		i := bytes.IndexByte(rest, '"')
		if i < 0 {
			return p, false
		}
		t, ok := parseOwnTime(rest[:i])
		if !ok {
			var err error
			if t, err = time.Parse(time.RFC3339Nano, string(rest[:i])); err != nil {
				return p, false
			}
		}
		p.Time = t
		rest = rest[i+1:]
	}
	if rest, ok = cutPrefix(rest, `,"kind":`); !ok {
		return p, false
	}
	var kindAsIs, sessAsIs bool
	if p.Kind, rest, kindAsIs, ok = plainString(rest, names); !ok {
		return p, false
	}
	if rest, ok = cutPrefix(rest, `,"session":`); !ok {
		return p, false
	}
	if p.Session, rest, sessAsIs, ok = plainString(rest, names); !ok {
		return p, false
	}
	head = head[:len(head)-len(rest)]
	if rest, ok = cutPrefix(rest, `,"data":`); !ok {
		return p, false
	}
	if nsText != nil {
		p.frame.seq, p.frame.ns = seqText, nsText
		// The line leaves out an empty session and escapes what
		// appendPlain escapes: only then does it differ from the frame.
		if kindAsIs && sessAsIs && p.Session != "" {
			p.frame.head = head
		}
	}
	if len(rest) < 2 || rest[len(rest)-1] != '}' {
		return p, false
	}
	// The data is taken as it stands, not scanned again: the frame's
	// checksum held, and only this daemon (root, 0600) writes frames,
	// with data its own encoders made. What a scan would catch is a bug
	// of those, which the encoders' own tests hold to encoding/json.
	data := rest[:len(rest)-1]
	if isSpace(data[0]) || isSpace(data[len(data)-1]) {
		return p, false
	}
	p.Data = data
	return p, true
}

// jsonInt reads an integer as JSON writes it (-?(0|[1-9][0-9]*)) that
// fits an int64, followed by more of the object.
func jsonInt(b []byte) (int64, []byte, bool) {
	n := 0
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		n++
	}
	d := n
	// Scanned and valued in one pass (the time's 19 digits are in every
	// frame); 19 digits do not overflow v, more are refused below.
	var v uint64
	for n < len(b) && n-d < 20 {
		c := b[n] - '0'
		if c > 9 {
			break
		}
		v = v*10 + uint64(c)
		n++
	}
	if n == d || n-d > 19 || (n-d > 1 && b[d] == '0') || n >= len(b) || b[n] != ',' {
		return 0, b, false
	}
	if neg {
		if v > 1<<63 {
			return 0, b, false
		}
		return int64(-v), b[n:], true
	}
	if v > 1<<63-1 {
		return 0, b, false
	}
	return int64(v), b[n:], true
}

// digits is the value of 1 to 19 decimal digits (negated if neg), if an
// int64 holds it: what strconv.ParseInt gives, without its generality,
// which was a third of decoding a frame's head.
func digits(b []byte, neg bool) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64 // 19 digits do not overflow it
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if neg {
		if v > 1<<63 {
			return 0, false
		}
		return int64(-v), true
	}
	if v > 1<<63-1 {
		return 0, false
	}
	return int64(v), true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func cutPrefix(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || string(b[:len(prefix)]) != prefix {
		return b, false
	}
	return b[len(prefix):], true
}

// paddedInt reads the seq as appendFrameHead leaves it: digits (how many
// is returned too), then spaces up to seqWidth.
func paddedInt(b []byte) (int64, int, []byte, bool) {
	if len(b) < seqWidth {
		return 0, 0, b, false
	}
	f := b[:seqWidth]
	n := 0
	for n < len(f) && f[n] >= '0' && f[n] <= '9' {
		n++
	}
	for k := n; k < len(f); k++ {
		if f[k] != ' ' {
			return 0, 0, b, false
		}
	}
	if n == 0 || (n > 1 && f[0] == '0') {
		return 0, 0, b, false
	}
	v, ok := digits(f[:n], false)
	if !ok {
		return 0, 0, b, false
	}
	return v, n, b[seqWidth:], true
}

// plainString reads a JSON string without escapes or bytes encoding/json
// would change (anything else is left to it), interned in names. asIs is
// whether appendPlain writes it back as the same bytes (no < > &).
func plainString(b []byte, names *nameCache) (s string, rest []byte, asIs, ok bool) {
	if len(b) < 2 || b[0] != '"' {
		return "", b, false, false
	}
	asIs = true
	for i := 1; i < len(b); i++ {
		k := nameClass[b[i]]
		if k == nameByte {
			continue // one look-up for the bytes of every kind and session id
		}
		switch k {
		case nameQuote:
			return names.get(b[1:i]), b[i+1:], asIs, true
		case nameEscaped:
			asIs = false
		default:
			return "", b, false, false
		}
	}
	return "", b, false, false
}

const (
	nameByte    = iota // as it is, in the frame and in a line
	nameQuote          // the string's end
	nameEscaped        // < > &: as it is in the frame, escaped in a line
	nameBad            // what plainString leaves to encoding/json
)

// nameClass is what plainString makes of each byte.
var nameClass = func() (t [256]uint8) {
	for c := range t {
		switch {
		case c == '"':
			t[c] = nameQuote
		case c < 0x20 || c >= 0x7f || c == '\\':
			t[c] = nameBad
		case c == '<' || c == '>' || c == '&':
			t[c] = nameEscaped
		}
	}
	return t
}()

// parseOwnTime reads a time as appendTime writes it in UTC
// (2006-01-02T15:04:05[.fraction]Z, the fraction without trailing zeros);
// ok is false for anything else, which time.Parse then reads. The shipper
// reads every record's time: time.Parse's general layout machinery was a
// tenth of its reading.
func parseOwnTime(b []byte) (time.Time, bool) {
	if len(b) < 20 || b[len(b)-1] != 'Z' || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	num := func(s []byte) (int, bool) {
		v := 0
		for _, c := range s {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	y, ok1 := num(b[0:4])
	mo, ok2 := num(b[5:7])
	d, ok3 := num(b[8:10])
	h, ok4 := num(b[11:13])
	mi, ok5 := num(b[14:16])
	sec, ok6 := num(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || mo < 1 || mo > 12 || d < 1 || d > daysIn(time.Month(mo), y) || h > 23 || mi > 59 || sec > 59 {
		return time.Time{}, false
	}
	ns := 0
	if frac := b[19 : len(b)-1]; len(frac) > 0 {
		// appendTime writes 1 to 9 digits, the last not a zero.
		if frac[0] != '.' || len(frac) < 2 || len(frac) > 10 || frac[len(frac)-1] == '0' {
			return time.Time{}, false
		}
		v, ok := num(frac[1:])
		if !ok {
			return time.Time{}, false
		}
		for k := len(frac) - 1; k < 9; k++ {
			v *= 10
		}
		ns = v
	}
	return time.Date(y, time.Month(mo), d, h, mi, sec, ns, time.UTC), true
}

func daysIn(m time.Month, y int) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// frameSeq reads the seq of a frame's payload.
func frameSeq(payload []byte) (int64, bool) {
	if isRaw(payload) {
		if len(payload) < 9 {
			return 0, false
		}
		if seq := int64(binary.LittleEndian.Uint64(payload[1:])); seq > 0 {
			return seq, true
		}
		return 0, false
	}
	if rest, ok := cutPrefix(payload, `{"seq":`); ok {
		if seq, _, _, ok := paddedInt(rest); ok {
			return seq, true
		}
	}
	var p struct {
		Seq *int64 `json:"seq"`
	}
	if json.Unmarshal(payload, &p) != nil || p.Seq == nil {
		return 0, false
	}
	return *p.Seq, true
}
