package sqlclass

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// classify fills w.st from one top-level (or nested) statement node.
func (w *walker) classify(node *pg_query.Node) {
	if node == nil || node.Node == nil {
		w.set(KindUtility, "EMPTY")
		return
	}
	switch n := node.Node.(type) {
	case *pg_query.Node_SelectStmt:
		w.set(KindRead, "SELECT")
		if into := n.SelectStmt.IntoClause; into != nil {
			w.set(KindDDL, "SELECT INTO")
			if into.Rel != nil {
				w.writeTargets.add(into.Rel)
			}
		}
	case *pg_query.Node_InsertStmt:
		w.set(KindWrite, "INSERT")
	case *pg_query.Node_UpdateStmt:
		w.set(KindWrite, "UPDATE")
	case *pg_query.Node_DeleteStmt:
		w.set(KindWrite, "DELETE")
	case *pg_query.Node_MergeStmt:
		w.set(KindWrite, "MERGE")
	case *pg_query.Node_TruncateStmt:
		// TRUNCATE empties tables: as unbounded as a DELETE without WHERE.
		w.set(KindWrite, "TRUNCATE")
		w.flag(FlagNoWhere)
		w.markRelations(n.TruncateStmt.Relations)
	case *pg_query.Node_CreateTableAsStmt:
		s := n.CreateTableAsStmt
		switch {
		case s.IsSelectInto:
			w.set(KindDDL, "SELECT INTO")
		case s.Objtype == pg_query.ObjectType_OBJECT_MATVIEW:
			w.set(KindDDL, "CREATE MATERIALIZED VIEW")
		default:
			w.set(KindDDL, "CREATE TABLE AS")
		}
		if s.Into != nil && s.Into.Rel != nil {
			w.writeTargets.add(s.Into.Rel)
		}
	case *pg_query.Node_RefreshMatViewStmt:
		w.set(KindWrite, "REFRESH MATERIALIZED VIEW")
		w.markTopRelations(node)
	case *pg_query.Node_ExplainStmt:
		w.explain(n.ExplainStmt)
		return
	case *pg_query.Node_CopyStmt:
		w.copyStmt(n.CopyStmt)
	case *pg_query.Node_VariableSetStmt:
		w.set(KindSession, setCommand(n.VariableSetStmt))
		w.varSet(n.VariableSetStmt)
		return
	case *pg_query.Node_VariableShowStmt:
		w.set(KindRead, "SHOW")
		w.st.Setting = strings.ToLower(n.VariableShowStmt.Name)
		return
	case *pg_query.Node_TransactionStmt:
		w.transaction(n.TransactionStmt)
		return
	case *pg_query.Node_CreateRoleStmt:
		s := n.CreateRoleStmt
		w.set(KindDCL, map[pg_query.RoleStmtType]string{
			pg_query.RoleStmtType_ROLESTMT_USER:  "CREATE USER",
			pg_query.RoleStmtType_ROLESTMT_GROUP: "CREATE GROUP",
		}[s.StmtType])
		if w.st.Command == "" {
			w.st.Command = "CREATE ROLE"
		}
		w.flag(FlagRoleChange)
		w.roles.add(s.Role)
		w.roleOptions(s.Options)
		return
	case *pg_query.Node_AlterRoleStmt:
		s := n.AlterRoleStmt
		w.set(KindDCL, "ALTER ROLE")
		w.flag(FlagRoleChange)
		w.roleSpec(s.Role)
		w.roleOptions(s.Options)
		return
	case *pg_query.Node_AlterRoleSetStmt:
		s := n.AlterRoleSetStmt
		w.set(KindDCL, "ALTER ROLE SET")
		w.flag(FlagRoleChange)
		w.roleSpec(s.Role)
		if s.Setstmt != nil {
			w.varSet(s.Setstmt)
			// The setting applies to the role's later sessions, not this
			// one: it switches no role now.
			w.st.Flags &^= FlagRoleSwitch
		}
		return
	case *pg_query.Node_DropRoleStmt:
		w.set(KindDCL, "DROP ROLE")
		w.flag(FlagRoleChange)
		w.roleNodes(n.DropRoleStmt.Roles)
		return
	case *pg_query.Node_GrantRoleStmt:
		s := n.GrantRoleStmt
		if s.IsGrant {
			w.set(KindDCL, "GRANT ROLE")
		} else {
			w.set(KindDCL, "REVOKE ROLE")
		}
		w.flag(FlagRoleChange)
		w.roleNodes(s.GrantedRoles)
		w.roleNodes(s.GranteeRoles)
		return
	case *pg_query.Node_RenameStmt:
		s := n.RenameStmt
		if s.RenameType == pg_query.ObjectType_OBJECT_ROLE {
			// Renaming a role also clears an MD5 password.
			w.set(KindDCL, "ALTER ROLE RENAME")
			w.flag(FlagRoleChange)
			w.roles.add(s.Subname)
			w.roles.add(s.Newname)
			return
		}
		w.set(KindDDL, "ALTER "+strings.TrimPrefix(s.RenameType.String(), "OBJECT_")+" RENAME")
		w.markTopRelations(node)
	case *pg_query.Node_CommentStmt:
		if n.CommentStmt.Objtype == pg_query.ObjectType_OBJECT_ROLE {
			// Airlock tags its roles in their comments: changing one is a
			// role change.
			w.set(KindDCL, "COMMENT ON ROLE")
			w.flag(FlagRoleChange)
			return
		}
		w.set(KindDDL, "COMMENT")
	case *pg_query.Node_SecLabelStmt:
		if n.SecLabelStmt.Objtype == pg_query.ObjectType_OBJECT_ROLE {
			w.set(KindDCL, "SECURITY LABEL ON ROLE")
			w.flag(FlagRoleChange)
			return
		}
		w.set(KindDDL, "SECURITY LABEL")
	case *pg_query.Node_GrantStmt:
		s := n.GrantStmt
		if s.IsGrant {
			w.set(KindDCL, "GRANT")
		} else {
			w.set(KindDCL, "REVOKE")
		}
		w.markRelations(s.Objects)
		w.roleNodes(s.Grantees)
	case *pg_query.Node_AlterDefaultPrivilegesStmt:
		w.set(KindDCL, "ALTER DEFAULT PRIVILEGES")
	case *pg_query.Node_ReassignOwnedStmt:
		w.set(KindDCL, "REASSIGN OWNED")
	case *pg_query.Node_DropOwnedStmt:
		w.set(KindDCL, "DROP OWNED")
	case *pg_query.Node_CreateUserMappingStmt:
		w.set(KindDDL, "CREATE USER MAPPING")
		w.mappingOptions(n.CreateUserMappingStmt.Options)
		return
	case *pg_query.Node_AlterUserMappingStmt:
		w.set(KindDDL, "ALTER USER MAPPING")
		w.mappingOptions(n.AlterUserMappingStmt.Options)
		return
	case *pg_query.Node_CreateSubscriptionStmt:
		w.set(KindDDL, "CREATE SUBSCRIPTION")
		w.connInfo(n.CreateSubscriptionStmt.Conninfo)
		return
	case *pg_query.Node_AlterSubscriptionStmt:
		w.set(KindDDL, "ALTER SUBSCRIPTION")
		w.connInfo(n.AlterSubscriptionStmt.Conninfo)
		return
	case *pg_query.Node_PrepareStmt:
		w.prepare(n.PrepareStmt)
		return
	case *pg_query.Node_ExecuteStmt:
		w.set(KindExecute, "EXECUTE")
		w.flag(FlagRunsPrepared)
		w.st.PreparedName = n.ExecuteStmt.Name
	case *pg_query.Node_DeallocateStmt:
		w.set(KindSession, "DEALLOCATE")
		w.flag(FlagDeallocate)
		if !n.DeallocateStmt.Isall {
			w.st.PreparedName = n.DeallocateStmt.Name
		}
		return
	case *pg_query.Node_DoStmt:
		w.set(KindBlock, "DO")
		w.doStmt(n.DoStmt)
		return
	case *pg_query.Node_CreateFunctionStmt:
		if n.CreateFunctionStmt.IsProcedure {
			w.set(KindDDL, "CREATE PROCEDURE")
		} else {
			w.set(KindDDL, "CREATE FUNCTION")
		}
		w.createFunction(n.CreateFunctionStmt)
		return
	case *pg_query.Node_CallStmt:
		// A procedure may write, commit, anything its body does.
		w.set(KindWrite, "CALL")
	case *pg_query.Node_DeclareCursorStmt:
		w.set(KindRead, "DECLARE CURSOR")
	case *pg_query.Node_FetchStmt:
		if n.FetchStmt.Ismove {
			w.set(KindRead, "MOVE")
		} else {
			w.set(KindRead, "FETCH")
		}
		return
	case *pg_query.Node_ClosePortalStmt:
		w.set(KindSession, "CLOSE")
		return
	case *pg_query.Node_LockStmt:
		w.set(KindUtility, "LOCK")
	case *pg_query.Node_VacuumStmt:
		if n.VacuumStmt.IsVacuumcmd {
			w.set(KindUtility, "VACUUM")
		} else {
			w.set(KindUtility, "ANALYZE")
		}
	case *pg_query.Node_DiscardStmt:
		w.set(KindSession, "DISCARD")
		if n.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			// DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT.
			w.flag(FlagRoleSwitch)
		}
		return
	case *pg_query.Node_ListenStmt:
		w.set(KindSession, "LISTEN")
		return
	case *pg_query.Node_UnlistenStmt:
		w.set(KindSession, "UNLISTEN")
		return
	case *pg_query.Node_NotifyStmt:
		w.set(KindUtility, "NOTIFY")
		w.sideEffect("NOTIFY", "sends a notification to listeners")
		return
	case *pg_query.Node_LoadStmt:
		w.set(KindUtility, "LOAD")
		w.sideEffect("LOAD", "loads a shared library into the server process")
		w.flag(FlagOpaque)
		return
	case *pg_query.Node_AlterSystemStmt:
		w.set(KindUtility, "ALTER SYSTEM")
		if s := n.AlterSystemStmt.Setstmt; s != nil {
			w.varSet(s)
			w.st.Flags &^= FlagRoleSwitch | FlagReadWrite
		}
		// Every server setting is the administrator's.
		w.flag(FlagSecuritySetting)
		return
	case *pg_query.Node_CheckPointStmt:
		w.set(KindUtility, "CHECKPOINT")
		return
	case *pg_query.Node_ClusterStmt:
		w.set(KindUtility, "CLUSTER")
	case *pg_query.Node_ReindexStmt:
		w.set(KindUtility, "REINDEX")
	case *pg_query.Node_DropStmt:
		w.dropStmt(n.DropStmt)
	case *pg_query.Node_CreateStmt:
		w.set(KindDDL, "CREATE TABLE")
		w.markTopRelations(node)
	case *pg_query.Node_ViewStmt:
		w.set(KindDDL, "CREATE VIEW")
		w.markTopRelations(node)
	case *pg_query.Node_IndexStmt:
		w.set(KindDDL, "CREATE INDEX")
		w.markTopRelations(node)
	case *pg_query.Node_AlterTableStmt:
		w.set(KindDDL, "ALTER "+strings.TrimPrefix(n.AlterTableStmt.Objtype.String(), "OBJECT_"))
		w.markTopRelations(node)
	case *pg_query.Node_ReturnStmt:
		// The body of CREATE FUNCTION ... RETURN expr.
		w.set(KindRead, "RETURN")
	default:
		msg := protoMessage(node)
		name := string(msg.Descriptor().Name())
		cmd, ok := commandNames[name]
		if !ok {
			cmd = commandFromType(name)
		}
		w.set(kindFromType(name), cmd)
		w.markTopRelations(node)
	}
	if w.err != nil {
		return
	}
	if sel, ok := node.Node.(*pg_query.Node_SelectStmt); ok {
		w.selectStmt(sel.SelectStmt)
		return
	}
	w.walk(protoMessage(node), 0)
}

