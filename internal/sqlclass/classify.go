// Package sqlclass classifies SQL the way PostgreSQL reads it, with
// PostgreSQL's own parser (libpg_query through pg_query_go): what each
// statement of a query string does (read, write, DDL, role changes, ...),
// which tables and functions it touches, and what hides inside it (DML in
// CTEs, DO blocks, function bodies, dynamic SQL, side-effecting functions).
// It is a pure library: no I/O besides the cgo calls into the parser.
//
// A pipeline stage calls Classifier.Classify with the text of every simple
// Query and every Parse; repeated texts come from a bounded cache (see
// Fingerprint for why it is keyed by exact text). Using the Result:
//
//   - An error means PostgreSQL's grammar rejects the text (or it nests too
//     deeply): deny by default. The error never quotes the input.
//   - Decide on every statement, nested ones included (Result.Walk,
//     Result.Kinds, Result.Has, the union helpers): a DO block's kind is
//     "block" and what it does is in Nested; flags of nested statements
//     are also copied up to the statement holding them.
//   - FlagOpaque means code the classifier cannot read (dynamic SQL built
//     at run time, PL/Python, C, LOAD): treat it as able to do anything.
//   - PREPARE (FlagPrepare) and a protocol-level Parse with a name: cache
//     the Result (or Nested[0] for PREPARE) under the statement name;
//     EXECUTE name (KindExecute, PreparedName) and Bind/Execute then look
//     it up. DEALLOCATE (FlagDeallocate, empty name for ALL) drops it.
//   - FlagEndsTransaction before other statements in one string
//     ("COMMIT; DROP ...") means a read-only wrapper the proxy placed
//     around the string no longer holds for the rest.
//   - Result.ChangesRoleOrPassword is what issue 6 asks the proxy to refuse.
//   - Log Result.Redacted, never SQL, when Has(FlagSecret).
//   - Statement.Lineage says which columns a statement reads and how:
//     Output (can reach the rows returned), Filter (only chooses rows),
//     Copy (stored where a later statement can read it: CREATE TABLE AS,
//     INSERT ... SELECT, set_config, DO and function bodies, ...), and
//     Unknown for code it cannot read. It comes from names alone (no
//     catalog): an unqualified column lists every relation that could
//     hold it, "" is a whole row, and anything unsure errs towards more.
//     PREPARE's lies in Nested[0]; DECLARE's is its query's, kept by the
//     caller under CursorName for FETCH.
//
// The fast-path FunctionCall message names a function by OID, not by SQL:
// the caller resolves the OID to a name and calls FastPathCall.
package sqlclass

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	pgparser "github.com/pganalyze/pg_query_go/v6/parser"
)

// pgMu serialises every call into libpg_query. Each of its parse calls
// redirects the process's file descriptor 2 into a pipe for the duration
// of the call (to capture parser warnings) and restores it afterwards; two
// calls at once can restore each other's pipe and leave fd 2 pointing at a
// closed pipe, after which the next write to stderr kills the process with
// SIGPIPE. One parse at a time avoids that; all pg_query use in the process
// must go through this package.
var pgMu sync.Mutex

// ParseError is returned for SQL the parser rejects. Its message never
// quotes the input (a password in a broken statement would otherwise end
// up in logs and in the client's error).
type ParseError struct {
	// Position is the 1-based character position the parser pointed at
	// (a byte offset for the NUL-byte error), 0 if none.
	Position int
	Message  string
}

func (e *ParseError) Error() string {
	if e.Position > 0 {
		return fmt.Sprintf("SQL not understood: %s (at position %d)", e.Message, e.Position)
	}
	return "SQL not understood: " + e.Message
}

// ErrTooDeep is returned when statements nest inside statements (DO inside
// EXECUTE inside DO ...) beyond maxNesting.
var ErrTooDeep = errors.New("SQL not understood: statements nested too deeply")

const maxNesting = 8

func sanitizeError(err error) error {
	var pe *pgparser.Error
	if !errors.As(err, &pe) {
		// Errors from protobuf decoding (e.g. nesting limits) carry no input.
		return &ParseError{Message: err.Error()}
	}
	msg := pe.Message
	if i := strings.Index(msg, " at or near "); i >= 0 {
		msg = msg[:i]
	}
	// Drop anything else quoted from the input: identifiers, literals.
	var b strings.Builder
	in := false
	for _, r := range msg {
		if r == '"' {
			if !in {
				b.WriteString(`"…"`)
			}
			in = !in
			continue
		}
		if !in {
			b.WriteRune(r)
		}
	}
	return &ParseError{Position: pe.Cursorpos, Message: strings.TrimSpace(b.String())}
}

// Options bound the caches. Zero values take the defaults.
type Options struct {
	// MaxEntries is the most query strings kept (default 20000).
	MaxEntries int
	// MaxBytes is the memory budget of the text cache, counted as about
	// three times the SQL length per entry (default 64 MiB).
	MaxBytes int
	// MaxCachedSQL is the longest query string cached (default 64 KiB):
	// longer ones are classified every time.
	MaxCachedSQL int
}

// Classifier classifies SQL and caches the results. It is safe for
// concurrent use.
type Classifier struct {
	opts  Options
	text  *lru[cached]
	shape *lru[*Result] // shape results, see shape.go
}

type cached struct {
	res *Result
	err error
}

// New returns a Classifier with caches bounded by opts.
func New(opts Options) *Classifier {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 20000
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.MaxCachedSQL <= 0 {
		opts.MaxCachedSQL = 64 << 10
	}
	return &Classifier{
		opts:  opts,
		text:  newLRU[cached](opts.MaxEntries, opts.MaxBytes),
		shape: newLRU[*Result](opts.MaxEntries, opts.MaxBytes/4),
	}
}

