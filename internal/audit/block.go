package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// The store keeps a daemon's chain in blocks: one audit_blocks row holds
// consecutive records (one ship batch) as JSON lines, each with its own
// seq, prev_hash and hash, so that verification still names the exact
// record that breaks. One row per batch instead of one per record is what
// brought storing a record from about 7 µs of CPU to 1.5 (docs/AUDIT.md,
// Cost): the database's per-row work (B-tree inserts into three indexes,
// statement execution, their WAL frames) is paid once per batch. Two small tables find things without
// reading every block: audit_sessions (one row per session.start, with the
// columns `airlock sessions` filters on) and audit_session_blocks (one row
// per session and block it has records in, with its statement count and
// end). Both are derived from the hashed records and verify checks them.

const (
	kindStart     = "session.start"
	kindEnd       = "session.end"
	kindStatement = "statement"
)

// blockLine is a record as a line of a block. Daemon and schema are the
// block's.
type blockLine struct {
	Seq      int64           `json:"seq"`
	TimeNS   int64           `json:"time_ns"`
	Kind     string          `json:"kind"`
	Session  string          `json:"session,omitempty"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
	Data     json.RawMessage `json:"data"`
}

// appendLine writes r as a block line. By hand, because encoding/json
// would re-encode (compact, HTML-escape) the data, and the data must stay
// the very bytes that were hashed.
func appendLine(b []byte, r *Record) []byte {
	b = append(b, `{"seq":`...)
	if r.frame.head != nil {
		// From the journal frame, whose bytes are the line's up to the
		// hashes (decodeOwn sets head only then): copied, not
		// formatted and quoted field by field again.
		b = append(b, r.frame.seq...)
		b = append(b, r.frame.head...)
	} else {
		b = strconv.AppendInt(b, r.Seq, 10)
		b = append(b, `,"time_ns":`...)
		b = strconv.AppendInt(b, r.Time.UnixNano(), 10)
		b = append(b, `,"kind":`...)
		b = appendPlain(b, r.Kind)
		if r.Session != "" {
			b = append(b, `,"session":`...)
			b = appendPlain(b, r.Session)
		}
	}
	if r.hexLinks {
		b = append(b, `,"prev_hash":"`...)
		b = append(b, r.PrevHash...)
		b = append(b, `","hash":"`...)
		b = append(b, r.Hash...)
		b = append(b, '"')
	} else {
		b = append(b, `,"prev_hash":`...)
		b = appendPlain(b, r.PrevHash)
		b = append(b, `,"hash":`...)
		b = appendPlain(b, r.Hash)
	}
	b = append(b, `,"data":`...)
	if len(r.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, r.Data...)
	}
	return append(b, "}\n"...)
}

