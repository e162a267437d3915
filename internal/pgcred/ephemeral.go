package pgcred

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/session"
)

// CommentTag starts the comment of every role Ephemeral creates. Sweep drops
// only roles whose name has the prefix and whose comment starts with it, and
// of those only the ones this host made (the host id follows the tag, see
// LoadOrCreateHostID) or whose VALID UNTIL has passed.
const CommentTag = "airlock-managed "

// orphansComment tags the role that Ephemeral creates to own what ephemeral
// roles leave behind. It does not start with CommentTag: no sweep drops it.
const orphansComment = "airlock-orphans: owns objects that Airlock's ephemeral roles left behind; no login, no memberships"

// What happens to the objects an ephemeral role still owns when it is dropped.
const (
	// LeftoversReassign gives them to the leftovers owner (REASSIGN OWNED).
	LeftoversReassign = "reassign"
	// LeftoversDrop drops them (DROP OWNED).
	LeftoversDrop = "drop"
)

// ErrDropPending marks a Release (or sweep) that could not drop the role yet:
// the role is left without LOGIN (when possible) and the Ephemeral's Run loop
// retries the drop.
var ErrDropPending = errors.New("pgcred: role drop pending")

// Defaults.
const (
	DefaultTTL           = time.Hour
	DefaultPrefix        = "airlock_"
	DefaultConnLimit     = 1 // the proxy's own backend holds the only slot
	DefaultRetryInterval = 30 * time.Second
	DefaultSweepInterval = 5 * time.Minute
	terminateWait        = 5 * time.Second
	// otherHostGrace is how long after its VALID UNTIL a role of another
	// host is left alone: that host's proxy ends the session at expiry by
	// its own clock, which may lag the server's.
	otherHostGrace = 5 * time.Minute
	// maxLeftoversListed caps the object names a credential.revoke event
	// carries (the count is always exact).
	maxLeftoversListed = 50
	maxIdentLen        = 63 // NAMEDATALEN-1
)

// EphemeralOptions configures per-session roles.
type EphemeralOptions struct {
	// Admin connects as a role with CREATEROLE (superuser not needed). It must
	// come from pgx.ParseConfig (set Password, DialFunc, TLSConfig after
	// parsing). Its Database is where roles are created and dropped.
	Admin *pgx.ConnConfig
	// GroupRoles are granted to each ephemeral role (membership only, never
	// per-object grants). They must exist and must not be superusers.
	GroupRoles []string
	// AccessRoles are the roles AcquireRoles may grant (from access rules),
	// checked like GroupRoles at start but granted only when asked for.
	AccessRoles []string
	// TTL sets VALID UNTIL now+TTL. Default 1h.
	TTL time.Duration
	// Prefix starts every role name: Prefix + session ID. Default "airlock_".
	// Lowercase letters, digits and underscores, starting with a letter or
	// underscore.
	Prefix string
	Logger *slog.Logger

	// HostID tags the roles this Ephemeral creates (see
	// LoadOrCreateHostID); Sweep drops only roles of its own host id, plus
	// expired ones. Lowercase letters and digits, 8 to 64. Required.
	HostID string

	// Leftovers says what becomes of the objects a role still owns when it
	// is dropped: LeftoversReassign (default) or LeftoversDrop. They are
	// never given to the admin: a SECURITY DEFINER function a session left
	// would then run with the admin's rights.
	Leftovers string
	// Owner receives leftovers in reassign mode. It must be NOLOGIN, not the
	// admin, and reach no role that the group roles do not reach. Default:
	// Prefix+"orphans", a NOLOGIN role member of nothing, which
	// NewEphemeral creates when missing and checks.
	Owner string
	// ConnLimit is the role's CONNECTION LIMIT: 0 means DefaultConnLimit (1:
	// the proxy's backend holds the only slot), negative means no limit.
	ConnLimit int
	// RetryInterval is how often Run retries pending drops (default 30s);
	// SweepInterval how often it re-checks the group roles and the
	// leftovers owner and drops expired roles of ours that no live lease
	// holds (default 5m).
	RetryInterval time.Duration
	SweepInterval time.Duration
	// Events receives the credential.sweep events of roles a sweep found
	// outside any session (the audit record); nil drops them.
	Events session.Sink
}

