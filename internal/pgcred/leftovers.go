package pgcred

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/session"
)

// ownedQuery lists what role $1 owns in the current database and among
// shared objects (databases, tablespaces), one description per object.
const ownedQuery = `SELECT CASE WHEN s.dbid = 0 THEN '' ELSE current_database()::text || ': ' END
	|| pg_describe_object(s.classid, s.objid, s.objsubid)
	FROM pg_shdepend s
	WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'
	  AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
	  AND s.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
	ORDER BY 1`

// leftovers gathers, over the databases a drop visits, the objects the role
// owned.
type leftovers struct{ objects []string }

func (l *leftovers) add(objs []string) {
	for _, o := range objs {
		if !slices.Contains(l.objects, o) {
			l.objects = append(l.objects, o)
		}
	}
}

// record is what a credential.revoke event says about them; nil when the
// role owned nothing.
func (l *leftovers) record(e *Ephemeral) *session.Leftovers {
	if len(l.objects) == 0 {
		return nil
	}
	r := &session.Leftovers{Count: len(l.objects), Objects: slices.Clone(l.objects)}
	if len(r.Objects) > maxLeftoversListed {
		r.Objects = r.Objects[:maxLeftoversListed]
	}
	for i, o := range r.Objects {
		r.Objects[i] = cleanText(o)
	}
	if e.leftovers == LeftoversDrop {
		r.Action = "dropped"
	} else {
		r.Action, r.Owner = "reassigned", e.owner
	}
	return r
}

