package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite" // the embedded store: pure Go, so airlockd stays a static binary without cgo
)

// Store is where records end up: one schema and one code path for the
// embedded SQLite file and a team PostgreSQL database.
type Store struct {
	db       *sql.DB
	postgres bool
	name     string // for messages and status; never holds a password
	// wal is an SQLite store's write-ahead log: its commits are not
	// synced one by one (see durable).
	wal string

	// buf is reused for the text of each block (one ship batch is about
	// 800 KB of lines): allocating it anew for every batch made the
	// garbage collector work for the shipper.
	bufMu sync.Mutex
	buf   []byte

	// stmts holds the shipper's inserts prepared once: SQLite parsing
	// them anew for every shipment cost about 0.15 µs a record at
	// pgbench rates (docs/AUDIT.md, Cost).
	stmtMu sync.Mutex
	stmts  map[string]*sql.Stmt

	// files holds an SQLite store's block text (blockfile.go); filesOn
	// once the schema has the columns that say where (version 3).
	files   *blockFiles
	filesOn bool
	// recovered: blocks a machine crash left unsettled were checked
	// (dropUnsettled), once per open.
	recovered bool
}

// migrations are applied in order at open; each runs once. Only append.
var migrations = []string{
	`CREATE TABLE audit_records (
		daemon     TEXT   NOT NULL,
		seq        BIGINT NOT NULL,
		time_ns    BIGINT NOT NULL,
		kind       TEXT   NOT NULL,
		session    TEXT   NOT NULL DEFAULT '',
		person     TEXT   NOT NULL DEFAULT '',
		uid        BIGINT NOT NULL DEFAULT -1,
		pid        BIGINT NOT NULL DEFAULT -1,
		exe        TEXT   NOT NULL DEFAULT '',
		connection TEXT   NOT NULL DEFAULT '',
		data       TEXT   NOT NULL,
		prev_hash  TEXT   NOT NULL,
		hash       TEXT   NOT NULL,
		PRIMARY KEY (daemon, seq)
	);
	CREATE INDEX audit_records_session ON audit_records (session, daemon, seq);
	CREATE INDEX audit_records_starts ON audit_records (time_ns) WHERE kind = 'session.start';
	CREATE TABLE audit_checkpoints (
		daemon    TEXT   NOT NULL,
		seq       BIGINT NOT NULL,
		hash      TEXT   NOT NULL,
		time_ns   BIGINT NOT NULL,
		key_id    TEXT   NOT NULL,
		signature TEXT   NOT NULL,
		PRIMARY KEY (daemon, seq)
	);
	CREATE TABLE audit_keys (
		daemon       TEXT   NOT NULL,
		key_id       TEXT   NOT NULL,
		public_key   TEXT   NOT NULL,
		seq          BIGINT NOT NULL,
		time_ns      BIGINT NOT NULL,
		previous_key TEXT   NOT NULL DEFAULT '',
		signature    TEXT   NOT NULL DEFAULT '',
		PRIMARY KEY (daemon, key_id)
	)`,
	// 2: records in blocks (see block.go); the rows of audit_records are
	// moved into blocks by moveLegacyRecords, then the table goes.
	`CREATE TABLE audit_blocks (
		daemon    TEXT   NOT NULL,
		first_seq BIGINT NOT NULL,
		last_seq  BIGINT NOT NULL,
		last_ns   BIGINT NOT NULL,
		records   TEXT   NOT NULL,
		PRIMARY KEY (daemon, first_seq)
	);
	CREATE INDEX audit_blocks_last ON audit_blocks (daemon, last_seq);
	CREATE TABLE audit_sessions (
		daemon     TEXT   NOT NULL,
		seq        BIGINT NOT NULL,
		session    TEXT   NOT NULL,
		time_ns    BIGINT NOT NULL,
		person     TEXT   NOT NULL,
		uid        BIGINT NOT NULL,
		pid        BIGINT NOT NULL,
		exe        TEXT   NOT NULL,
		connection TEXT   NOT NULL,
		data       TEXT   NOT NULL,
		PRIMARY KEY (daemon, seq)
	);
	CREATE INDEX audit_sessions_session ON audit_sessions (session);
	CREATE INDEX audit_sessions_time ON audit_sessions (time_ns);
	CREATE TABLE audit_session_blocks (
		session    TEXT   NOT NULL,
		daemon     TEXT   NOT NULL,
		first_seq  BIGINT NOT NULL,
		statements BIGINT NOT NULL,
		end_seq    BIGINT NOT NULL,
		end_ns     BIGINT NOT NULL,
		end_data   TEXT   NOT NULL,
		PRIMARY KEY (session, daemon, first_seq)
	);
	CREATE INDEX audit_session_blocks_block ON audit_session_blocks (daemon, first_seq)`,
	// 3: an SQLite store's block text in block files (blockfile.go): the
	// row says where, records is left empty. The team store keeps its
	// text in records and these columns NULL.
	`ALTER TABLE audit_blocks ADD COLUMN file TEXT;
	ALTER TABLE audit_blocks ADD COLUMN file_off BIGINT;
	ALTER TABLE audit_blocks ADD COLUMN file_len BIGINT;
	ALTER TABLE audit_blocks ADD COLUMN text_crc TEXT`,
}

