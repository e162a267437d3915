package audit

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// The embedded store keeps each block's text out of SQLite: SQLite passed
// it through its pages twice (its WAL, then its checkpoint into the
// database), four system calls per 4 KiB page, about 2 µs of CPU per
// pgbench statement (docs/AUDIT.md, Cost). The shipper appends a block's
// lines to an append-only block file with one write(2) instead, and the
// audit_blocks row holds where they are and their checksum (textSum). The team store
// keeps its text inline (its server is elsewhere).
//
// Files are named CHAIN-DAY-N.blocks (CHAIN from the daemon's id, DAY the
// UTC date of their creation, N a counter of the chain's files) and roll
// at blockFileMax bytes or at a new day, so that retention can delete whole files and a pruned record never
// sits in a file much longer than a day after its block was pruned.

// blockFileMax is the size at which a block file rolls.
const blockFileMax = 64 << 20

// maxBlockText bounds what a row may claim a block's text takes (a block
// is at most maxBlockBytes, or one record of at most a journal frame), so
// that an edited row cannot make a reader allocate without bound.
const maxBlockText = maxBlockBytes + maxFrame + 4096

// blockFiles appends block text to block files. Each daemon's chain has
// files of its own (daemons may share an SQLite file, and each ships on
// its own): only the shipper of that daemon writes them, readers open the
// files themselves.
type blockFiles struct {
	dir string

	mu     sync.Mutex
	chains map[string]*chainFiles // by daemon
	now    func() time.Time
	closed bool
	dbuf   []byte // writeDirect's, page-aligned
}

// chainFiles is where one daemon's blocks are appended.
type chainFiles struct {
	prefix string   // of its files' names
	ready  bool     // cur is the file to append to (or none yet)
	redo   bool     // a write or its commit failed: ready again before the next
	cur    *os.File // nil until the first block after a start or a roll
	name   string
	day    string // cur's day
	size   int64  // bytes of cur that are in use
	dirty  bool   // cur written since it was last synced
	lastN  int    // the highest counter of the chain's files

	// dio is cur opened again with O_DIRECT (nil where the file system
	// refuses it): large appends go through it, not the page cache (see
	// writeDirect). tail is cur's bytes from the last dioAlign boundary
	// to size, which the next direct append writes again; padded is
	// whether cur holds a direct write's zero padding after size, which
	// cutPadding removes.
	dio    *os.File
	tail   []byte
	padded bool
}

func newBlockFiles(dir string) *blockFiles {
	return &blockFiles{dir: dir, now: time.Now, chains: map[string]*chainFiles{}}
}

// chainPrefix names a daemon's block files: daemon ids are whatever the
// daemon-id file holds, so its hash, not the id, goes into a file name.
func chainPrefix(daemon string) string {
	sum := sha256.Sum256([]byte(daemon))
	return hex.EncodeToString(sum[:8])
}

// blockFileName is the name of a chain's n-th block file, made on day.
func blockFileName(prefix, day string, n int) string {
	return fmt.Sprintf("%s-%s-%06d.blocks", prefix, day, n)
}