// protoMessage returns the concrete message inside a Node wrapper.
func protoMessage(node *pg_query.Node) protoreflect.Message {
	m := node.ProtoReflect()
	var inner protoreflect.Message
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		inner = v.Message()
		return false
	})
	if inner == nil {
		return m
	}
	return inner
}

// commandNames fixes the names commandFromType would get wrong.
var commandNames = map[string]string{
	"CreatedbStmt":            "CREATE DATABASE",
	"DropdbStmt":              "DROP DATABASE",
	"AlterDatabaseStmt":       "ALTER DATABASE",
	"CreateSeqStmt":           "CREATE SEQUENCE",
	"AlterSeqStmt":            "ALTER SEQUENCE",
	"CreateTrigStmt":          "CREATE TRIGGER",
	"CreateEventTrigStmt":     "CREATE EVENT TRIGGER",
	"AlterEventTrigStmt":      "ALTER EVENT TRIGGER",
	"CreateEnumStmt":          "CREATE TYPE",
	"CompositeTypeStmt":       "CREATE TYPE",
	"CreateRangeStmt":         "CREATE TYPE",
	"DefineStmt":              "CREATE",
	"RuleStmt":                "CREATE RULE",
	"CreateExtensionStmt":     "CREATE EXTENSION",
	"AlterObjectSchemaStmt":   "ALTER SET SCHEMA",
	"AlterOwnerStmt":          "ALTER OWNER",
	"CreateFdwStmt":           "CREATE FOREIGN DATA WRAPPER",
	"CreateForeignServerStmt": "CREATE SERVER",
	"CreateForeignTableStmt":  "CREATE FOREIGN TABLE",
	"ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
	"CreatePLangStmt":         "CREATE LANGUAGE",
	"CreateStatsStmt":         "CREATE STATISTICS",
	"CreateTableSpaceStmt":    "CREATE TABLESPACE",
	"DropTableSpaceStmt":      "DROP TABLESPACE",
}