// Ephemeral creates one login role per session and drops it on Release.
type Ephemeral struct {
	admin     *pgx.ConnConfig
	groups    []string
	allowed   []string // groups and access roles: what AcquireRoles may grant
	ttl       time.Duration
	prefix    string
	log       *slog.Logger
	hostID    string
	leftovers string
	owner     string
	// ownerBorrows: the owner is made a member of the role being dropped
	// for the length of the REASSIGN (see dropOwned).
	ownerBorrows bool // guarded by mu after NewEphemeral
	managedOwner bool // the owner is Prefix+"orphans", made by NewEphemeral
	connLimit    int
	retryEvery   time.Duration
	sweepEvery   time.Duration
	events       session.Sink

	adminUser string // current_user of the admin connection
	adminDB   string // current_database() of the admin connection
	superuser bool
	version   int // server_version_num

	pool  *connPool     // open admin connections, per database
	drops chan struct{} // bounds concurrent drops: they leave Acquire a connection

	mu      sync.Mutex
	unsafe  error             // set by a re-check that failed: Acquire refuses
	active  map[string]*Lease // role name → unreleased lease
	pending map[string]*pendingDrop
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
}

type pendingDrop struct {
	sess     *session.Session // nil for roles found by a sweep
	database string
	groups   []string
	expires  time.Time
	since    time.Time
	attempts int
}

var prefixRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
var sessionIDRE = regexp.MustCompile(`^[a-z0-9]+$`)

