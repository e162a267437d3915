package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/jackc/pgx/v5/stdlib"
)

// A team store's block row goes in by COPY FROM STDIN in binary format
// rather than an INSERT. With an INSERT the driver copies the text (about
// 800 KB a shipment) into its parameter buffer and again into the Bind
// message, both grown afresh for every statement; COPY streams it from the
// store's own buffer in 64 KB chunks. In the benchmark's setup that took
// the client's side of storing a block from about 1.1–1.7 µs to 0.3 µs a
// record (docs/AUDIT.md, Cost). The server parses the row the same way
// (textrecv checks the UTF-8 as textin did) and the row, its TOAST and
// its WAL are the same.

// copyHeader is the binary COPY signature, no flags, no header extension.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// copyTrailer ends the binary COPY data.
var copyTrailer = []byte{0xff, 0xff}

// blockCopySQL lists the columns in the order copyBlockHead writes them.
const blockCopySQL = `COPY audit_blocks (daemon, first_seq, last_seq, last_ns, records) FROM STDIN (FORMAT binary)`

// copyBlockHead is the binary COPY data before a block row's text: the
// signature, the row's field count, and every field but the text, whose
// length ends it.
func copyBlockHead(daemon string, first, last, lastNS int64, textLen int) []byte {
	b := make([]byte, 0, len(copyHeader)+2+4+len(daemon)+3*12+4)
	b = append(b, copyHeader...)
	b = binary.BigEndian.AppendUint16(b, 5)
	b = binary.BigEndian.AppendUint32(b, uint32(len(daemon)))
	b = append(b, daemon...)
	for _, v := range [...]int64{first, last, lastNS} {
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return binary.BigEndian.AppendUint32(b, uint32(textLen))
}

// writeBlockCopy stores one audit_blocks row with its text inline, in the
// transaction open on conn.
func (s *Store) writeBlockCopy(ctx context.Context, conn *sql.Conn, daemon string, first, last, lastNS int64, text []byte) error {
	if len(text) > math.MaxInt32 || len(daemon) > math.MaxInt32 {
		// Blocks are cut far below this (maxBlockBytes).
		return fmt.Errorf("a block of %d bytes is too large for COPY", len(text))
	}
	r := io.MultiReader(bytes.NewReader(copyBlockHead(daemon, first, last, lastNS, len(text))),
		bytes.NewReader(text), bytes.NewReader(copyTrailer))
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("copy a block: the store's driver connection is a %T, not pgx's", dc)
		}
		tag, err := c.Conn().PgConn().CopyFrom(ctx, r, blockCopySQL)
		if err != nil {
			return fmt.Errorf("copy a block: %w", err)
		}
		if n := tag.RowsAffected(); n != 1 {
			return fmt.Errorf("copy a block: %d rows stored, not 1", n)
		}
		return nil
	})
}