// migrationCode runs, by schema version, after that migration's SQL, in
// the same transaction: what SQL alone cannot do the same way on both
// stores.
var migrationCode = map[int]func(ctx context.Context, s *Store, tx *sql.Tx) error{
	2: moveLegacyRecords,
	3: moveBlocksIntoFiles,
}

// OpenStore opens spec: a file path (SQLite) or a postgres:// URL, logging
// in with password (the daemon reads it from a root-only file). A
// PostgreSQL store that cannot be reached is returned with the error, so
// that the caller can keep retrying it.
func OpenStore(ctx context.Context, spec, password string) (*Store, error) {
	if IsPostgres(spec) {
		return openPostgres(ctx, spec, password)
	}
	return openSQLite(ctx, strings.TrimPrefix(spec, "sqlite:"))
}

func openSQLite(ctx context.Context, path string) (*Store, error) {
	// WAL lets `airlock sessions` read while the writer commits. NORMAL
	// does not sync the WAL at each commit (a commit survives the daemon's
	// death, not the machine's): the writer syncs it before it deletes
	// journal segments or notes the head (durable), every few shipments
	// instead of every one. SQLite still syncs the WAL before each of its
	// checkpoints and the database after, so the store stays consistent.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	s := &Store{db: db, name: "sqlite:" + path, wal: path + "-wal", files: newBlockFiles(filepath.Join(filepath.Dir(path), "blocks"))}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	_ = os.Chmod(path, 0o600)
	return s, nil
}

// IsPostgres tells a team store spec from a file path.
func IsPostgres(spec string) bool {
	return strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://")
}

func openPostgres(ctx context.Context, spec, password string) (*Store, error) {
	cfg, err := pgx.ParseConfig(spec)
	if err != nil {
		return nil, fmt.Errorf("audit.store: %v", redactURL(err.Error()))
	}
	if cfg.Password != "" {
		return nil, errors.New("audit.store: put the password in audit.password_file, not in the URL")
	}
	cfg.Password = password
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	u, _ := url.Parse(spec)
	name := spec
	if u != nil {
		u.User = url.User(u.User.Username())
		name = u.Redacted()
	}
	db := stdlib.OpenDB(*cfg, stdlib.OptionAfterConnect(preferLZ4))
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	s := &Store{db: db, postgres: true, name: name}
	if err := s.migrate(ctx); err != nil {
		// The store may only be down: keep the handle, the writer retries.
		return s, err
	}
	return s, nil
}

// preferLZ4 has the server compress the blocks this connection stores
// with lz4 rather than its default, pglz: a block's text is TOASTed, and
// pglz took the team server about 14 µs of CPU per record against lz4's
// 5 (docs/AUDIT.md "Cost"), on a server that may also be the one the
// agents query. A server without lz4 (before PostgreSQL 14, or built
// without it) refuses the setting; it then keeps its default, since the
// setting only trades CPU for nothing else: what is stored reads and
// verifies the same either way.
func preferLZ4(ctx context.Context, c *pgx.Conn) error {
	_, _ = c.Exec(ctx, "SET default_toast_compression = 'lz4'")
	return nil
}

func redactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.Index(s[i:], "@"); j >= 0 {
			return s[:i+3] + "…" + s[i+j:]
		}
	}
	return s
}

// Name identifies the store for status and messages.
func (s *Store) Name() string { return s.name }

