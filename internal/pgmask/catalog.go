package pgmask

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/mask"
)

// Attr is a result column's origin as RowDescription reports it.
type Attr struct {
	Table uint32
	Num   int16
}

// Resolver maps result column origins to the columns they name: the
// column itself, then for a view's column the column it shows, and so on
// down to a table. The masking stage caches its answers per session.
type Resolver interface {
	Resolve(ctx context.Context, database string, attrs []Attr) (map[Attr][]mask.Source, error)
}

// maxViewDepth bounds how many views over views are followed to a table.
const maxViewDepth = 16

// Catalog resolves origins with a small pool of metadata connections per
// database, opened with the connection's own configured credential (the
// admin's for ephemeral roles). A session's own upstream cannot be used: it
// is mid-stream when a RowDescription arrives.
type Catalog struct {
	cfg  *pgx.ConnConfig
	size int

	mu    sync.Mutex
	idle  map[string][]*pgx.Conn
	slots map[string]chan struct{}
}

// NewCatalog returns a Catalog that connects with cfg (its database is
// replaced by each session's), at most size connections per database.
func NewCatalog(cfg *pgx.ConnConfig, size int) *Catalog {
	if size <= 0 {
		size = 4
	}
	return &Catalog{cfg: cfg, size: size, idle: map[string][]*pgx.Conn{}, slots: map[string]chan struct{}{}}
}

func (c *Catalog) acquire(ctx context.Context, db string) (*pgx.Conn, error) {
	c.mu.Lock()
	slots, ok := c.slots[db]
	if !ok {
		slots = make(chan struct{}, c.size)
		c.slots[db] = slots
	}
	c.mu.Unlock()
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a catalog connection: %w", ctx.Err())
	}
	c.mu.Lock()
	if n := len(c.idle[db]); n > 0 {
		conn := c.idle[db][n-1]
		c.idle[db] = c.idle[db][:n-1]
		c.mu.Unlock()
		return conn, nil
	}
	c.mu.Unlock()
	cfg := c.cfg.Copy()
	cfg.Database = db
	cfg.RuntimeParams["application_name"] = "airlock-catalog"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		<-slots
		return nil, fmt.Errorf("open a catalog connection to database %s: %w", db, err)
	}
	return conn, nil
}

func (c *Catalog) release(db string, conn *pgx.Conn, ok bool) {
	c.mu.Lock()
	slots := c.slots[db]
	if ok && !conn.IsClosed() {
		c.idle[db] = append(c.idle[db], conn)
		conn = nil
	}
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close(context.Background())
	}
	<-slots
}

// Close closes the idle connections.
func (c *Catalog) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for db, conns := range c.idle {
		for _, conn := range conns {
			_ = conn.Close(context.Background())
		}
		delete(c.idle, db)
	}
}

// attrSQL also lists each relation's ancestors (partitioned parents and
// inheritance parents, transitively): a partition or child table holds
// the parent's rows under a name no rule need mention, and inherited
// columns keep their names. Both arrays are in the same order.
const attrSQL = `WITH RECURSIVE k(rel, num) AS (SELECT * FROM unnest($1::oid[], $2::int2[])),
up(child, parent) AS (
  SELECT i.inhrelid, i.inhparent FROM pg_inherits i WHERE i.inhrelid IN (SELECT rel FROM k)
  UNION
  SELECT up.child, i.inhparent FROM up JOIN pg_inherits i ON i.inhrelid = up.parent)
SELECT a.attrelid::int8, a.attnum, n.nspname, c.relname, a.attname, c.relkind::text,
  ARRAY(SELECT pn.nspname FROM up JOIN pg_class pc ON pc.oid = up.parent
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE up.child = c.oid ORDER BY up.parent)::text[],
  ARRAY(SELECT pc.relname FROM up JOIN pg_class pc ON pc.oid = up.parent
    WHERE up.child = c.oid ORDER BY up.parent)::text[]
FROM k
JOIN pg_attribute a ON a.attrelid = k.rel AND a.attnum = k.num
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace`

// depSQL lists the table columns a view's query reads.
const depSQL = `SELECT r.ev_class::int8, d.refobjid::int8, d.refobjsubid::int2
FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
WHERE r.ev_class = ANY($1::oid[]) AND r.rulename = '_RETURN' AND d.refclassid = 'pg_class'::regclass
  AND d.refobjsubid > 0 AND d.refobjid <> r.ev_class`