// setupOwner settles who receives leftovers in reassign mode. The owner runs
// every SECURITY DEFINER function a session left behind and may alter every
// object sessions left: it must have no more rights than the agents' group
// roles, and certainly not the admin's.
func (e *Ephemeral) setupOwner(ctx context.Context, conn *pgx.Conn) error {
	managed := e.owner == ""
	if managed {
		e.owner = e.prefix + "orphans"
	}
	if e.owner == e.adminUser {
		return fmt.Errorf("pgcred: leftovers owner %q is the admin role: a SECURITY DEFINER function a session left behind would run with the admin's rights (leave leftovers_owner unset for a role Airlock manages)", e.owner)
	}
	if slices.Contains(e.groups, e.owner) && !managed {
		// A group role owning leftovers gives later sessions nothing they
		// did not have: allowed, the reach check below passes it.
		e.log.Debug("pgcred: leftovers go to a group role", "owner", e.owner)
	}
	if managed {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, e.owner).Scan(&exists); err != nil {
			return fmt.Errorf("pgcred: inspect leftovers owner role: %w", e.scrub(err))
		}
		if !exists {
			// INHERIT: the role is a member of nothing, except of the role
			// being dropped for the length of one REASSIGN (see dropOwned).
			_, err := conn.Exec(ctx, "CREATE ROLE "+ident(e.owner)+" NOLOGIN INHERIT; COMMENT ON ROLE "+
				ident(e.owner)+" IS "+literal(orphansComment))
			// Another daemon sharing this server may have just created it.
			if err != nil && sqlState(err) != "42710" && sqlState(err) != "23505" {
				return fmt.Errorf("pgcred: create leftovers owner role %s: %w", e.owner, e.scrub(err))
			}
			if err == nil {
				e.log.Info("pgcred: created the role that owns what sessions leave behind", "role", e.owner)
			}
		}
	}

	var exists, canLogin, usable bool
	var comment string
	err := conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(rolcanlogin), false),
		coalesce(bool_or(pg_has_role(oid, 'USAGE')), false), coalesce(max(shobj_description(oid, 'pg_authid')), '')
		FROM pg_roles WHERE rolname = $1`, e.owner).Scan(&exists, &canLogin, &usable, &comment)
	if err != nil {
		return fmt.Errorf("pgcred: inspect leftovers owner role: %w", e.scrub(err))
	}
	if !exists {
		return fmt.Errorf("pgcred: leftovers owner role %q does not exist", e.owner)
	}
	if managed && comment != orphansComment {
		return fmt.Errorf("pgcred: role %q exists but Airlock did not make it to own leftovers (comment %q); rename it, or set credential.leftovers_owner to a NOLOGIN role of your choice",
			e.owner, cleanText(comment))
	}
	if canLogin {
		return fmt.Errorf("pgcred: leftovers owner role %q can log in: it must not (fix: ALTER ROLE %s NOLOGIN)", e.owner, ident(e.owner))
	}
	e.managedOwner = managed
	if e.ownerBorrows, err = e.checkOwner(ctx, conn); err != nil {
		return err
	}

	// REASSIGN OWNED needs the privileges of the receiving role.
	if !usable && managed {
		grant := "GRANT " + ident(e.owner) + " TO CURRENT_USER"
		if e.version >= 160000 {
			grant += " WITH INHERIT TRUE"
		}
		if _, err := conn.Exec(ctx, grant); err != nil {
			return fmt.Errorf("pgcred: admin role %q could not take membership of leftovers owner %q, which REASSIGN OWNED needs: %w",
				e.adminUser, e.owner, e.scrub(err))
		}
		usable = true
	}
	if !usable {
		return fmt.Errorf("pgcred: admin role %q lacks the privileges of leftovers owner %q, which REASSIGN OWNED needs (fix: GRANT %s TO %s)",
			e.adminUser, e.owner, ident(e.owner), ident(e.adminUser))
	}
	return nil
}

// checkGroupReach refuses group roles that are, or reach through
// membership at any depth, a role with a forbidden attribute or a forbidden
// predefined role: a member can use everything of every role it reaches
// (inherited, or by SET ROLE).
func (e *Ephemeral) checkGroupReach(ctx context.Context, conn *pgx.Conn) error {
	// Every role a session can be granted: the group roles and the roles
	// access rules map groups to.
	if len(e.allowed) == 0 {
		return nil
	}
	reach, err := reachable(ctx, conn, e.allowed)
	if err != nil {
		return fmt.Errorf("pgcred: inspect what the group roles reach: %w", e.scrub(err))
	}
	if bad := dangerous(reach); len(bad) > 0 {
		msgs := make([]string, len(bad))
		for i, b := range bad {
			msgs[i] = b.String()
		}
		return fmt.Errorf("pgcred: refusing to hand group role membership to agents: %s (grant agents' group roles only table, schema and function privileges, and revoke those attributes or memberships)",
			strings.Join(msgs, "; "))
	}
	return nil
}

// checkOwner checks what the leftovers owner reaches: nothing dangerous;
// for the managed owner nothing at all, for a configured one nothing the
// group roles do not reach. It reports whether the owner must borrow the
// dropped role for a REASSIGN.
func (e *Ephemeral) checkOwner(ctx context.Context, conn *pgx.Conn) (borrows bool, err error) {
	var canLogin bool
	if err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(rolcanlogin), false) FROM pg_roles WHERE rolname = $1`, e.owner).Scan(&canLogin); err != nil {
		return false, fmt.Errorf("pgcred: inspect leftovers owner role: %w", e.scrub(err))
	}
	if canLogin {
		return false, fmt.Errorf("pgcred: leftovers owner role %q can log in: it must not (fix: ALTER ROLE %s NOLOGIN)", e.owner, ident(e.owner))
	}
	reach, err := reachable(ctx, conn, []string{e.owner})
	if err != nil {
		return false, fmt.Errorf("pgcred: inspect what the leftovers owner reaches: %w", e.scrub(err))
	}
	if len(reach) == 0 {
		return false, fmt.Errorf("pgcred: leftovers owner role %q does not exist", e.owner)
	}
	if bad := dangerous(reach); len(bad) > 0 {
		return false, fmt.Errorf("pgcred: refusing leftovers owner: %s", bad[0])
	}
	if e.managedOwner {
		if len(reach) > 1 {
			return false, fmt.Errorf("pgcred: leftovers owner %s: must be a member of no role (fix: REVOKE %s FROM %s)",
				reach[1], ident(reach[1].path[1]), ident(e.owner))
		}
		return true, nil
	}
	groupReach, err := reachable(ctx, conn, e.allowed)
	if err != nil {
		return false, fmt.Errorf("pgcred: inspect what the group roles reach: %w", e.scrub(err))
	}
	reached := func(name string) bool {
		return slices.ContainsFunc(groupReach, func(g roleReach) bool { return g.path[len(g.path)-1] == name })
	}
	for _, r := range reach[1:] {
		if !reached(r.path[len(r.path)-1]) {
			return false, fmt.Errorf("pgcred: leftovers owner %s, which the group roles %s do not: it would give later sessions more than their groups",
				r, strings.Join(quoteAll(e.allowed), ", "))
		}
	}
	// An owner the groups reach already has what the dropped role had
	// through them; any other borrows it for the REASSIGN.
	return !reached(e.owner), nil
}