// Close closes the store.
func (s *Store) Close() error {
	s.stmtMu.Lock()
	var errs []error
	for q, st := range s.stmts {
		errs = append(errs, st.Close())
		delete(s.stmts, q)
	}
	s.stmtMu.Unlock()
	if s.files != nil {
		errs = append(errs, s.files.close())
	}
	return errors.Join(append(errs, s.db.Close())...)
}

// maxStmts bounds the prepared statements a store keeps (each costs memory
// on every connection it is used on).
const maxStmts = 32

// exec runs query (with ? placeholders) in tx as a statement prepared once
// for the store. Past maxStmts distinct queries, or when it cannot be
// prepared outside tx (a table tx itself creates, in a migration), it runs
// unprepared.
func (s *Store) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	s.stmtMu.Lock()
	st, ok := s.stmts[query]
	if !ok && len(s.stmts) < maxStmts {
		if p, err := s.db.PrepareContext(ctx, s.q(query)); err == nil {
			if s.stmts == nil {
				s.stmts = map[string]*sql.Stmt{}
			}
			s.stmts[query], st = p, p
		}
	}
	s.stmtMu.Unlock()
	if st == nil {
		_, err := tx.ExecContext(ctx, s.q(query), args...)
		return err
	}
	_, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	return err
}

// q rewrites ? placeholders for PostgreSQL.
func (s *Store) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *Store) migrate(ctx context.Context) error {
	// A store of an earlier layout has its records moved (into blocks,
	// into block files) in the migration: that takes time in proportion
	// to the store, so it gets more than a schema change does.
	timeout := 30 * time.Second
	var v0 int
	if s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM audit_schema`).Scan(&v0) == nil && v0 >= 1 && v0 < len(migrations) {
		timeout = 30 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("audit store %s: %w", s.name, err)
	}
	defer tx.Rollback()
	if s.postgres {
		// Daemons starting together must not migrate at once.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7215348129)`); err != nil {
			return fmt.Errorf("audit store %s: lock for migration: %w", s.name, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS audit_schema (version BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("audit store %s: create schema table: %w", s.name, err)
	}
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM audit_schema`).Scan(&v); err != nil {
		return fmt.Errorf("audit store %s: read schema version: %w", s.name, err)
	}
	if v > len(migrations) {
		return fmt.Errorf("audit store %s has schema version %d, newer than this airlockd knows (%d): upgrade airlockd", s.name, v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		for _, stmt := range strings.Split(migrations[i], ";\n") {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("audit store %s: migration %d: %w", s.name, i+1, err)
			}
		}
		if fn := migrationCode[i+1]; fn != nil {
			if err := fn(ctx, s, tx); err != nil {
				return fmt.Errorf("audit store %s: migration %d: %w", s.name, i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_schema (version) VALUES (?)`), i+1); err != nil {
			return fmt.Errorf("audit store %s: record migration %d: %w", s.name, i+1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		if s.files != nil {
			s.files.failed()
		}
		return fmt.Errorf("audit store %s: commit the migration: %w", s.name, err)
	}
	s.filesOn = s.files != nil
	return nil
}

// Migrate brings the schema up to date (for a store that was down at open).
func (s *Store) Migrate(ctx context.Context) error { return s.migrate(ctx) }

// indexCols are the columns filters use, derived from a session.start
// record's data; verify checks they still match it.
type indexCols struct {
	person     string
	uid, pid   int64
	exe        string
	connection string
}

func colsOf(kind string, data []byte) indexCols {
	c := indexCols{uid: -1, pid: -1}
	if kind != "session.start" {
		return c
	}
	var st startCols
	if json.Unmarshal(data, &st) != nil {
		return c
	}
	c.person, c.uid, c.pid, c.exe, c.connection = st.Person.Name, int64(st.Person.UID), int64(st.Process.PID), st.Process.Exe, st.Connection
	return c
}

// startCols is the part of SessionStart that colsOf needs: decoding only
// it skips the rest (command lines, ancestry) without building it, which
// was a quarter of the CPU of storing a short session (issue 9). For
// every start record that decodes as a SessionStart it gives the same
// columns (FuzzColsOf).
type startCols struct {
	Connection string `json:"connection"`
	Person     struct {
		Name string `json:"name"`
		UID  uint32 `json:"uid"`
	} `json:"person"`
	Process struct {
		PID uint32 `json:"pid"`
		Exe string `json:"exe"`
	} `json:"process"`
}

