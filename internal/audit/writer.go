package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"crypto/rand"
	"encoding/hex"

	"golang.org/x/sys/unix"

	"github.com/airlockhq/airlock/internal/session"
)

// Options configures a Writer.
type Options struct {
	StateDir string // the writer keeps its journal, key and ids under StateDir/audit
	Store    string // "" (SQLite in the state dir), a file path, or postgres://…
	Password string // for a postgres store (the daemon reads it from a root-only file)
	Policy   Policy
	// CommitInterval bounds how long a record waits for the journal to be
	// fsynced (the window a machine crash can lose).
	CommitInterval time.Duration
	// ShipInterval is how often the journal is shipped to the store
	// (default 1s, never less than CommitInterval), sooner once a full
	// batch waits. The journal is already durable: shipping less often
	// spreads each transaction's fixed cost (fsyncs of the store and of the
	// head file) over more records.
	ShipInterval time.Duration
	// CheckpointInterval is how often the head of the chain is signed.
	CheckpointInterval time.Duration
	Retention          time.Duration // 0 keeps records for ever
	SpoolMax           int64         // journal bytes at which sessions wait for the store
	Logger             *slog.Logger

	ringSize int64 // tests: the journal ring's size in bytes; -1 none, 0 the default

	// Bench takes steps out of recording, for a benchmark that measures
	// each step's cost against the one above (AIRLOCK_BENCH_OFF, which
	// only whoever starts airlockd sets; never from a configuration file).
	// A record kept with any of them set does not verify.
	Bench BenchSkip
}

// BenchSkip names the steps of recording a benchmark leaves out. Each
// leaves out everything the one after it does.
type BenchSkip struct {
	// Store: records are journaled (ring, segments, fsync) as ever, and
	// the shipper releases them without reading them back, chaining or
	// storing them.
	Store bool
	// StoreSync: records are shipped and stored, but the store is never
	// made durable (no WAL or block-file fsync, no head note), so the
	// journal's segments are released unsynced in the store.
	StoreSync bool
	// Ring (the "encode" step, between recording's "record" and "ship"):
	// a statement's record is encoded in full into a buffer that stays in
	// cache, and dropped; the other records are journaled as with Store.
	Ring bool
	// Copy (the "ringcopy" step): a statement's record is encoded into
	// such a buffer, numbered there and copied into the ring rather than
	// encoded in the ring in place; the rest as with Store.
	Copy bool
	// Fused (measurement only): as Store, but the drain chains each
	// record as it moves it into the segments and writes its two hashes
	// into the frame: the passes a record path built around one durable
	// write would keep (docs/AUDIT.md, "What one write would save").
	Fused bool
}

// diagnostic is whether s changes how a statement's record is journaled:
// those steps measure where its cost is, and store nothing, so that such
// a record never verifies as a real one.
func (s BenchSkip) diagnostic() bool { return s.Ring || s.Copy }

// Status is what `airlock status` says about the record.
type Status struct {
	Store          string    `json:"store"`
	Daemon         string    `json:"daemon"`
	KeyID          string    `json:"key_id"`
	Written        int64     `json:"written"` // newest seq in the journal
	Stored         int64     `json:"stored"`  // newest seq in the store
	Spooled        int64     `json:"spooled"` // records waiting in the journal for the store
	SpoolBytes     int64     `json:"spool_bytes"`
	SpoolMax       int64     `json:"spool_max"`
	Reachable      bool      `json:"reachable"`
	Error          string    `json:"error,omitempty"`
	DownSince      time.Time `json:"down_since,omitempty"`
	CheckpointSeq  int64     `json:"checkpoint_seq"`
	CheckpointTime time.Time `json:"checkpoint_time,omitempty"`
	Problem        string    `json:"problem,omitempty"` // the store disagrees with what this daemon wrote
	// RingFull counts records a session journaled through a segment
	// because the journal's ring was full: each made that session wait
	// for a file write.
	RingFull int64 `json:"ring_full,omitempty"`
}

