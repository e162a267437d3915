package audit

import (
	"context"
	"testing"
)

// TestTeamStoreCompressesWithLZ4: a block big enough to be TOASTed is
// stored lz4-compressed on a server that has lz4, and reads back and
// verifies as any other.
func TestTeamStoreCompressesWithLZ4(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a PostgreSQL server")
	}
	var pgStore *storeKind
	for _, sk := range stores(t) {
		if sk.name == "postgres" {
			pgStore = &sk
		}
	}
	spec, pw := pgStore.open(t)
	w, cancel, done := openWriter(t, t.TempDir(), spec, pw, Policy{})
	defer func() { cancel(); <-done }()
	s := fakeSession(w, 1001, "alice", "/usr/bin/psql")
	// ~100 bytes a statement: far over the 2 KB at which PostgreSQL
	// compresses a value.
	writeSession(s, 200)
	ctx := context.Background()
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var hasLZ4 bool
	if err := w.Store().db.QueryRowContext(ctx,
		`SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'`).Scan(&hasLZ4); err != nil {
		t.Fatalf("ask the server for lz4: %v", err)
	}
	rows, err := w.Store().db.QueryContext(ctx, `SELECT COALESCE(pg_column_compression(records), '') FROM audit_blocks`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var method string
		if err := rows.Scan(&method); err != nil {
			t.Fatal(err)
		}
		n++
		want := "pglz"
		if hasLZ4 {
			want = "lz4"
		}
		if method != want {
			t.Errorf("a block is stored with %q compression, want %q", method, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no block stored")
	}
	if d, err := w.Store().Session(ctx, s.ID, nil); err != nil || d == nil || d.Statements != 200 {
		t.Fatalf("read the session back: %v %+v", err, d)
	}
	rep, err := Verify(ctx, w.Store(), "", nil)
	if err != nil || !rep.OK {
		t.Fatalf("verify: %v %+v", err, rep)
	}
}
