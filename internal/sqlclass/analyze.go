package sqlclass

import (
	"regexp"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// analyzer holds what one classification learns across all the statements
// it looks at, nested ones included.
type analyzer struct{}

// analyzeSQL parses sql and classifies each of its statements. nesting is
// how deep sql sits inside other statements' bodies.
func (a *analyzer) analyzeSQL(sql string, nesting int) ([]*Statement, error) {
	if nesting > maxNesting {
		return nil, ErrTooDeep
	}
	// The parser reads a C string: it would stop at a NUL and classify
	// only what precedes it.
	if i := strings.IndexByte(sql, 0); i >= 0 {
		return nil, &ParseError{Position: i + 1, Message: "SQL contains a NUL byte"}
	}
	tree, err := parse(sql)
	if err != nil {
		return nil, err
	}
	out := make([]*Statement, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		text := stmtText(sql, raw)
		st, err := a.analyzeNode(raw.Stmt, text, nesting)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func stmtText(sql string, raw *pg_query.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > len(sql) || end > len(sql) || start > end {
		return strings.TrimSpace(sql)
	}
	return strings.TrimSpace(sql[start:end])
}

// walker collects what one statement touches.
type walker struct {
	a       *analyzer
	st      *Statement
	nesting int

	read, written, funcs nameSet
	roles                nameSet
	writeTargets         rangeVarSet
	ctes                 []string
	inCTE                int
	// noExec: the statement only plans its query (EXPLAIN without
	// ANALYZE): DML in it reads.
	noExec  bool
	writes  bool
	secrets []string
	err     error
}

func (a *analyzer) newWalker(text string, nesting int) *walker {
	return &walker{
		a:       a,
		st:      &Statement{Text: text, Redacted: text},
		nesting: nesting,
	}
}

// analyzeNode classifies one statement node whose source text is text.
func (a *analyzer) analyzeNode(node *pg_query.Node, text string, nesting int) (*Statement, error) {
	w := a.newWalker(text, nesting)
	w.classify(node)
	if w.err != nil {
		return nil, w.err
	}
	st := w.finish()
	statementLineage(node, st)
	return st, nil
}

func (w *walker) finish() *Statement {
	st := w.st
	st.TablesRead = w.read.sorted()
	st.TablesWritten = w.written.sorted()
	st.Functions = w.funcs.sorted()
	st.Roles = w.roles.sorted()
	if w.writes && st.Kind == KindRead {
		st.Kind = KindWrite
	}
	for _, n := range st.Nested {
		// A SELECT running SQL text (dblink, query_to_xml) that changes
		// something is no read; the nested statements say what it is.
		if st.Kind == KindRead && n.Kind != KindRead && n.Flags&FlagFunctionBody == 0 {
			st.Kind = KindWrite
		}
		st.Flags |= n.Flags & propagated
		if n.Flags&FlagSecret != 0 {
			w.secrets = append(w.secrets, n.secrets()...)
		}
	}
	if st.Flags&FlagSecret != 0 {
		st.Redacted = redact(st.Text, st.Command, w.secrets)
		st.secretValues = w.secrets
	}
	return st
}

func (s *Statement) secrets() []string { return s.secretValues }

func (w *walker) set(kind Kind, command string) {
	w.st.Kind, w.st.Command = kind, command
}

func (w *walker) flag(f Flag) { w.st.Flags |= f }

func (w *walker) sideEffect(fn, reason string) {
	w.flag(FlagSideEffect)
	for _, se := range w.st.SideEffects {
		if se.Function == fn && se.Reason == reason {
			return
		}
	}
	w.st.SideEffects = append(w.st.SideEffects, SideEffect{Function: fn, Reason: reason})
}

func (w *walker) secret(s string) {
	w.flag(FlagSecret)
	w.secrets = append(w.secrets, s)
}

// nested classifies sql found inside the current statement and attaches
// its statements; extra flags are added to each. A body that does not
// parse is opaque: PostgreSQL may still run it (bodies are parsed late).
func (w *walker) nested(sql string, extra Flag) {
	stmts, err := w.a.analyzeSQL(sql, w.nesting+1)
	if err == ErrTooDeep {
		w.err = err
		return
	}
	if err != nil {
		w.flag(FlagOpaque)
		return
	}
	for _, s := range stmts {
		s.Flags |= extra
		w.st.Nested = append(w.st.Nested, s)
	}
}

// walk visits m and everything below it, collecting tables, functions and
// nested DML.
func (w *walker) walk(m protoreflect.Message, depth int) {
	switch n := m.Interface().(type) {
	case *pg_query.Node:
		w.walkNode(n)
		return
	case *pg_query.RangeVar:
		w.rangeVar(n)
		return
	case *pg_query.A_Const, *pg_query.ColumnRef, *pg_query.ParamRef, *pg_query.TypeName,
		*pg_query.String, *pg_query.Integer, *pg_query.Float, *pg_query.Boolean:
		return
	case *pg_query.FuncCall:
		w.funcCall(n)
	case *pg_query.ExecuteStmt:
		// CREATE TABLE AS EXECUTE name runs a prepared statement.
		w.flag(FlagRunsPrepared)
		if w.st.PreparedName == "" {
			w.st.PreparedName = n.Name
		}
	case *pg_query.VariableSetStmt:
		// SET clauses of CREATE/ALTER FUNCTION, ALTER DATABASE ... SET:
		// they apply when the function runs or a session starts.
		w.varSet(n)
		return
	case *pg_query.CommonTableExpr:
		w.inCTE++
		w.children(m, depth)
		w.inCTE--
		return
	case *pg_query.SelectStmt:
		k := w.pushCTEs(n.WithClause)
		w.children(m, depth)
		w.ctes = w.ctes[:k]
		return
	case *pg_query.InsertStmt:
		w.dml(n.Relation, false, n.WithClause, m, depth)
		return
	case *pg_query.UpdateStmt:
		w.dml(n.Relation, unbounded(n.WhereClause), n.WithClause, m, depth)
		return
	case *pg_query.DeleteStmt:
		w.dml(n.Relation, unbounded(n.WhereClause), n.WithClause, m, depth)
		return
	case *pg_query.MergeStmt:
		w.dml(n.Relation, false, n.WithClause, m, depth)
		return
	}
	w.children(m, depth)
}

func (w *walker) children(m protoreflect.Message, depth int) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				w.walk(l.Get(i).Message(), depth+1)
			}
		} else if !fd.IsMap() {
			w.walk(v.Message(), depth+1)
		}
		return true
	})
}