// head is the newest record of a daemon's chain in the store.
func (s *Store) head(ctx context.Context, daemon string) (int64, string, error) {
	var text string
	var last int64
	var file, sum sql.NullString
	var off, length sql.NullInt64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT last_seq, records, file, file_off, file_len, text_crc FROM audit_blocks
		WHERE daemon = ? ORDER BY first_seq DESC LIMIT 1`), daemon).Scan(&last, &text, &file, &off, &length, &sum)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	// Only the last line is needed. A block damaged there still has its
	// last seq: recording goes on (the hash does not link, and verify
	// reports the damage) rather than stopping for good.
	text, err = s.blockText(text, file, off, length, sum)
	if err != nil && !errors.Is(err, errTextMismatch) {
		return last, "", nil
	}
	t := strings.TrimRight(text, "\n")
	recs, err := parseBlock(daemon, t[strings.LastIndexByte(t, '\n')+1:])
	if err != nil || len(recs) != 1 {
		return last, "", nil
	}
	return recs[0].Seq, recs[0].Hash, nil
}

// append stores records (consecutive, of one daemon) as one block, with
// checkpoints and keys, in one transaction: one commit (one fsync) per
// batch is the group commit.
func (s *Store) append(ctx context.Context, recs []Record, cps []Checkpoint, keys []Key) error {
	// A PostgreSQL store's transaction runs on a connection of its own,
	// which writeBlock also sends the block text over (writeBlockParams).
	var conn *sql.Conn
	begin := s.db.BeginTx
	if s.postgres {
		c, err := s.db.Conn(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		conn, begin = c, c.BeginTx
	}
	tx, err := begin(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := s.writeBlocks(ctx, tx, conn, recs, nil, nil); err != nil {
		s.filesFailed()
		return err
	}
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_keys (daemon, key_id, public_key, seq, time_ns, previous_key, signature)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (daemon, key_id) DO NOTHING`), k.Daemon, k.KeyID, k.PublicKey, k.Seq, k.Time.UnixNano(), k.PreviousKey, k.Signature); err != nil {
			return fmt.Errorf("insert key %s: %w", k.KeyID, err)
		}
	}
	for _, c := range cps {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_checkpoints (daemon, seq, hash, time_ns, key_id, signature)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (daemon, seq) DO NOTHING`), c.Daemon, c.Seq, c.Hash, c.Time.UnixNano(), c.KeyID, c.Signature); err != nil {
			return fmt.Errorf("insert checkpoint %d: %w", c.Seq, err)
		}
	}
	if err := tx.Commit(); err != nil {
		s.filesFailed()
		return err
	}
	return nil
}

// filesFailed says the block text written for a transaction that did not
// commit is not indexed: the file is cut back before the next write.
func (s *Store) filesFailed() {
	if s.files != nil {
		s.files.failed()
	}
}

// durable makes every transaction committed so far survive a machine
// crash. A PostgreSQL store's commits already do. SQLite's committed
// pages are either in the database file, synced by the checkpoint that
// moved them there (before the WAL is reused), or in the WAL, synced here.
// The block files are synced first: a row the caller then takes as
// settled never names bytes a crash could take (docs/AUDIT.md,
// Durability). Rows that reach the disk earlier, by SQLite's own
// checkpoints or the kernel's writeback, are not settled: dropUnsettled
// checks them at the next start.
func (s *Store) durable() error {
	if s.wal == "" {
		return nil
	}
	if s.files != nil {
		if err := s.files.sync(); err != nil {
			return err
		}
	}
	f, err := os.Open(s.wal)
	if errors.Is(err, os.ErrNotExist) {
		// No WAL: everything is in the database file, synced when
		// the WAL was checkpointed and removed.
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the audit store's WAL: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync the audit store's WAL: %w", err)
	}
	return nil
}

// Scan returns up to limit records after (daemon, seq) in (daemon, seq)
// order; daemon "" starts at the first daemon.
func (s *Store) Scan(ctx context.Context, afterDaemon string, afterSeq int64, limit int) ([]Record, error) {
	daemons, err := s.Daemons(ctx)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, d := range daemons {
		if d < afterDaemon || len(out) >= limit {
			continue
		}
		after := int64(0)
		if d == afterDaemon {
			after = afterSeq
		}
		err := s.eachBlock(ctx, d, after, func(b *block) (bool, error) {
			if b.TextErr != nil {
				return false, fmt.Errorf("read the audit records of %s: block at seq %d: %w", d, b.First, b.TextErr)
			}
			if b.Err != nil {
				return false, fmt.Errorf("read the audit records of %s: block at seq %d: %w", d, b.First, b.Err)
			}
			for _, r := range b.Records {
				if r.Seq > after && len(out) < limit {
					out = append(out, r)
				}
			}
			return len(out) < limit, nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Daemons lists the daemons that wrote to the store.
func (s *Store) Daemons(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT daemon FROM audit_blocks UNION SELECT daemon FROM audit_keys UNION SELECT daemon FROM audit_checkpoints ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list daemons in audit store: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Checkpoints returns a daemon's checkpoints, oldest first.
func (s *Store) Checkpoints(ctx context.Context, daemon string) ([]Checkpoint, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT daemon, seq, hash, time_ns, key_id, signature FROM audit_checkpoints
		WHERE daemon = ? ORDER BY seq`), daemon)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	defer rows.Close()
	var out []Checkpoint
	for rows.Next() {
		var c Checkpoint
		var ns int64
		if err := rows.Scan(&c.Daemon, &c.Seq, &c.Hash, &ns, &c.KeyID, &c.Signature); err != nil {
			return nil, err
		}
		c.Time = time.Unix(0, ns).UTC()
		out = append(out, c)
	}
	return out, rows.Err()
}

