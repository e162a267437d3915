package pgmask

import (
	"bytes"
	"context"
	"fmt"

	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/sqlclass"
)

// A query that computes on a masked column (upper(name), row_to_json(u),
// a UNION, a scalar subquery) returns a column with no source, which a
// rule masking the column by its source would not follow; one that copies
// the column into a table, a setting or a function body would let a later
// statement read it back from a place no rule names. So while a rule
// masks named columns, the stage reads every statement's lineage (which
// columns its output, filters and copies read, from sqlclass) before it
// reaches the server:
//
//   - output that can name a masked column (a rule's column, a whole row
//     of a relation with one, a view reading one) taints the statement:
//     every computed column of its results is masked whole (counted as
//     "derived");
//   - output or filters naming one make the server's error and notice
//     texts for the statement lose their quoted values (the texts can
//     echo a value the statement cast or compared);
//   - a copy of one is refused with 42501, recorded as the guard records
//     its refusals.
//
// Decisions are kept per classification (the shared classifier hands the
// same Result for the same text), and relations by name, per session;
// both are dropped when the session runs DDL.

// taint is what a statement's lineage means for its results.
type taint struct {
	out  bool // computed columns of its results are masked whole
	echo bool // error and notice texts lose their quoted values
	// copy names the masked column the statement would store elsewhere
	// ("" none): the statement is refused. rule is the rule masking it.
	copy, rule string
	// outCol names a masked column its output reads: what a CREATE TABLE
	// AS EXECUTE of it would copy.
	outCol, outRule string
	ddl             bool // the string changes the schema
}

var tainted = taint{out: true, echo: true}

func (t taint) or(u taint) taint {
	t.out = t.out || u.out
	t.echo = t.echo || u.echo
	if t.copy == "" {
		t.copy, t.rule = u.copy, u.rule
	}
	if t.outCol == "" {
		t.outCol, t.outRule = u.outCol, u.outRule
	}
	t.ddl = t.ddl || u.ddl
	return t
}

// Bounds of a session's lineage caches: past them a cache starts over.
const (
	maxDecided   = 256
	maxRelations = 256
	maxNames     = 1024 // prepared statements, portals, cursors
)

// lineage is the client side's view of a session's statements.
type lineage struct {
	cls     *sqlclass.Classifier
	stmts   names[taint] // prepared statements (Parse and PREPARE share a namespace)
	portals names[marks]
	cursors names[taint]
	decided map[*sqlclass.Result]taint
	// The last text decided, and its decision: a statement parsed again
	// and again (the unnamed statement of every extended query) is
	// decided without a lookup in the classifier's cache.
	lastSQL string
	lastRes *sqlclass.Result
	lastT   taint
	rels    map[string]relTaint
	gen     uint64 // the stage's DDL generation the caches are of
}

// relTaint is which columns of the relations a name can mean are masked.
type relTaint struct {
	cols map[string]masked // by column name, masked ones only
	any  masked            // the first masked column: a whole row has it
	// Columns of views: while the session's DDL is not committed, the
	// catalog may show an older definition than the one the session runs.
	views   map[string]bool
	anyView bool
}

type masked struct{ col, rule string }

// TrackLineage makes the stage read each statement's lineage with cls (the
// classifier the guard uses, whose cache it shares). It does nothing when
// no rule in force masks named columns: detectors alone cannot be
// laundered around by a name.
func (s *Stage) TrackLineage(cls *sqlclass.Classifier) {
	if cls == nil || !s.m.WholeColumns() {
		return
	}
	s.lin = &lineage{cls: cls, decided: map[*sqlclass.Result]taint{}, rels: map[string]relTaint{}}
}

// fresh drops what the session's DDL may have changed.
func (s *Stage) fresh() {
	l := s.lin
	if g := s.gen.Load(); g != l.gen {
		l.gen = g
		clear(l.decided)
		clear(l.rels)
		l.lastSQL, l.lastRes = "", nil
	}
}