// recheck runs the start-up checks of the group roles and the leftovers
// owner again: a grant made since start (superuser to a group, a membership
// to the owner) would otherwise reach agents. While a check fails, Acquire
// refuses new sessions with its error.
func (e *Ephemeral) recheck(ctx context.Context) {
	var checkErr error
	err := e.withConn(ctx, "", func(conn *pgx.Conn) error {
		checkErr = e.checkGroupReach(ctx, conn)
		if checkErr == nil && e.leftovers == LeftoversReassign {
			var borrows bool
			if borrows, checkErr = e.checkOwner(ctx, conn); checkErr == nil {
				e.mu.Lock()
				e.ownerBorrows = borrows
				e.mu.Unlock()
			}
		}
		if connLost(conn, checkErr) {
			return checkErr // withConn retries once on a new connection
		}
		return nil
	})
	if err != nil || ctx.Err() != nil {
		// Not reaching the server says nothing about the roles: Acquire
		// fails on its own while the server stays away.
		e.log.Warn("pgcred: could not re-check the roles", "error", err)
		return
	}
	e.mu.Lock()
	was := e.unsafe
	e.unsafe = checkErr
	e.mu.Unlock()
	switch {
	case checkErr != nil:
		e.log.Error("pgcred: refusing new sessions until the roles are fixed", "error", checkErr)
	case was != nil:
		e.log.Info("pgcred: roles fixed; sessions accepted again")
	}
}

// RevokeLogin takes LOGIN away from the lease's role once the proxy holds
// its one upstream session: a backend keeps running when its role loses
// LOGIN (parallel workers and cancel requests too), but no new login
// succeeds. A password the session gives its own role (any role may, with
// ALTER ROLE CURRENT_USER PASSWORD) then opens nothing outside Airlock, now
// or after the session. Call it after the upstream login and before the
// client may send anything; on error, end the session. For a static
// credential it does nothing.
func (l *Lease) RevokeLogin(ctx context.Context) error {
	if l == nil || l.eph == nil {
		return nil
	}
	return l.eph.revokeLogin(ctx, l)
}

func (e *Ephemeral) revokeLogin(ctx context.Context, l *Lease) error {
	err := e.withConn(ctx, "", func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "ALTER ROLE "+ident(l.user)+" NOLOGIN")
		return err
	})
	var de *dialError
	if errors.As(err, &de) {
		err = fmt.Errorf("admin cannot connect: %w", de.err)
	}
	if err != nil {
		err = scrub(e.scrub(err), l.password)
		e.log.Error("pgcred: could not revoke LOGIN after the proxy's login", "session", l.sess.ID, "role", l.user, "error", err)
		return fmt.Errorf("pgcred: revoke LOGIN of %s after the proxy's login: %w", l.user, err)
	}
	e.log.Debug("pgcred: role holds its one session; LOGIN revoked", "session", l.sess.ID, "role", l.user)
	return nil
}