func (w *walker) pushCTEs(with *pg_query.WithClause) int {
	k := len(w.ctes)
	if with != nil {
		for _, c := range with.Ctes {
			if cte := c.GetCommonTableExpr(); cte != nil {
				w.ctes = append(w.ctes, cte.Ctename)
			}
		}
	}
	return k
}

func (w *walker) dml(rel *pg_query.RangeVar, noWhere bool, with *pg_query.WithClause, m protoreflect.Message, depth int) {
	if !w.noExec {
		if rel != nil {
			w.writeTargets.add(rel)
		}
		w.writes = true
		if noWhere {
			w.flag(FlagNoWhere)
		}
		if w.inCTE > 0 {
			w.flag(FlagDMLInCTE)
		}
	}
	k := w.pushCTEs(with)
	w.children(m, depth)
	w.ctes = w.ctes[:k]
}

// unbounded reports whether an UPDATE or DELETE with this WHERE clause
// reaches every row as far as its text can tell: no WHERE, or one that
// names no column at all (WHERE true, WHERE 1 = 1, WHERE now() IS NOT NULL;
// a bare WHERE false reaches none),
// the cheapest ways to reword a statement that a no-WHERE rule holds. A
// condition on some column (even WHERE id > 0) counts as bounded: telling
// those apart needs the data. WHERE CURRENT OF is one row.
func unbounded(where *pg_query.Node) bool {
	if where == nil {
		return true
	}
	if where.GetCurrentOfExpr() != nil {
		return false
	}
	if c := where.GetAConst(); c != nil && c.GetBoolval() != nil && !c.GetBoolval().Boolval {
		return false // WHERE false: no row
	}
	return !mentionsColumn(where.ProtoReflect(), 0)
}