const viewSQL = `SELECT ev_class::int8, ev_action::text FROM pg_rewrite
WHERE ev_class = ANY($1::oid[]) AND rulename = '_RETURN'`

// Resolve looks attrs up. A view's column is followed to the table column
// it shows, through views over views, by the origin PostgreSQL recorded in
// the view's stored query (the same resorigtbl/resorigcol that gives
// RowDescription its table OID): the chain lists the view's column first
// and the table's last, so a rule may name either. A view column computed
// from an expression has no origin: its chain goes on with an empty
// source, then the columns the view reads (pg_depend), so a rule on any of
// them masks the expression whole. Attrs not found (dropped meanwhile) are
// absent from the result.
func (c *Catalog) Resolve(ctx context.Context, database string, attrs []Attr) (map[Attr][]mask.Source, error) {
	conn, err := c.acquire(ctx, database)
	if err != nil {
		return nil, err
	}
	out, err := resolveOn(ctx, conn, attrs)
	c.release(database, conn, err == nil)
	return out, err
}

// resolved is one column with what its view maps to, and the same column
// of the relation's ancestors (partitioned or inheritance parents).
type resolved struct {
	src       mask.Source
	view      bool
	ancestors []mask.Source
}

func resolveOn(ctx context.Context, conn *pgx.Conn, attrs []Attr) (map[Attr][]mask.Source, error) {
	return resolveDepth(ctx, conn, attrs, 0)
}

func resolveDepth(ctx context.Context, conn *pgx.Conn, attrs []Attr, level int) (map[Attr][]mask.Source, error) {
	out := make(map[Attr][]mask.Source, len(attrs))
	cur := make(map[Attr]Attr, len(attrs)) // original attr → the one to look up next
	var rows []uint32
	for _, a := range attrs {
		if a.Num == 0 {
			rows = append(rows, a.Table)
			continue
		}
		cur[a] = a
	}
	if len(rows) > 0 && level < 2 {
		// A whole-row reference (SELECT u FROM users u): an empty
		// source, then every column of the relation, so a rule on any
		// of them masks the row whole.
		cols, err := relationColumns(ctx, conn, rows)
		if err != nil {
			return nil, err
		}
		var all []Attr
		for _, c := range cols {
			all = append(all, c...)
		}
		srcs, err := resolveDepth(ctx, conn, all, level+1)
		if err != nil {
			return nil, err
		}
		for _, rel := range rows {
			chain := []mask.Source{{}}
			for _, c := range cols[rel] {
				for _, src := range srcs[c] {
					if src.Known() {
						chain = append(chain, src)
					}
				}
			}
			out[Attr{rel, 0}] = chain
		}
	}
	computed := map[Attr]uint32{} // original attr → the view it is computed in
	for depth := 0; len(cur) > 0 && depth < maxViewDepth; depth++ {
		var list []Attr
		seen := map[Attr]bool{}
		for _, c := range cur {
			if !seen[c] {
				seen[c] = true
				list = append(list, c)
			}
		}
		info, err := lookupAttrs(ctx, conn, list)
		if err != nil {
			return nil, err
		}
		views := map[uint32]bool{}
		for a, r := range info {
			if r.view {
				views[a.Table] = true
			}
		}
		var origins map[uint32]map[int16]Attr
		if len(views) > 0 {
			if origins, err = viewOrigins(ctx, conn, views); err != nil {
				return nil, err
			}
		}
		for orig, c := range cur {
			r, ok := info[c]
			if !ok {
				delete(cur, orig)
				continue
			}
			out[orig] = append(out[orig], r.src)
			out[orig] = append(out[orig], r.ancestors...)
			if r.view {
				if o, ok := origins[c.Table][c.Num]; ok && o.Table != 0 {
					cur[orig] = o
					continue
				}
				// Computed in the view: an empty source, then every
				// column the view reads, so that a rule masking one
				// of them masks the expression whole.
				out[orig] = append(out[orig], mask.Source{})
				computed[orig] = c.Table
			}
			delete(cur, orig)
		}
	}
	if len(computed) == 0 || level >= 2 {
		return out, nil
	}
	views := map[uint32]bool{}
	for _, v := range computed {
		views[v] = true
	}
	deps, err := viewDeps(ctx, conn, views)
	if err != nil {
		return nil, err
	}
	var all []Attr
	for _, d := range deps {
		all = append(all, d...)
	}
	srcs, err := resolveDepth(ctx, conn, all, level+1)
	if err != nil {
		return nil, err
	}
	for orig, v := range computed {
		for _, d := range deps[v] {
			for _, src := range srcs[d] {
				if src.Known() {
					out[orig] = append(out[orig], src)
				}
			}
		}
	}
	return out, nil
}