// classify decides a query string as a whole: any statement's taint is
// the string's (the stage does not tell one statement's results from the
// next's).
func (s *Stage) classify(sql string) (taint, *sqlclass.Result) {
	s.fresh()
	l := s.lin
	open := s.ddlOpen.Load()
	if l.lastRes != nil && !open && sql == l.lastSQL {
		return l.lastT, l.lastRes
	}
	res, _, err := l.cls.ClassifyShape(sql)
	if err != nil || res == nil {
		// The server's grammar rejects it too; whatever it answers is
		// read as if it could echo a value.
		return tainted, nil
	}
	// While the session's DDL is not committed, decisions depend on it:
	// none is kept or reused.
	if t, ok := l.decided[res]; ok && !open {
		l.lastSQL, l.lastRes, l.lastT = sql, res, t
		return t, res
	}
	var t taint
	for _, st := range res.Statements {
		t = t.or(s.statement(st))
		t.ddl = t.ddl || st.Kind == sqlclass.KindDDL || st.Kind == sqlclass.KindDCL
	}
	if t.ddl && len(res.Statements) > 1 || open {
		// Later statements may read what an earlier one defines, which
		// the catalog does not show before it commits.
		t.out, t.echo = true, true
	}
	// Prepared statements and cursors are remembered as a side effect:
	// a string that defines one is decided again each time.
	if !res.Transient() && !definesNames(res) && !open {
		if len(l.decided) >= maxDecided {
			clear(l.decided)
		}
		l.decided[res] = t
		l.lastSQL, l.lastRes, l.lastT = sql, res, t
	}
	return t, res
}

func definesNames(res *sqlclass.Result) bool {
	for _, st := range res.Statements {
		if st.PreparedName != "" || st.CursorName != "" {
			return true
		}
	}
	return false
}

// marks is what the server side needs of a taint, kept per portal.
type marks struct{ out, echo bool }

func (t taint) marks() marks { return marks{t.out, t.echo} }

// names maps statement, portal or cursor names to what they stand for.
// The unnamed one, which libpq and pgx use for nearly every statement,
// has a field of its own: no map operation on the common path. Bounded:
// past maxNames the map starts over (a forgotten name counts as tainted).
type names[V comparable] struct {
	unnamed    V
	hasUnnamed bool
	named      map[string]V
}

func (t *names[V]) get(name []byte) (V, bool) {
	if len(name) == 0 {
		return t.unnamed, t.hasUnnamed
	}
	v, ok := t.named[string(name)]
	return v, ok
}

func (t *names[V]) set(name []byte, v V) {
	if len(name) == 0 {
		t.unnamed, t.hasUnnamed = v, true
		return
	}
	if old, ok := t.named[string(name)]; ok && old == v {
		return // a statement run again: no assignment, no new key
	}
	if t.named == nil || len(t.named) >= maxNames {
		t.named = map[string]V{}
	}
	t.named[string(name)] = v
}

func (t *names[V]) del(name []byte) {
	if len(name) == 0 {
		var zero V
		t.unnamed, t.hasUnnamed = zero, false
		return
	}
	delete(t.named, string(name))
}

func (t *names[V]) clear() {
	var zero V
	t.unnamed, t.hasUnnamed = zero, false
	t.named = nil
}

// statement decides one top-level statement.
func (s *Stage) statement(st *sqlclass.Statement) taint {
	l := s.lin
	switch {
	case st.Flags.Has(sqlclass.FlagPrepare) && st.PreparedName != "":
		var t taint
		if len(st.Nested) > 0 {
			t = s.lineageOf(st.Nested[0])
		} else {
			t = tainted
		}
		l.stmts.set([]byte(st.PreparedName), t)
		// PREPARE runs nothing, but a copy is refused now rather than
		// at each EXECUTE.
		return taint{copy: t.copy, rule: t.rule}
	case st.Flags.Has(sqlclass.FlagDeallocate):
		if st.PreparedName == "" {
			l.stmts.clear()
		} else {
			l.stmts.del([]byte(st.PreparedName))
		}
		return taint{}
	case st.Flags.Has(sqlclass.FlagRunsPrepared):
		t := tainted // a name prepared before the stage knew it: can't tell
		if pt, ok := l.stmts.get([]byte(st.PreparedName)); ok {
			t = pt
		}
		if st.Kind == sqlclass.KindDDL && t.outCol != "" {
			// CREATE TABLE ... AS EXECUTE: the output is stored.
			t.copy, t.rule = t.outCol, t.outRule
		} else if st.Kind == sqlclass.KindDDL && t.out {
			t.copy, t.rule = "the output of prepared statement "+st.PreparedName, "airlock"
		}
		return t.or(s.lineageOf(st))
	case st.CursorName != "" && st.Command == "DECLARE CURSOR":
		t := s.lineageOf(st)
		l.cursors.set([]byte(st.CursorName), t)
		return t
	case st.CursorName != "" && st.Command == "FETCH":
		if t, ok := l.cursors.get([]byte(st.CursorName)); ok {
			return t
		}
		return tainted
	case st.CursorName != "" && st.Command == "CLOSE":
		l.cursors.del([]byte(st.CursorName))
		return taint{}
	}
	return s.lineageOf(st)
}