// parseBlockFileName reads a block file's name; the names come from the
// store's rows, which whoever can write the database controls, so nothing
// that could lead out of the directory passes.
func parseBlockFileName(name string) (prefix, day string, n int, ok bool) {
	base, found := strings.CutSuffix(name, ".blocks")
	if !found || len(base) < 27 || base[16] != '-' || base[25] != '-' {
		return "", "", 0, false
	}
	prefix, day, num := base[:16], base[17:25], base[26:]
	for _, c := range []byte(prefix) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", "", 0, false
		}
	}
	for _, c := range []byte(day + num) {
		if c < '0' || c > '9' {
			return "", "", 0, false
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 || len(num) > 12 {
		return "", "", 0, false
	}
	return prefix, day, n, true
}

// endsFunc returns, from the store's rows, where the last block they place
// in the block file name ends, and the newest block file any row of
// daemon names.
type endsFunc func(ctx context.Context, daemon, name string) (end int64, newest string, err error)

// chain is daemon's state, made on first use. The caller holds mu.
func (f *blockFiles) chain(daemon string) *chainFiles {
	c := f.chains[daemon]
	if c == nil {
		c = &chainFiles{prefix: chainPrefix(daemon)}
		f.chains[daemon] = c
	}
	return c
}

// prepare finds the file to append daemon's blocks to: its newest, cut
// back to the end of the last block the store indexes in it (bytes after
// it were written by a shipment whose commit never happened: a kill
// between the two, or a failed transaction; the journal still has their
// records). A new file never takes the name of one the rows name, even if
// it was removed: its blocks are then reported missing, not read from
// another file's bytes. The caller holds mu.
func (f *blockFiles) prepare(ctx context.Context, daemon string, c *chainFiles, end endsFunc) error {
	if c.ready && !c.redo {
		return nil
	}
	c.closeDirect()
	if c.cur != nil {
		_ = c.cur.Close()
		c.cur = nil
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("create the block file directory: %w", err)
	}
	if err := os.Chmod(f.dir, 0o700); err != nil {
		return fmt.Errorf("restrict the block file directory: %w", err)
	}
	names, err := f.list(c.prefix)
	if err != nil {
		return err
	}
	last := ""
	if len(names) > 0 {
		last = names[len(names)-1]
	}
	e, newest, err := end(ctx, daemon, last)
	if err != nil {
		return fmt.Errorf("find the end of the block files: %w", err)
	}
	c.lastN = 0
	if p, _, n, ok := parseBlockFileName(newest); ok && p == c.prefix {
		c.lastN = n
	}
	_, day, n, ok := parseBlockFileName(last)
	if !ok || n < c.lastN {
		// No file, or the newest the rows name is gone.
		c.ready, c.redo = true, false
		return nil
	}
	c.lastN = n
	fh, err := os.OpenFile(filepath.Join(f.dir, last), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open block file %s: %w", last, err)
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return fmt.Errorf("open block file %s: %w", last, err)
	}
	if fi.Size() > e {
		if err := fh.Truncate(e); err != nil {
			fh.Close()
			return fmt.Errorf("cut block file %s back to its last indexed block: %w", last, err)
		}
		if err := fh.Sync(); err != nil {
			fh.Close()
			return fmt.Errorf("sync block file %s: %w", last, err)
		}
	}
	// A file shorter than its rows say is damage for verify to report:
	// it is not appended to, so that the damage stays as it was found.
	if fi.Size() < e || e >= blockFileMax || day != f.today() {
		fh.Close()
		c.ready, c.redo = true, false
		return nil
	}
	c.cur, c.name, c.day, c.size, c.dirty = fh, last, day, e, false
	c.ready, c.redo = true, false
	return c.openDirect(filepath.Join(f.dir, last))
}

func (f *blockFiles) today() string { return f.now().UTC().Format("20060102") }

// list returns the names of the block files of the chain with prefix (all
// chains for ""), oldest first.
func (f *blockFiles) list(prefix string) ([]string, error) {
	ents, err := os.ReadDir(f.dir)
	if err != nil {
		return nil, fmt.Errorf("list the block files: %w", err)
	}
	type named struct {
		name string
		n    int
	}
	var ns []named
	for _, e := range ents {
		if p, _, n, ok := parseBlockFileName(e.Name()); ok && e.Type().IsRegular() && (prefix == "" || p == prefix) {
			ns = append(ns, named{e.Name(), n})
		}
	}
	slices.SortFunc(ns, func(a, b named) int { return a.n - b.n })
	out := make([]string, len(ns))
	for i, x := range ns {
		out[i] = x.name
	}
	return out, nil
}

// roll syncs and closes the chain's current file and makes the next one.
func (f *blockFiles) roll(c *chainFiles) error {
	if c.cur != nil {
		if err := c.cutPadding(); err != nil {
			return err
		}
		if c.dirty {
			if err := c.cur.Sync(); err != nil {
				return fmt.Errorf("sync block file %s: %w", c.name, err)
			}
		}
		c.closeDirect()
		if err := c.cur.Close(); err != nil {
			return fmt.Errorf("close block file %s: %w", c.name, err)
		}
		c.cur = nil
	}
	day := f.today()
	name := blockFileName(c.prefix, day, c.lastN+1)
	fh, err := os.OpenFile(filepath.Join(f.dir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create block file %s: %w", name, err)
	}
	// The new name must be durable before any row naming it can be: once
	// per file, not per block.
	if err := syncDir(f.dir); err != nil {
		fh.Close()
		return err
	}
	c.lastN++
	c.cur, c.name, c.day, c.size, c.dirty = fh, name, day, 0, false
	return c.openDirect(filepath.Join(f.dir, name))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// fileRef is where a block's text is.
type fileRef struct {
	name   string
	off    int64
	length int64
	sum    string // textSum of the text
}

// textSum is a block text's checksum as stored in its row: CRC-32C (the
// journal's crcTable; computed in hardware on amd64 and arm64), hex.
// It catches a block's bytes changed where no record's own hash would
// (the lines' framing, an unhashed seq) and text read from the wrong
// place. It is not what makes the record tamper-evident, and a
// cryptographic hash here would add nothing to that: whoever can rewrite
// a block file can rewrite its row's sum as well, and every record's
// content is in the signed chain of SHA-256 links either way. A SHA-256
// of every block cost the shipper about 0.4 µs a statement, more than the
// chain's own hashing; this costs a tenth of it.
func textSum(text []byte) string {
	return fmt.Sprintf("%08x", crc32.Checksum(text, crcTable))
}

// write appends text, a block of daemon's, with one write(2) and returns
// where it is. The bytes are in the page cache: sync makes them durable.
func (f *blockFiles) write(ctx context.Context, daemon string, end endsFunc, text []byte) (fileRef, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fileRef{}, errors.New("block files closed")
	}
	c := f.chain(daemon)
	if err := f.prepare(ctx, daemon, c, end); err != nil {
		return fileRef{}, err
	}
	if c.cur == nil || c.day != f.today() || (c.size > 0 && c.size+int64(len(text)) > blockFileMax) {
		if err := f.roll(c); err != nil {
			return fileRef{}, err
		}
	}
	ref := fileRef{name: c.name, off: c.size, length: int64(len(text)), sum: textSum(text)}
	c.dirty = true
	var err error
	if c.dio != nil && len(text) >= directMin {
		err = f.writeDirect(c, text)
	} else if _, err = c.cur.WriteAt(text, c.size); err == nil && c.dio != nil {
		c.keepTail(text)
	}
	if err != nil {
		c.redo = true
		return fileRef{}, fmt.Errorf("append to block file %s: %w", c.name, err)
	}
	c.size += int64(len(text))
	return ref, nil
}

// dioAlign is what O_DIRECT asks a write's offset, length and memory to
// be multiples of: a page, which covers every device's logical block.
const dioAlign = 4096

// Appending a large block's text through the page cache cost the shipper
// more than anything else it does with a sampled record: the kernel takes
// a fresh page for every 4 KiB and copies into it, and its writeback
// handles each page again later; about 0.3 to 1 ns of CPU a byte here
// against 0.1 for a direct write, which the device reads from the
// shipper's own buffer (docs/AUDIT.md, Cost). A direct write has a fixed
// cost (the wait for the device, its submission), so small blocks still
// go through the page cache (directMin). What is durable when does not
// change: a direct write is on the device when it returns (a kill -9
// leaves it there, as it left the page cache), and sync's fsync still
// makes every append survive a power loss, at the same points. Readers
// keep reading through the page cache, which the kernel keeps coherent
// with direct writes.

// directMin is the smallest block text appended with a direct write: a
// shipment of 2,000 pgbench statements is about 0.9 MB, of sampled 20-row
// statements 3.6 MB.
const directMin = 1 << 20

// openDirect opens the chain's current file again for direct appends,
// and reads its tail. A file system that refuses O_DIRECT (tmpfs of old
// kernels) is appended to through the page cache, as before.
func (c *chainFiles) openDirect(path string) error {
	c.closeDirect()
	fh, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return nil
		}
		return fmt.Errorf("open block file %s for direct writes: %w", c.name, err)
	}
	start := c.size &^ (dioAlign - 1)
	tail := make([]byte, c.size-start, dioAlign)
	if _, err := c.cur.ReadAt(tail, start); err != nil {
		fh.Close()
		return fmt.Errorf("read the end of block file %s: %w", c.name, err)
	}
	c.dio, c.tail, c.padded = fh, tail, false
	return nil
}