func relationColumns(ctx context.Context, conn *pgx.Conn, rels []uint32) (map[uint32][]Attr, error) {
	rows, err := conn.Query(ctx, `SELECT attrelid::int8, attnum FROM pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped`, rels)
	if err != nil {
		return nil, fmt.Errorf("look up a relation's columns: %w", err)
	}
	defer rows.Close()
	out := map[uint32][]Attr{}
	for rows.Next() {
		var rel int64
		var num int16
		if err := rows.Scan(&rel, &num); err != nil {
			return nil, fmt.Errorf("read a relation's columns: %w", err)
		}
		out[uint32(rel)] = append(out[uint32(rel)], Attr{uint32(rel), num})
	}
	return out, rows.Err()
}

func viewDeps(ctx context.Context, conn *pgx.Conn, views map[uint32]bool) (map[uint32][]Attr, error) {
	ids := make([]uint32, 0, len(views))
	for v := range views {
		ids = append(ids, v)
	}
	rows, err := conn.Query(ctx, depSQL, ids)
	if err != nil {
		return nil, fmt.Errorf("look up the columns views read: %w", err)
	}
	defer rows.Close()
	out := map[uint32][]Attr{}
	for rows.Next() {
		var view, rel int64
		var num int16
		if err := rows.Scan(&view, &rel, &num); err != nil {
			return nil, fmt.Errorf("read the columns views read: %w", err)
		}
		out[uint32(view)] = append(out[uint32(view)], Attr{uint32(rel), num})
	}
	return out, rows.Err()
}

func lookupAttrs(ctx context.Context, conn *pgx.Conn, attrs []Attr) (map[Attr]resolved, error) {
	rels := make([]uint32, len(attrs))
	nums := make([]int16, len(attrs))
	for i, a := range attrs {
		rels[i], nums[i] = a.Table, a.Num
	}
	rows, err := conn.Query(ctx, attrSQL, rels, nums)
	if err != nil {
		return nil, fmt.Errorf("look up result columns in the catalog: %w", err)
	}
	defer rows.Close()
	info := make(map[Attr]resolved, len(attrs))
	for rows.Next() {
		var rel int64
		var num int16
		var r resolved
		var kind string
		var ancSchemas, ancTables []string
		if err := rows.Scan(&rel, &num, &r.src.Schema, &r.src.Table, &r.src.Column, &kind, &ancSchemas, &ancTables); err != nil {
			return nil, fmt.Errorf("read result columns from the catalog: %w", err)
		}
		for i := range min(len(ancSchemas), len(ancTables)) {
			r.ancestors = append(r.ancestors, mask.Source{Schema: ancSchemas[i], Table: ancTables[i], Column: r.src.Column})
		}
		// A materialized view keeps its query as a view does: its
		// columns are followed to what it reads.
		r.view = kind == "v" || kind == "m"
		info[Attr{uint32(rel), num}] = r
	}
	return info, rows.Err()
}

func viewOrigins(ctx context.Context, conn *pgx.Conn, views map[uint32]bool) (map[uint32]map[int16]Attr, error) {
	ids := make([]uint32, 0, len(views))
	for v := range views {
		ids = append(ids, v)
	}
	rows, err := conn.Query(ctx, viewSQL, ids)
	if err != nil {
		return nil, fmt.Errorf("look up view definitions: %w", err)
	}
	defer rows.Close()
	out := map[uint32]map[int16]Attr{}
	for rows.Next() {
		var id int64
		var action string
		if err := rows.Scan(&id, &action); err != nil {
			return nil, fmt.Errorf("read view definitions: %w", err)
		}
		out[uint32(id)] = TargetOrigins(action)
	}
	return out, rows.Err()
}

