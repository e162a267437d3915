package pgcred

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// forbiddenPredefined are the predefined roles a role handed to an agent must
// not reach, directly or through other roles:
//   - pg_read_server_files, pg_write_server_files, pg_execute_server_program:
//     files and programs on the database server's host (COPY ... PROGRAM,
//     pg_read_file), a way out of the database altogether;
//   - pg_signal_backend: cancel or terminate any non-superuser backend, so
//     other people's sessions and the applications' own connections;
//   - pg_create_subscription (16+): subscriptions that connect from the
//     server to any host.
var forbiddenPredefined = []string{
	"pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
	"pg_signal_backend", "pg_create_subscription",
}

// roleReach is one role reached from a checked role through membership, with
// the attributes that make it unfit for agents.
type roleReach struct {
	from  string   // the checked role
	path  []string // from the checked role to the reached one, both included
	flags []string // SUPERUSER, CREATEROLE, ... or the predefined role's name
}

func (r roleReach) String() string {
	if len(r.path) == 1 {
		return fmt.Sprintf("%s has %s", ident(r.from), strings.Join(r.flags, ", "))
	}
	return fmt.Sprintf("%s reaches %s (%s) through %s", ident(r.from), ident(r.path[len(r.path)-1]),
		strings.Join(r.flags, ", "), strings.Join(quoteAll(r.path), " → "))
}

// reachQuery walks pg_auth_members upwards from each role in $1: every role
// whose privileges it can use (inherited or by SET ROLE) is reached. Each
// reached role comes with the path to it. PostgreSQL refuses membership
// loops; the path check is there all the same so that a damaged catalog
// cannot make the walk endless.
const reachQuery = `WITH RECURSIVE reach(start, oid, path) AS (
	SELECT r.rolname::text, r.oid, ARRAY[r.rolname::text] FROM pg_roles r WHERE r.rolname = ANY($1::text[])
	UNION ALL
	SELECT reach.start, m.roleid, reach.path || g.rolname::text
	FROM reach JOIN pg_auth_members m ON m.member = reach.oid JOIN pg_roles g ON g.oid = m.roleid
	WHERE NOT g.rolname = ANY(reach.path) AND cardinality(reach.path) < 64
)
SELECT reach.start, reach.path, r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication
FROM reach JOIN pg_roles r ON r.oid = reach.oid
ORDER BY reach.start, cardinality(reach.path), reach.path`

// reachable returns, for each role in roles, every role it reaches
// (itself included) and why each is dangerous (empty flags: harmless).
func reachable(ctx context.Context, conn *pgx.Conn, roles []string) ([]roleReach, error) {
	rows, err := conn.Query(ctx, reachQuery, roles)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []roleReach
	for rows.Next() {
		var rr roleReach
		var name string
		var super, createrole, createdb, bypassrls, replication bool
		if err := rows.Scan(&rr.from, &rr.path, &name, &super, &createrole, &createdb, &bypassrls, &replication); err != nil {
			return nil, err
		}
		for _, f := range []struct {
			on   bool
			name string
		}{{super, "SUPERUSER"}, {createrole, "CREATEROLE"}, {createdb, "CREATEDB"}, {bypassrls, "BYPASSRLS"}, {replication, "REPLICATION"}} {
			if f.on {
				rr.flags = append(rr.flags, f.name)
			}
		}
		if slices.Contains(forbiddenPredefined, name) {
			rr.flags = append(rr.flags, "predefined role "+name)
		}
		out = append(out, rr)
	}
	return out, rows.Err()
}

// dangerous keeps the reaches that carry a forbidden attribute or role.
func dangerous(rs []roleReach) []roleReach {
	var out []roleReach
	for _, r := range rs {
		if len(r.flags) > 0 {
			out = append(out, r)
		}
	}
	return out
}