// closeDirect closes the direct handle: cur stays, and appends go through
// it until openDirect.
func (c *chainFiles) closeDirect() {
	if c.dio != nil {
		_ = c.dio.Close()
	}
	c.dio, c.tail = nil, nil
}

// keepTail notes the file's new last partial page after text was
// appended at c.size.
func (c *chainFiles) keepTail(text []byte) {
	t := int((c.size + int64(len(text))) & (dioAlign - 1))
	if len(text) >= t {
		c.tail = append(c.tail[:0], text[len(text)-t:]...)
		return
	}
	c.tail = append(c.tail, text...)
}

// writeDirect appends text at c.size with a direct write: the last
// partial page again (c.tail), then text, padded with zeros to a page, in
// one pwrite from a page-aligned buffer. The padding stays after the
// end until cutPadding (a settle, a roll, closing): cutting it at every
// append made ext4 read the last block back from the device to zero its
// end. Nothing reads a file past the blocks its rows index, and a start
// cuts a file back to them (prepare). A file system that refuses the
// write (EINVAL: an alignment it does not take) is appended to through
// the page cache from then on.
func (f *blockFiles) writeDirect(c *chainFiles, text []byte) error {
	start := c.size &^ (dioAlign - 1)
	n := len(c.tail) + len(text)
	buf := f.scratch((n + dioAlign - 1) &^ (dioAlign - 1))
	copy(buf, c.tail)
	copy(buf[len(c.tail):], text)
	clear(buf[n:])
	if _, err := c.dio.WriteAt(buf, start); err != nil {
		if errors.Is(err, syscall.EINVAL) {
			c.closeDirect()
			_, err = c.cur.WriteAt(text, c.size)
		}
		return err
	}
	c.padded = c.padded || len(buf) > n
	c.tail = append(c.tail[:0], buf[n&^(dioAlign-1):n]...)
	return nil
}