// Writer is the session.Sink that records to the audit store.
type Writer struct {
	opts   Options
	log    *slog.Logger
	dir    string
	daemon string
	j      *journal
	inRing bool // the journal has a ring to encode statements into
	// noRaw (tests) encodes statements on the data path, as before raw
	// frames (rawframe.go).
	noRaw bool
	kick  chan struct{}
	boot  int64 // last seq written before this start

	// shipper only
	rbuf          shipBuf  // the batch read from the journal, reused
	recBuf        []Record // the batch's records, reused
	hashBuf       []byte   // the batch's hex hashes, reused
	linker        linker   // the shipper's, reused
	headNote      *headNote
	store         *Store
	stored        int64
	head          string // hash of record `stored`
	sig           *signer
	newKey        *Key // a key record to store with the next batch
	lastCP        Checkpoint
	cpDue         time.Time
	closed        bool // interrupted sessions are closed
	pruneAt       time.Time
	shipped       time.Time    // last ship
	settled       time.Time    // last settle
	journalSynced atomic.Int64 // unix ns of syncJournal's last fsync: Run calls it outside shipMu, Flush inside
	noted         int64        // seq in the head file

	rotate    sync.Mutex
	shipMu    sync.Mutex // one shipper at a time: Run, Flush
	mu        sync.Mutex // guards sig, newKey, stored, head, lastCP and the status fields below
	reachable bool
	lastErr   string
	downSince time.Time
	problem   string
}

type headFile struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"`
	Gen  uint64 `json:"gen,omitempty"` // which of head.go's two slots is newer
}

// Open prepares the record: the daemon's id and signing key, the journal
// (with whatever a killed predecessor left in it) and the store. A team
// store that cannot be reached is not an error: records spool until it is.
func Open(ctx context.Context, opts Options) (*Writer, error) {
	if opts.CommitInterval <= 0 {
		opts.CommitInterval = 200 * time.Millisecond
	}
	if opts.ShipInterval <= 0 {
		opts.ShipInterval = time.Second
	}
	opts.ShipInterval = max(opts.ShipInterval, opts.CommitInterval)
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = time.Minute
	}
	if opts.Bench.diagnostic() || opts.Bench.Fused {
		opts.Bench.Store = true
	}
	if opts.SpoolMax <= 0 {
		opts.SpoolMax = 1 << 30
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(opts.StateDir, "audit")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	w := &Writer{opts: opts, log: log, dir: dir, kick: make(chan struct{}, 1)}
	var err error
	if w.daemon, err = daemonID(filepath.Join(dir, "daemon-id")); err != nil {
		return nil, err
	}
	hf, hn, err := readHead(filepath.Join(dir, "head"))
	if err != nil {
		return nil, fmt.Errorf("read audit head: %w", err)
	}
	w.headNote = hn
	if _, err := readJSON(filepath.Join(dir, "checkpoint"), &w.lastCP); err != nil {
		return nil, fmt.Errorf("read last audit checkpoint: %w", err)
	}
	w.stored, w.head, w.noted = hf.Seq, hf.Hash, hf.Seq
	if w.head == "" {
		w.head = genesis
	}
	ring := uint64(ringDefault)
	if opts.ringSize != 0 {
		ring = uint64(max(opts.ringSize, 0))
	}
	if w.j, err = openJournalRing(filepath.Join(dir, "journal"), opts.SpoolMax, hf.Seq, ring); err != nil {
		return nil, err
	}
	w.j.benchLink = opts.Bench.Fused
	w.inRing = w.j.rg != nil
	for _, n := range w.j.notes {
		log.Warn("audit: " + n)
	}
	w.boot = w.j.lastSeq()
	var created bool
	if w.sig, created, err = loadSigner(filepath.Join(dir, "signing.key")); err != nil {
		return nil, err
	}
	spec := opts.Store
	if spec == "" {
		spec = filepath.Join(dir, "audit.db")
	}
	st, err := OpenStore(ctx, spec, opts.Password)
	if st == nil {
		return nil, err
	}
	w.store = st
	if err != nil {
		w.setDown(err)
		log.Warn("audit store unreachable at start; records spool in the journal until it is back", "store", st.Name(), "err", err)
	} else if err := w.sync(ctx); err != nil {
		w.setDown(err)
	}
	if created {
		w.recordKey(nil)
	}
	return w, nil
}

