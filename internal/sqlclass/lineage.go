package sqlclass

import (
	"slices"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Lineage is computed from the parse tree alone, resolving names the way
// PostgreSQL scopes them but without the catalog: a base relation's
// columns are unknown, so an unqualified column names every relation that
// could hold it, and anything the walk cannot pin down (a name it derives
// differently, a column list it cannot line up) falls back to every column
// that could be meant. Over-reporting costs a masked or refused column;
// under-reporting leaks one.
//
// Values flow through derived relations (subqueries in FROM, CTEs, set
// operations, functions in FROM): each derived column remembers the
// references its expression made, and a reference to it is replaced by
// those, in the role of the reference. The columns of a derived relation
// are also listed in Filter when it is defined (they are read even when
// nothing outside uses them, and an error evaluating one can quote it).

// role is a bit set of the lists a reference goes to.
type role uint8

const (
	roleOutput role = 1 << iota
	roleFilter
	roleCopy
)

// maxLineageDepth bounds the recursion of the lineage walk. The parse tree
// is already bounded by the protobuf decoder; deeper than this, the
// statement is marked Unknown rather than walked further.
const maxLineageDepth = 5000

// refList is a de-duplicated list of references: a slice while small, with
// a map once large so that a statement with 100,000 references is not
// quadratic.
type refList struct {
	list []ColumnRef
	m    map[string]struct{}
}

func refKey(r ColumnRef) string {
	return strings.Join(r.Relations, "\x00") + "\x01" + r.Column
}

func (l *refList) add(r ColumnRef) {
	if l.m != nil {
		k := refKey(r)
		if _, ok := l.m[k]; ok {
			return
		}
		l.m[k] = struct{}{}
		l.list = append(l.list, r)
		return
	}
	for _, x := range l.list {
		if x.Column == r.Column && slices.Equal(x.Relations, r.Relations) {
			return
		}
	}
	l.list = append(l.list, r)
	if len(l.list) > smallSet {
		l.m = make(map[string]struct{}, 2*len(l.list))
		for _, x := range l.list {
			l.m[refKey(x)] = struct{}{}
		}
	}
}

// dcol is one named column of a derived relation and the references its
// value is computed from.
type dcol struct {
	name string
	refs refList
}

// derived is what a query hands to the query around it.
type derived struct {
	cols []dcol
	buf  [1]dcol // cols of a one-column query
	// stars are base relations whose every column passes through under
	// its own name (SELECT * over a table).
	stars [][]string
	// anyName: the column names are unknown (a function in FROM, columns
	// renamed past a star): any name resolves to every reference.
	anyName bool
	opaque  refList
}

// item is one entry of a FROM clause as a reference sees it.
type item struct {
	name string   // what qualifies a reference: the alias, else the relation name
	rel  []string // a base relation: its name (one entry), shared by every reference
	// aliased: a base relation's columns were renamed (t AS x(a, b)):
	// which column a name stands for is unknown.
	aliased []string
	d       *derived // a derived relation
}

type scope struct {
	items  []item
	parent *scope
	buf    [2]item // items of the common one- and two-relation FROM
	// rels caches the base relations of this level and, in all, of the
	// outer levels too, sorted and de-duplicated: an unqualified name
	// lists them all, and building the list per reference would be
	// quadratic in a FROM list of thousands.
	rels, all []string
	cached    bool
}

func (l *lineageWalker) newScope(parent *scope) *scope {
	sc := &scope{parent: parent}
	sc.items = sc.buf[:0]
	return sc
}

func (sc *scope) add(it item) {
	sc.items = append(sc.items, it)
	sc.cached = false
}

// relations returns this level's base relations and those of every level.
func (sc *scope) relations() (own, all []string) {
	if sc.cached {
		return sc.rels, sc.all
	}
	var set nameSet
	var first []string
	n := 0
	for i := range sc.items {
		if it := &sc.items[i]; it.d == nil {
			if first == nil {
				first = it.rel
			}
			n++
		}
	}
	switch n {
	case 0:
		sc.rels = nil
	case 1:
		sc.rels = first // already a one-entry slice: no copy
	default:
		for i := range sc.items {
			if it := &sc.items[i]; it.d == nil {
				set.add(it.rel[0])
			}
		}
		sc.rels = slices.Clip(set.sorted())
		if len(sc.rels) == 1 {
			sc.rels = first
		}
	}
	sc.all = sc.rels
	if sc.parent != nil {
		if _, outer := sc.parent.relations(); len(outer) > 0 {
			var all nameSet
			for _, list := range [][]string{sc.rels, outer} {
				for _, r := range list {
					all.add(r)
				}
			}
			sc.all = slices.Clip(all.sorted())
		}
	}
	sc.cached = true
	return sc.rels, sc.all
}

// sink is where the references of an expression go: into the statement's
// lists (roles), into a derived column being built (col), or both.
type sink struct {
	roles role
	col   *refList
}

type cte struct {
	name string
	d    *derived
}

// lineageWalker computes one statement's Lineage.
type lineageWalker struct {
	out, filter, copy refList
	unknown           bool
	ctes              []cte
	names             []string    // backing store of one-entry Relations slices
	slab              []ColumnRef // backing store of the lists' first entries
	buf               *lineageBuf
}

// lineageBuf is the first backing store of names and slab: one allocation
// for what a small statement's Lineage keeps (the scopes and derived
// relations of the walk are garbage at its end, never held by the cache).
type lineageBuf struct {
	refs  [4]ColumnRef
	names [2]string
}

// firstBuf reports whether it set names and slab to the first store.
func (l *lineageWalker) firstBuf() bool {
	if l.buf != nil {
		return false
	}
	l.buf = &lineageBuf{}
	l.names = l.buf.names[:0]
	l.slab = l.buf.refs[:]
	return true
}

func (l *lineageWalker) emit(s sink, r ColumnRef) {
	if s.col != nil {
		s.col.add(r)
	}
	if s.roles&roleOutput != 0 {
		l.list(&l.out).add(r)
	}
	if s.roles&roleFilter != 0 {
		l.list(&l.filter).add(r)
	}
	if s.roles&roleCopy != 0 {
		l.list(&l.copy).add(r)
	}
}

// list gives a statement's list its first two entries from a shared
// allocation: most statements list a column or two in two of the lists.
func (l *lineageWalker) list(rl *refList) *refList {
	if rl.list == nil {
		if len(l.slab) < 2 && !l.firstBuf() {
			l.slab = make([]ColumnRef, 4)
		}
		rl.list = l.slab[:0:2]
		l.slab = l.slab[2:]
	}
	return rl
}

func (l *lineageWalker) emitAll(s sink, refs *refList) {
	for _, r := range refs.list {
		l.emit(s, r)
	}
}

// one returns a one-entry Relations slice for name, from a shared backing
// array (one allocation for many references).
func (l *lineageWalker) one(name string) []string {
	if len(l.names) == cap(l.names) && !l.firstBuf() {
		l.names = make([]string, 0, min(2*cap(l.names)+2, 16))
	}
	l.names = append(l.names, name)
	n := len(l.names)
	return l.names[n-1 : n : n]
}

// emitDerived emits every reference d's columns are computed from.
func (l *lineageWalker) emitDerived(s sink, d *derived) {
	if d == nil {
		return
	}
	for i := range d.cols {
		l.emitAll(s, &d.cols[i].refs)
	}
	for _, rel := range d.stars {
		l.emit(s, ColumnRef{Relations: rel})
	}
	l.emitAll(s, &d.opaque)
}

// lookup emits what d's column name is computed from, and reports whether
// d can have such a column.
func (l *lineageWalker) lookup(s sink, d *derived, name string) bool {
	found := false
	for i := range d.cols {
		if d.cols[i].name == name {
			l.emitAll(s, &d.cols[i].refs)
			found = true
		}
	}
	if found {
		return true
	}
	for _, rel := range d.stars {
		l.emit(s, ColumnRef{Relations: rel, Column: name})
		found = true
	}
	if d.anyName {
		l.emitAll(s, &d.opaque)
		found = true
	}
	return found
}

// statementLineage fills st.Lineage (and CursorName) from its node.
func statementLineage(node *pg_query.Node, st *Statement) {
	var l lineageWalker // on the stack: nothing keeps it
	l.run(node, st)
}

func (l *lineageWalker) run(node *pg_query.Node, st *Statement) {
	if node != nil {
		l.statement(node, st)
	}
	st.Lineage = Lineage{
		Output:  l.out.list,
		Filter:  l.filter.list,
		Copy:    l.copy.list,
		Unknown: l.unknown || st.Flags&FlagOpaque != 0,
	}
}

func (l *lineageWalker) statement(node *pg_query.Node, st *Statement) {
	switch n := node.Node.(type) {
	case *pg_query.Node_SelectStmt:
		r := roleOutput
		if n.SelectStmt.IntoClause != nil {
			r = roleCopy
		}
		l.query(n.SelectStmt, nil, 0, &sink{roles: r})
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		l.dml(node, nil, 0, &sink{roles: roleOutput})
	case *pg_query.Node_CreateTableAsStmt:
		l.queryNode(n.CreateTableAsStmt.Query, sink{roles: roleCopy}, nil, 0)
	case *pg_query.Node_ViewStmt:
		// A view stores no values, but hands the query's columns out under
		// the view's name, where masking by source would not know them.
		l.queryNode(n.ViewStmt.Query, sink{roles: roleCopy}, nil, 0)
	case *pg_query.Node_RuleStmt:
		// A rule's actions run later, on other statements' rows (NEW and
		// OLD are rows of its relation).
		r := n.RuleStmt
		if r.Relation != nil {
			l.emit(sink{roles: roleCopy}, ColumnRef{Relations: l.one(relName(r.Relation))})
		}
		for _, a := range r.Actions {
			inner := &Statement{}
			statementLineage(a, inner)
			l.addLineage(inner.Lineage, roleCopy, roleCopy, roleCopy)
		}
	case *pg_query.Node_CreateTrigStmt:
		// A row trigger hands every row written to its function, which may
		// store it anywhere: UPDATE t SET id = id then copies the table.
		if rv := n.CreateTrigStmt.Relation; rv != nil {
			l.emit(sink{roles: roleCopy}, ColumnRef{Relations: l.one(relName(rv))})
		}
	case *pg_query.Node_AlterTableStmt:
		// Generated columns, USING and defaults compute stored values from
		// the table's own columns.
		if rv := n.AlterTableStmt.Relation; rv != nil {
			sc := l.newScope(nil)
			l.rangeVar(rv, sc)
			for _, c := range n.AlterTableStmt.Cmds {
				l.generic(protoMessage(c), sink{roles: roleCopy}, sc, 1)
			}
		}
	case *pg_query.Node_RefreshMatViewStmt:
		if rv := n.RefreshMatViewStmt.Relation; rv != nil {
			l.emit(sink{roles: roleCopy}, ColumnRef{Relations: l.one(relName(rv))})
		}
	case *pg_query.Node_CopyStmt:
		l.copyStmt(n.CopyStmt)
	case *pg_query.Node_DeclareCursorStmt:
		st.CursorName = n.DeclareCursorStmt.Portalname
		l.queryNode(n.DeclareCursorStmt.Query, sink{roles: roleOutput}, nil, 0)
	case *pg_query.Node_FetchStmt:
		st.CursorName = n.FetchStmt.Portalname
	case *pg_query.Node_ClosePortalStmt:
		st.CursorName = n.ClosePortalStmt.Portalname
	case *pg_query.Node_ExplainStmt:
		if st.Command == "EXPLAIN ANALYZE" {
			// The statement runs (Nested[0]) but its rows are not
			// returned: what it stores is stored, the rest is read.
			for _, in := range st.Nested {
				l.addLineage(in.Lineage, roleFilter, roleFilter, roleCopy)
			}
			return
		}
		// Only planned: nothing is returned or stored.
		if q := n.ExplainStmt.Query; q != nil {
			inner := &Statement{}
			statementLineage(q, inner)
			l.addLineage(inner.Lineage, roleFilter, roleFilter, roleFilter)
			l.unknown = l.unknown || inner.Lineage.Unknown
		}
	case *pg_query.Node_PrepareStmt:
		// Nested[0], the prepared statement, has the lineage.
	case *pg_query.Node_DoStmt, *pg_query.Node_CreateFunctionStmt:
		// Whatever a body reads it may store anywhere (a table, a setting,
		// a notice): all of it is Copy.
		st.Walk(func(in *Statement) {
			if in != st {
				l.addLineage(in.Lineage, roleCopy, roleCopy, roleCopy)
			}
		})
	case *pg_query.Node_CallStmt:
		// A procedure may store its arguments anywhere.
		if fc := n.CallStmt.Funccall; fc != nil {
			l.exprs(fc.Args, sink{roles: roleCopy}, nil, 0)
		}
	}
	l.dynamicNested(node, st)
}

// dynamicNested adds the lineage of SQL text run by a function (dblink,
// query_to_xml with a constant query): what it returns reaches what the
// call returns; a function with side effects may store it too.
func (l *lineageWalker) dynamicNested(node *pg_query.Node, st *Statement) {
	switch node.Node.(type) {
	case *pg_query.Node_DoStmt, *pg_query.Node_CreateFunctionStmt, *pg_query.Node_PrepareStmt, *pg_query.Node_ExplainStmt:
		return
	}
	if len(st.Nested) == 0 {
		return
	}
	// The call's value is stored when the statement stores what it
	// computes (CREATE TABLE AS, INSERT, COPY to a file, ...) or the
	// function itself writes (dblink_exec).
	stores := st.Kind != KindRead || st.Flags&(FlagCopyFile|FlagCopyProgram) != 0
	for _, se := range st.SideEffects {
		if sqlTextFunctions[lastName(se.Function)] {
			stores = true
		}
	}
	for _, in := range st.Nested {
		if in.Flags&FlagFunctionBody != 0 {
			continue
		}
		if stores {
			l.addLineage(in.Lineage, roleOutput|roleCopy, roleFilter|roleCopy, roleCopy)
		} else {
			l.addLineage(in.Lineage, roleOutput, roleFilter, roleCopy)
		}
	}
}

// addLineage adds in's lists to the roles given for each.
func (l *lineageWalker) addLineage(in Lineage, out, filter, copy role) {
	for _, r := range in.Output {
		l.emit(sink{roles: out}, r)
	}
	for _, r := range in.Filter {
		l.emit(sink{roles: filter}, r)
	}
	for _, r := range in.Copy {
		l.emit(sink{roles: copy}, r)
	}
	if in.Unknown {
		l.unknown = true
	}
}

func (l *lineageWalker) copyStmt(c *pg_query.CopyStmt) {
	if c.IsFrom {
		return
	}
	r := roleOutput
	if c.IsProgram || c.Filename != "" {
		r = roleCopy
	}
	s := sink{roles: r}
	if c.Query != nil {
		l.queryNode(c.Query, s, nil, 0)
		return
	}
	if c.Relation == nil {
		return
	}
	rel := l.one(relName(c.Relation))
	if len(c.Attlist) == 0 {
		l.emit(s, ColumnRef{Relations: rel})
		return
	}
	for _, a := range c.Attlist {
		if str := a.GetString_(); str != nil {
			l.emit(s, ColumnRef{Relations: rel, Column: str.Sval})
		}
	}
}

// queryNode handles a node that holds a query (SELECT or DML with
// RETURNING) and emits its result columns into s.
func (l *lineageWalker) queryNode(n *pg_query.Node, s sink, outer *scope, depth int) {
	l.subquery(n, outer, depth, &s)
}

// subquery walks a query node. With into nil it returns the derived
// relation of its result columns; else it emits them into *into (cheaper:
// nothing is kept per column) and returns nil.
func (l *lineageWalker) subquery(n *pg_query.Node, outer *scope, depth int, into *sink) *derived {
	if n == nil {
		return nil
	}
	if sel := n.GetSelectStmt(); sel != nil {
		return l.query(sel, outer, depth, into)
	}
	switch n.Node.(type) {
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		return l.dml(n, outer, depth, into)
	}
	// EXECUTE name inside CREATE TABLE AS and the like: the consumer looks
	// up the prepared statement.
	return nil
}

// pushCTEs makes the WITH clause's CTEs visible; the caller truncates
// l.ctes back to the returned length when the query ends.
func (l *lineageWalker) pushCTEs(with *pg_query.WithClause, outer *scope, depth int) int {
	k := len(l.ctes)
	if with == nil {
		return k
	}
	if with.Recursive {
		// WITH RECURSIVE lets a CTE read one defined after it. Their names
		// are visible from the start, without columns (d nil) until done:
		// reading one of those makes the lineage Unknown.
		for _, c := range with.Ctes {
			if ce := c.GetCommonTableExpr(); ce != nil {
				l.ctes = append(l.ctes, cte{name: ce.Ctename})
			}
		}
	}
	for _, c := range with.Ctes {
		ce := c.GetCommonTableExpr()
		if ce == nil {
			continue
		}
		var d *derived
		if sel := ce.Ctequery.GetSelectStmt(); with.Recursive && sel != nil && sel.Op != pg_query.SetOperation_SETOP_NONE {
			d = l.recursiveCTE(ce.Ctename, sel, outer, depth)
		} else {
			d = l.subquery(ce.Ctequery, outer, depth+1, nil)
		}
		d = renameColumns(d, ce.Aliascolnames)
		if d == nil {
			d = &derived{}
		}
		// Read whether or not anything uses it.
		l.emitDerived(sink{roles: roleFilter}, d)
		l.ctes = append(l.ctes, cte{name: ce.Ctename, d: d})
	}
	return k
}

// recursiveCTE: the recursive arm reads the CTE itself, so which column
// carries what is a fixed point; every column is taken to carry all of it.
func (l *lineageWalker) recursiveCTE(name string, sel *pg_query.SelectStmt, outer *scope, depth int) *derived {
	all := &derived{anyName: true}
	if sel.Larg != nil {
		all.opaque = allRefs(l.query(sel.Larg, outer, depth+1, nil))
	}
	l.ctes = append(l.ctes, cte{name: name, d: all})
	k := len(l.ctes)
	var right *derived
	if sel.Rarg != nil {
		right = l.query(sel.Rarg, outer, depth+1, nil)
	}
	l.ctes = l.ctes[:k-1]
	res := &derived{anyName: true}
	for _, r := range all.opaque.list {
		res.opaque.add(r)
	}
	for _, r := range allRefs(right).list {
		res.opaque.add(r)
	}
	return res
}

// allRefs is every reference d's columns are computed from, whole rows of
// star relations included.
func allRefs(d *derived) refList {
	var out refList
	if d == nil {
		return out
	}
	for i := range d.cols {
		for _, r := range d.cols[i].refs.list {
			out.add(r)
		}
	}
	for _, rel := range d.stars {
		out.add(ColumnRef{Relations: rel})
	}
	for _, r := range d.opaque.list {
		out.add(r)
	}
	return out
}

// renameColumns applies a column alias list (sub AS s(a, b), WITH x(a, b)).
func renameColumns(d *derived, names []*pg_query.Node) *derived {
	if d == nil || len(names) == 0 {
		return d
	}
	if len(d.stars) > 0 || d.anyName {
		// Positions are unknown past a star: any name may mean anything.
		return &derived{anyName: true, opaque: allRefs(d)}
	}
	nd := &derived{cols: slices.Clone(d.cols)}
	for i, n := range names {
		if i >= len(nd.cols) {
			break
		}
		if s := n.GetString_(); s != nil {
			nd.cols[i].name = s.Sval
		}
	}
	return nd
}

// query walks one SELECT (plain, VALUES or a set operation) whose outer
// scope is outer, emitting what it reads to choose rows as Filter, and
// returns its result columns.
func (l *lineageWalker) query(sel *pg_query.SelectStmt, outer *scope, depth int, into *sink) *derived {
	if sel == nil {
		return nil
	}
	if depth > maxLineageDepth {
		l.unknown = true
		return nil
	}
	k := l.pushCTEs(sel.WithClause, outer, depth)
	defer func() { l.ctes = l.ctes[:k] }()

	if sel.Op != pg_query.SetOperation_SETOP_NONE {
		if into != nil {
			l.query(sel.Larg, outer, depth+1, into)
			l.query(sel.Rarg, outer, depth+1, into)
			// ORDER BY names result columns, all of them already in
			// *into; what else it reads is Filter.
			l.filterClauses(sel, l.newScope(outer), depth)
			return nil
		}
		d := setOp(l.query(sel.Larg, outer, depth+1, nil), l.query(sel.Rarg, outer, depth+1, nil))
		// ORDER BY and LIMIT of a set operation name its result columns.
		sc := l.newScope(outer)
		sc.add(item{d: d})
		l.filterClauses(sel, sc, depth)
		return d
	}
	sc := l.newScope(outer)
	for _, f := range sel.FromClause {
		l.fromItem(f, sc, depth+1)
	}
	if len(sel.ValuesLists) > 0 {
		if into != nil {
			l.exprs(sel.ValuesLists, *into, sc, depth+1)
			return nil
		}
		return l.values(sel.ValuesLists, sc, depth)
	}
	l.filterClauses(sel, sc, depth)
	return l.targetList(sel.TargetList, sc, depth, into)
}

// targetList walks a target or RETURNING list in scope sc: into *into
// when given (a star is then a whole-row reference to what it names),
// else into the derived relation it returns.
func (l *lineageWalker) targetList(targets []*pg_query.Node, sc *scope, depth int, into *sink) *derived {
	if into != nil {
		l.exprs(targets, *into, sc, depth+1)
		return nil
	}
	d := &derived{}
	d.cols = d.buf[:0]
	for _, t := range targets {
		rt := t.GetResTarget()
		if rt == nil {
			continue
		}
		if cr := rt.Val.GetColumnRef(); cr != nil && isStar(cr) {
			l.starInto(d, cr, sc)
			continue
		}
		d.cols = append(d.cols, dcol{name: targetName(rt)})
		c := &d.cols[len(d.cols)-1]
		l.expr(rt.Val, sink{col: &c.refs}, sc, depth+1)
	}
	return d
}

// filterClauses emits what chooses and orders a SELECT's rows.
func (l *lineageWalker) filterClauses(sel *pg_query.SelectStmt, sc *scope, depth int) {
	f := sink{roles: roleFilter}
	l.exprs(sel.DistinctClause, f, sc, depth+1)
	l.expr(sel.WhereClause, f, sc, depth+1)
	l.exprs(sel.GroupClause, f, sc, depth+1)
	l.expr(sel.HavingClause, f, sc, depth+1)
	l.exprs(sel.WindowClause, f, sc, depth+1)
	l.exprs(sel.SortClause, f, sc, depth+1)
	l.expr(sel.LimitOffset, f, sc, depth+1)
	l.expr(sel.LimitCount, f, sc, depth+1)
}

func (l *lineageWalker) values(lists []*pg_query.Node, sc *scope, depth int) *derived {
	d := &derived{}
	for _, row := range lists {
		lst := row.GetList()
		if lst == nil {
			continue
		}
		for i, v := range lst.Items {
			for len(d.cols) <= i {
				d.cols = append(d.cols, dcol{name: "column" + strconv.Itoa(len(d.cols)+1)})
			}
			l.expr(v, sink{col: &d.cols[i].refs}, sc, depth+1)
		}
	}
	return d
}

// setOp lines up the columns of a UNION/INTERSECT/EXCEPT: names from the
// left, values from both.
func setOp(a, b *derived) *derived {
	if a == nil || b == nil || len(a.stars) > 0 || len(b.stars) > 0 || a.anyName || b.anyName || len(a.cols) != len(b.cols) {
		res := &derived{anyName: true, opaque: allRefs(a)}
		for _, r := range allRefs(b).list {
			res.opaque.add(r)
		}
		if a != nil && len(a.stars) == 0 && !a.anyName {
			res.cols = a.cols
		}
		return res
	}
	d := &derived{cols: make([]dcol, len(a.cols))}
	for i := range a.cols {
		d.cols[i].name = a.cols[i].name
		for _, r := range a.cols[i].refs.list {
			d.cols[i].refs.add(r)
		}
		for _, r := range b.cols[i].refs.list {
			d.cols[i].refs.add(r)
		}
	}
	return d
}

func isStar(cr *pg_query.ColumnRef) bool {
	n := len(cr.Fields)
	return n > 0 && cr.Fields[n-1].GetAStar() != nil
}

// targetName is the name PostgreSQL gives a result column (FigureColname,
// for the cases that matter to a reference from outside; a name it gets
// wrong makes a lookup fall back to every column).
func targetName(rt *pg_query.ResTarget) string {
	if rt.Name != "" {
		return rt.Name
	}
	n := rt.Val
	for n != nil {
		switch v := n.Node.(type) {
		case *pg_query.Node_ColumnRef:
			if f := v.ColumnRef.Fields; len(f) > 0 {
				if s := f[len(f)-1].GetString_(); s != nil {
					return s.Sval
				}
			}
			return "?column?"
		case *pg_query.Node_FuncCall:
			if parts := v.FuncCall.Funcname; len(parts) > 0 {
				if s := parts[len(parts)-1].GetString_(); s != nil {
					return s.Sval
				}
			}
			return "?column?"
		case *pg_query.Node_TypeCast:
			if _, isConst := v.TypeCast.Arg.GetNode().(*pg_query.Node_AConst); isConst || v.TypeCast.Arg == nil {
				if tn := v.TypeCast.TypeName; tn != nil && len(tn.Names) > 0 {
					if s := tn.Names[len(tn.Names)-1].GetString_(); s != nil {
						return s.Sval
					}
				}
				return "?column?"
			}
			n = v.TypeCast.Arg
		case *pg_query.Node_AIndirection:
			ind := v.AIndirection.Indirection
			if len(ind) > 0 {
				if s := ind[len(ind)-1].GetString_(); s != nil {
					return s.Sval
				}
			}
			n = v.AIndirection.Arg
		default:
			return "?column?"
		}
	}
	return "?column?"
}

// starInto adds what SELECT * or SELECT t.* passes through to d.
func (l *lineageWalker) starInto(d *derived, cr *pg_query.ColumnRef, sc *scope) {
	if len(cr.Fields) == 1 {
		for i := range sc.items {
			passThrough(d, &sc.items[i])
		}
		return
	}
	if it := findItem(sc, cr.Fields[:len(cr.Fields)-1]); it != nil {
		passThrough(d, it)
		return
	}
	// A qualifier naming nothing in scope: keep it as written.
	if q := qualifier(cr.Fields[:len(cr.Fields)-1]); q != "" {
		addStar(d, l.one(q))
	}
}

// passThrough adds every column of it to d, as t.* does.
func passThrough(d *derived, it *item) {
	switch {
	case it.d != nil:
		if len(d.cols)+len(it.d.cols) > maxDerivedColumns {
			// More columns than PostgreSQL allows (self-joins of CTEs
			// double them at each step): keep the references, not the
			// names, so the walk stays linear.
			d.anyName = true
			for _, cols := range [][]dcol{d.cols, it.d.cols} {
				for i := range cols {
					for _, r := range cols[i].refs.list {
						d.opaque.add(r)
					}
				}
			}
			d.cols = nil
		} else {
			d.cols = append(d.cols, it.d.cols...)
		}
		for _, rel := range it.d.stars {
			addStar(d, rel)
		}
		if it.d.anyName {
			d.anyName = true
		}
		for _, r := range it.d.opaque.list {
			d.opaque.add(r)
		}
	case len(it.aliased) > 0:
		// Renamed columns: which is which is unknown.
		d.anyName = true
		d.opaque.add(ColumnRef{Relations: it.rel})
	default:
		addStar(d, it.rel)
	}
}

// maxDerivedColumns is PostgreSQL's limit on a target list's length.
const maxDerivedColumns = 1664

func addStar(d *derived, rel []string) {
	for _, r := range d.stars {
		if slices.Equal(r, rel) {
			return
		}
	}
	d.stars = append(d.stars, rel)
}

// qualifier joins the name parts of a reference's qualifier.
func qualifier(fields []*pg_query.Node) string {
	parts := nameParts(fields)
	return strings.Join(parts, ".")
}

// findItem finds the FROM item a qualifier (t, s.t, db.s.t) names, the
// innermost first.
func findItem(sc *scope, quals []*pg_query.Node) *item {
	parts := nameParts(quals)
	if len(parts) == 0 || len(parts) != len(quals) {
		return nil
	}
	last := parts[len(parts)-1]
	full := strings.Join(parts, ".")
	for s := sc; s != nil; s = s.parent {
		for i := range s.items {
			it := &s.items[i]
			if len(parts) == 1 {
				if it.name == last {
					return it
				}
			} else if it.rel != nil && it.name == last && (it.rel[0] == full ||
				strings.HasSuffix(it.rel[0], "."+full) || !strings.Contains(it.rel[0], ".")) {
				// s.t.c names FROM s.t, and FROM t when t resolves to s.t.
				return it
			}
		}
	}
	return nil
}

// fromItem adds one FROM entry (and what it reads) to sc.
func (l *lineageWalker) fromItem(n *pg_query.Node, sc *scope, depth int) {
	if n == nil || depth > maxLineageDepth {
		if n != nil {
			l.unknown = true
		}
		return
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_RangeVar:
		l.rangeVar(v.RangeVar, sc)
	case *pg_query.Node_JoinExpr:
		j := v.JoinExpr
		start := len(sc.items)
		l.fromItem(j.Larg, sc, depth+1)
		l.fromItem(j.Rarg, sc, depth+1)
		f := sink{roles: roleFilter}
		// USING (c) compares c of both sides.
		both := &scope{items: sc.items[start:]}
		for _, u := range j.UsingClause {
			if str := u.GetString_(); str != nil {
				l.unqualified(str.Sval, f, both)
			}
		}
		l.expr(j.Quals, f, sc, depth+1)
		if j.Alias != nil {
			d := &derived{}
			for i := start; i < len(sc.items); i++ {
				passThrough(d, &sc.items[i])
			}
			sc.add(item{name: j.Alias.Aliasname, d: renameColumns(d, j.Alias.Colnames)})
		}
	case *pg_query.Node_RangeSubselect:
		rs := v.RangeSubselect
		// Only a LATERAL subquery sees the FROM items before it.
		outer := sc.parent
		if rs.Lateral {
			outer = sc
		}
		d := l.subquery(rs.Subquery, outer, depth+1, nil)
		if d == nil {
			d = &derived{}
		}
		l.emitDerived(sink{roles: roleFilter}, d)
		name := ""
		if rs.Alias != nil {
			name = rs.Alias.Aliasname
			d = renameColumns(d, rs.Alias.Colnames)
		}
		sc.add(item{name: name, d: d})
	case *pg_query.Node_RangeFunction:
		// Functions in FROM see the items before them (implicitly LATERAL);
		// the columns they return are computed from all their arguments.
		rf := v.RangeFunction
		d := &derived{anyName: true}
		l.generic(rf.ProtoReflect(), sink{col: &d.opaque}, sc, depth+1)
		l.emitDerived(sink{roles: roleFilter}, d)
		name := ""
		if rf.Alias != nil {
			name = rf.Alias.Aliasname
		} else if len(rf.Functions) > 0 {
			if lst := rf.Functions[0].GetList(); lst != nil && len(lst.Items) > 0 {
				if fc := lst.Items[0].GetFuncCall(); fc != nil {
					if parts := nameParts(fc.Funcname); len(parts) > 0 {
						name = parts[len(parts)-1]
					}
				}
			}
		}
		sc.add(item{name: name, d: d})
	case *pg_query.Node_RangeTableSample:
		ts := v.RangeTableSample
		l.fromItem(ts.Relation, sc, depth+1)
		l.exprs(ts.Args, sink{roles: roleFilter}, sc, depth+1)
		l.expr(ts.Repeatable, sink{roles: roleFilter}, sc, depth+1)
	default:
		// XMLTABLE, JSON_TABLE, ...: columns computed from everything in it.
		d := &derived{anyName: true}
		l.generic(protoMessage(n), sink{col: &d.opaque}, sc, depth+1)
		l.emitDerived(sink{roles: roleFilter}, d)
		name := ""
		if a := aliasOf(n); a != nil {
			name = a.Aliasname
		}
		sc.add(item{name: name, d: d})
	}
}

func aliasOf(n *pg_query.Node) *pg_query.Alias {
	switch v := n.Node.(type) {
	case *pg_query.Node_RangeTableFunc:
		return v.RangeTableFunc.Alias
	case *pg_query.Node_JsonTable:
		return v.JsonTable.Alias
	}
	return nil
}

func (l *lineageWalker) rangeVar(rv *pg_query.RangeVar, sc *scope) {
	name := rv.Relname
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		name = rv.Alias.Aliasname
	}
	if rv.Schemaname == "" && rv.Catalogname == "" {
		for i := len(l.ctes) - 1; i >= 0; i-- {
			if l.ctes[i].name == rv.Relname {
				d := l.ctes[i].d
				if d == nil {
					l.unknown = true
					d = &derived{}
				}
				if rv.Alias != nil {
					d = renameColumns(d, rv.Alias.Colnames)
				}
				sc.add(item{name: name, d: d})
				return
			}
		}
	}
	it := item{name: name, rel: l.one(relName(rv))}
	if rv.Alias != nil && len(rv.Alias.Colnames) > 0 {
		it.aliased = nameParts(rv.Alias.Colnames)
	}
	sc.add(it)
}

