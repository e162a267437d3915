package sqlclass

import (
	"sort"
	"strings"
)

// Kind is what a statement does, as a policy rule would name it.
type Kind string

const (
	// KindRead reads data and changes nothing: SELECT, VALUES, SHOW, EXPLAIN
	// without ANALYZE, COPY ... TO. A SELECT calling a function may still
	// have side effects: see FlagSideEffect and Statement.SideEffects.
	KindRead Kind = "read"
	// KindWrite changes rows: INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY
	// ... FROM, REFRESH MATERIALIZED VIEW, a SELECT whose WITH carries DML,
	// CALL (a procedure may write).
	KindWrite Kind = "write"
	// KindDDL changes the schema: CREATE/ALTER/DROP of objects other than
	// roles, COMMENT, SELECT INTO, CREATE TABLE AS.
	KindDDL Kind = "ddl"
	// KindDCL changes who may do what: roles, passwords, memberships,
	// GRANT/REVOKE, default privileges, REASSIGN/DROP OWNED.
	KindDCL Kind = "dcl"
	// KindTransaction controls transactions: BEGIN, COMMIT, ROLLBACK,
	// SAVEPOINT, RELEASE, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
	KindTransaction Kind = "transaction"
	// KindSession changes the session: SET, RESET, SET ROLE, SET SESSION
	// AUTHORIZATION, DISCARD, PREPARE's bookkeeping (DEALLOCATE), LISTEN.
	KindSession Kind = "session"
	// KindUtility is server maintenance and everything else: VACUUM,
	// ANALYZE, CHECKPOINT, LOCK, CLUSTER, REINDEX, LOAD, ALTER SYSTEM, ...
	KindUtility Kind = "utility"
	// KindBlock is an anonymous code block (DO): what it does is in Nested.
	KindBlock Kind = "block"
	// KindExecute runs a statement prepared earlier by name (EXECUTE name):
	// the caller looks up what it cached for Statement.PreparedName.
	KindExecute Kind = "execute"
)

// Flag marks a property of a statement that rules and holds key on.
type Flag uint32

const (
	// FlagNoWhere: an UPDATE or DELETE without WHERE (also inside a CTE or
	// a code block), i.e. every row of the table.
	FlagNoWhere Flag = 1 << iota
	// FlagDMLInCTE: a WITH clause carries INSERT/UPDATE/DELETE/MERGE, so a
	// statement that reads as a SELECT writes.
	FlagDMLInCTE
	// FlagDynamicSQL: SQL text built at run time (EXECUTE in PL/pgSQL,
	// dblink, query_to_xml, ...) whose text is not a constant.
	FlagDynamicSQL
	// FlagOpaque: code the classifier cannot look into (dynamic SQL, bodies
	// in languages other than SQL and PL/pgSQL). Rules should treat it as
	// able to do anything the role may do.
	FlagOpaque
	// FlagCopyProgram: COPY ... TO/FROM PROGRAM runs a shell command on the
	// database server.
	FlagCopyProgram
	// FlagCopyFile: COPY ... TO/FROM a file on the database server.
	FlagCopyFile
	// FlagSideEffect: a function with effects beyond the result is called
	// (see Statement.SideEffects for which and why).
	FlagSideEffect
	// FlagRoleChange: a role is created, altered, dropped, renamed,
	// commented on, granted or revoked membership, or the role catalogs are
	// written.
	FlagRoleChange
	// FlagPasswordChange: a role's password is set or cleared.
	FlagPasswordChange
	// FlagRoleSwitch: the session's effective role changes (SET ROLE, SET
	// SESSION AUTHORIZATION, RESET ROLE/ALL, DISCARD ALL, set_config('role')).
	FlagRoleSwitch
	// FlagSecuritySetting: a security-relevant setting is changed (see
	// securitySettings), by SET, set_config, ALTER SYSTEM or ALTER ROLE SET.
	FlagSecuritySetting
	// FlagEndsTransaction: COMMIT, ROLLBACK, PREPARE TRANSACTION, ... A
	// statement after it in the same string runs outside the transaction
	// the caller may have wrapped around the string ("COMMIT; DROP ...").
	FlagEndsTransaction
	// FlagReadWrite: a transaction or the session is switched to read-write
	// (BEGIN READ WRITE, SET TRANSACTION READ WRITE, SET
	// transaction_read_only = off, ...): escapes a read-only wrapper.
	FlagReadWrite
	// FlagSecret: the text carries a secret (a password, a connection
	// string): log Redacted, never Text.
	FlagSecret
	// FlagPrepare: PREPARE name AS ...; the statement's classification is
	// the prepared statement's, to be cached under PreparedName.
	FlagPrepare
	// FlagDeallocate: DEALLOCATE name (or ALL when PreparedName is empty).
	FlagDeallocate
	// FlagFunctionBody: the statement is part of a function or procedure
	// body: it runs when the function is called, not now.
	FlagFunctionBody
	// FlagRunsPrepared: a statement prepared earlier is run by name
	// (EXECUTE, also inside CREATE TABLE AS or EXPLAIN ANALYZE): look up
	// what was cached for PreparedName.
	FlagRunsPrepared
)