// NewEphemeral checks that the admin can connect and may create roles, and
// that every group role exists.
func NewEphemeral(ctx context.Context, opts EphemeralOptions) (*Ephemeral, error) {
	if opts.Admin == nil {
		return nil, errors.New("pgcred: no admin connection configured")
	}
	e := &Ephemeral{
		admin: opts.Admin.Copy(), ttl: opts.TTL, prefix: opts.Prefix, log: opts.Logger,
		hostID: opts.HostID, leftovers: opts.Leftovers, owner: opts.Owner, connLimit: opts.ConnLimit,
		retryEvery: opts.RetryInterval, sweepEvery: opts.SweepInterval, events: opts.Events,
		active: map[string]*Lease{}, pending: map[string]*pendingDrop{}, done: make(chan struct{}),
		drops: make(chan struct{}, adminPoolSize-1),
	}
	e.pool = newConnPool(e.connect)
	if e.ttl == 0 {
		e.ttl = DefaultTTL
	}
	if e.ttl < time.Second {
		return nil, fmt.Errorf("pgcred: TTL %v is too short (at least 1s)", e.ttl)
	}
	if e.prefix == "" {
		e.prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(e.prefix) || len(e.prefix) > maxIdentLen-16 {
		return nil, fmt.Errorf("pgcred: role prefix %q must be lowercase letters, digits and underscores, start with a letter or underscore, and be at most %d characters",
			e.prefix, maxIdentLen-16)
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	if !hostIDRE.MatchString(e.hostID) {
		return nil, fmt.Errorf("pgcred: host id %q must be 8 to 64 lowercase letters and digits (see LoadOrCreateHostID)", e.hostID)
	}
	switch e.leftovers {
	case "":
		e.leftovers = LeftoversReassign
	case LeftoversReassign:
	case LeftoversDrop:
		if e.owner != "" {
			return nil, errors.New("pgcred: a leftovers owner only applies when leftovers are reassigned, not dropped")
		}
	default:
		return nil, fmt.Errorf("pgcred: leftovers %q: want %q or %q", e.leftovers, LeftoversReassign, LeftoversDrop)
	}
	if e.connLimit == 0 {
		e.connLimit = DefaultConnLimit
	}
	if e.retryEvery <= 0 {
		e.retryEvery = DefaultRetryInterval
	}
	if e.sweepEvery <= 0 {
		e.sweepEvery = DefaultSweepInterval
	}
	for _, g := range opts.GroupRoles {
		if g == "" {
			return nil, errors.New("pgcred: empty group role name")
		}
		if !slices.Contains(e.groups, g) {
			e.groups = append(e.groups, g)
		}
	}

	e.allowed = slices.Clone(e.groups)
	for _, g := range opts.AccessRoles {
		if g == "" {
			return nil, errors.New("pgcred: empty access role name")
		}
		if !slices.Contains(e.allowed, g) {
			e.allowed = append(e.allowed, g)
		}
	}

	pc, err := e.pool.get(ctx, "")
	if err != nil {
		e.pool.close()
		return nil, fmt.Errorf("pgcred: admin cannot connect: %w", e.scrub(err))
	}
	// The connection stays in the pool for the first session, unless the
	// checks below fail.
	ok := false
	defer func() {
		e.pool.put(pc)
		if !ok {
			e.pool.close()
		}
	}()
	conn := pc.Conn
	var createrole bool
	err = conn.QueryRow(ctx, `SELECT current_user::text, current_database()::text, r.rolsuper, r.rolcreaterole,
		current_setting('server_version_num')::int
		FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&e.adminUser, &e.adminDB, &e.superuser, &createrole, &e.version)
	if err != nil {
		return nil, fmt.Errorf("pgcred: inspect admin role: %w", e.scrub(err))
	}
	if !e.superuser && !createrole {
		return nil, fmt.Errorf("pgcred: admin role %q lacks CREATEROLE, which creating per-session roles needs (fix: ALTER ROLE %s CREATEROLE)",
			e.adminUser, ident(e.adminUser))
	}

	if len(e.allowed) > 0 {
		rows, err := conn.Query(ctx, `SELECT g, r.oid IS NOT NULL, coalesce(r.rolsuper, false),
			CASE WHEN r.oid IS NULL THEN false ELSE pg_has_role(r.oid, 'MEMBER WITH ADMIN OPTION') END
			FROM unnest($1::text[]) AS g LEFT JOIN pg_roles r ON r.rolname = g`, e.allowed)
		if err != nil {
			return nil, fmt.Errorf("pgcred: inspect group roles: %w", e.scrub(err))
		}
		var missing, super, noAdmin []string
		for rows.Next() {
			var g string
			var exists, isSuper, admin bool
			if err := rows.Scan(&g, &exists, &isSuper, &admin); err != nil {
				rows.Close()
				return nil, fmt.Errorf("pgcred: inspect group roles: %w", e.scrub(err))
			}
			switch {
			case !exists:
				missing = append(missing, g)
			case isSuper:
				super = append(super, g)
			case !admin:
				noAdmin = append(noAdmin, g)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("pgcred: inspect group roles: %w", e.scrub(err))
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("pgcred: group role(s) %s do not exist (create them, e.g. CREATE ROLE %s NOLOGIN, and grant them what agents may do)",
				strings.Join(quoteAll(missing), ", "), ident(missing[0]))
		}
		if len(super) > 0 {
			return nil, fmt.Errorf("pgcred: group role(s) %s are superusers: refusing to hand their membership to agents",
				strings.Join(quoteAll(super), ", "))
		}
		if err := e.checkGroupReach(ctx, conn); err != nil {
			return nil, err
		}
		// Before 16, CREATEROLE alone may grant any non-superuser role; from
		// 16 on, granting a role needs ADMIN OPTION on it.
		if e.version >= 160000 && !e.superuser && len(noAdmin) > 0 {
			return nil, fmt.Errorf("pgcred: admin role %q lacks ADMIN OPTION on group role(s) %s, which PostgreSQL 16+ requires to grant them (fix: GRANT %s TO %s WITH ADMIN OPTION)",
				e.adminUser, strings.Join(quoteAll(noAdmin), ", "), ident(noAdmin[0]), ident(e.adminUser))
		}
	}

	if e.leftovers == LeftoversReassign {
		if err := e.setupOwner(ctx, conn); err != nil {
			return nil, err
		}
	}
	e.log.Debug("pgcred: ephemeral roles ready", "admin", e.adminUser, "database", e.adminDB,
		"superuser", e.superuser, "server_version", e.version, "groups", e.groups, "ttl", e.ttl, "prefix", e.prefix,
		"host_id", e.hostID, "leftovers", e.leftovers, "leftovers_owner", e.owner)
	ok = true
	return e, nil
}

// RoleName is the role Acquire creates for a session ID.
func (e *Ephemeral) RoleName(sessionID string) string { return e.prefix + sessionID }

// Acquire creates a login role for sess: a random password (never sent to
// the server in clear: a SCRAM verifier is), VALID UNTIL now+TTL, membership
// in the group roles, and a comment tagging it as ours. It emits a
// credential.create event.
func (e *Ephemeral) Acquire(ctx context.Context, sess *session.Session, database string) (*Lease, error) {
	return e.AcquireRoles(ctx, sess, database, e.groups)
}

// AcquireRoles is Acquire granting exactly groups (the person's roles from
// the access rules) instead of the configured group roles. Each must be one
// NewEphemeral checked.
func (e *Ephemeral) AcquireRoles(ctx context.Context, sess *session.Session, database string, groups []string) (*Lease, error) {
	if sess == nil {
		return nil, errors.New("pgcred: Acquire without a session")
	}
	role := e.prefix + sess.ID
	expires := time.Now().Add(e.ttl).UTC().Truncate(time.Microsecond)
	cred := &session.Credential{Mode: "ephemeral", Role: role, Groups: groups, Expires: expires}
	fail := func(err error) (*Lease, error) {
		cred.Outcome, cred.Error = "failed", err.Error()
		sess.Emit(session.Event{Kind: session.KindCredentialCreate, Credential: cred})
		e.log.Warn("pgcred: role not created", "session", sess.ID, "role", role, "error", err)
		return nil, err
	}
	if !sessionIDRE.MatchString(sess.ID) || len(role) > maxIdentLen {
		cred.Role = ""
		return fail(fmt.Errorf("pgcred: session id %q cannot name a role (lowercase letters and digits, at most %d with the prefix)",
			sess.ID, maxIdentLen))
	}
	for _, g := range groups {
		if !slices.Contains(e.allowed, g) {
			return fail(fmt.Errorf("pgcred: role %q was not checked at start (configure it in group_roles or access roles)", g))
		}
	}
	e.mu.Lock()
	unsafe := e.unsafe
	e.mu.Unlock()
	if unsafe != nil {
		return fail(unsafe)
	}
	password, err := newPassword()
	if err != nil {
		return fail(fmt.Errorf("pgcred: %w", err))
	}
	verifier, err := scramVerifier(password)
	if err != nil {
		return fail(fmt.Errorf("pgcred: %w", err))
	}

	var b strings.Builder
	b.WriteString("CREATE ROLE " + ident(role) + " WITH LOGIN INHERIT")
	if e.connLimit > 0 {
		b.WriteString(" CONNECTION LIMIT " + strconv.Itoa(e.connLimit))
	}
	b.WriteString(" PASSWORD " + literal(verifier))
	b.WriteString(" VALID UNTIL " + literal(expires.Format("2006-01-02 15:04:05.000000")+"+00"))
	if len(groups) > 0 {
		b.WriteString(" IN ROLE " + strings.Join(quoteAll(groups), ", "))
	}
	// One simple-protocol query: an implicit transaction, so the role never
	// exists without its tag.
	b.WriteString("; COMMENT ON ROLE " + ident(role) + " IS " +
		literal(e.hostTag()+"session="+sess.ID+" person="+cleanText(sess.Person.Name)))

	// A pooled connection that died while idle fails the statement before
	// it runs; withConn then runs it once more on a new connection. If the
	// first attempt did create the role after all (the connection was lost
	// after the commit), the second gets 42710: the role is then ours to
	// drop.
	lostOnce := false
	err = e.withConn(ctx, "", func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, b.String())
		if connLost(conn, err) {
			lostOnce = true
		}
		return err
	})
	if err != nil {
		var de *dialError
		if errors.As(err, &de) {
			return fail(fmt.Errorf("pgcred: admin cannot connect: %w", e.scrub(de.err, password, verifier)))
		}
		err = e.scrub(err, password, verifier)
		if sqlState(err) == "" || (lostOnce && sqlState(err) == "42710") {
			// Lost connection or cancelled: the role may exist. Let the
			// retry loop make sure it does not stay.
			e.schedule(role, &pendingDrop{sess: sess, database: database, groups: groups, expires: expires})
		}
		if sqlState(err) == "42710" {
			return fail(fmt.Errorf("pgcred: role %s already exists (a session id reused, or a leftover of this session): %w", role, err))
		}
		return fail(fmt.Errorf("pgcred: create role %s: %w", role, err))
	}

	l := &Lease{user: role, password: password, expires: expires, mode: "ephemeral",
		eph: e, sess: sess, database: database, groups: groups}
	e.mu.Lock()
	e.active[role] = l
	e.mu.Unlock()
	sess.SetUpstreamRole(role)
	cred.Outcome = "ok"
	sess.Emit(session.Event{Kind: session.KindCredentialCreate, Credential: cred})
	e.log.Info("pgcred: role created", "session", sess.ID, "role", role, "groups", groups,
		"expires", expires, "person", sess.Person.Name)
	return l, nil
}

// release is Lease.Release for ephemeral leases.
func (e *Ephemeral) release(ctx context.Context, l *Lease) error {
	e.mu.Lock()
	delete(e.active, l.user)
	e.mu.Unlock()
	st, left, err := e.drop(ctx, l.user, l.database)
	err = scrub(err, l.password)
	cred := &session.Credential{Mode: "ephemeral", Role: l.user, Groups: l.groups, Expires: l.expires, Leftovers: left}
	switch st {
	case dropped, absent:
		cred.Outcome = "ok"
		e.log.Info("pgcred: role dropped", "session", l.sess.ID, "role", l.user)
		if left != nil {
			e.log.Info("pgcred: objects the role left behind", "session", l.sess.ID, "role", l.user,
				"action", left.Action, "owner", left.Owner, "count", left.Count, "objects", left.Objects)
		}
	case nologin:
		cred.Outcome, cred.Error = "nologin", err.Error()
		e.schedule(l.user, &pendingDrop{sess: l.sess, database: l.database, groups: l.groups, expires: l.expires})
		e.log.Warn("pgcred: role left NOLOGIN, drop will be retried", "session", l.sess.ID, "role", l.user, "error", err)
		err = fmt.Errorf("%w: role %s has no LOGIN and no backends left; drop retried later: %w", ErrDropPending, l.user, err)
	default:
		cred.Outcome, cred.Error = "failed", err.Error()
		e.schedule(l.user, &pendingDrop{sess: l.sess, database: l.database, groups: l.groups, expires: l.expires})
		e.log.Error("pgcred: role not revoked, will retry", "session", l.sess.ID, "role", l.user, "error", err)
		err = fmt.Errorf("%w: role %s could not be revoked (it may still log in until %s): %w",
			ErrDropPending, l.user, l.expires.Format(time.RFC3339), err)
	}
	l.sess.Emit(session.Event{Kind: session.KindCredentialRevoke, Credential: cred})
	return err
}

type dropState int

const (
	failed  dropState = iota // LOGIN could not even be removed
	nologin                  // NOLOGIN set, backends gone (or not), role still there
	dropped
	absent // the role did not exist
)

// drop revokes role: NOLOGIN first so that no new login races in, terminate
// its backends, DROP ROLE; on 2BP01 reassign and drop what it owns in every
// database that records a dependency on it, then DROP ROLE again.
func (e *Ephemeral) drop(ctx context.Context, role, database string) (dropState, *session.Leftovers, error) {
	select {
	case e.drops <- struct{}{}:
		defer func() { <-e.drops }()
	case <-ctx.Done():
		return failed, nil, ctx.Err()
	}
	var st dropState
	left := &leftovers{}
	err := e.withConn(ctx, "", func(conn *pgx.Conn) error {
		var err error
		st, err = e.dropOn(ctx, conn, role, database, left)
		return err
	})
	var de *dialError
	if errors.As(err, &de) {
		return failed, left.record(e), fmt.Errorf("admin cannot connect: %w", e.scrub(de.err))
	}
	return st, left.record(e), err
}

// dropOn is drop on one admin connection. Every step may be repeated.
func (e *Ephemeral) dropOn(ctx context.Context, conn *pgx.Conn, role, database string, left *leftovers) (dropState, error) {
	id := ident(role)
	if _, err := conn.Exec(ctx, "ALTER ROLE "+id+" NOLOGIN"); err != nil {
		if sqlState(err) == "42704" {
			return absent, nil
		}
		return failed, fmt.Errorf("ALTER ROLE %s NOLOGIN: %w", role, e.scrub(err))
	}
	if !e.superuser {
		// A CREATEROLE admin is not a member of the roles it creates (15) or
		// holds them with ADMIN only, without INHERIT (16+). Terminating the
		// role's backends and REASSIGN/DROP OWNED need its privileges.
		grant := "GRANT " + id + " TO CURRENT_USER"
		if e.version >= 160000 {
			grant += " WITH INHERIT TRUE"
		}
		if _, err := conn.Exec(ctx, grant); err != nil {
			e.log.Warn("pgcred: admin could not take membership of the role", "role", role, "error", e.scrub(err))
		}
	}
	if err := e.terminate(ctx, conn, role); err != nil {
		return nologin, err
	}
	_, err := conn.Exec(ctx, "DROP ROLE "+id)
	switch sqlState(err) {
	case "":
		if err != nil {
			return nologin, fmt.Errorf("DROP ROLE %s: %w", role, e.scrub(err))
		}
		return dropped, nil
	case "42704":
		return absent, nil
	case "2BP01": // dependent objects: below
	default:
		return nologin, fmt.Errorf("DROP ROLE %s: %w", role, e.scrub(err))
	}

	dbs := []string{e.adminDB}
	if database != "" && database != e.adminDB {
		dbs = append(dbs, database)
	}
	rows, err := conn.Query(ctx, `SELECT DISTINCT d.datname::text FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
		WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)`, role)
	if err != nil {
		return nologin, fmt.Errorf("list databases with objects of %s: %w", role, e.scrub(err))
	}
	more, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nologin, fmt.Errorf("list databases with objects of %s: %w", role, e.scrub(err))
	}
	for _, d := range more {
		if !slices.Contains(dbs, d) {
			dbs = append(dbs, d)
		}
	}
	var errs []error
	for _, d := range dbs {
		objs, err := e.dropOwned(ctx, conn, d, role)
		left.add(objs)
		if err != nil {
			errs = append(errs, fmt.Errorf("database %s: %w", d, err))
		}
	}
	if _, err := conn.Exec(ctx, "DROP ROLE "+id); err != nil {
		if sqlState(err) == "42704" {
			return dropped, nil
		}
		errs = append(errs, fmt.Errorf("DROP ROLE %s: %w", role, e.scrub(err)))
		return nologin, errors.Join(errs...)
	}
	if len(errs) > 0 {
		e.log.Debug("pgcred: role dropped despite cleanup errors", "role", role, "error", errors.Join(errs...))
	}
	return dropped, nil
}

// dropOwned lists what role owns in database db, then reassigns it to the
// leftovers owner (never the admin) or drops it, per the leftovers mode, and
// drops what privileges the role still holds there. Both act on the current
// database only, plus shared objects. It returns the objects it found.
func (e *Ephemeral) dropOwned(ctx context.Context, adminConn *pgx.Conn, db, role string) ([]string, error) {
	sql := "DROP OWNED BY " + ident(role)
	if e.leftovers == LeftoversReassign {
		// A new owner needs CREATE on each object's schema (and on the
		// database, for a schema), unless the admin is a superuser. The
		// session had those through its role; the owner borrows that role
		// for this one implicit transaction (one simple query), so it never
		// holds the session's rights afterwards.
		sql = "REASSIGN OWNED BY " + ident(role) + " TO " + ident(e.owner) + "; " + sql
		e.mu.Lock()
		borrows := e.ownerBorrows
		e.mu.Unlock()
		if borrows {
			sql = "GRANT " + ident(role) + " TO " + ident(e.owner) + "; " + sql +
				"; REVOKE " + ident(role) + " FROM " + ident(e.owner)
		}
	}
	var objs []string
	run := func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, ownedQuery, role)
		if err == nil {
			objs, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			return fmt.Errorf("list objects owned by %s: %w", role, e.scrub(err))
		}
		if _, err := conn.Exec(ctx, sql); err != nil {
			if e.leftovers == LeftoversReassign {
				return fmt.Errorf("REASSIGN OWNED BY %s TO %s, DROP OWNED: %w", role, e.owner, e.scrub(err))
			}
			return fmt.Errorf("DROP OWNED BY %s: %w", role, e.scrub(err))
		}
		return nil
	}
	if db == e.adminDB {
		return objs, run(adminConn)
	}
	// Connections to other databases are pooled too (a few, closed when
	// idle for a minute): a role that keeps owning objects there is
	// usually one of many.
	err := e.withConn(ctx, db, run)
	var de *dialError
	if errors.As(err, &de) {
		return objs, fmt.Errorf("admin cannot connect: %w", e.scrub(de.err))
	}
	return objs, err
}

// terminate kills every backend logged in as role and waits until they are
// gone.
func (e *Ephemeral) terminate(ctx context.Context, conn *pgx.Conn, role string) error {
	deadline := time.Now().Add(terminateWait)
	for {
		rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`, role)
		if err != nil {
			return fmt.Errorf("list backends of %s: %w", role, e.scrub(err))
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("list backends of %s: %w", role, e.scrub(err))
		}
		if len(pids) == 0 {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%d backend(s) of %s still alive after %v", len(pids), role, terminateWait)
		}
		if e.version >= 140000 {
			// From 14 on, pg_terminate_backend can wait for the backend to
			// exit: no polling, and the drop does not wait longer than it
			// must (usually the backend of a client that just left, still
			// exiting).
			ms := max(left.Milliseconds(), 1)
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid, $2) FROM unnest($1::int4[]) AS pid`, pids, ms); err != nil {
				return fmt.Errorf("terminate backends of %s: %w", role, e.scrub(err))
			}
			continue
		}
		for _, pid := range pids {
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
				return fmt.Errorf("terminate backend %d of %s: %w", pid, role, e.scrub(err))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *Ephemeral) schedule(role string, p *pendingDrop) {
	p.since = time.Now()
	e.mu.Lock()
	if old, ok := e.pending[role]; ok {
		if p.sess == nil {
			p.sess = old.sess
		}
		p.since, p.attempts = old.since, old.attempts
	}
	e.pending[role] = p
	e.mu.Unlock()
}

// hostTag starts the comment of every role this Ephemeral creates.
func (e *Ephemeral) hostTag() string { return CommentTag + "host=" + e.hostID + " " }

// listOurs returns the roles with our prefix and our comment tag that a
// sweep may drop: with expiredOnly, those whose VALID UNTIL has passed
// (another host's only otherHostGrace later); else also every role of this
// host. Another host's live roles are never listed: many workstations share
// one admin and prefix.
func (e *Ephemeral) listOurs(ctx context.Context, expiredOnly bool) ([]string, error) {
	var roles []string
	err := e.withConn(ctx, "", func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT r.rolname::text FROM pg_roles r
			CROSS JOIN LATERAL (SELECT coalesce(shobj_description(r.oid, 'pg_authid'), '') AS c) d
			CROSS JOIN LATERAL (SELECT left(d.c, length($3)) = $3 AS mine) m
			WHERE left(r.rolname, length($1)) = $1 AND NOT r.rolsuper
			  AND left(d.c, length($2)) = $2
			  AND ((m.mine AND NOT $4::bool)
			    OR (r.rolvaliduntil IS NOT NULL AND r.rolvaliduntil <
			        now() - CASE WHEN m.mine THEN interval '0' ELSE make_interval(secs => $5) END))
			ORDER BY 1`, e.prefix, CommentTag, e.hostTag(), expiredOnly, otherHostGrace.Seconds())
		if err == nil {
			roles, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		return err
	})
	var de *dialError
	if errors.As(err, &de) {
		return nil, fmt.Errorf("admin cannot connect: %w", e.scrub(de.err))
	}
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", e.scrub(err))
	}
	return roles, nil
}