// lineageOf decides a statement by its lineage.
func (s *Stage) lineageOf(st *sqlclass.Statement) taint {
	lin := &st.Lineage
	var t taint
	for _, r := range lin.Output {
		if m, ok := s.ref(r); ok {
			t.out, t.echo = true, true
			if t.outCol == "" {
				t.outCol, t.outRule = m.col, m.rule
			}
		}
	}
	if !t.echo {
		for _, r := range lin.Filter {
			if _, ok := s.ref(r); ok {
				t.echo = true
				break
			}
		}
	}
	for _, r := range lin.Copy {
		if m, ok := s.ref(r); ok {
			t.copy, t.rule = m.col, m.rule
			break
		}
	}
	if !lin.Unknown {
		return t
	}
	// Code that cannot be read: every column of every relation it names
	// counts as read and copied; naming none, it could read anything.
	names := append(append([]string(nil), st.TablesRead...), st.TablesWritten...)
	if len(names) == 0 {
		t.out, t.echo = true, true
		t.copy, t.rule = "any column (the statement runs code Airlock cannot read)", "airlock"
		return t
	}
	for _, n := range names {
		if m, ok := s.ref(sqlclass.ColumnRef{Relations: []string{n}}); ok {
			t.out, t.echo = true, true
			t.copy, t.rule = m.col, m.rule
			if t.outCol == "" {
				t.outCol, t.outRule = m.col, m.rule
			}
			break
		}
	}
	return t
}

// The planner's statistics hold sample values of every column analysed:
// their value columns are masked whole while a column rule is in force.
var statsColumns = map[string]map[string]bool{
	"pg_stats":              {"most_common_vals": true, "most_common_elems": true, "histogram_bounds": true},
	"pg_stats_ext":          {"most_common_vals": true},
	"pg_stats_ext_exprs":    {"most_common_vals": true, "most_common_elems": true, "histogram_bounds": true},
	"pg_statistic":          {"stavalues1": true, "stavalues2": true, "stavalues3": true, "stavalues4": true, "stavalues5": true},
	"pg_statistic_ext_data": {"stxdmcv": true, "stxdexpr": true},
}

// statsSource says whether src is a value column of the statistics.
func statsSource(src mask.Source) bool {
	return src.Schema == "pg_catalog" && statsColumns[src.Table][src.Column]
}