// Keys returns a daemon's signing keys in the order they came into use.
func (s *Store) Keys(ctx context.Context, daemon string) ([]Key, error) {
	q := `SELECT daemon, key_id, public_key, seq, time_ns, previous_key, signature FROM audit_keys`
	var args []any
	if daemon != "" {
		q += ` WHERE daemon = ?`
		args = append(args, daemon)
	}
	rows, err := s.db.QueryContext(ctx, s.q(q+` ORDER BY daemon, seq, time_ns`), args...)
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	defer rows.Close()
	var out []Key
	for rows.Next() {
		var k Key
		var ns int64
		if err := rows.Scan(&k.Daemon, &k.KeyID, &k.PublicKey, &k.Seq, &ns, &k.PreviousKey, &k.Signature); err != nil {
			return nil, err
		}
		k.Time = time.Unix(0, ns).UTC()
		out = append(out, k)
	}
	return out, rows.Err()
}

// openSessions lists sessions of daemon started at or before seq that have
// no end record.
func (s *Store) openSessions(ctx context.Context, daemon string, seq int64) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT s.session FROM audit_sessions s
		WHERE s.daemon = ? AND s.seq <= ?
		AND NOT EXISTS (SELECT 1 FROM audit_session_blocks e WHERE e.session = s.session AND e.daemon = s.daemon AND e.end_seq > 0)
		ORDER BY s.seq`), daemon, seq)
	if err != nil {
		return nil, fmt.Errorf("find interrupted sessions: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// prune deletes daemon's blocks up to seq, with their index rows, and
// returns how many records went; the caller makes sure a signed
// checkpoint stands at seq, and pruneTarget that a block ends there. An
// error with a count > 0 is the block files that could not be removed.
func (s *Store) prune(ctx context.Context, daemon string, seq int64) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var first sql.NullInt64
	if err := tx.QueryRowContext(ctx, s.q(`SELECT MIN(first_seq) FROM audit_blocks WHERE daemon = ?`), daemon).Scan(&first); err != nil {
		return 0, err
	}
	if !first.Valid || first.Int64 > seq {
		return 0, nil
	}
	for _, q := range []string{
		`DELETE FROM audit_blocks WHERE daemon = ? AND last_seq <= ?`,
		`DELETE FROM audit_session_blocks WHERE daemon = ? AND first_seq <= ?`,
		`DELETE FROM audit_sessions WHERE daemon = ? AND seq <= ?`,
	} {
		if _, err := tx.ExecContext(ctx, s.q(q), daemon, seq); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	n := seq - first.Int64 + 1
	// The records are pruned either way: a file that could not be
	// removed is tried again at the next pruning.
	if err := s.removePrunedFiles(ctx, daemon); err != nil {
		return n, err
	}
	return n, nil
}

// removePrunedFiles deletes daemon's block files whose blocks are all
// pruned.
func (s *Store) removePrunedFiles(ctx context.Context, daemon string) error {
	if s.files == nil || !s.filesOn {
		return nil
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT DISTINCT file FROM audit_blocks WHERE daemon = ? AND file IS NOT NULL`), daemon)
	if err != nil {
		return fmt.Errorf("list the block files in use: %w", err)
	}
	used := map[string]bool{}
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			rows.Close()
			return fmt.Errorf("list the block files in use: %w", err)
		}
		used[f] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list the block files in use: %w", err)
	}
	_, err = s.files.removeUnused(daemon, used)
	return err
}