// Sweep drops every role of ours (name with Prefix, comment tagged
// airlock-managed) that this host made and no live lease of this Ephemeral
// holds, and every role of ours (from any host) whose VALID UNTIL has
// passed: run it at daemon start to clear leftovers of a crash. Other
// hosts' live roles and roles not tagged as ours are never touched.
// It returns how many roles it dropped; roles it could not drop are left
// NOLOGIN and retried by Run.
func (e *Ephemeral) Sweep(ctx context.Context) (int, error) {
	return e.sweep(ctx, false)
}

func (e *Ephemeral) sweep(ctx context.Context, expiredOnly bool) (int, error) {
	roles, err := e.listOurs(ctx, expiredOnly)
	if err != nil {
		return 0, fmt.Errorf("pgcred: sweep: %w", err)
	}
	n := 0
	var errs []error
	for _, role := range roles {
		e.mu.Lock()
		_, live := e.active[role]
		e.mu.Unlock()
		if live {
			continue
		}
		st, left, err := e.drop(ctx, role, "")
		if left != nil {
			e.log.Info("pgcred: objects a swept role left behind", "role", role,
				"action", left.Action, "owner", left.Owner, "count", left.Count, "objects", left.Objects)
		}
		switch st {
		case dropped:
			n++
			e.log.Info("pgcred: swept leftover role", "role", role, "expired_only", expiredOnly)
			e.recordSweep(role, "ok", nil, left)
		case absent:
		default:
			e.schedule(role, &pendingDrop{})
			errs = append(errs, fmt.Errorf("role %s: %w", role, err))
			outcome := "failed"
			if st == nologin {
				outcome = "nologin"
			}
			e.recordSweep(role, outcome, err, left)
		}
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("pgcred: sweep: %w: %w", ErrDropPending, errors.Join(errs...))
	}
	return n, nil
}

