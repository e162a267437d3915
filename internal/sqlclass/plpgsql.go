package sqlclass

import (
	"encoding/json"
	"sort"
	"strings"
)

// PL/pgSQL expression parse modes, as pg_query reports them (PostgreSQL's
// RawParseMode): 0 is a whole statement, 2 an expression, 3-5 an
// assignment "target := expression".
const (
	plModeStatement = 0
	plModeExpr      = 2
)

// plpgsql looks into the PL/pgSQL body of the DO or CREATE FUNCTION
// statement text: static SQL is classified as nested statements, EXECUTE of
// a constant string too, EXECUTE of anything else is opaque dynamic SQL.
// A body PostgreSQL's PL/pgSQL parser rejects is an error: PostgreSQL would
// reject it as well.
func (w *walker) plpgsql(stmtText string, extra Flag) {
	out, err := parsePlpgsql(stmtText)
	if err != nil {
		w.err = err
		return
	}
	var tree any
	if err := json.Unmarshal([]byte(out), &tree); err != nil {
		w.err = &ParseError{Message: "PL/pgSQL body: " + err.Error()}
		return
	}
	pw := &plWalker{w: w, extra: extra}
	pw.visit(tree)
}

type plWalker struct {
	w     *walker
	extra Flag
}

func (p *plWalker) visit(v any) {
	if p.w.err != nil {
		return
	}
	switch t := v.(type) {
	case []any:
		for _, e := range t {
			p.visit(e)
		}
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p.node(k, t[k])
		}
	}
}

func (p *plWalker) node(key string, v any) {
	obj, _ := v.(map[string]any)
	switch key {
	case "PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors":
		p.dynamic(obj["query"])
		p.visitExcept(obj, "query")
		return
	case "PLpgSQL_stmt_open", "PLpgSQL_stmt_return_query":
		if dq, ok := obj["dynquery"]; ok {
			p.dynamic(dq)
			p.visitExcept(obj, "dynquery")
			return
		}
	case "PLpgSQL_stmt_commit":
		p.transaction("COMMIT")
		return
	case "PLpgSQL_stmt_rollback":
		p.transaction("ROLLBACK")
		return
	case "PLpgSQL_expr":
		q, _ := obj["query"].(string)
		mode, _ := obj["parseMode"].(float64)
		p.expr(q, int(mode))
		return
	}
	p.visit(v)
}

func (p *plWalker) visitExcept(obj map[string]any, skip string) {
	for k, v := range obj {
		if k != skip {
			p.visit(v)
		}
	}
}

func (p *plWalker) transaction(cmd string) {
	p.w.st.Nested = append(p.w.st.Nested, &Statement{
		Text: cmd, Redacted: cmd, Command: cmd, Kind: KindTransaction,
		Flags: FlagEndsTransaction | p.extra,
	})
}

// expr classifies the SQL of one PL/pgSQL expression or statement.
// Expressions without tables or function calls (x > 1) are not kept.
func (p *plWalker) expr(q string, mode int) {
	var sql string
	switch {
	case mode == plModeStatement:
		sql = q
	case mode == plModeExpr:
		sql = "SELECT " + q
	default:
		// Assignment: drop the target.
		i := strings.Index(q, ":=")
		if i >= 0 {
			sql = "SELECT " + q[i+2:]
		} else if i = strings.IndexByte(q, '='); i >= 0 {
			sql = "SELECT " + q[i+1:]
		} else {
			sql = "SELECT " + q
		}
	}
	stmts, err := p.w.a.analyzeSQL(sql, p.w.nesting+1)
	if err == ErrTooDeep {
		p.w.err = err
		return
	}
	if err != nil {
		p.w.flag(FlagOpaque)
		return
	}
	for _, s := range stmts {
		if mode != plModeStatement && len(s.TablesRead) == 0 && len(s.TablesWritten) == 0 &&
			len(s.Functions) == 0 && len(s.Nested) == 0 && s.Flags == 0 {
			continue
		}
		s.Flags |= p.extra
		p.w.st.Nested = append(p.w.st.Nested, s)
	}
}

// dynamic handles the query of EXECUTE, FOR ... IN EXECUTE, OPEN ... FOR
// EXECUTE and RETURN QUERY EXECUTE.
func (p *plWalker) dynamic(v any) {
	p.w.flag(FlagDynamicSQL)
	obj, _ := v.(map[string]any)
	e, _ := obj["PLpgSQL_expr"].(map[string]any)
	q, _ := e["query"].(string)
	if text, ok := constantText(q); ok {
		p.w.nested(text, p.extra|FlagDynamicSQL)
		return
	}
	p.w.flag(FlagOpaque)
	// The expression building the text may itself call functions.
	p.expr(q, plModeExpr)
}

// constantText returns the string an expression such as 'DROP TABLE t' or
// 'DROP ' || 'TABLE t' always evaluates to.
func constantText(expr string) (string, bool) {
	if strings.TrimSpace(expr) == "" {
		return "", false
	}
	tree, err := parse("SELECT " + expr)
	if err != nil || len(tree.Stmts) != 1 {
		return "", false
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	if sel == nil || len(sel.TargetList) != 1 || len(sel.FromClause) != 0 {
		return "", false
	}
	rt := sel.TargetList[0].GetResTarget()
	if rt == nil {
		return "", false
	}
	return constString(rt.Val)
}