// dml walks INSERT, UPDATE, DELETE or MERGE and returns its RETURNING
// columns.
func (l *lineageWalker) dml(n *pg_query.Node, outer *scope, depth int, into *sink) *derived {
	if depth > maxLineageDepth {
		l.unknown = true
		return nil
	}
	var (
		with      *pg_query.WithClause
		target    *pg_query.RangeVar
		returning []*pg_query.Node
	)
	switch v := n.Node.(type) {
	case *pg_query.Node_InsertStmt:
		with, target, returning = v.InsertStmt.WithClause, v.InsertStmt.Relation, v.InsertStmt.ReturningList
	case *pg_query.Node_UpdateStmt:
		with, target, returning = v.UpdateStmt.WithClause, v.UpdateStmt.Relation, v.UpdateStmt.ReturningList
	case *pg_query.Node_DeleteStmt:
		with, target, returning = v.DeleteStmt.WithClause, v.DeleteStmt.Relation, v.DeleteStmt.ReturningList
	case *pg_query.Node_MergeStmt:
		with, target, returning = v.MergeStmt.WithClause, v.MergeStmt.Relation, v.MergeStmt.ReturningList
	default:
		return nil
	}
	k := l.pushCTEs(with, outer, depth)
	defer func() { l.ctes = l.ctes[:k] }()

	sc := l.newScope(outer)
	if target != nil {
		l.rangeVar(target, sc)
	}
	f := sink{roles: roleFilter}
	cp := sink{roles: roleCopy}
	switch v := n.Node.(type) {
	case *pg_query.Node_InsertStmt:
		s := v.InsertStmt
		// The rows inserted are computed without the target in scope.
		l.queryNode(s.SelectStmt, cp, outer, depth+1)
		if oc := s.OnConflictClause; oc != nil {
			if target != nil {
				// excluded is the row proposed for insertion: the target's.
				sc.add(item{name: "excluded", rel: l.one(relName(target))})
			}
			if oc.Infer != nil {
				l.generic(oc.Infer.ProtoReflect(), f, sc, depth+1)
			}
			l.exprs(oc.TargetList, cp, sc, depth+1)
			l.expr(oc.WhereClause, f, sc, depth+1)
		}
	case *pg_query.Node_UpdateStmt:
		s := v.UpdateStmt
		for _, fi := range s.FromClause {
			l.fromItem(fi, sc, depth+1)
		}
		l.exprs(s.TargetList, cp, sc, depth+1)
		l.expr(s.WhereClause, f, sc, depth+1)
	case *pg_query.Node_DeleteStmt:
		s := v.DeleteStmt
		for _, fi := range s.UsingClause {
			l.fromItem(fi, sc, depth+1)
		}
		l.expr(s.WhereClause, f, sc, depth+1)
	case *pg_query.Node_MergeStmt:
		s := v.MergeStmt
		l.fromItem(s.SourceRelation, sc, depth+1)
		l.expr(s.JoinCondition, f, sc, depth+1)
		for _, wc := range s.MergeWhenClauses {
			m := wc.GetMergeWhenClause()
			if m == nil {
				continue
			}
			l.expr(m.Condition, f, sc, depth+1)
			l.exprs(m.TargetList, cp, sc, depth+1)
			l.exprs(m.Values, cp, sc, depth+1)
		}
	}
	return l.targetList(returning, sc, depth, into)
}