// recordSweep records what a sweep did with a role found outside any
// session: the daemon's own record, with no session.
func (e *Ephemeral) recordSweep(role, outcome string, err error, left *session.Leftovers) {
	if e.events == nil {
		return
	}
	c := &session.Credential{Mode: "ephemeral", Role: role, Outcome: outcome, Leftovers: left}
	if err != nil {
		c.Error = err.Error()
	}
	e.events.Record(session.Event{Time: time.Now(), Kind: session.KindCredentialSweep, Credential: c})
}

// retryPending tries every pending drop once and returns how many are left.
func (e *Ephemeral) retryPending(ctx context.Context) int {
	e.mu.Lock()
	roles := make([]string, 0, len(e.pending))
	for r := range e.pending {
		roles = append(roles, r)
	}
	e.mu.Unlock()
	slices.Sort(roles)
	for _, role := range roles {
		if ctx.Err() != nil {
			break
		}
		e.mu.Lock()
		p := e.pending[role]
		e.mu.Unlock()
		if p == nil {
			continue
		}
		st, left, err := e.drop(ctx, role, p.database)
		e.mu.Lock()
		if st == dropped || st == absent {
			delete(e.pending, role)
		} else {
			p.attempts++
		}
		e.mu.Unlock()
		switch st {
		case dropped:
			e.log.Info("pgcred: pending role dropped", "role", role, "after", time.Since(p.since).Round(time.Second))
			if p.sess != nil {
				p.sess.Emit(session.Event{Kind: session.KindCredentialRevoke, Credential: &session.Credential{
					Mode: "ephemeral", Role: role, Groups: p.groups, Expires: p.expires, Outcome: "ok", Leftovers: left}})
			} else {
				e.recordSweep(role, "ok", nil, left)
			}
		case absent:
		default:
			e.log.Warn("pgcred: pending role still not dropped", "role", role, "attempts", p.attempts, "error", err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending)
}

// Pending lists the roles whose drop is waiting for a retry.
func (e *Ephemeral) Pending() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.pending))
	for r := range e.pending {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// Run retries pending drops every RetryInterval and, every SweepInterval,
// checks the group roles and the leftovers owner again (a grant made since
// start makes Acquire refuse until it is undone) and drops expired roles of
// ours that no live lease holds. It returns when ctx is
// done or Close is called.
func (e *Ephemeral) Run(ctx context.Context) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	defer e.wg.Done()

	retry := time.NewTicker(e.retryEvery)
	defer retry.Stop()
	sweep := time.NewTicker(e.sweepEvery)
	defer sweep.Stop()
	reap := time.NewTicker(otherIdleTTL / 2)
	defer reap.Stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-e.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			e.retryPending(ctx)
		case <-reap.C:
			e.pool.reap()
		case <-sweep.C:
			e.recheck(ctx)
			if n, err := e.sweep(ctx, true); err != nil && ctx.Err() == nil {
				e.log.Warn("pgcred: sweep of expired roles", "dropped", n, "error", err)
			}
		}
	}
}