// kindFromType classifies statement types not named in classify by their
// parse node name: anything that creates, alters or drops is DDL; the rest
// is utility.
func kindFromType(name string) Kind {
	for _, p := range []string{"Create", "Alter", "Drop", "Define", "Rename", "Comment", "Import", "Composite", "Rule"} {
		if strings.HasPrefix(name, p) {
			return KindDDL
		}
	}
	return KindUtility
}

// markTopRelations marks the relations a DDL statement acts on (its own
// RangeVar fields, not those in expressions below) as written.
func (w *walker) markTopRelations(node *pg_query.Node) {
	m := protoMessage(node)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
			if rv, ok := v.Message().Interface().(*pg_query.RangeVar); ok {
				w.writeTargets.add(rv)
			}
		}
		return true
	})
}

func (w *walker) markRelations(nodes []*pg_query.Node) {
	for _, n := range nodes {
		if rv := n.GetRangeVar(); rv != nil {
			w.writeTargets.add(rv)
		}
	}
}

func (w *walker) dropStmt(s *pg_query.DropStmt) {
	w.set(KindDDL, "DROP "+strings.ReplaceAll(strings.TrimPrefix(s.RemoveType.String(), "OBJECT_"), "_", " "))
	switch s.RemoveType {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_VIEW,
		pg_query.ObjectType_OBJECT_MATVIEW, pg_query.ObjectType_OBJECT_SEQUENCE,
		pg_query.ObjectType_OBJECT_INDEX, pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
		for _, o := range s.Objects {
			if l := o.GetList(); l != nil {
				if parts := nameParts(l.Items); len(parts) > 0 {
					w.written.add(strings.Join(parts, "."))
				}
			}
		}
	}
}

