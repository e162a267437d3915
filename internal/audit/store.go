package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
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

	// inserts are the prepared multi-row INSERTs, by rows per statement:
	// preparing (parsing) the statement is otherwise a third of a row's
	// cost. Only the shipper appends; the mutex covers Close.
	insMu   sync.Mutex
	inserts map[int]*sql.Stmt
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
	// WAL lets `airlock sessions` read while the writer commits; FULL
	// syncs the WAL at every commit, because journal segments are deleted
	// once the store has their records.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open audit store %s: %w", path, err)
	}
	s := &Store{db: db, name: "sqlite:" + path}
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
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	s := &Store{db: db, postgres: true, name: name}
	if err := s.migrate(ctx); err != nil {
		// The store may only be down: keep the handle, the writer retries.
		return s, err
	}
	return s, nil
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
	s.insMu.Lock()
	for _, st := range s.inserts {
		_ = st.Close()
	}
	s.inserts = nil
	s.insMu.Unlock()
	return s.db.Close()
}

// insertRows are the statement sizes append uses: a batch is cut into as
// many of the largest as fit, then the smaller.
var insertRows = []int{64, 8, 1}

// insert returns the prepared INSERT of n rows.
func (s *Store) insert(ctx context.Context, n int) (*sql.Stmt, error) {
	s.insMu.Lock()
	defer s.insMu.Unlock()
	if st := s.inserts[n]; st != nil {
		return st, nil
	}
	var q strings.Builder
	q.WriteString(`INSERT INTO audit_records (daemon, seq, time_ns, kind, session, person, uid, pid, exe, connection, data, prev_hash, hash) VALUES `)
	for i := 0; i < n; i++ {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	st, err := s.db.PrepareContext(ctx, s.q(q.String()))
	if err != nil {
		return nil, err
	}
	if s.inserts == nil {
		s.inserts = map[int]*sql.Stmt{}
	}
	s.inserts[n] = st
	return st, nil
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
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
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
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_schema (version) VALUES (?)`), i+1); err != nil {
			return fmt.Errorf("audit store %s: record migration %d: %w", s.name, i+1, err)
		}
	}
	return tx.Commit()
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
	var st SessionStart
	if json.Unmarshal(data, &st) != nil {
		return c
	}
	c.person, c.uid, c.pid, c.exe, c.connection = st.Person.Name, int64(st.Person.UID), int64(st.Process.PID), st.Process.Exe, st.Connection
	return c
}

// head is the newest record of a daemon's chain in the store.
func (s *Store) head(ctx context.Context, daemon string) (int64, string, error) {
	var seq int64
	var hash string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT seq, hash FROM audit_records WHERE daemon = ? ORDER BY seq DESC LIMIT 1`), daemon).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return seq, hash, err
}

// append inserts records in one transaction: one commit (one fsync) per
// batch is the group commit.
func (s *Store) append(ctx context.Context, recs []Record, cps []Checkpoint, keys []Key) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Many rows per INSERT: the per-statement overhead of database/sql and
	// the driver is most of a row's cost.
	args := make([]any, 0, 13*insertRows[0])
	for start := 0; start < len(recs); {
		n := insertRows[len(insertRows)-1]
		for _, k := range insertRows {
			if len(recs)-start >= k {
				n = k
				break
			}
		}
		chunk := recs[start : start+n]
		start += n
		args = args[:0]
		for i := range chunk {
			r := &chunk[i]
			c := colsOf(r.Kind, r.Data)
			args = append(args, r.Daemon, r.Seq, r.Time.UnixNano(), r.Kind, r.Session, c.person, c.uid, c.pid,
				c.exe, c.connection, string(r.Data), r.PrevHash, r.Hash)
		}
		st, err := s.insert(ctx, n)
		if err != nil {
			return fmt.Errorf("prepare the insert of %d records: %w", n, err)
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("insert records %d to %d: %w", chunk[0].Seq, chunk[len(chunk)-1].Seq, err)
		}
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
	return tx.Commit()
}

const recordCols = `daemon, seq, time_ns, kind, session, person, uid, pid, exe, connection, data, prev_hash, hash`

type storedRecord struct {
	Record
	cols indexCols
}

func scanRecords(rows *sql.Rows) ([]storedRecord, error) {
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

// Scan returns up to limit records after (daemon, seq) in (daemon, seq)
// order; daemon "" starts at the first daemon.
func (s *Store) Scan(ctx context.Context, afterDaemon string, afterSeq int64, limit int) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+recordCols+` FROM audit_records
		WHERE daemon > ? OR (daemon = ? AND seq > ?) ORDER BY daemon, seq LIMIT ?`), afterDaemon, afterDaemon, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("read audit records: %w", err)
	}
	rs, err := scanRecords(rows)
	out := make([]Record, len(rs))
	for i := range rs {
		out[i] = rs[i].Record
	}
	return out, err
}

func (s *Store) scanDaemon(ctx context.Context, daemon string, afterSeq int64, limit int) ([]storedRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+recordCols+` FROM audit_records
		WHERE daemon = ? AND seq > ? ORDER BY seq LIMIT ?`), daemon, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("read audit records of %s: %w", daemon, err)
	}
	return scanRecords(rows)
}

// Daemons lists the daemons that wrote to the store.
func (s *Store) Daemons(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT daemon FROM audit_records UNION SELECT daemon FROM audit_keys UNION SELECT daemon FROM audit_checkpoints ORDER BY 1`)
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
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT s.session FROM audit_records s
		WHERE s.daemon = ? AND s.kind = 'session.start' AND s.seq <= ?
		AND NOT EXISTS (SELECT 1 FROM audit_records e WHERE e.session = s.session AND e.daemon = s.daemon AND e.kind = 'session.end')
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

// prune deletes daemon's records up to seq; the caller makes sure a signed
// checkpoint stands at seq.
func (s *Store) prune(ctx context.Context, daemon string, seq int64) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM audit_records WHERE daemon = ? AND seq <= ?`), daemon, seq)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// pruneTarget is the newest checkpoint of daemon whose record is older
// than before.
func (s *Store) pruneTarget(ctx context.Context, daemon string, before time.Time) (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT MAX(c.seq) FROM audit_checkpoints c JOIN audit_records r
		ON r.daemon = c.daemon AND r.seq = c.seq WHERE c.daemon = ? AND r.time_ns < ?`), daemon, before.UnixNano()).Scan(&seq)
	if err != nil {
		return 0, err
	}
	return seq.Int64, nil
}