// Close stops Run, waits for it to return and closes the pooled admin
// connections. Leases stay usable (a Release after Close opens a connection
// of its own); roles not yet dropped are left for the next start's Sweep.
func (e *Ephemeral) Close() {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.done)
	}
	e.mu.Unlock()
	e.wg.Wait()
	e.pool.close()
}

// dialError is a failure to open an admin connection, as opposed to one of
// a statement.
type dialError struct{ err error }

func (d *dialError) Error() string { return d.err.Error() }
func (d *dialError) Unwrap() error { return d.err }

// withConn runs f on a pooled admin connection to db ("" for the admin
// database). When f fails because the connection was lost and that
// connection had served an earlier caller (it may have died while idle: a
// server restart, pg_terminate_backend, idle_session_timeout, a network
// drop), the idle connections to db are discarded and f runs once more on a
// new connection. f must therefore be safe to repeat after a lost
// connection. A failure to connect is returned as a *dialError.
func (e *Ephemeral) withConn(ctx context.Context, db string, f func(*pgx.Conn) error) error {
	for attempt := 0; ; attempt++ {
		pc, err := e.pool.get(ctx, db)
		if err != nil {
			return &dialError{err}
		}
		err = f(pc.Conn)
		lost := connLost(pc.Conn, err)
		if lost {
			e.pool.discard(pc)
		} else {
			e.pool.put(pc)
		}
		if !lost || !pc.reused || attempt > 0 || ctx.Err() != nil {
			return err
		}
		e.log.Debug("pgcred: pooled admin connection lost, retrying on a new one", "database", db, "error", e.scrub(err))
		e.pool.flush(db)
	}
}