// ref says whether r can name a masked column, and which.
func (s *Stage) ref(r sqlclass.ColumnRef) (masked, bool) {
	for _, rel := range r.Relations {
		if schema, table := splitName(rel); (schema == "" || schema == "pg_catalog") && statsColumns[table] != nil &&
			(r.Column == "" || statsColumns[table][r.Column]) {
			return masked{"pg_catalog." + table + "." + nonEmpty(r.Column, "*"), "airlock"}, true
		}
		rt, found, ok := s.relation(rel)
		if !ok {
			return masked{rel + "." + nonEmpty(r.Column, "*"), "airlock"}, true // fail closed
		}
		if !found {
			// Not in the catalog (yet): the rules' patterns alone, an
			// unqualified name matching any schema.
			schema, table := splitName(rel)
			if rule, ok := s.m.NamedRule(mask.Source{Schema: schema, Table: table, Column: r.Column}); ok {
				return masked{rel + "." + nonEmpty(r.Column, "*"), rule}, true
			}
			continue
		}
		if s.ddlOpen.Load() && (r.Column == "" && rt.anyView || rt.views[r.Column]) {
			return masked{rel + "." + nonEmpty(r.Column, "*"), "airlock"}, true
		}
		if r.Column == "" {
			if rt.any.col != "" {
				return rt.any, true
			}
			continue
		}
		if m, ok := rt.cols[r.Column]; ok {
			return m, true
		}
	}
	return masked{}, false
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// relation looks a name up, cached: found is false when the catalog has
// no relation of that name (yet), ok false when the lookup failed.
func (s *Stage) relation(name string) (rt relTaint, found, ok bool) {
	l := s.lin
	if rt, ok := l.rels[name]; ok {
		return rt, true, true
	}
	f, ok := s.res.(RelationFinder)
	if !ok {
		return relTaint{}, false, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	got, err := f.Relations(ctx, s.sess.Database(), []string{name})
	cancel()
	if err != nil {
		s.log.Warn("pgmask: relations not found; the statement is read as if they held masked columns", "session", s.sess.ID, "err", err)
		return relTaint{}, false, false
	}
	if len(got[name]) == 0 {
		// Not kept, so that it is found once it exists.
		return relTaint{}, false, true
	}
	rt = relTaint{cols: map[string]masked{}, views: map[string]bool{}}
	for _, rel := range got[name] {
		for col, chain := range rel.Columns {
			if len(chain) > 1 {
				rt.views[col], rt.anyView = true, true
			}
			c := s.column(chain)
			if !c.Whole() {
				continue
			}
			m := masked{fmt.Sprintf("%s.%s.%s", rel.Schema, rel.Name, col), c.RuleName()}
			if _, ok := rt.cols[col]; !ok {
				rt.cols[col] = m
			}
			if rt.any.col == "" || m.col < rt.any.col {
				rt.any = m // the same column named each time
			}
		}
	}
	if len(l.rels) >= maxRelations {
		clear(l.rels)
	}
	l.rels[name] = rt
	return rt, true, true
}

// lineageClient reads the statement a client message prepares, binds or
// runs: r gets its taint. A statement that would copy a masked column is
// refused (refused true, with the verdict), before the server sees it.
func (s *Stage) lineageClient(m *pgwire.ClientMsg, r *request) (v pgwire.Verdict, refused bool) {
	l := s.lin
	t := taint{}
	switch m.Type {
	case 'Q':
		sql := m.SQLText()
		t, _ = s.classify(sql)
		r.ddl = t.ddl
		if t.copy != "" {
			return s.refuseCopy(t, "simple", sql), true
		}
	case 'P':
		name, ok := cstring(m.Body)
		if !ok {
			return pgwire.Verdict{}, false // the server rejects it
		}
		sql := m.SQLText()
		t, _ = s.classify(sql)
		r.ddl = t.ddl
		if t.copy != "" {
			l.stmts.del(name)
			return s.refuseCopy(t, "extended", sql), true
		}
		l.stmts.set(name, t)
	case 'B':
		portal, ok := cstring(m.Body)
		if !ok {
			return pgwire.Verdict{}, false
		}
		stmt, ok := cstring(m.Body[len(portal)+1:])
		if !ok {
			return pgwire.Verdict{}, false
		}
		st, known := l.stmts.get(stmt)
		if !known {
			st = tainted // prepared before the stage could read it
		}
		l.portals.set(portal, st.marks())
		t = st
	case 'D', 'E':
		var portal []byte
		var ok bool
		if m.Type == 'D' {
			portal, ok = describedPortal(m.Body)
		} else {
			portal, ok = executePortal(m.Body)
		}
		if ok {
			mk, known := l.portals.get(portal)
			if !known {
				mk = tainted.marks()
			}
			t.out, t.echo = mk.out, mk.echo
		}
	case 'C':
		if len(m.Body) > 1 {
			if name, ok := cstring(m.Body[1:]); ok {
				switch m.Body[0] {
				case 'S':
					l.stmts.del(name)
				case 'P':
					l.portals.del(name)
				}
			}
		}
	}
	r.out, r.echo = t.out, t.echo
	return pgwire.Verdict{}, false
}

func cstring(b []byte) ([]byte, bool) {
	z := bytes.IndexByte(b, 0)
	if z < 0 {
		return nil, false
	}
	return b[:z], true
}

// refuseCopy refuses a statement that would store a masked column's values
// where a later statement could read them unmasked.
func (s *Stage) refuseCopy(t taint, protocol, sql string) pgwire.Verdict {
	text := fmt.Sprintf("<unparseable SQL, %d bytes>", len(sql))
	if res, err := s.lin.cls.Classify(sql); err == nil {
		text = res.Redacted() // its own, not its shape's
	}
	hint := "Masking follows values only on their way to you. Ask for a group exempt from masking rule " + t.rule +
		", or for access through the database's own grants."
	if t.rule == "airlock" {
		hint = "Airlock cannot tell what this copies (code it cannot read, or a definition changed in this transaction): " +
			"commit schema changes first, or ask for access through the database's own grants; groups exempt from masking are not refused."
	}
	return guard.Refuse(s.sess, t.rule, "copies masked column "+t.copy, protocol, text,
		"Airlock: this statement would copy the masked column "+t.copy+" where a later statement could read it unmasked", hint)
}