func (l *lineageWalker) exprs(ns []*pg_query.Node, s sink, sc *scope, depth int) {
	for _, n := range ns {
		l.expr(n, s, sc, depth)
	}
}

// expr emits the references of an expression into s. Everyday node types
// are walked by hand; the rest go through the generic walk, which cannot
// miss a field.
func (l *lineageWalker) expr(n *pg_query.Node, s sink, sc *scope, depth int) {
	if n == nil || n.Node == nil {
		return
	}
	if depth > maxLineageDepth {
		l.unknown = true
		return
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_AConst, *pg_query.Node_ParamRef, *pg_query.Node_String_, *pg_query.Node_Integer,
		*pg_query.Node_Float, *pg_query.Node_Boolean, *pg_query.Node_SqlvalueFunction, *pg_query.Node_AStar,
		*pg_query.Node_TypeName:
	case *pg_query.Node_ColumnRef:
		l.columnRef(v.ColumnRef, s, sc)
	case *pg_query.Node_ResTarget:
		l.exprs(v.ResTarget.Indirection, s, sc, depth+1)
		l.expr(v.ResTarget.Val, s, sc, depth+1)
	case *pg_query.Node_AExpr:
		l.expr(v.AExpr.Lexpr, s, sc, depth+1)
		l.expr(v.AExpr.Rexpr, s, sc, depth+1)
	case *pg_query.Node_BoolExpr:
		l.exprs(v.BoolExpr.Args, s, sc, depth+1)
	case *pg_query.Node_NullTest:
		l.expr(v.NullTest.Arg, s, sc, depth+1)
	case *pg_query.Node_TypeCast:
		l.expr(v.TypeCast.Arg, s, sc, depth+1)
	case *pg_query.Node_List:
		l.exprs(v.List.Items, s, sc, depth+1)
	case *pg_query.Node_SortBy:
		l.expr(v.SortBy.Node, s, sc, depth+1)
	case *pg_query.Node_FuncCall:
		l.funcCall(v.FuncCall, s, sc, depth)
	case *pg_query.Node_SubLink:
		sl := v.SubLink
		l.expr(sl.Testexpr, s, sc, depth+1)
		inner := s
		if sl.SubLinkType == pg_query.SubLinkType_EXISTS_SUBLINK {
			// EXISTS returns whether a row exists, none of its values.
			inner = sink{roles: roleFilter}
		}
		l.queryNode(sl.Subselect, inner, sc, depth+1)
	case *pg_query.Node_SelectStmt:
		l.query(v.SelectStmt, sc, depth+1, &s)
	case *pg_query.Node_WindowDef:
		l.window(v.WindowDef, sc, depth)
	default:
		l.generic(protoMessage(n), s, sc, depth+1)
	}
}