// appendPlain is appendString with a fast path for the common case (hex
// hashes, kinds, session ids), where nothing needs escaping.
func appendPlain(b []byte, s string) []byte {
	if plainPrefix(s) < len(s) {
		return appendString(b, s)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// parseBlock reads a block's lines back into records of daemon. The data
// of each record is its exact stored bytes.
func parseBlock(daemon, text string) ([]Record, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	var out []Record
	for i := 0; ; i++ {
		var l blockLine
		err := dec.Decode(&l)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("line %d: %w", i+1, err)
		}
		data := l.Data
		if bytes.Equal(data, []byte("null")) {
			data = nil
		}
		out = append(out, Record{Schema: Schema, Daemon: daemon, Seq: l.Seq, Time: time.Unix(0, l.TimeNS).UTC(), Kind: l.Kind,
			Session: l.Session, Data: data, PrevHash: l.PrevHash, Hash: l.Hash})
	}
}

// block is one audit_blocks row.
type block struct {
	First, Last int64
	Records     []Record
	Err         error // the text did not parse; Records holds what did
	// TextErr: the text is not in its block file as stored (missing, cut,
	// or not matching the row's checksum); Records holds what was there.
	TextErr error
}

// sessionBlock is one audit_session_blocks row: what a block holds of a
// session.
type sessionBlock struct {
	Session    string
	Statements int64
	EndSeq     int64 // the session's last end record in the block, 0 if none
	EndNS      int64
	EndData    string
}

// sessionBlocksOf derives a block's audit_session_blocks rows from its
// records, in order of first appearance.
func sessionBlocksOf(recs []Record) []sessionBlock {
	var out []sessionBlock
	at := map[string]int{}
	for i := range recs {
		r := &recs[i]
		if r.Session == "" {
			continue
		}
		k, ok := at[r.Session]
		if !ok {
			k = len(out)
			at[r.Session] = k
			out = append(out, sessionBlock{Session: r.Session})
		}
		switch r.Kind {
		case kindStatement:
			out[k].Statements++
		case kindEnd:
			out[k].EndSeq, out[k].EndNS, out[k].EndData = r.Seq, r.Time.UnixNano(), string(r.Data)
		}
	}
	return out
}

// rowsPerInsert bounds a multi-row INSERT's parameters well under SQLite's
// and PostgreSQL's limits.
const rowsPerInsert = 200

// insertRows runs INSERT INTO table (cols) VALUES … for rows, many rows per
// statement.
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, table, cols string, ncols int, rows [][]any) error {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", ncols), ", ") + ")"
	for start := 0; start < len(rows); start += rowsPerInsert {
		chunk := rows[start:min(start+rowsPerInsert, len(rows))]
		var q strings.Builder
		q.WriteString("INSERT INTO " + table + " (" + cols + ") VALUES ")
		args := make([]any, 0, len(chunk)*ncols)
		for i, r := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString(one)
			args = append(args, r...)
		}
		if err := s.exec(ctx, tx, q.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// writeBlocks stores recs (consecutive records, in order) as blocks of at
// most shipBatch records, cut also after every seq in cutAfter. cols, if
// set, are the search columns of each record (a store of the previous
// layout brings its own, edited or not); otherwise they are derived.
// conn, if set, is the connection tx runs on: a PostgreSQL store sends the
// block text over it without database/sql's copies (writeBlockParams).
func (s *Store) writeBlocks(ctx context.Context, tx *sql.Tx, conn *sql.Conn, recs []Record, cols []indexCols, cutAfter map[int64]bool) error {
	for start := 0; start < len(recs); {
		end, size := start+1, lineSize(&recs[start])
		for end < len(recs) && end-start < shipBatch && recs[end].Daemon == recs[start].Daemon &&
			!cutAfter[recs[end-1].Seq] && size+lineSize(&recs[end]) <= maxBlockBytes {
			size += lineSize(&recs[end])
			end++
		}
		var bc []indexCols
		if cols != nil {
			bc = cols[start:end]
		}
		if err := s.writeBlock(ctx, tx, conn, recs[start:end], bc); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func (s *Store) writeBlock(ctx context.Context, tx *sql.Tx, conn *sql.Conn, recs []Record, cols []indexCols) error {
	s.bufMu.Lock()
	defer s.bufMu.Unlock()
	text := s.buf[:0]
	if size := blockSize(recs); cap(text) < size {
		// Sized at once, with room for the next blocks to be a little
		// larger: grown by append, the buffer went through a dozen
		// sizes to a block's, each of them fresh pages to fault in.
		text = make([]byte, 0, size+size/4)
	}
	var starts [][]any
	for i := range recs {
		r := &recs[i]
		text = appendLine(text, r)
		if r.Kind != kindStart {
			continue
		}
		var c indexCols
		if cols != nil {
			c = cols[i]
		} else {
			c = colsOf(r.Kind, r.Data)
		}
		starts = append(starts, []any{r.Daemon, r.Seq, r.Session, r.Time.UnixNano(), c.person, c.uid, c.pid, c.exe, c.connection, string(r.Data)})
	}
	if cap(text) <= maxKeptBuf {
		s.buf = text
	}
	first, last := &recs[0], &recs[len(recs)-1]
	if s.filesOn {
		ref, err := s.files.write(ctx, first.Daemon, s.endsIn(tx), text)
		if err != nil {
			return fmt.Errorf("store the block of records %d to %d: %w", first.Seq, last.Seq, err)
		}
		if err := s.exec(ctx, tx, `INSERT INTO audit_blocks (daemon, first_seq, last_seq, last_ns, records, file, file_off, file_len, text_crc) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?)`,
			first.Daemon, first.Seq, last.Seq, last.Time.UnixNano(), ref.name, ref.off, ref.length, ref.sum); err != nil {
			return fmt.Errorf("insert the block of records %d to %d: %w", first.Seq, last.Seq, err)
		}
	} else if s.postgres && conn != nil {
		if err := s.writeBlockParams(ctx, conn, first.Daemon, first.Seq, last.Seq, last.Time.UnixNano(), text); err != nil {
			return fmt.Errorf("insert the block of records %d to %d: %w", first.Seq, last.Seq, err)
		}
	} else if err := s.exec(ctx, tx, `INSERT INTO audit_blocks (daemon, first_seq, last_seq, last_ns, records) VALUES (?, ?, ?, ?, ?)`,
		// The drivers copy the text while binding it and keep nothing
		// after the call: a string over the buffer spares a copy.
		first.Daemon, first.Seq, last.Seq, last.Time.UnixNano(), unsafe.String(unsafe.SliceData(text), len(text))); err != nil {
		return fmt.Errorf("insert the block of records %d to %d: %w", first.Seq, last.Seq, err)
	}
	if err := s.insertRows(ctx, tx, "audit_sessions", sessionCols, 10, starts); err != nil {
		return fmt.Errorf("index the sessions started in records %d to %d: %w", first.Seq, last.Seq, err)
	}
	sbs := sessionBlocksOf(recs)
	rows := make([][]any, len(sbs))
	for i, sb := range sbs {
		rows[i] = []any{sb.Session, first.Daemon, first.Seq, sb.Statements, sb.EndSeq, sb.EndNS, sb.EndData}
	}
	if err := s.insertRows(ctx, tx, "audit_session_blocks", `session, daemon, first_seq, statements, end_seq, end_ns, end_data`, 7, rows); err != nil {
		return fmt.Errorf("index the sessions of records %d to %d: %w", first.Seq, last.Seq, err)
	}
	return nil
}

// maxBlockBytes bounds a block's text (but a block holds at least one
// record): statements with long texts or large result samples would
// otherwise make rows of hundreds of megabytes, and the memory to build
// and read them.
const maxBlockBytes = 4 << 20

// lineSize is about the length of r's line.
func lineSize(r *Record) int {
	return 200 + len(r.Kind) + len(r.Session) + len(r.PrevHash) + len(r.Hash) + len(r.Data)
}

// blockSize is about the length of recs' lines, no less in practice
// (lineSize counts 200 bytes for what is about 120).
func blockSize(recs []Record) int {
	n := 0
	for i := range recs {
		n += lineSize(&recs[i])
	}
	return n
}

// maxKeptBuf bounds the block buffer a store keeps between batches.
const maxKeptBuf = maxBlockBytes + maxBlockBytes/4

const sessionCols = `daemon, seq, session, time_ns, person, uid, pid, exe, connection, data`

// blocksPage is how many blocks one query reads.
const blocksPage = 16

// eachBlock calls fn with daemon's blocks in chain order, starting with
// the one that holds afterSeq+1 (every block for 0), until fn returns
// false.
func (s *Store) eachBlock(ctx context.Context, daemon string, afterSeq int64, fn func(b *block) (bool, error)) error {
	firstQ := true
	var afterFirst int64
	for {
		var rows *sql.Rows
		var err error
		if firstQ {
			rows, err = s.db.QueryContext(ctx, s.q(`SELECT first_seq, last_seq, records, `+fileCols+` FROM audit_blocks
				WHERE daemon = ? AND last_seq > ? ORDER BY first_seq LIMIT ?`), daemon, afterSeq, blocksPage)
		} else {
			rows, err = s.db.QueryContext(ctx, s.q(`SELECT first_seq, last_seq, records, `+fileCols+` FROM audit_blocks
				WHERE daemon = ? AND first_seq > ? ORDER BY first_seq LIMIT ?`), daemon, afterFirst, blocksPage)
		}
		if err != nil {
			return fmt.Errorf("read the audit records of %s: %w", daemon, err)
		}
		var page []*block
		for rows.Next() {
			b := &block{}
			var text string
			var file, sum sql.NullString
			var off, length sql.NullInt64
			if err := rows.Scan(&b.First, &b.Last, &text, &file, &off, &length, &sum); err != nil {
				rows.Close()
				return fmt.Errorf("read the audit records of %s: %w", daemon, err)
			}
			text, b.TextErr = s.blockText(text, file, off, length, sum)
			b.Records, b.Err = parseBlock(daemon, text)
			page = append(page, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read the audit records of %s: %w", daemon, err)
		}
		for _, b := range page {
			more, err := fn(b)
			if err != nil || !more {
				return err
			}
		}
		if len(page) < blocksPage {
			return nil
		}
		firstQ, afterFirst = false, page[len(page)-1].First
	}
}

// fileCols are the columns that say where a block's text is (NULL when
// it is inline).
const fileCols = `file, file_off, file_len, text_crc`

// sessionBlocks returns the audit_session_blocks rows of daemon's block
// that starts at first.
func (s *Store) sessionBlocks(ctx context.Context, daemon string, first int64) ([]sessionBlock, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT session, statements, end_seq, end_ns, end_data FROM audit_session_blocks
		WHERE daemon = ? AND first_seq = ?`), daemon, first)
	if err != nil {
		return nil, fmt.Errorf("read the session index of %s: %w", daemon, err)
	}
	defer rows.Close()
	var out []sessionBlock
	for rows.Next() {
		var sb sessionBlock
		if err := rows.Scan(&sb.Session, &sb.Statements, &sb.EndSeq, &sb.EndNS, &sb.EndData); err != nil {
			return nil, fmt.Errorf("read the session index of %s: %w", daemon, err)
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

// sessionBlockFirsts lists the blocks daemon's session index rows name.
func (s *Store) sessionBlockFirsts(ctx context.Context, daemon string) ([]int64, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT DISTINCT first_seq FROM audit_session_blocks WHERE daemon = ? ORDER BY first_seq`), daemon)
	if err != nil {
		return nil, fmt.Errorf("read the session index of %s: %w", daemon, err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var first int64
		if err := rows.Scan(&first); err != nil {
			return nil, err
		}
		out = append(out, first)
	}
	return out, rows.Err()
}

// sessionStarts returns daemon's audit_sessions rows by seq.
func (s *Store) sessionStarts(ctx context.Context, daemon string) (map[int64]sessionRow, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+sessionCols+` FROM audit_sessions WHERE daemon = ?`), daemon)
	if err != nil {
		return nil, fmt.Errorf("read the sessions of %s: %w", daemon, err)
	}
	rs, err := scanSessions(rows)
	if err != nil {
		return nil, fmt.Errorf("read the sessions of %s: %w", daemon, err)
	}
	out := make(map[int64]sessionRow, len(rs))
	for _, r := range rs {
		out[r.Seq] = r
	}
	return out, nil
}

// sessionRow is one audit_sessions row.
type sessionRow struct {
	Daemon, Session string
	Seq, TimeNS     int64
	cols            indexCols
	Data            string
}

func scanSessions(rows *sql.Rows) ([]sessionRow, error) {
	defer rows.Close()
	var out []sessionRow
	for rows.Next() {
		var r sessionRow
		if err := rows.Scan(&r.Daemon, &r.Seq, &r.Session, &r.TimeNS, &r.cols.person, &r.cols.uid, &r.cols.pid,
			&r.cols.exe, &r.cols.connection, &r.Data); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