func (w *walker) explain(s *pg_query.ExplainStmt) {
	analyze := false
	for _, o := range s.Options {
		if d := o.GetDefElem(); d != nil && d.Defname == "analyze" {
			analyze = d.Arg == nil || constTrue(d.Arg)
		}
	}
	if !analyze {
		// Only planned: tables are read, DML does not run. Functions are
		// still listed: the planner may run immutable ones.
		w.set(KindRead, "EXPLAIN")
		w.noExec = true
		w.walk(protoMessage(s.Query), 0)
		return
	}
	// EXPLAIN ANALYZE runs the statement: it is what it explains.
	inner, err := w.a.analyzeNode(s.Query, w.st.Text, w.nesting+1)
	if err != nil {
		w.err = err
		return
	}
	w.set(inner.Kind, "EXPLAIN ANALYZE")
	w.st.PreparedName = inner.PreparedName
	w.st.Nested = append(w.st.Nested, inner)
}

func (w *walker) copyStmt(s *pg_query.CopyStmt) {
	if s.IsFrom {
		w.set(KindWrite, "COPY FROM")
		if s.Relation != nil {
			w.writeTargets.add(s.Relation)
		}
	} else {
		w.set(KindRead, "COPY TO")
	}
	switch {
	case s.IsProgram:
		w.flag(FlagCopyProgram)
		w.sideEffect("COPY PROGRAM", "runs a shell command on the database server")
	case s.Filename != "":
		w.flag(FlagCopyFile)
		if s.IsFrom {
			w.sideEffect("COPY FROM FILE", "reads a file on the database server")
		} else {
			w.sideEffect("COPY TO FILE", "writes a file on the database server")
		}
	}
}