func daemonID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return string(trimSpace(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read audit daemon id: %w", err)
	}
	host, _ := os.Hostname()
	var r [6]byte
	_, _ = rand.Read(r[:])
	id := strings.ToLower(host) + "-" + hex.EncodeToString(r[:])
	if err := writeFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write audit daemon id: %w", err)
	}
	return id, nil
}

// Daemon is this daemon's chain id.
func (w *Writer) Daemon() string { return w.daemon }

// Store is the store the writer ships to.
func (w *Writer) Store() *Store { return w.store }

// Record implements session.Sink. It returns once the record is in the
// journal (the ring, or the kernel's page cache): the caller may then let
// the client see the result. It never drops a record; if the journal
// cannot be written it retries, holding the session, and says so in the
// log.
func (w *Writer) Record(ev session.Event) {
	if s := ev.Statement; s != nil && fastStatement {
		// Statements come at the rate of the traffic: copied raw into
		// the ring where it has room, to be redacted and encoded by the
		// drain (rawframe.go); else encoded by hand, nothing allocated.
		if len(ev.Session) > 0 {
			// The session's id was written at its start, and under load
			// is out of cache by its next statement: its line comes in
			// while the statement is redacted.
			prefetchLine(unsafe.Pointer(unsafe.StringData(ev.Session)))
		}
		at := recordTime(ev.Time)
		if w.inRing && !w.noRaw && !w.opts.Bench.diagnostic() && w.j.appendRaw(at.UnixNano(), string(ev.Kind), ev.Session, s, w.opts.Policy.RecordParams) {
			w.kickShipper()
			return
		}
		// No room for the raw frame before the ring's end: encoded here,
		// as the drain would.
		st, sqlPlain := statementOf(s, w.opts.Policy)
		var rs ResultSample
		if s.Sample != nil {
			rs = sampleOf(s.Sample)
			st.Sample = &rs
		}
		enc := func(b []byte) ([]byte, int) {
			b, seqAt := appendFrameHead(b, at, string(ev.Kind), ev.Session)
			b = appendStatementPlain(b, &st, sqlPlain)
			return append(b, '}'), seqAt
		}
		if w.opts.Bench.diagnostic() && w.benchStatement(enc, string(ev.Kind), ev.Session) {
			return
		}
		var b []byte
		var seqAt int
		var ok bool
		if w.inRing {
			_, b, seqAt, ok = w.j.appendInRing(enc)
		}
		if ok {
			w.kickShipper()
			return
		}
		if b != nil {
			// Encoded, but it outgrew the ring's room: appendFrame
			// copies it in around the ring's end.
			w.commit(b, seqAt, string(ev.Kind), ev.Session)
			return
		}
		bp := frameBufs.Get().(*[]byte)
		b, seqAt = enc(*bp)
		w.commit(b, seqAt, string(ev.Kind), ev.Session)
		if cap(b) <= 64<<10 {
			*bp = b
			frameBufs.Put(bp)
		}
		return
	}
	kind, data, err := fromEvent(ev, w.opts.Policy)
	if err != nil {
		w.log.Error("audit: unrecordable event", "err", err)
		return
	}
	w.append(kind, ev.Session, ev.Time, data)
}

// benchStatement journals a statement's record as w.opts.Bench's
// diagnostic steps say; false if it was left to the usual path (no ring).
// The buffer comes from a sync.Pool: each P keeps the last one it used,
// so an event loop finds its own, in its cache.
func (w *Writer) benchStatement(enc func([]byte) ([]byte, int), kind, sess string) bool {
	if !w.inRing {
		return false
	}
	bp := frameBufs.Get().(*[]byte)
	b, seqAt := enc(*bp)
	if !w.opts.Bench.Ring {
		if _, ok := w.j.appendCopied(b, seqAt); ok {
			w.kickShipper()
		} else {
			w.commit(b, seqAt, kind, sess)
		}
	}
	if cap(b) <= 64<<10 {
		*bp = b
		frameBufs.Put(bp)
	}
	return true
}

func recordTime(at time.Time) time.Time {
	if at.IsZero() {
		at = time.Now()
	}
	return at.UTC()
}