// connect opens an admin connection, to database db when not empty.
func (e *Ephemeral) connect(ctx context.Context, db string) (conn *pgx.Conn, err error) {
	cfg := e.admin.Copy()
	if db != "" {
		cfg.Database = db
	}
	// The admin works in databases where sessions may create functions and
	// operators. An unqualified name in the admin's own queries would pick
	// a better-matching one from public (public.left(name, integer) beats
	// pg_catalog.left(text, integer)) and run the agent's code with the
	// admin's rights. Only pg_catalog is searched; a startup parameter
	// overrides any role or database setting.
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	defer func() {
		if r := recover(); r != nil { // pgx panics on a config not made by ParseConfig
			conn, err = nil, fmt.Errorf("pgcred: bad admin config: %v", r)
		}
	}()
	return pgx.ConnectConfig(ctx, cfg)
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// scrub removes the admin password and extra secrets from err.
func (e *Ephemeral) scrub(err error, secrets ...string) error {
	return scrub(err, append(secrets, e.admin.Password)...)
}

// redactedError replaces an error whose text carried a secret. It keeps the
// SQLSTATE.
type redactedError struct{ msg, code string }

func (r *redactedError) Error() string    { return r.msg }
func (r *redactedError) SQLState() string { return r.code }

// scrub returns err unchanged when no secret occurs in it (including every
// field of a *pgconn.PgError), or else a redacted copy that no longer wraps
// the original.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	has := func(s string) bool {
		for _, sec := range secrets {
			if sec != "" && strings.Contains(s, sec) {
				return true
			}
		}
		return false
	}
	msg := err.Error()
	dirty := has(msg)
	code := ""
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		code = pe.Code
		for _, f := range []string{pe.Message, pe.Detail, pe.Hint, pe.Where, pe.InternalQuery, pe.SchemaName,
			pe.TableName, pe.ColumnName, pe.DataTypeName, pe.ConstraintName, pe.Routine} {
			dirty = dirty || has(f)
		}
	}
	if !dirty {
		return err
	}
	for _, sec := range secrets {
		if sec != "" {
			msg = strings.ReplaceAll(msg, sec, redacted)
		}
	}
	return &redactedError{msg: msg, code: code}
}

func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = ident(s)
	}
	return out
}

// literal quotes s as an SQL escape-string literal (E'...'), whose meaning
// does not depend on standard_conforming_strings. NUL bytes are dropped.
func literal(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "E'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// cleanText makes s fit for a one-line comment.
func cleanText(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
	if r := []rune(s); len(r) > 100 {
		s = string(r[:100])
	}
	return s
}