func setCommand(s *pg_query.VariableSetStmt) string {
	switch s.Kind {
	case pg_query.VariableSetKind_VAR_RESET, pg_query.VariableSetKind_VAR_RESET_ALL:
		return "RESET"
	}
	switch strings.ToLower(s.Name) {
	case "role":
		return "SET ROLE"
	case "session_authorization":
		return "SET SESSION AUTHORIZATION"
	case "transaction":
		return "SET TRANSACTION"
	case "session characteristics":
		return "SET SESSION CHARACTERISTICS"
	}
	return "SET"
}

func (w *walker) varSet(s *pg_query.VariableSetStmt) {
	name := strings.ToLower(s.Name)
	w.st.Setting = name
	if s.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
		// RESET ALL resets role and session_authorization too, and the
		// read-only default.
		w.st.Setting = "all"
		w.flag(FlagRoleSwitch | FlagReadWrite)
		return
	}
	switch name {
	case "role", "session_authorization":
		w.flag(FlagRoleSwitch)
		for _, a := range s.Args {
			if v, ok := constValue(a); ok {
				w.roles.add(v)
			}
		}
	case "transaction", "session characteristics":
		for _, a := range s.Args {
			if d := a.GetDefElem(); d != nil && d.Defname == "transaction_read_only" && !constTrue(d.Arg) {
				w.flag(FlagReadWrite)
			}
		}
	case "transaction_read_only", "default_transaction_read_only":
		if s.Kind != pg_query.VariableSetKind_VAR_SET_VALUE || len(s.Args) == 0 || !constTrue(s.Args[0]) {
			w.flag(FlagReadWrite)
		}
	}
	if securitySetting(name) != "" {
		w.flag(FlagSecuritySetting)
	}
}

func (w *walker) transaction(s *pg_query.TransactionStmt) {
	cmd := map[pg_query.TransactionStmtKind]string{
		pg_query.TransactionStmtKind_TRANS_STMT_BEGIN:             "BEGIN",
		pg_query.TransactionStmtKind_TRANS_STMT_START:             "START TRANSACTION",
		pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:            "COMMIT",
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:          "ROLLBACK",
		pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:         "SAVEPOINT",
		pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:           "RELEASE",
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:       "ROLLBACK TO",
		pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:           "PREPARE TRANSACTION",
		pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:   "COMMIT PREPARED",
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
	}[s.Kind]
	if cmd == "" {
		cmd = "TRANSACTION"
	}
	w.set(KindTransaction, cmd)
	switch s.Kind {
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK,
		pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		w.flag(FlagEndsTransaction)
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
		for _, o := range s.Options {
			if d := o.GetDefElem(); d != nil && d.Defname == "transaction_read_only" && !constTrue(d.Arg) {
				w.flag(FlagReadWrite)
			}
		}
	}
}

func (w *walker) roleSpec(r *pg_query.RoleSpec) {
	if r == nil {
		return
	}
	switch r.Roletype {
	case pg_query.RoleSpecType_ROLESPEC_CURRENT_USER:
		w.roles.add("CURRENT_USER")
	case pg_query.RoleSpecType_ROLESPEC_CURRENT_ROLE:
		w.roles.add("CURRENT_ROLE")
	case pg_query.RoleSpecType_ROLESPEC_SESSION_USER:
		w.roles.add("SESSION_USER")
	case pg_query.RoleSpecType_ROLESPEC_PUBLIC:
		w.roles.add("PUBLIC")
	default:
		w.roles.add(r.Rolename)
	}
}

func (w *walker) roleNodes(nodes []*pg_query.Node) {
	for _, n := range nodes {
		if r := n.GetRoleSpec(); r != nil {
			w.roleSpec(r)
		} else if a := n.GetAccessPriv(); a != nil {
			w.roles.add(a.PrivName)
		}
	}
}