// cutPadding cuts cur back to its blocks' end after direct writes.
func (c *chainFiles) cutPadding() error {
	if !c.padded {
		return nil
	}
	if err := c.cur.Truncate(c.size); err != nil {
		return fmt.Errorf("cut block file %s back to its end: %w", c.name, err)
	}
	c.padded = false
	return nil
}

// scratch is a page-aligned buffer of n bytes, kept for the next block
// while blocks are no larger than maxKeptBuf.
func (f *blockFiles) scratch(n int) []byte {
	if cap(f.dbuf) < n {
		b := make([]byte, n+n/4+dioAlign)
		off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (dioAlign - 1)
		b = b[off : off+n+n/4]
		if n > maxKeptBuf {
			return b[:n]
		}
		f.dbuf = b
	}
	return f.dbuf[:n]
}

// current is the file daemon's blocks are appended to ("" before the
// first).
func (f *blockFiles) current(daemon string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.chains[daemon]; c != nil && c.cur != nil {
		return c.name
	}
	return ""
}

// failed says the transaction that referenced the last writes did not
// commit: the files are cut back to what the store indexes before the
// next write.
func (f *blockFiles) failed() {
	f.mu.Lock()
	for _, c := range f.chains {
		c.redo = true
	}
	f.mu.Unlock()
}

// sync makes every block written so far durable. The store calls it
// before it syncs its own commits (durable), so that no settled row can
// name bytes a machine crash could take.
func (f *blockFiles) sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.chains {
		if c.cur == nil || !c.dirty {
			continue
		}
		if err := c.cutPadding(); err != nil {
			return err
		}
		if err := c.cur.Sync(); err != nil {
			return fmt.Errorf("sync block file %s: %w", c.name, err)
		}
		c.dirty = false
	}
	return nil
}