func (l *lineageWalker) window(w *pg_query.WindowDef, sc *scope, depth int) {
	if w == nil {
		return
	}
	f := sink{roles: roleFilter}
	l.exprs(w.PartitionClause, f, sc, depth+1)
	l.exprs(w.OrderClause, f, sc, depth+1)
	l.expr(w.StartOffset, f, sc, depth+1)
	l.expr(w.EndOffset, f, sc, depth+1)
}

// generic walks any message, handing Nodes back to expr.
func (l *lineageWalker) generic(m protoreflect.Message, s sink, sc *scope, depth int) {
	if depth > maxLineageDepth {
		l.unknown = true
		return
	}
	switch v := m.Interface().(type) {
	case *pg_query.Node:
		l.expr(v, s, sc, depth)
		return
	case *pg_query.ColumnRef:
		l.columnRef(v, s, sc)
		return
	case *pg_query.FuncCall:
		l.funcCall(v, s, sc, depth)
		return
	case *pg_query.WindowDef:
		l.window(v, sc, depth)
		return
	case *pg_query.SelectStmt:
		l.query(v, sc, depth+1, &s)
		return
	case *pg_query.TypeName, *pg_query.Alias, *pg_query.RangeVar:
		return
	case *pg_query.IndexElem:
		// ON CONFLICT (c): a column of the target, by name.
		if v.Name != "" {
			l.unqualified(v.Name, s, sc)
		}
	}
	// A loop over the fields rather than m.Range: a closure handed to
	// Range would move the walker to the heap on every statement.
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() || !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		if fd.IsList() {
			lst := v.List()
			for j := 0; j < lst.Len(); j++ {
				l.generic(lst.Get(j).Message(), s, sc, depth+1)
			}
		} else {
			l.generic(v.Message(), s, sc, depth+1)
		}
	}
}