func mentionsColumn(m protoreflect.Message, depth int) bool {
	if depth > 1000 {
		return false // too deep to tell: fail towards unbounded (the hold)
	}
	if m.Descriptor().Name() == "ColumnRef" {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && !found; i++ {
				found = mentionsColumn(l.Get(i).Message(), depth+1)
			}
		case fd.IsMap():
		default:
			found = mentionsColumn(v.Message(), depth+1)
		}
		return !found
	})
	return found
}

func relName(rv *pg_query.RangeVar) string {
	parts := make([]string, 0, 3)
	for _, p := range []string{rv.Catalogname, rv.Schemaname, rv.Relname} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ".")
}

func (w *walker) rangeVar(rv *pg_query.RangeVar) {
	name := relName(rv)
	if w.writeTargets.has(rv) {
		w.written.add(name)
		if roleCatalogs[rv.Relname] {
			w.flag(FlagRoleChange)
		}
		return
	}
	if rv.Schemaname == "" && rv.Catalogname == "" {
		for _, c := range w.ctes {
			if c == rv.Relname {
				return
			}
		}
	}
	w.read.add(name)
}

func nameParts(nodes []*pg_query.Node) []string {
	parts := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if s := n.GetString_(); s != nil {
			parts = append(parts, s.Sval)
		}
	}
	return parts
}

func (w *walker) funcCall(fc *pg_query.FuncCall) {
	parts := nameParts(fc.Funcname)
	if len(parts) == 0 {
		return
	}
	full := strings.Join(parts, ".")
	last := parts[len(parts)-1]
	w.funcs.add(full)
	if last == "set_config" {
		w.setConfig(full, fc.Args)
	} else if reason, ok := sideEffects[last]; ok {
		w.sideEffect(full, reason)
	}
	if connectionFunctions[last] {
		for _, arg := range fc.Args {
			if s, ok := constString(arg); ok && strings.Contains(strings.ToLower(s), "password") {
				w.secret(s)
			}
		}
	}
	if sqlTextFunctions[last] {
		for _, arg := range fc.Args {
			s, ok := constString(arg)
			if !ok {
				if _, isConst := constValue(arg); !isConst {
					w.flag(FlagDynamicSQL | FlagOpaque)
				}
				continue
			}
			// Connection names and strings do not parse as SQL; the text
			// argument does.
			if _, err := parse(s); err == nil {
				w.flag(FlagDynamicSQL)
				w.nested(s, 0)
			}
		}
	}
}

func (w *walker) setConfig(full string, args []*pg_query.Node) {
	if len(args) == 0 {
		return
	}
	name, ok := constString(args[0])
	if !ok {
		w.sideEffect(full, "changes a setting chosen at run time")
		w.flag(FlagSecuritySetting | FlagRoleSwitch | FlagReadWrite)
		return
	}
	name = strings.ToLower(strings.TrimSpace(name))
	reason := securitySetting(name)
	if reason == "" {
		return
	}
	w.sideEffect(full, reason)
	w.flag(FlagSecuritySetting)
	w.st.Setting = name
	switch name {
	case "role", "session_authorization":
		w.flag(FlagRoleSwitch)
		if len(args) > 1 {
			if v, ok := constString(args[1]); ok {
				w.roles.add(v)
			}
		}
	case "transaction_read_only", "default_transaction_read_only":
		if len(args) < 2 || !constTrue(args[1]) {
			w.flag(FlagReadWrite)
		}
	}
}

