package audit

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/stdlib"
)

// A team store's block row goes to the server as the parameters of one
// extended-protocol INSERT handed to pgx's connection layer as they are:
// through database/sql, pgx copied the text (about 800 KB a block) into its
// parameter buffer and again into the Bind message, both grown afresh
// for every block and dropped after it; here the text goes from the
// store's own buffer into the Bind message once. The server receives
// the very same statement and text as before. Measured in the
// benchmark's setup in docs/AUDIT.md (Cost), with the COPY FROM STDIN
// tried first: COPY took as much off the daemon but added as much to
// the server, which copies each row once more through its COPY buffers.

// blockInsertSQL's parameters are all in text format: $2 to $4 as
// decimal numbers.
const (
	blockInsertName = "airlock_audit_block"
	blockInsertSQL  = `INSERT INTO audit_blocks (daemon, first_seq, last_seq, last_ns, records) VALUES ($1, $2, $3, $4, $5)`
)

// writeBlockParams stores one audit_blocks row with its text inline, in
// the transaction open on conn.
func (s *Store) writeBlockParams(ctx context.Context, conn *sql.Conn, daemon string, first, last, lastNS int64, text []byte) error {
	var nums [3][20]byte
	params := [][]byte{[]byte(daemon), strconv.AppendInt(nums[0][:0], first, 10), strconv.AppendInt(nums[1][:0], last, 10),
		strconv.AppendInt(nums[2][:0], lastNS, 10), text}
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("the store's driver connection is a %T, not pgx's", dc)
		}
		// Prepared once per connection (pgx keeps it by name): the
		// server plans the INSERT once, as it did through database/sql.
		if _, err := c.Conn().Prepare(ctx, blockInsertName, blockInsertSQL); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		res := c.Conn().PgConn().ExecPrepared(ctx, blockInsertName, params, nil, nil).Read()
		if res.Err != nil {
			return res.Err
		}
		if n := res.CommandTag.RowsAffected(); n != 1 {
			return fmt.Errorf("%d rows inserted, not 1", n)
		}
		return nil
	})
}