func (l *lineageWalker) funcCall(fc *pg_query.FuncCall, s sink, sc *scope, depth int) {
	args := s
	if parts := nameParts(fc.Funcname); len(parts) > 0 {
		if _, ok := sideEffects[parts[len(parts)-1]]; ok {
			// set_config, pg_notify, lo_from_bytea, ...: the arguments are
			// kept where a later statement can read them.
			args.roles |= roleCopy
		}
	}
	l.exprs(fc.Args, args, sc, depth+1)
	f := sink{roles: roleFilter}
	l.exprs(fc.AggOrder, f, sc, depth+1)
	l.expr(fc.AggFilter, f, sc, depth+1)
	l.window(fc.Over, sc, depth)
}

// columnRef resolves one reference in scope sc and emits it.
func (l *lineageWalker) columnRef(cr *pg_query.ColumnRef, s sink, sc *scope) {
	f := cr.Fields
	if len(f) == 0 {
		return
	}
	if isStar(cr) {
		if len(f) == 1 {
			// SELECT * inside an expression (count(*) is no ColumnRef):
			// every item of the innermost scope, whole.
			if sc != nil {
				for i := range sc.items {
					l.wholeRow(&sc.items[i], s)
				}
			}
			return
		}
		if it := findItem(sc, f[:len(f)-1]); it != nil {
			l.wholeRow(it, s)
		} else if q := qualifier(f[:len(f)-1]); q != "" {
			l.emit(s, ColumnRef{Relations: l.one(q)})
		}
		return
	}
	if len(f) == 1 {
		if str := f[0].GetString_(); str != nil {
			l.unqualified(str.Sval, s, sc)
		}
		return
	}
	// t.c, s.t.c, db.s.t.c; or a composite column t.c.field.
	col := f[len(f)-1].GetString_()
	if col == nil {
		return
	}
	if it := findItem(sc, f[:len(f)-1]); it != nil {
		l.column(it, col.Sval, s)
		return
	}
	if it := findItem(sc, f[:1]); it != nil {
		if c := f[1].GetString_(); c != nil {
			l.column(it, c.Sval, s)
			return
		}
	}
	// Nothing in scope has that name (a PL/pgSQL record, excluded, ...):
	// keep it as written.
	if q := qualifier(f[:len(f)-1]); q != "" {
		l.emit(s, ColumnRef{Relations: l.one(q), Column: col.Sval})
	}
}