var defaultClassifier = New(Options{})

// Classify classifies sql with a process-wide Classifier.
func Classify(sql string) (*Result, error) { return defaultClassifier.Classify(sql) }

// Classify splits sql into statements and classifies each. SQL the parser
// rejects returns a *ParseError: callers deny it. The Result is shared with
// other callers through the cache and must not be modified.
func (c *Classifier) Classify(sql string) (*Result, error) {
	res, shape, err := c.ClassifyShape(sql)
	if shape {
		return fromShape(res.Statements[0], sql), nil
	}
	return res, err
}

// ClassifyShape is Classify for a caller that decides on the
// classification and needs sql's own Result only now and then (to show
// or keep its text). When the shape cache serves sql (a statement seen
// before with other numbers in it, see shape.go), it returns the shape's
// Result as it is cached, with shape true, instead of building one for
// sql: everything in it is what sql's Result says, except SQL, Text and
// Redacted, which are the shape's (each number written 0), not sql's. A
// caller that shows, keeps or matches the text (a policy rule's regex)
// calls Classify(sql) for sql's own. The shape's Result is the same
// pointer for as long as the cache keeps it, so a cache of decisions keyed
// by the Result serves every text of the shape.
func (c *Classifier) ClassifyShape(sql string) (res *Result, shape bool, err error) {
	if e, ok := c.text.get(sql); ok {
		return e.res, false, e.err
	}
	if len(sql) > c.opts.MaxCachedSQL {
		res, err := c.classifyUncached(sql)
		return res, false, err
	}
	// The shape key is built on the stack (a key string per statement
	// was an allocation per query); a longer one grows on the heap.
	var buf [256]byte
	key, shaped := appendNumberShape(buf[:0], sql)
	if shaped {
		// The lookup's key aliases buf: get keeps nothing of it (put
		// below gets a copy).
		if r, ok := c.shape.get(unsafe.String(unsafe.SliceData(key), len(key))); ok {
			// Not added to the text cache: a stream of new constants
			// would only churn it, and this path is cheap already.
			return r, true, nil
		}
	}
	res, err = c.classifyUncached(sql)
	c.text.put(sql, cached{res, err}, 3*len(sql)+256)
	if shaped && err == nil && shareable(res, sql) {
		k := string(key)
		c.shape.put(k, shapeResult(res.Statements[0], k), 3*len(sql)+256)
	}
	return res, false, err
}

func (c *Classifier) classifyUncached(sql string) (*Result, error) {
	a := &analyzer{}
	stmts, err := a.analyzeSQL(sql, 0)
	if err != nil {
		return nil, err
	}
	return &Result{SQL: sql, Statements: stmts}, nil
}

// Fingerprint returns pg_query's fingerprint of sql, to group statements
// that differ only in constants (for reports and audit views).
//
// Never key a classification or a policy decision on it: the fingerprint
// ignores constants (set_config('role', ...) and set_config('work_mem',
// ...) agree), the bodies of DO blocks and CREATE FUNCTION (every DO block
// has the same fingerprint), the options of BEGIN and SET (READ ONLY and
// READ WRITE agree), prepared-statement names, aliases, and numeric
// suffixes of table names (payments_01 and payments_99 agree). Classifier
// therefore caches by exact text only.
func Fingerprint(sql string) (uint64, error) {
	pgMu.Lock()
	fp, err := pg_query.FingerprintToUInt64(sql)
	pgMu.Unlock()
	if err != nil {
		return 0, sanitizeError(err)
	}
	return fp, nil
}

// CacheStats reports the number of entries and bytes held by the cache.
func (c *Classifier) CacheStats() (entries, bytes int) {
	return c.text.len(), c.text.sizeBytes()
}

func parse(sql string) (*pg_query.ParseResult, error) {
	pgMu.Lock()
	tree, err := pg_query.Parse(sql)
	pgMu.Unlock()
	if err != nil {
		return nil, sanitizeError(err)
	}
	return tree, nil
}

// Normalize returns sql with every constant replaced by $n (DO and function
// bodies included), for logs that must not carry parameters or literals.
// Use it rather than pg_query directly: see pgMu.
func Normalize(sql string) (string, error) {
	out, err := normalize(sql)
	if err != nil {
		return "", sanitizeError(err)
	}
	return out, nil
}

func normalize(sql string) (string, error) {
	pgMu.Lock()
	defer pgMu.Unlock()
	return pg_query.Normalize(sql)
}

func parsePlpgsql(sql string) (string, error) {
	pgMu.Lock()
	defer pgMu.Unlock()
	out, err := pg_query.ParsePlPgSqlToJSON(sql)
	if err != nil {
		return "", sanitizeError(err)
	}
	return out, nil
}

// redact replaces the constants of text (pg_query's normalisation turns
// every literal, DO and function bodies included, into $n) and checks that
// no known secret survived; if one did, or normalisation failed, the whole
// statement is withheld.
func redact(text, command string, secrets []string) string {
	out, err := normalize(text)
	if err == nil {
		for _, s := range secrets {
			if s == "" {
				continue
			}
			if strings.Contains(out, s) || strings.Contains(out, strings.ReplaceAll(s, "'", "''")) {
				err = errors.New("secret survived normalisation")
				break
			}
		}
	}
	if err != nil {
		return fmt.Sprintf("<%s statement withheld: it carries a secret>", command)
	}
	return out
}