func (w *Writer) append(kind, sess string, at time.Time, data any) int64 {
	d, err := encodeData(data)
	if err != nil {
		w.log.Error("audit: encode record", "kind", kind, "err", err)
		return 0
	}
	bp := frameBufs.Get().(*[]byte)
	b, seqAt := appendFrameHead(*bp, recordTime(at), kind, sess)
	b = append(b, d...)
	b = append(b, '}')
	seq := w.commit(b, seqAt, kind, sess)
	if cap(b) <= 64<<10 {
		*bp = b
		frameBufs.Put(bp)
	}
	return seq
}

// commit journals a frame and returns its seq (0 if the journal is
// closed).
func (w *Writer) commit(b []byte, seqAt int, kind, sess string) int64 {
	var seq int64
	for i := 0; ; i++ {
		var err error
		seq, err = w.j.appendFrame(b, seqAt)
		if err == nil {
			break
		}
		if errors.Is(err, errJournalClosed) {
			w.log.Error("audit: record after close", "kind", kind, "session", sess)
			return 0
		}
		if errors.Is(err, errFrameTooLarge) {
			// Waiting would not make it fit (samples and compliance
			// copies are capped far below this).
			w.log.Error("audit: unrecordable event", "kind", kind, "session", sess, "err", err)
			return 0
		}
		if i == 0 {
			w.log.Error("audit: cannot write the journal; the session waits until it can", "err", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.kickShipper()
	return seq
}

// kickShipper tells the shipper a record is waiting. Most records find
// the last kick still pending (the shipper gathers a batch for the
// commit interval after taking one): len reads the buffer's count
// without the channel's lock, which a send takes, even one that fails.
func (w *Writer) kickShipper() {
	if len(w.kick) > 0 {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// recordKey writes the audit.key record of the current key, signed by prev.
func (w *Writer) recordKey(prev *signer) {
	k := Key{Daemon: w.daemon, KeyID: w.sig.id, PublicKey: w.sig.pubB64(), Time: time.Now().UTC()}
	kd := KeyData{KeyID: k.KeyID, PublicKey: k.PublicKey}
	if prev != nil {
		k.PreviousKey, k.Signature = prev.id, prev.sign(keyMessage(w.daemon, k.KeyID, k.PublicKey))
		kd.PreviousKey, kd.Signature = k.PreviousKey, k.Signature
	}
	k.Seq = w.append(KindKey, "", k.Time, kd)
	w.mu.Lock()
	w.newKey = &k
	w.mu.Unlock()
}

// Run ships the journal to the store until ctx is done, then ships what is
// left, signs a last checkpoint and closes the journal and the store.
func (w *Writer) Run(ctx context.Context) {
	// Shipping is deferrable work (the journal already holds every record
	// durably): on its own thread at a lower priority, it gives way to the
	// sessions when the machine is short of CPU, and catches up after.
	// The thread stays locked: when Run returns, the runtime ends it rather
	// than hand its lowered priority to other goroutines.
	runtime.LockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), shipNice); err != nil {
		w.log.Debug("audit: lower the shipper's priority", "err", err)
	}
	t := time.NewTicker(w.opts.CommitInterval)
	defer t.Stop()
	backoff := time.Duration(0)
	var retryAt time.Time
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			w.shipMu.Lock()
			if w.ship(fctx) == nil {
				w.checkpoint(fctx, true)
			}
			w.settle(true)
			w.shipMu.Unlock()
			cancel()
			_ = w.j.close()
			_ = w.store.Close()
			return
		case <-w.kick:
			// Let the batch gather for the rest of the window: one
			// fsync and one commit for everything in it.
			if !w.gather(ctx) {
				continue
			}
		case <-w.j.pressure:
			w.relieve()
			continue
		case <-t.C:
		}
		w.shipMu.Lock()
		if time.Now().Before(retryAt) || !w.shipDue() {
			w.shipMu.Unlock()
			// Between shipments (or while the store is down) the journal
			// is still fsynced on time.
			if err := w.syncJournal(); err != nil {
				w.log.Error("audit: fsync journal", "err", err)
			}
			continue
		}
		err := w.ship(ctx)
		if err == nil {
			w.checkpoint(ctx, false)
			w.retain(ctx)
		}
		w.shipMu.Unlock()
		if err != nil {
			if backoff == 0 {
				backoff = 500 * time.Millisecond
			} else if backoff < 15*time.Second {
				backoff *= 2
			}
			retryAt = time.Now().Add(backoff)
			continue
		}
		backoff = 0
	}
}

// gather waits out a commit interval for a batch to gather, draining the
// ring whenever an append finds it half full; false if ctx ended first.
func (w *Writer) gather(ctx context.Context) bool {
	window := time.NewTimer(w.opts.CommitInterval)
	defer window.Stop()
	for {
		select {
		case <-window.C:
			return true
		case <-w.j.pressure:
			w.relieve()
		case <-ctx.Done():
			return false
		}
	}
}

// relieve moves the ring's frames into the segments (no fsync: the commit
// interval's covers them), making room for the sessions.
func (w *Writer) relieve() {
	if err := w.j.drain(); err != nil {
		w.log.Error("audit: drain the journal's ring", "err", err)
	}
}

// shipDue says whether the shipper should ship now: its interval has
// passed, a full batch waits, or start-up work (a new key, sessions to
// close as interrupted) is pending. The caller holds shipMu.
func (w *Writer) shipDue() bool {
	if time.Since(w.shipped) >= w.opts.ShipInterval || !w.closed {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.newKey != nil || w.j.lastSeq()-w.stored >= shipBatch
}

// Flush ships everything written so far (tests, verify).
func (w *Writer) Flush(ctx context.Context) error {
	w.shipMu.Lock()
	defer w.shipMu.Unlock()
	if err := w.ship(ctx); err != nil {
		return err
	}
	w.settle(true)
	return nil
}

// Seal ships everything written so far and signs a checkpoint over it.
func (w *Writer) Seal(ctx context.Context) error {
	w.shipMu.Lock()
	defer w.shipMu.Unlock()
	if err := w.ship(ctx); err != nil {
		return err
	}
	w.checkpoint(ctx, true)
	w.settle(true)
	return nil
}

// Expect is what this daemon knows of its own chain, for Verify.
func (w *Writer) Expect() *Expect {
	w.mu.Lock()
	defer w.mu.Unlock()
	ex := &Expect{Daemon: w.daemon, Stored: w.stored, Hash: w.head}
	if w.lastCP.Seq > 0 {
		cp := w.lastCP
		ex.Checkpoint = &cp
	}
	return ex
}

// sync reads the store's view of this daemon's chain: after a crash it may
// be ahead of the head file (shipped, not yet noted), never behind it
// unless someone removed records.
func (w *Writer) sync(ctx context.Context) error {
	if err := w.store.Migrate(ctx); err != nil {
		return err
	}
	if n, err := w.store.dropUnsettled(ctx, w.daemon, w.noted, w.j.lastSeq()); err != nil {
		return fmt.Errorf("check the audit blocks shipped after seq %d: %w", w.noted, err)
	} else if n > 0 {
		w.log.Warn("audit: blocks shipped but not settled before a crash lost their text; they are shipped again from the journal", "after_seq", w.noted, "records", n)
	}
	seq, hash, err := w.store.head(ctx, w.daemon)
	if err != nil {
		return fmt.Errorf("read the audit chain head: %w", err)
	}
	if keys, err := w.store.Keys(ctx, w.daemon); err == nil {
		w.mu.Lock()
		have := false
		for _, k := range keys {
			have = have || k.KeyID == w.sig.id
		}
		if !have && w.newKey == nil {
			// The key record reached the journal but not the key table
			// (a crash in between): store the key with the next batch.
			w.newKey = &Key{Daemon: w.daemon, KeyID: w.sig.id, PublicKey: w.sig.pubB64(), Seq: max(seq, w.stored) + 1, Time: time.Now().UTC()}
		}
		w.mu.Unlock()
	}
	switch {
	case seq > w.stored:
		if last := w.j.lastSeq(); seq > last {
			// Records the journal never held: someone wrote into this
			// daemon's chain. The chain goes on (recording must not
			// stop), but says so in a record the next checkpoint signs.
			p := fmt.Sprintf("the store holds records seq %d to %d in this daemon's chain that this daemon never wrote", max(last, w.stored)+1, seq)
			w.log.Error("audit: " + p)
			w.mu.Lock()
			w.problem = p
			w.mu.Unlock()
			from := max(last, w.stored) + 1
			w.j.skipTo(seq)
			defer w.append(KindAlert, "", time.Now(), AlertData{Message: p, FromSeq: from, ToSeq: seq})
		}
		w.mu.Lock()
		w.stored, w.head = seq, hash
		w.mu.Unlock()
	case seq < w.stored && !(seq == 0 && w.prunedAll(ctx)):
		p := fmt.Sprintf("the store ends at seq %d but this daemon stored through seq %d: records were removed from the store (airlock audit verify names the break); new records continue the chain from seq %d", seq, w.stored, w.stored)
		w.log.Error("audit: " + p)
		w.mu.Lock()
		w.problem = p
		w.mu.Unlock()
	}
	w.setUp()
	return nil
}

func (w *Writer) prunedAll(ctx context.Context) bool {
	cps, err := w.store.Checkpoints(ctx, w.daemon)
	return err == nil && len(cps) > 0 && cps[len(cps)-1].Seq == w.stored
}

// shipBatch is both how many waiting records have the shipper ship before
// its interval is up and the most one shipment (one journal read, one
// store transaction, one block) takes: larger saved a little CPU under
// load but kept megabytes more in the live heap after a burst (shipbatch,
// docs/AUDIT.md "Cost").
const shipBatch = 2000

// shipNice is the shipper thread's nice value.
const shipNice = 10

// ship moves journal records into the store in batches, chaining them.
func (w *Writer) ship(ctx context.Context) error {
	w.shipped = time.Now()
	for {
		if err := w.syncJournal(); err != nil {
			w.log.Error("audit: fsync journal", "err", err)
		}
		if w.opts.Bench.Store {
			w.mu.Lock()
			w.stored = w.j.lastSeq()
			w.mu.Unlock()
			w.settle(false)
			return nil
		}
		if !w.isUp() {
			if err := w.sync(ctx); err != nil {
				w.setDown(err)
				return err
			}
		}
		batch, err := w.j.readInto(&w.rbuf, w.stored, shipBatch)
		if err != nil {
			return err
		}
		var keys []Key
		w.mu.Lock()
		if w.newKey != nil && w.newKey.Seq <= w.stored+int64(len(batch)) {
			keys = append(keys, *w.newKey)
		}
		w.mu.Unlock()
		if len(batch) == 0 && len(keys) == 0 {
			// Idle: the last batch's records keep nothing alive meanwhile.
			clear(w.recBuf)
			w.recBuf = w.recBuf[:0]
			return w.closeInterrupted(ctx)
		}
		recs := w.recBuf[:0]
		if cap(recs) < len(batch) {
			recs = make([]Record, 0, len(batch))
		}
		next := w.stored + 1
		for i := range batch {
			p := &batch[i] // not copied: a pending is 160 bytes
			if p.Seq != next {
				return w.fail(fmt.Errorf("audit journal skips from seq %d to %d", next-1, p.Seq))
			}
			recs = append(recs, Record{Schema: Schema, Daemon: w.daemon, Seq: p.Seq, Time: p.Time, Kind: p.Kind, Session: p.Session, Data: p.Data, frame: p.frame})
			next++
		}
		// The last batch's records that this one did not overwrite.
		if old := w.recBuf; unsafe.SliceData(old) == unsafe.SliceData(recs) && len(old) > len(recs) {
			clear(old[len(recs):])
		}
		w.recBuf = recs
		var prev string
		prev, w.hashBuf = w.linker.chainInto(w.hashBuf, w.head, recs)
		// The hashes live in hashBuf until the next batch: the head that
		// outlives it is a copy.
		prev = strings.Clone(prev)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = w.store.append(cctx, recs, nil, keys)
		cancel()
		if err != nil {
			return w.fail(fmt.Errorf("write %d records to the audit store %s: %w", len(recs), w.store.Name(), err))
		}
		w.mu.Lock()
		if len(keys) > 0 && w.newKey != nil && w.newKey.KeyID == keys[0].KeyID {
			w.newKey = nil
		}
		if len(recs) > 0 {
			w.stored, w.head = recs[len(recs)-1].Seq, prev
		}
		w.mu.Unlock()
		// The records stay until the next batch overwrites them, as the
		// pendings they point into stay until the next read: clearing
		// a full batch of them here cost ~0.5% of the shipper.
		w.settle(false)
		if len(batch) < shipBatch {
			return w.closeInterrupted(ctx)
		}
	}
}

// syncJournal fsyncs the journal, unless it was fsynced less than half a
// commit interval ago: then it only moves the ring's frames into the
// segments, and the next fsync (at most a commit interval after the
// kick that the first of them sent) covers them. The shipper's wake-ups
// (the kick's window, the ticker, a shipment) fell within milliseconds of
// each other about every third interval, and each paid an fsync for the
// few records in between: 1.6 to 1.8 fsyncs an interval under a steady
// load (strace), each a fixed ~0.4 ms of CPU on this machine kind.
func (w *Writer) syncJournal() error {
	if last := w.journalSynced.Load(); last != 0 && time.Since(time.Unix(0, last)) < w.opts.CommitInterval/2 {
		return w.j.drain()
	}
	err := w.j.sync()
	w.journalSynced.Store(time.Now().UnixNano())
	return err
}

// settleEvery is how often what was shipped is made durable in the store,
// noted in the head file and released from the journal. Shipping syncs
// nothing itself: the journal keeps every record until then, so a machine
// crash in between loses nothing, and the shipments in between pay no
// fsync (each costs about as much CPU as storing a thousand records here).
const settleEvery = 10 * time.Second

// settle makes the store durable through what was shipped, notes it in the
// head file and releases it from the journal: when due (settleEvery, or a
// journal a quarter of its bound), or always if force. The caller holds
// shipMu.
func (w *Writer) settle(force bool) {
	if w.stored == w.noted {
		return
	}
	if !force && time.Since(w.settled) < settleEvery && w.j.bytes() < w.opts.SpoolMax/4 {
		return
	}
	w.settled = time.Now()
	if w.opts.Bench.Store || w.opts.Bench.StoreSync {
		// Benchmark: nothing to make durable, or not made durable.
		w.noted = w.stored
		w.j.release(w.stored)
		return
	}
	if err := w.store.durable(); err != nil {
		w.log.Error("audit: sync the store", "err", err)
		return
	}
	if err := w.headNote.write(headFile{Seq: w.stored, Hash: w.head}); err != nil {
		w.log.Error("audit: note the stored head", "err", err)
		return
	}
	w.noted = w.stored
	w.j.release(w.stored)
}

func (w *Writer) fail(err error) error {
	w.setDown(err)
	w.log.Warn("audit: store write failed; records stay in the journal and are retried", "err", err,
		"spooled", w.j.lastSeq()-w.stored)
	return err
}

// closeInterrupted ends, as "interrupted", the sessions a killed
// predecessor left open; once, when the store first has all of its records.
func (w *Writer) closeInterrupted(ctx context.Context) error {
	if w.closed || w.stored < w.boot {
		return nil
	}
	w.closed = true
	ids, err := w.store.openSessions(ctx, w.daemon, w.boot)
	if err != nil {
		w.closed = false
		return err
	}
	for _, id := range ids {
		w.append(string(session.KindSessionEnd), id, time.Now(), SessionEnd{Reason: ReasonInterrupted,
			Detail: "airlockd stopped without ending the session (killed or crashed); closed at its next start"})
	}
	if len(ids) > 0 {
		w.log.Warn("audit: sessions cut by a daemon that did not stop cleanly are closed as interrupted", "sessions", len(ids))
	}
	return nil
}

// checkpoint signs the head of the chain when one is due (or force).
func (w *Writer) checkpoint(ctx context.Context, force bool) {
	if w.opts.Bench.Store {
		return // nothing stored to sign
	}
	if w.stored == 0 || w.stored == w.lastCP.Seq || (!force && time.Now().Before(w.cpDue)) {
		return
	}
	w.mu.Lock()
	sig := w.sig
	w.mu.Unlock()
	cp := Checkpoint{Daemon: w.daemon, Seq: w.stored, Hash: w.head, Time: time.Now().UTC(), KeyID: sig.id}
	cp.Signature = sig.sign(cp.message())
	if err := w.store.append(ctx, nil, []Checkpoint{cp}, nil); err != nil {
		w.log.Warn("audit: store checkpoint", "err", err)
		return
	}
	// The checkpoint file promises the store holds this far (verify
	// reports a store that ends before it as truncated): the store is
	// made durable first.
	w.settle(true)
	if w.noted != w.stored {
		return
	}
	if err := writeJSONAtomic(filepath.Join(w.dir, "checkpoint"), cp); err != nil {
		w.log.Error("audit: keep last checkpoint", "err", err)
	}
	w.mu.Lock()
	w.lastCP, w.cpDue = cp, time.Now().Add(w.opts.CheckpointInterval)
	w.mu.Unlock()
}

// retain deletes records older than the retention, up to the newest
// signed checkpoint among them, and records that it did.
func (w *Writer) retain(ctx context.Context) {
	if w.opts.Retention <= 0 || time.Now().Before(w.pruneAt) {
		return
	}
	w.pruneAt = time.Now().Add(time.Hour)
	if _, err := w.prune(ctx, time.Now().Add(-w.opts.Retention)); err != nil {
		w.log.Warn("audit: retention", "err", err)
	}
}

// Prune removes this daemon's records older than before, up to a signed
// checkpoint, so that verification still holds for what is left.
func (w *Writer) Prune(ctx context.Context, before time.Time) (int64, error) {
	w.shipMu.Lock()
	defer w.shipMu.Unlock()
	return w.prune(ctx, before)
}

func (w *Writer) prune(ctx context.Context, before time.Time) (int64, error) {
	seq, err := w.store.pruneTarget(ctx, w.daemon, before)
	if err != nil || seq == 0 {
		return 0, err
	}
	n, err := w.store.prune(ctx, w.daemon, seq)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("prune audit records: %w", err)
	}
	if err != nil {
		w.log.Warn("audit: remove pruned block files (tried again at the next pruning)", "err", err)
	}
	if n > 0 {
		w.append(KindPrune, "", time.Now(), PruneData{ThroughSeq: seq, Before: before.UTC()})
		w.log.Info("audit: retention removed old records", "through_seq", seq, "records", n)
	}
	return n, nil
}

// RotateKey replaces the signing key; the new key is recorded in the chain,
// signed by the old one.
func (w *Writer) RotateKey() (string, error) {
	w.rotate.Lock()
	defer w.rotate.Unlock()
	w.mu.Lock()
	old := w.sig
	w.mu.Unlock()
	if err := os.Rename(old.path, old.path+".old"); err != nil {
		return "", fmt.Errorf("set the old signing key aside: %w", err)
	}
	ns, err := newSigner(old.path)
	if err != nil {
		_ = os.Rename(old.path+".old", old.path)
		return "", err
	}
	_ = os.Remove(old.path + ".old")
	w.mu.Lock()
	w.sig = ns
	w.mu.Unlock()
	w.recordKey(old)
	return ns.id, nil
}

func (w *Writer) setDown(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reachable || w.downSince.IsZero() {
		w.downSince = time.Now()
	}
	w.reachable, w.lastErr = false, redactURL(err.Error())
}

func (w *Writer) setUp() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reachable, w.lastErr, w.downSince = true, "", time.Time{}
}

func (w *Writer) isUp() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reachable
}

// Status reports the record's state.
func (w *Writer) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	written := w.j.lastSeq()
	st := Status{Store: w.store.Name(), Daemon: w.daemon, KeyID: w.sig.id, Written: written, Stored: w.stored,
		Spooled: written - w.stored, SpoolBytes: w.j.bytes(), SpoolMax: w.opts.SpoolMax, Reachable: w.reachable,
		Error: w.lastErr, DownSince: w.downSince, CheckpointSeq: w.lastCP.Seq, CheckpointTime: w.lastCP.Time, Problem: w.problem,
		RingFull: w.j.ringFull.Load()}
	return st
}