// TargetOrigins reads the top-level target list of a stored query
// (pg_rewrite.ev_action as text) and returns, per output column number, the
// table column PostgreSQL recorded as its origin (resorigtbl, resorigcol).
// Columns computed from expressions have no origin and are absent.
func TargetOrigins(action string) map[int16]Attr {
	out := map[int16]Attr{}
	depth := 0
	inTargets := false
	var resno, col int64
	var tbl int64
	for i := 0; i < len(action); i++ {
		ch := action[i]
		switch ch {
		case '\\':
			i++ // an escaped character in a token
			continue
		case '"':
			// A quoted string: skip to its end.
			for i++; i < len(action) && action[i] != '"'; i++ {
				if action[i] == '\\' {
					i++
				}
			}
			continue
		case '{':
			depth++
			if inTargets && depth == 2 {
				resno, tbl, col = 0, 0, 0
			}
			continue
		case '}':
			if inTargets && depth == 2 && resno > 0 && tbl != 0 {
				out[int16(resno)] = Attr{uint32(tbl), int16(col)}
			}
			depth--
			continue
		case ':':
		default:
			continue
		}
		// A field name at ':'; the top QUERY's fields are at depth 1
		// (the list around it is parentheses), a target entry's at 2.
		j := i + 1
		for j < len(action) && action[j] != ' ' && action[j] != ')' && action[j] != '}' {
			j++
		}
		name := action[i+1 : j]
		if depth == 1 {
			inTargets = name == "targetList"
			continue
		}
		if !inTargets || depth != 2 {
			continue
		}
		k := j + 1
		e := k
		for e < len(action) && action[e] != ' ' && action[e] != '}' && action[e] != ')' {
			e++
		}
		if k > len(action) {
			break
		}
		v, err := strconv.ParseInt(action[k:e], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "resno":
			resno = v
		case "resorigtbl":
			tbl = v
		case "resorigcol":
			col = v
		}
	}
	return out
}

// Relation is a relation a statement names, found by name, with the chain
// of every column (as Resolve gives it for the column's attr).
type Relation struct {
	Schema, Name string
	Columns      map[string][]mask.Source // by column name
}

// RelationFinder is a Resolver that also finds relations by the names
// statements use: the lineage check of statements needs the views among
// them and what they read.
type RelationFinder interface {
	Relations(ctx context.Context, database string, names []string) (map[string][]Relation, error)
}

const relSQL = `SELECT c.oid::int8, n.nspname, c.relname, a.attnum, a.attname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relname = ANY($1::text[])`

// Relations finds each name ("schema.table" or "table", as PostgreSQL
// folds identifiers): a qualified one in its schema, an unqualified one in
// every schema (the session's search_path is not known here, so every
// relation it could mean is returned). A name found nowhere is absent.
func (c *Catalog) Relations(ctx context.Context, database string, names []string) (map[string][]Relation, error) {
	conn, err := c.acquire(ctx, database)
	if err != nil {
		return nil, err
	}
	out, err := relationsOn(ctx, conn, names)
	c.release(database, conn, err == nil)
	return out, err
}

// splitName is a relation name as a statement writes it: schema and
// table (a database part, catalog.schema.table, is dropped).
func splitName(name string) (schema, table string) {
	parts := strings.Split(name, ".")
	if len(parts) == 1 {
		return "", name
	}
	return parts[len(parts)-2], parts[len(parts)-1]
}

func relationsOn(ctx context.Context, conn *pgx.Conn, names []string) (map[string][]Relation, error) {
	tables := make([]string, 0, len(names))
	for _, n := range names {
		_, t := splitName(n)
		tables = append(tables, t)
	}
	rows, err := conn.Query(ctx, relSQL, tables)
	if err != nil {
		return nil, fmt.Errorf("look up relations by name: %w", err)
	}
	type col struct {
		schema, table, name string
		attr                Attr
	}
	var cols []col
	for rows.Next() {
		var rel int64
		var c col
		if err := rows.Scan(&rel, &c.schema, &c.table, &c.attr.Num, &c.name); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read relations by name: %w", err)
		}
		c.attr.Table = uint32(rel)
		cols = append(cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read relations by name: %w", err)
	}
	attrs := make([]Attr, len(cols))
	for i, c := range cols {
		attrs[i] = c.attr
	}
	chains, err := resolveOn(ctx, conn, attrs)
	if err != nil {
		return nil, err
	}
	out := map[string][]Relation{}
	for _, n := range names {
		schema, table := splitName(n)
		byOID := map[uint32]int{}
		for _, c := range cols {
			if c.table != table || schema != "" && c.schema != schema {
				continue
			}
			i, ok := byOID[c.attr.Table]
			if !ok {
				i = len(out[n])
				byOID[c.attr.Table] = i
				out[n] = append(out[n], Relation{Schema: c.schema, Name: c.table, Columns: map[string][]mask.Source{}})
			}
			out[n][i].Columns[c.name] = chains[c.attr]
		}
	}
	return out, nil
}