var flagNames = []string{
	"no_where", "dml_in_cte", "dynamic_sql", "opaque", "copy_program",
	"copy_file", "side_effect", "role_change", "password_change",
	"role_switch", "security_setting", "ends_transaction", "read_write",
	"secret", "prepare", "deallocate", "function_body", "runs_prepared",
}

// FlagByName returns the flag with the given snake_case name.
func FlagByName(name string) (Flag, bool) {
	for i, n := range flagNames {
		if n == name {
			return Flag(1) << i, true
		}
	}
	return 0, false
}

// Names lists the flags set, in a fixed order.
func (f Flag) Names() []string {
	var out []string
	for i, n := range flagNames {
		if f&(Flag(1)<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

func (f Flag) String() string { return strings.Join(f.Names(), "|") }

// Has reports whether every flag in g is set in f.
func (f Flag) Has(g Flag) bool { return f&g == g }

// propagated are the flags a nested statement (a code block's body, a
// CTE's DML) passes up to the statement that contains it, so that a rule
// looking only at top-level flags still sees them. FlagFunctionBody,
// FlagPrepare and FlagDeallocate describe the nested statement itself.
const propagated = FlagNoWhere | FlagDMLInCTE | FlagDynamicSQL | FlagOpaque |
	FlagCopyProgram | FlagCopyFile | FlagSideEffect | FlagRoleChange |
	FlagPasswordChange | FlagRoleSwitch | FlagSecuritySetting |
	FlagEndsTransaction | FlagReadWrite | FlagSecret | FlagRunsPrepared

// SideEffect names a function called for its effect and why it matters.
type SideEffect struct {
	Function string
	Reason   string
}

// ColumnRef is one reference to a column, or to a whole row, of a relation.
type ColumnRef struct {
	// Relations the reference may belong to, as written (schema-qualified
	// when written so: "public.users", else "users"; identifiers as
	// PostgreSQL folds them), aliases resolved to the relation they stand
	// for. One entry when the reference is qualified (u.email) or its scope
	// has one relation; every relation of its scope (outer scopes included)
	// when it is unqualified and the scope has several: the parser alone
	// cannot tell which one has the column. A qualifier naming nothing in
	// scope (a PL/pgSQL record, a rule's NEW) is kept as written; an
	// unqualified name with no relation in scope at all (a PL/pgSQL
	// variable) is not listed. Never empty.
	Relations []string
	// Column name as PostgreSQL folds it; "" for a whole-row reference
	// (`u`, `u.*`, `*`, `row_to_json(u)`, `t` in `SELECT t FROM t`).
	Column string
}

// Lineage says whose values a statement can hand back, and whose it stores.
// Lists are de-duplicated; their order is not significant; a column may be
// in several (SELECT name ... WHERE name = 'x').
type Lineage struct {
	// Output: columns whose values can reach what the statement returns:
	// every target list at every level (subqueries in FROM, CTEs, set
	// operations, scalar subqueries in a target list, LATERAL, VALUES),
	// RETURNING lists, and everything inside expressions there (function
	// arguments, casts, CASE, aggregates, window functions). A reference to
	// a CTE's or a FROM-subquery's own column is not listed: the columns in
	// its target list are, in the role of the reference (a CTE column
	// nothing outside reads is in Filter only).
	Output []ColumnRef
	// Filter: columns read only to choose or order rows (WHERE, JOIN ... ON /
	// USING, GROUP BY, HAVING, ORDER BY, window PARTITION/ORDER, LIMIT/OFFSET,
	// DISTINCT ON, EXISTS), and every column a CTE or FROM subquery
	// computes (evaluated, and quoted by an error, even when unused).
	Filter []ColumnRef
	// Copy: columns whose values the statement stores where a later
	// statement can read them back: CREATE TABLE AS, SELECT INTO, CREATE
	// MATERIALIZED VIEW (and REFRESH of one), INSERT ... SELECT/VALUES,
	// UPDATE ... SET / FROM, MERGE, COPY (query) TO a file or program,
	// arguments of set_config(), pg_notify() and of every function the
	// classifier lists in SideEffects (lo_from_bytea, lo_put, dblink_exec,
	// ...), and every reference inside a DO block or a function/procedure
	// body the statement creates or runs inline (their Output, Filter and
	// Copy alike). Also CREATE VIEW's query and a rule's actions (they hand
	// columns out later under another name), expressions of ALTER TABLE
	// (generated columns, USING), and CALL's arguments.
	Copy []ColumnRef
	// Unknown: part of the statement could not be read (FlagOpaque: dynamic
	// SQL built at run time, a language other than SQL or PL/pgSQL): treat
	// every column of every relation it names as Output and Copy.
	Unknown bool
}

// Statement is one statement of a query string, or one statement found
// inside another (a DO block's body, a function body, a constant EXECUTE).
// Statements are shared through the cache: never modify one.
type Statement struct {
	// Text is the statement as sent. It may carry secrets (FlagSecret):
	// log Redacted instead.
	Text string
	// Redacted is Text with secrets replaced; equal to Text when the
	// statement carries none.
	Redacted string
	// Command is the SQL command, upper case: "SELECT", "ALTER ROLE", ...
	Command string
	Kind    Kind
	// Flags include the propagated flags of Nested statements.
	Flags Flag
	// TablesRead and TablesWritten are relation names as written in the
	// statement (schema-qualified when it was), sorted, without CTE names.
	// DDL targets (CREATE/ALTER/DROP TABLE, ...) count as written.
	TablesRead    []string
	TablesWritten []string
	// Functions are the functions called, as written (schema-qualified
	// when it was), sorted.
	Functions   []string
	SideEffects []SideEffect
	// Roles are the roles a DCL statement or SET ROLE names (CURRENT_USER,
	// SESSION_USER, CURRENT_ROLE and PUBLIC as such).
	Roles []string
	// Setting is the configuration parameter a SET/RESET/SHOW/ALTER SYSTEM
	// names, lower case.
	Setting string
	// PreparedName is the name of PREPARE, EXECUTE or DEALLOCATE.
	PreparedName string
	// CursorName is the cursor of DECLARE, FETCH, MOVE and CLOSE (empty
	// for CLOSE ALL).
	CursorName string
	// Nested are the statements found inside this one: DO and function
	// bodies, the statement of PREPARE, constant dynamic SQL.
	Nested []*Statement
	// Lineage says which columns the statement reads and in which role.
	// Filled for every statement, nested ones included; a statement
	// holding nested bodies (DO, CREATE FUNCTION/PROCEDURE) carries in its
	// own Copy what they read, so a consumer may look at top-level
	// statements only. PREPARE's own Lineage is empty: Nested[0] (the
	// prepared statement) has it. DECLARE CURSOR's Output is its query's
	// (no rows come back at DECLARE: the consumer keeps it under
	// CursorName for FETCH). EXECUTE and FETCH carry none of their own.
	Lineage Lineage

	secretValues []string
}

// Walk calls fn for s and every statement nested in it, depth first.
func (s *Statement) Walk(fn func(*Statement)) {
	fn(s)
	for _, n := range s.Nested {
		n.Walk(fn)
	}
}

// Result is the classification of one query string.
// Results are shared through the cache: never modify one.
type Result struct {
	// SQL is the string classified.
	SQL string
	// Statements are the top-level statements, in order.
	Statements []*Statement

	transient bool
}

// Transient reports a Result made for one call only (served from the
// shape cache, see shape.go): the next call with the same text returns
// another. Caches keyed by a Result's pointer should not keep it: they
// would only fill up.
func (r *Result) Transient() bool { return r.transient }

// Flags is the union of the flags of every statement.
func (r *Result) Flags() Flag {
	var f Flag
	for _, s := range r.Statements {
		f |= s.Flags
	}
	return f
}

// Has reports whether any statement, nested ones included, has all of g.
func (r *Result) Has(g Flag) bool {
	found := false
	r.Walk(func(s *Statement) {
		if s.Flags.Has(g) {
			found = true
		}
	})
	return found
}

// Walk calls fn for every statement, nested ones included, depth first.
func (r *Result) Walk(fn func(*Statement)) {
	for _, s := range r.Statements {
		s.Walk(fn)
	}
}

// Kinds lists the distinct kinds of every statement, nested ones included.
func (r *Result) Kinds() []Kind {
	seen := map[Kind]bool{}
	var out []Kind
	r.Walk(func(s *Statement) {
		if !seen[s.Kind] {
			seen[s.Kind] = true
			out = append(out, s.Kind)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// TablesRead, TablesWritten and Functions are unions over every statement,
// nested ones included, sorted.
func (r *Result) TablesRead() []string {
	return r.union(func(s *Statement) []string { return s.TablesRead })
}
func (r *Result) TablesWritten() []string {
	return r.union(func(s *Statement) []string { return s.TablesWritten })
}
func (r *Result) Functions() []string {
	return r.union(func(s *Statement) []string { return s.Functions })
}

func (r *Result) union(get func(*Statement) []string) []string {
	set := map[string]bool{}
	r.Walk(func(s *Statement) {
		for _, t := range get(s) {
			set[t] = true
		}
	})
	return sortedKeys(set)
}

// ChangesRoleOrPassword reports whether running the string could create,
// alter, drop, rename or comment on a role, change a password or a role
// membership, whatever the spelling. Code the classifier cannot see into
// (dynamic SQL, other languages) counts: it could do any of these.
// This is what a proxy refuses so that a session's role cannot hand itself
// a credential usable outside the proxy.
func (r *Result) ChangesRoleOrPassword() bool {
	return r.Has(FlagRoleChange) || r.Has(FlagPasswordChange) || r.Has(FlagOpaque)
}

// SwitchesRole reports whether the session's effective role could change:
// SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE/ALL, DISCARD ALL,
// set_config('role', ...), or opaque code.
func (r *Result) SwitchesRole() bool {
	return r.Has(FlagRoleSwitch) || r.Has(FlagOpaque)
}

// EndsTransaction reports whether a statement ends the transaction the
// string may have been wrapped in: a read-only wrapper does not hold for
// the statements after it.
func (r *Result) EndsTransaction() bool { return r.Has(FlagEndsTransaction) }

// Redacted is SQL with secrets replaced, for logs and audit records. It is
// SQL itself when no statement carries a secret.
func (r *Result) Redacted() string {
	if !r.Has(FlagSecret) {
		return r.SQL
	}
	parts := make([]string, len(r.Statements))
	for i, s := range r.Statements {
		parts[i] = s.Redacted
	}
	return strings.Join(parts, "; ")
}

func sortedKeys(set map[string]bool) []string {
	if len(set) == 0 {
		return nil
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
