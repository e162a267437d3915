package sqlclass

import pg_query "github.com/pganalyze/pg_query_go/v6"

// forceGeneric makes every node go through the generic protoreflect walk;
// tests compare both walks over the corpus.
var forceGeneric = false

// walkNode visits a Node. The nodes of everyday queries are walked by hand,
// every Node field of theirs included, because the generic protoreflect
// walk costs microseconds on the hot path; every other node type goes
// through the generic walk, which cannot miss a field.
func (w *walker) walkNode(n *pg_query.Node) {
	if n == nil || n.Node == nil {
		return
	}
	if forceGeneric {
		w.walk(protoMessage(n), 0)
		return
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_ColumnRef, *pg_query.Node_AConst, *pg_query.Node_ParamRef,
		*pg_query.Node_AStar, *pg_query.Node_String_, *pg_query.Node_Integer,
		*pg_query.Node_Float, *pg_query.Node_Boolean, *pg_query.Node_SqlvalueFunction:
		// No Node fields that could hold a table or a call.
	case *pg_query.Node_RangeVar:
		w.rangeVar(v.RangeVar)
	case *pg_query.Node_ResTarget:
		w.walkNodes(v.ResTarget.Indirection)
		w.walkNode(v.ResTarget.Val)
	case *pg_query.Node_AExpr:
		w.walkNodes(v.AExpr.Name)
		w.walkNode(v.AExpr.Lexpr)
		w.walkNode(v.AExpr.Rexpr)
	case *pg_query.Node_BoolExpr:
		w.walkNodes(v.BoolExpr.Args)
	case *pg_query.Node_NullTest:
		w.walkNode(v.NullTest.Arg)
	case *pg_query.Node_SubLink:
		w.walkNode(v.SubLink.Testexpr)
		w.walkNodes(v.SubLink.OperName)
		w.walkNode(v.SubLink.Subselect)
	case *pg_query.Node_List:
		w.walkNodes(v.List.Items)
	case *pg_query.Node_SortBy:
		w.walkNode(v.SortBy.Node)
		w.walkNodes(v.SortBy.UseOp)
	case *pg_query.Node_FuncCall:
		fc := v.FuncCall
		w.funcCall(fc)
		w.walkNodes(fc.Args)
		w.walkNodes(fc.AggOrder)
		w.walkNode(fc.AggFilter)
		if fc.Over != nil {
			w.walk(fc.Over.ProtoReflect(), 1)
		}
	case *pg_query.Node_JoinExpr:
		j := v.JoinExpr
		w.walkNode(j.Larg)
		w.walkNode(j.Rarg)
		w.walkNodes(j.UsingClause)
		w.walkNode(j.Quals)
	case *pg_query.Node_RangeSubselect:
		w.walkNode(v.RangeSubselect.Subquery)
	case *pg_query.Node_SelectStmt:
		w.selectStmt(v.SelectStmt)
	default:
		w.walk(protoMessage(n), 1)
	}
}

func (w *walker) walkNodes(ns []*pg_query.Node) {
	for _, n := range ns {
		w.walkNode(n)
	}
}

func (w *walker) selectStmt(s *pg_query.SelectStmt) {
	if s == nil {
		return
	}
	if forceGeneric {
		w.walk(s.ProtoReflect(), 1)
		return
	}
	k := w.pushCTEs(s.WithClause)
	if s.WithClause != nil {
		w.walkNodes(s.WithClause.Ctes)
	}
	w.walkNodes(s.DistinctClause)
	if s.IntoClause != nil {
		w.walk(s.IntoClause.ProtoReflect(), 1)
	}
	w.walkNodes(s.TargetList)
	w.walkNodes(s.FromClause)
	w.walkNode(s.WhereClause)
	w.walkNodes(s.GroupClause)
	w.walkNode(s.HavingClause)
	w.walkNodes(s.WindowClause)
	w.walkNodes(s.ValuesLists)
	w.walkNodes(s.SortClause)
	w.walkNode(s.LimitOffset)
	w.walkNode(s.LimitCount)
	w.walkNodes(s.LockingClause)
	w.selectStmt(s.Larg)
	w.selectStmt(s.Rarg)
	w.ctes = w.ctes[:k]
}