// column emits column name of item it.
func (l *lineageWalker) column(it *item, name string, s sink) {
	switch {
	case it.d != nil:
		if !l.lookup(s, it.d, name) {
			// A name the walk derived differently from PostgreSQL: every
			// column could be the one meant.
			l.emitDerived(s, it.d)
		}
	case slices.Contains(it.aliased, name):
		l.emit(s, ColumnRef{Relations: it.rel})
	default:
		l.emit(s, ColumnRef{Relations: it.rel, Column: name})
	}
}

func (l *lineageWalker) wholeRow(it *item, s sink) {
	if it.d != nil {
		l.emitDerived(s, it.d)
		return
	}
	l.emit(s, ColumnRef{Relations: it.rel})
}

// unqualified resolves a bare name: a column of any item in scope (the
// innermost level holding a derived column of that name ends the search,
// as it would end PostgreSQL's), and the whole row of an item so named
// (SELECT t FROM t).
func (l *lineageWalker) unqualified(name string, s sink, sc *scope) {
	found := false
	var whole *item
	// stop is the level where PostgreSQL's search certainly ends: one with
	// a derived column of that name. Base relations of every level up to
	// it could hold the name.
	var stop *scope
	for lv := sc; lv != nil && stop == nil; lv = lv.parent {
		for i := range lv.items {
			it := &lv.items[i]
			if whole == nil && it.name == name {
				whole = it
			}
			switch {
			case it.d != nil:
				for j := range it.d.cols {
					if it.d.cols[j].name == name {
						stop = lv
					}
				}
				if l.lookup(s, it.d, name) {
					found = true
				}
			case slices.Contains(it.aliased, name):
				l.emit(s, ColumnRef{Relations: it.rel})
				found, stop = true, lv
			}
		}
	}
	var rels []string
	if sc != nil {
		if stop == nil {
			_, rels = sc.relations()
		} else {
			var set nameSet
			for lv := sc; lv != nil; lv = lv.parent {
				own, _ := lv.relations()
				for _, r := range own {
					set.add(r)
				}
				if lv == stop {
					break
				}
			}
			rels = slices.Clip(set.sorted())
		}
	}
	if len(rels) > 0 {
		l.emit(s, ColumnRef{Relations: rels, Column: name})
		found = true
	}
	switch {
	case whole != nil && whole.rel != nil:
		l.emit(s, ColumnRef{Relations: whole.rel})
	case whole != nil && !found:
		l.emitDerived(s, whole.d)
	case whole == nil && !found:
		// Derived items only, none with that name (named differently by
		// the walk than by PostgreSQL): any of their columns.
		for lv := sc; lv != nil && !found; lv = lv.parent {
			for i := range lv.items {
				if lv.items[i].d != nil {
					l.emitDerived(s, lv.items[i].d)
					found = true
				}
			}
		}
	}
}