// constString returns the value of a string constant, also when cast
// ('x'::text) or concatenated from constants ('a' || 'b').
func constString(n *pg_query.Node) (string, bool) {
	if n == nil {
		return "", false
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_AConst:
		if s := v.AConst.GetSval(); s != nil {
			return s.Sval, true
		}
	case *pg_query.Node_TypeCast:
		return constString(v.TypeCast.Arg)
	case *pg_query.Node_AExpr:
		e := v.AExpr
		if e.Kind == pg_query.A_Expr_Kind_AEXPR_OP && len(e.Name) == 1 {
			if op := e.Name[0].GetString_(); op != nil && op.Sval == "||" {
				l, ok1 := constString(e.Lexpr)
				r, ok2 := constString(e.Rexpr)
				if ok1 && ok2 {
					return l + r, true
				}
			}
		}
	}
	return "", false
}

// constValue returns a constant's value as text (numbers, booleans too).
func constValue(n *pg_query.Node) (string, bool) {
	if s, ok := constString(n); ok {
		return s, true
	}
	if n == nil {
		return "", false
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_AConst:
		c := v.AConst
		switch {
		case c.GetIval() != nil:
			if c.GetIval().Ival != 0 {
				return "1", true
			}
			return "0", true
		case c.GetBoolval() != nil:
			if c.GetBoolval().Boolval {
				return "true", true
			}
			return "false", true
		case c.GetFval() != nil:
			return c.GetFval().Fval, true
		case c.Isnull:
			return "", true
		}
	case *pg_query.Node_TypeCast:
		return constValue(v.TypeCast.Arg)
	case *pg_query.Node_String_:
		return v.String_.Sval, true
	case *pg_query.Node_Boolean:
		if v.Boolean.Boolval {
			return "true", true
		}
		return "false", true
	case *pg_query.Node_Integer:
		if v.Integer.Ival != 0 {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

// constTrue reports whether n is a constant PostgreSQL reads as true.
func constTrue(n *pg_query.Node) bool {
	v, ok := constValue(n)
	if !ok {
		return false
	}
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "t", "true", "on", "y", "yes":
		return true
	}
	return false
}

var camel = regexp.MustCompile(`[A-Z][a-z0-9]*`)

// commandFromType turns a parse node type such as CreateEventTrigStmt into
// a command name, for statements without a name of their own below.
func commandFromType(name string) string {
	name = strings.TrimSuffix(name, "Stmt")
	words := camel.FindAllString(name, -1)
	return strings.ToUpper(strings.Join(words, " "))
}

// nameSet is a set of names: a slice while small (statements touch few
// tables and functions, and a slice beats a map there), a map once large so
// that a statement naming 100,000 tables is not quadratic.
type nameSet struct {
	list []string
	m    map[string]struct{}
}

const smallSet = 16

func (s *nameSet) add(name string) {
	if s.m != nil {
		if _, ok := s.m[name]; !ok {
			s.m[name] = struct{}{}
			s.list = append(s.list, name)
		}
		return
	}
	if slices.Contains(s.list, name) {
		return
	}
	s.list = append(s.list, name)
	if len(s.list) > smallSet {
		s.m = make(map[string]struct{}, 2*len(s.list))
		for _, n := range s.list {
			s.m[n] = struct{}{}
		}
	}
}

func (s *nameSet) sorted() []string {
	if len(s.list) == 0 {
		return nil
	}
	slices.Sort(s.list)
	return s.list
}

type rangeVarSet struct {
	list []*pg_query.RangeVar
	m    map[*pg_query.RangeVar]struct{}
}

func (s *rangeVarSet) add(rv *pg_query.RangeVar) {
	if s.m != nil {
		s.m[rv] = struct{}{}
		return
	}
	s.list = append(s.list, rv)
	if len(s.list) > smallSet {
		s.m = make(map[*pg_query.RangeVar]struct{}, 2*len(s.list))
		for _, r := range s.list {
			s.m[r] = struct{}{}
		}
	}
}

func (s *rangeVarSet) has(rv *pg_query.RangeVar) bool {
	if s.m != nil {
		_, ok := s.m[rv]
		return ok
	}
	return slices.Contains(s.list, rv)
}