// pruneTarget is the newest checkpoint of daemon older than before at
// which a block ends (pruning takes whole blocks).
func (s *Store) pruneTarget(ctx context.Context, daemon string, before time.Time) (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT MAX(c.seq) FROM audit_checkpoints c JOIN audit_blocks b
		ON b.daemon = c.daemon AND b.last_seq = c.seq WHERE c.daemon = ? AND b.last_ns < ?`), daemon, before.UnixNano()).Scan(&seq)
	if err != nil {
		return 0, err
	}
	return seq.Int64, nil
}

// moveLegacyRecords moves the rows of the first layout (one audit_records
// row per record) into blocks, as they are: data, hashes and search
// columns unchanged, so that whatever was edited before the upgrade is
// still reported by verify. Blocks end at checkpoints, so that retention
// can still prune up to any of them.
func moveLegacyRecords(ctx context.Context, s *Store, tx *sql.Tx) error {
	var daemons []string
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT daemon FROM audit_records ORDER BY daemon`)
	if err != nil {
		return fmt.Errorf("list the daemons of audit_records: %w", err)
	}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			rows.Close()
			return err
		}
		daemons = append(daemons, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, d := range daemons {
		cuts := map[int64]bool{}
		crows, err := tx.QueryContext(ctx, s.q(`SELECT seq FROM audit_checkpoints WHERE daemon = ?`), d)
		if err != nil {
			return fmt.Errorf("read the checkpoints of %s: %w", d, err)
		}
		for crows.Next() {
			var seq int64
			if err := crows.Scan(&seq); err != nil {
				crows.Close()
				return err
			}
			cuts[seq] = true
		}
		crows.Close()
		if err := crows.Err(); err != nil {
			return err
		}
		// Rows whose seq was edited may be out of chain order: they are
		// moved in seq order, as verify read them before.
		var after int64 = -1 << 62
		for {
			rows, err := tx.QueryContext(ctx, s.q(`SELECT `+legacyCols+` FROM audit_records
				WHERE daemon = ? AND seq > ? ORDER BY seq LIMIT ?`), d, after, shipBatch)
			if err != nil {
				return fmt.Errorf("read audit_records of %s: %w", d, err)
			}
			rs, err := scanLegacy(rows)
			if err != nil {
				return fmt.Errorf("read audit_records of %s: %w", d, err)
			}
			if len(rs) == 0 {
				break
			}
			recs := make([]Record, len(rs))
			cols := make([]indexCols, len(rs))
			for i := range rs {
				recs[i], cols[i] = rs[i].Record, rs[i].cols
				// Everything after a gap goes in a block of its own: a
				// block holds a run of seqs.
				if i > 0 && recs[i].Seq != recs[i-1].Seq+1 {
					cuts[recs[i-1].Seq] = true
				}
			}
			if err := s.writeBlocks(ctx, tx, nil, recs, cols, cuts); err != nil {
				return fmt.Errorf("move the records of %s into blocks: %w", d, err)
			}
			after = rs[len(rs)-1].Seq
		}
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE audit_records`); err != nil {
		return fmt.Errorf("drop audit_records: %w", err)
	}
	return nil
}

const legacyCols = `daemon, seq, time_ns, kind, session, person, uid, pid, exe, connection, data, prev_hash, hash`

type storedRecord struct {
	Record
	cols indexCols
}

func scanLegacy(rows *sql.Rows) ([]storedRecord, error) {
	defer rows.Close()
	var out []storedRecord
	for rows.Next() {
		var r storedRecord
		var ns int64
		var data string
		if err := rows.Scan(&r.Daemon, &r.Seq, &ns, &r.Kind, &r.Session, &r.cols.person, &r.cols.uid, &r.cols.pid,
			&r.cols.exe, &r.cols.connection, &data, &r.PrevHash, &r.Hash); err != nil {
			return nil, err
		}
		r.Schema, r.Time, r.Data = Schema, time.Unix(0, ns).UTC(), json.RawMessage(data)
		out = append(out, r)
	}
	return out, rows.Err()
}