func (w *walker) roleOptions(opts []*pg_query.Node) {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		switch d.Defname {
		case "password":
			w.flag(FlagPasswordChange)
			if s, ok := constValue(d.Arg); ok {
				w.secret(s)
			} else {
				w.flag(FlagSecret)
			}
		case "rolemembers", "addroleto", "adminmembers":
			if l := d.Arg.GetList(); l != nil {
				w.roleNodes(l.Items)
			}
		}
	}
}

func (w *walker) mappingOptions(opts []*pg_query.Node) {
	for _, o := range opts {
		if d := o.GetDefElem(); d != nil && strings.Contains(strings.ToLower(d.Defname), "password") {
			v, _ := constValue(d.Arg)
			w.secret(v)
		}
	}
}

func (w *walker) connInfo(conninfo string) {
	if strings.Contains(strings.ToLower(conninfo), "password") {
		w.secret(conninfo)
	}
}

func (w *walker) prepare(s *pg_query.PrepareStmt) {
	inner, err := w.a.analyzeNode(s.Query, w.st.Text, w.nesting+1)
	if err != nil {
		w.err = err
		return
	}
	// PREPARE is classified as what it prepares, so a rule can refuse it
	// early; the caller caches Nested[0] under the name for EXECUTE.
	w.set(inner.Kind, "PREPARE")
	w.flag(FlagPrepare)
	w.st.PreparedName = s.Name
	w.st.Nested = append(w.st.Nested, inner)
}

// defElemString returns the string argument of the DefElem named name.
func defElemString(opts []*pg_query.Node, name string) (string, bool) {
	for _, o := range opts {
		if d := o.GetDefElem(); d != nil && d.Defname == name {
			if s := d.Arg.GetString_(); s != nil {
				return s.Sval, true
			}
		}
	}
	return "", false
}

func (w *walker) doStmt(s *pg_query.DoStmt) {
	lang, ok := defElemString(s.Args, "language")
	if !ok {
		lang = "plpgsql"
	}
	if strings.ToLower(lang) != "plpgsql" {
		w.flag(FlagOpaque)
		return
	}
	w.plpgsql(w.st.Text, 0)
}

func (w *walker) createFunction(s *pg_query.CreateFunctionStmt) {
	// Argument defaults are expressions like any other; SET clauses
	// change settings whenever the function runs.
	for _, p := range s.Parameters {
		w.walk(p.ProtoReflect(), 1)
	}
	for _, o := range s.Options {
		if d := o.GetDefElem(); d != nil && d.Defname == "set" {
			w.walkNode(d.Arg)
		}
	}
	if s.SqlBody != nil {
		// BEGIN ATOMIC ... END or RETURN expr: already parsed.
		w.sqlBody(s.SqlBody)
		return
	}
	lang, ok := defElemString(s.Options, "language")
	if !ok {
		lang = "sql"
	}
	var body string
	for _, o := range s.Options {
		if d := o.GetDefElem(); d != nil && d.Defname == "as" {
			if l := d.Arg.GetList(); l != nil && len(l.Items) > 0 {
				if str := l.Items[0].GetString_(); str != nil {
					body = str.Sval
				}
			}
		}
	}
	switch strings.ToLower(lang) {
	case "plpgsql":
		w.plpgsql(w.st.Text, FlagFunctionBody)
	case "sql":
		w.nested(body, FlagFunctionBody)
	default:
		// C, internal, PL/Python, PL/Perl, ...: code we cannot read.
		w.flag(FlagOpaque)
	}
}

func (w *walker) sqlBody(body *pg_query.Node) {
	var stmts []*pg_query.Node
	if l := body.GetList(); l != nil {
		for _, it := range l.Items {
			if inner := it.GetList(); inner != nil {
				stmts = append(stmts, inner.Items...)
			} else {
				stmts = append(stmts, it)
			}
		}
	} else {
		stmts = []*pg_query.Node{body}
	}
	for _, n := range stmts {
		if n == nil || n.Node == nil {
			continue
		}
		st, err := w.a.analyzeNode(n, "", w.nesting+1)
		if err != nil {
			w.err = err
			return
		}
		st.Flags |= FlagFunctionBody
		w.st.Nested = append(w.st.Nested, st)
	}
}