func (f *blockFiles) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	var errs []error
	for _, c := range f.chains {
		if c.cur != nil {
			errs = append(errs, c.cutPadding())
		}
		c.closeDirect()
		if c.cur != nil {
			errs = append(errs, c.cur.Close())
			c.cur = nil
		}
	}
	return errors.Join(errs...)
}

// removeUnused deletes daemon's block files no row names (every block in
// them pruned), but the one being appended to. Other daemons' files are
// theirs to remove: one may be new and not yet named by a committed row.
func (f *blockFiles) removeUnused(daemon string, used map[string]bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.chain(daemon)
	names, err := f.list(c.prefix)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, name := range names {
		if used[name] || (c.cur != nil && name == c.name) {
			continue
		}
		if err := os.Remove(filepath.Join(f.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("remove pruned block file %s: %w", name, err)
		}
		removed++
	}
	if removed > 0 {
		if err := syncDir(f.dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Why a block's text cannot be read as it was stored.
var (
	errTextMissing  = errors.New("missing")
	errTextCut      = errors.New("cut short")
	errTextMismatch = errors.New("no longer matches its checksum")
)

// readText reads a block's text from its file. A file cut or removed
// gives what is left (possibly nothing) with errTextCut or
// errTextMissing; text that does not match the row's checksum is returned
// with errTextMismatch, so that verify can still name the records in it
// that changed.
func (f *blockFiles) readText(ref fileRef) ([]byte, error) {
	if _, _, _, ok := parseBlockFileName(ref.name); !ok {
		return nil, fmt.Errorf("its row names %q, which is not a block file: %w", ref.name, errTextMissing)
	}
	if ref.off < 0 || ref.length < 0 || ref.length > maxBlockText {
		return nil, fmt.Errorf("its row places it at byte %d, %d bytes long, in block file %s, which no block is: %w", ref.off, ref.length, ref.name, errTextMissing)
	}
	fh, err := os.Open(filepath.Join(f.dir, ref.name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("block file %s is %w", ref.name, errTextMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("open block file %s: %w", ref.name, err)
	}
	defer fh.Close()
	text := make([]byte, ref.length)
	n, err := fh.ReadAt(text, ref.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read block file %s: %w", ref.name, err)
	}
	if int64(n) < ref.length {
		return text[:n], fmt.Errorf("block file %s ends before the block's %d bytes at byte %d: it was %w", ref.name, ref.length, ref.off, errTextCut)
	}
	if textSum(text) != ref.sum {
		return text, fmt.Errorf("its text at byte %d of block file %s %w", ref.off, ref.name, errTextMismatch)
	}
	return text, nil
}

// textRef reads a row's file columns: ok is false for a block whose text
// is inline (the team store, or a row of a store not yet moved).
func textRef(file sql.NullString, off, length sql.NullInt64, sum sql.NullString) (fileRef, bool) {
	if !file.Valid {
		return fileRef{}, false
	}
	return fileRef{name: file.String, off: off.Int64, length: length.Int64, sum: sum.String}, true
}

// blockText is a row's text: inline (records), or read from its block
// file. Errors are as readText's.
func (s *Store) blockText(records string, file sql.NullString, off, length sql.NullInt64, sum sql.NullString) (string, error) {
	ref, ok := textRef(file, off, length, sum)
	if !ok {
		return records, nil
	}
	if s.files == nil {
		return "", fmt.Errorf("its row names block file %s, but this store keeps no block files: %w", ref.name, errTextMissing)
	}
	b, err := s.files.readText(ref)
	return string(b), err
}

// endsIn is prepare's view of the rows, through tx.
func (s *Store) endsIn(tx *sql.Tx) endsFunc {
	return func(ctx context.Context, daemon, name string) (int64, string, error) {
		var end int64
		var newest string
		// A chain's names sort as they were made (the day, then a
		// counter of six digits or more, which grows with the days).
		err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(MAX(CASE WHEN file = ? THEN file_off + file_len END), 0), COALESCE(MAX(file), '')
			FROM audit_blocks WHERE daemon = ?`), name, daemon).Scan(&end, &newest)
		return end, newest, err
	}
}

// moveBlocksIntoFiles moves the text of an SQLite store's blocks into block
// files (schema version 3), as it is: whatever was edited before is still
// reported by verify. The files are synced before the migration commits:
// the commit removes the text from the database.
func moveBlocksIntoFiles(ctx context.Context, s *Store, tx *sql.Tx) error {
	if s.postgres || s.files == nil {
		return nil
	}
	end := s.endsIn(tx)
	daemon, first := "", int64(-1<<62)
	for {
		rows, err := tx.QueryContext(ctx, `SELECT daemon, first_seq, records FROM audit_blocks
			WHERE file IS NULL AND (daemon > ? OR (daemon = ? AND first_seq > ?)) ORDER BY daemon, first_seq LIMIT ?`, daemon, daemon, first, blocksPage)
		if err != nil {
			return fmt.Errorf("read the blocks to move into files: %w", err)
		}
		type inline struct {
			daemon string
			first  int64
			text   string
		}
		var page []inline
		for rows.Next() {
			var b inline
			if err := rows.Scan(&b.daemon, &b.first, &b.text); err != nil {
				rows.Close()
				return fmt.Errorf("read the blocks to move into files: %w", err)
			}
			page = append(page, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read the blocks to move into files: %w", err)
		}
		for _, b := range page {
			ref, err := s.files.write(ctx, b.daemon, end, []byte(b.text))
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE audit_blocks SET records = '', file = ?, file_off = ?, file_len = ?, text_crc = ?
				WHERE daemon = ? AND first_seq = ?`, ref.name, ref.off, ref.length, ref.sum, b.daemon, b.first); err != nil {
				return fmt.Errorf("move the block of %s from seq %d into a file: %w", b.daemon, b.first, err)
			}
		}
		if len(page) < blocksPage {
			break
		}
		daemon, first = page[len(page)-1].daemon, page[len(page)-1].first
	}
	return s.files.sync()
}

// dropUnsettled removes daemon's blocks after settled (the seq of the head
// file: what the daemon made durable and released from its journal) whose
// text a machine crash took from their block file, with every block after
// them and their index rows, so that the journal, which still holds all
// of their records, ships them again. Such a row is possible: its commit
// can reach the disk on its own (an SQLite checkpoint, the kernel's
// writeback) before the block file is synced, which happens only when the
// shipment is settled. Blocks at or before settled are never touched:
// damage there is for verify to report; so are blocks the journal could
// not ship again (it ends at journalLast: a journal removed or cut with
// the store's files is not a crash). Once per open; a no-op for the team
// store.
func (s *Store) dropUnsettled(ctx context.Context, daemon string, settled, journalLast int64) (int64, error) {
	if s.files == nil || !s.filesOn || s.recovered {
		return 0, nil
	}
	var from int64
	err := s.eachBlock(ctx, daemon, settled, func(b *block) (bool, error) {
		if b.First <= settled {
			return true, nil
		}
		if b.TextErr != nil || b.Err != nil {
			from = b.First
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	if from == 0 {
		s.recovered = true
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var n, last int64
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(MAX(last_seq), 0) FROM audit_blocks WHERE daemon = ? AND first_seq >= ?`),
		daemon, from).Scan(&n, &last); err != nil {
		return 0, err
	}
	if last > journalLast {
		s.recovered = true
		return 0, nil
	}
	for _, q := range []string{
		`DELETE FROM audit_blocks WHERE daemon = ? AND first_seq >= ?`,
		`DELETE FROM audit_session_blocks WHERE daemon = ? AND first_seq >= ?`,
		`DELETE FROM audit_sessions WHERE daemon = ? AND seq >= ?`,
	} {
		if _, err := tx.ExecContext(ctx, s.q(q), daemon, from); err != nil {
			return 0, fmt.Errorf("drop the unsettled blocks from seq %d: %w", from, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("drop the unsettled blocks from seq %d: %w", from, err)
	}
	s.files.failed() // cut the file back to what is indexed now
	s.recovered = true
	return n, nil
}
