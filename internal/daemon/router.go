package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/policy"
	"github.com/airlockhq/airlock/internal/sqlclass"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/access"
	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/frontdoor"
	"github.com/airlockhq/airlock/internal/localtls"
	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgcred"
	"github.com/airlockhq/airlock/internal/pgrefuse"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/relay"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/targets"
	"github.com/airlockhq/airlock/internal/upstream"
)

// router sends each destination to the handler of its connection. Targets
// that no connection claims are relayed as plain TCP.
type router struct {
	set      *targets.Set
	hosts    map[string]string // hostname of each hostname target
	byTarget map[string]frontdoor.Route
	fallback frontdoor.Handler
	closers  []func()
	stateDir string
	// sampleRows, sampleBytes: audit.sample_rows and sample_bytes.
	sampleRows, sampleBytes int
	masking                 *mask.RuleSet // nil: masking off
	// sealer encrypts the compliance copy of masked originals; nil: none.
	sealer  *compliance.Sealer
	sealMax int
	// policies is the SQL policy every PostgreSQL session reads at each
	// statement; reloads swap it without touching sessions.
	policies *policy.Store
	// guards enforce the policy, one per PostgreSQL connection; approvals
	// plug in with setApprover.
	guards []*guard.Guard
	// classifier is the SQL classifier the guards and the masking stages
	// share (one cache of classifications).
	classifier *sqlclass.Classifier
	// events records what happens outside any session (roles swept at
	// start); nil without an audit record.
	events session.Sink
}

// setApprover hands every connection's holds to a (nil: holds are refused).
func (r *router) setApprover(a guard.Approver) {
	for _, g := range r.guards {
		g.SetApprover(a)
	}
}

// lookupFunc resolves upstream hostnames with the daemon's resolver, so the
// names and hosts file that define targets also define where upstreams are.
type lookupFunc func(ctx context.Context, host string) ([]string, error)

func newRouter(ctx context.Context, cfg *config.Config, set *targets.Set, dialer upstream.Dialer, lookup lookupFunc, log *slog.Logger, d *Daemon) (*router, error) {
	r := &router{set: set, hosts: map[string]string{}, byTarget: map[string]frontdoor.Route{}, fallback: relay.TCP{Dialer: dialer}, stateDir: cfg.StateDir}
	r.sampleRows, r.sampleBytes = benchSamples(cfg.Audit.Samples())
	if d != nil && d.audit != nil {
		r.events = d.audit
	}
	for _, t := range cfg.Targets {
		if t.Host != "" {
			r.hosts[t.Name] = t.Host
		}
	}
	if cfg.Identity != nil {
		// Targets no connection claims still need a person behind them.
		r.fallback = gated{h: r.fallback, rules: access.Rules{Connection: "(plain TCP)"}}
	}
	var err error
	if r.masking, err = loadMasking(cfg); err != nil {
		return nil, err
	}
	if r.sealer, r.sealMax, err = loadCompliance(cfg); err != nil {
		return nil, err
	}
	if r.policies, err = policy.NewStore(cfg.PolicyFile); err != nil {
		return nil, fmt.Errorf("SQL policy: %w", err)
	}
	if cfg.PolicyFile != "" {
		stop := startLoop(ctx, func(ctx context.Context) { watchPolicy(ctx, r.policies, cfg.PolicyFile, log) })
		r.closers = append(r.closers, stop)
	}
	classifier := sqlclass.New(sqlclass.Options{})
	r.classifier = classifier
	var clientTLS *tls.Config
	for _, conn := range cfg.Connections {
		var h frontdoor.Handler
		var refuser frontdoor.Refuser
		switch conn.Protocol {
		case "tcp":
			h = r.fallback
			if rules := accessRules(cfg, conn); rules.Enforce {
				h = gated{h: h, rules: rules}
			}
		case "postgres":
			if clientTLS == nil {
				var err error
				clientTLS, err = localtls.LoadOrCreate(cfg.StateDir)
				if err != nil {
					return nil, fmt.Errorf("client-leg TLS certificate: %w", err)
				}
			}
			var acc pgwire.Access = accessRules(cfg, conn)
			if conn.RequireGrant && d.approvals != nil {
				acc = grantAccess{rules: accessRules(cfg, conn), broker: d.approvals}
			}
			g := &guard.Guard{Connection: conn.Name, Policies: r.policies, Classifier: classifier, Ctx: ctx}
			r.guards = append(r.guards, g)
			guardStages := g.Stages
			if benchOff("guard") {
				guardStages = nil
			}
			p, err := r.postgres(ctx, conn, accessRules(cfg, conn), acc, pgwire.ChainStages(guardStages, d.pgStages()), clientTLS, dialer, lookup, log, cfg.Proxy.Driver)
			if err != nil {
				r.close()
				return nil, fmt.Errorf("connection %s: %w", conn.Name, err)
			}
			h = p
			refuser = pgRefuser{tls: clientTLS}
		}
		h = d.wrapGrant(conn, h)
		for _, t := range conn.Targets {
			rt := frontdoor.Route{Target: t, Connection: conn.Name, Protocol: conn.Protocol, Handler: h, Refuser: refuser}
			if conn.Protocol == "postgres" {
				rt.Exempt = func(c net.Conn) bool { return pgrefuse.IsCancelRequest(c, 2*time.Second) }
				rt.Redirectable = true // pgwire reads with read(2), never splice
			}
			r.byTarget[t] = rt
		}
	}
	return r, nil
}

func (r *router) postgres(ctx context.Context, conn config.Connection, rules access.Rules, acc pgwire.Access, stages func(*session.Session) pgwire.Stages, clientTLS *tls.Config, dialer upstream.Dialer, lookup lookupFunc, log *slog.Logger, driver string) (*pgwire.Proxy, error) {
	pg := conn.Postgres
	var creds pgwire.Credentials
	var catalog *pgx.ConnConfig
	switch pg.Credential.Mode {
	case "static":
		pw, err := pgcred.ReadSecretFile(pg.Credential.PasswordFile)
		if err != nil {
			return nil, err
		}
		creds = leases[*pgcred.Lease]{pgcred.NewStatic(pg.Credential.User, pw)}
		if catalog, err = catalogConfig(pg, pg.Credential.User, pw, dialer, lookup); err != nil {
			return nil, err
		}
	case "ephemeral":
		pw, err := pgcred.ReadSecretFile(pg.Credential.AdminPasswordFile)
		if err != nil {
			return nil, err
		}
		admin, err := adminConfig(pg, pw, dialer, lookup)
		if err != nil {
			return nil, err
		}
		if catalog, err = catalogConfig(pg, pg.Credential.AdminUser, pw, dialer, lookup); err != nil {
			return nil, err
		}
		// The host id scopes the start-up sweep to the roles this machine
		// made: other workstations sharing the admin keep their live roles.
		hostID, err := pgcred.LoadOrCreateHostID(r.stateDir, "")
		if err != nil {
			return nil, err
		}
		eph, err := pgcred.NewEphemeral(ctx, pgcred.EphemeralOptions{
			Admin:       admin,
			GroupRoles:  pg.Credential.GroupRoles,
			AccessRoles: rules.AllRoles(),
			TTL:         pg.Credential.TTL.D(),
			Prefix:      pg.Credential.RolePrefix,
			Logger:      log.With("connection", conn.Name),
			HostID:      hostID,
			Leftovers:   pg.Credential.Leftovers,
			Owner:       pg.Credential.LeftoversOwner,
			Events:      r.events,
		})
		if err != nil {
			return nil, err
		}
		// Roles left by a daemon that died are swept before any new session.
		if n, err := eph.Sweep(ctx); err != nil {
			log.Warn("sweep leftover ephemeral roles", "connection", conn.Name, "err", err)
		} else if n > 0 {
			log.Info("swept leftover ephemeral roles", "connection", conn.Name, "count", n)
		}
		stop := startLoop(ctx, eph.Run)
		r.closers = append(r.closers, func() { stop(); eph.Close() })
		creds = leases[*pgcred.Lease]{eph}
	}
	return pgwire.New(pgwire.Options{
		Name: conn.Name,
		Upstream: pgwire.Upstream{
			Host: pg.Upstream.Host, Port: int(pg.Upstream.Port),
			TLSMode: pg.Upstream.TLS.Mode, CAFile: pg.Upstream.TLS.CAFile, ServerName: pg.Upstream.TLS.ServerName,
		},
		Databases:   pg.Databases,
		Credentials: creds,
		Access:      acc,
		// Masking last: it answers each Bind with Bind + Describe, which a
		// later stage would not expect.
		Stages:    pgwire.ChainStages(stages, r.maskingStages(catalog, log.With("connection", conn.Name))),
		ClientTLS: clientTLS,
		Dial:      dialer.DialContext,
		Lookup:    lookup,
		Logger:    log.With("connection", conn.Name),
		Driver:    driver,
		// Result samples for the audit record, taken after masking.
		SampleRows: r.sampleRows, SampleBytes: r.sampleBytes,
	})
}

func adminConfig(pg *config.Postgres, password string, dialer upstream.Dialer, lookup lookupFunc) (*pgx.ConnConfig, error) {
	cc, err := upstreamConfig(pg, pg.Credential.AdminUser, pg.Credential.AdminDatabase, "airlock-admin", password, dialer, lookup)
	if err != nil {
		return nil, fmt.Errorf("admin connection settings: %w", err)
	}
	return cc, nil
}

// upstreamConfig is how the daemon's own connections (admin, catalog) reach
// a connection's server: the same host, TLS settings, dialer and resolver as
// the sessions, under the daemon's credential.
func upstreamConfig(pg *config.Postgres, user, database, app, password string, dialer upstream.Dialer, lookup lookupFunc) (*pgx.ConnConfig, error) {
	dsn := "host=" + quoteDSN(pg.Upstream.Host) + " port=" + strconv.Itoa(int(pg.Upstream.Port)) +
		" user=" + quoteDSN(user) + " dbname=" + quoteDSN(database) +
		" sslmode=" + pg.Upstream.TLS.Mode + " application_name=" + app + " connect_timeout=10"
	if pg.Upstream.TLS.CAFile != "" {
		dsn += " sslrootcert=" + quoteDSN(pg.Upstream.TLS.CAFile)
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	// Set after parsing so the password never passes through a string that
	// an error message could quote.
	cc.Password = password
	cc.DialFunc = dialer.DialContext
	cc.LookupFunc = pgconn.LookupFunc(lookup)
	if pg.Upstream.TLS.ServerName != "" && cc.TLSConfig != nil {
		cc.TLSConfig.ServerName = pg.Upstream.TLS.ServerName
	}
	return cc, nil
}

func quoteDSN(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

func startLoop(ctx context.Context, fn func(context.Context)) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); fn(ctx) }()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	}
}

// Route implements frontdoor.Router. A destination that only matches
// because a hostname target has not resolved yet (its port is intercepted
// at every address meanwhile) is refused: it may be that target, and
// nothing may reach it around Airlock, but where it should go is unknown.
func (r *router) Route(dest netip.AddrPort) (frontdoor.Route, bool) {
	e, ok := r.set.Lookup(dest)
	if !ok {
		return frontdoor.Route{}, false
	}
	rt, ok := r.byTarget[e.Name]
	if !ok {
		rt = frontdoor.Route{Target: e.Name, Protocol: "tcp", Handler: r.fallback}
	}
	if e.Unresolved {
		names := r.set.Unresolved(e.Port)
		hosts := make([]string, len(names))
		for i, n := range names {
			hosts[i] = r.hosts[n]
		}
		rt.Refusal = &frontdoor.Refusal{Code: pgrefuse.UnableToConnect, Reason: frontdoor.ReasonUnresolved, Message: fmt.Sprintf(
			"target %s has not resolved yet; Airlock refuses connections to port %d until it does (see `airlock status`)",
			strings.Join(hosts, ", "), e.Port)}
	}
	return rt, true
}

// pgRefuser tells PostgreSQL clients why they are refused, in the protocol,
// with TLS for those that ask for it.
type pgRefuser struct{ tls *tls.Config }

func (p pgRefuser) Refuse(ctx context.Context, conn net.Conn, r frontdoor.Refusal) error {
	return pgrefuse.Refuse(ctx, conn, p.tls, r.Code, r.Message)
}

func (r *router) close() {
	for _, c := range r.closers {
		c()
	}
}

// leases adapts a credential source whose Acquire returns a concrete lease
// type to pgwire.Credentials, which wants the interface.
type leases[L pgwire.Lease] struct {
	src interface {
		Acquire(ctx context.Context, sess *session.Session, database string) (L, error)
	}
}

// AcquireRoles grants the person's roles when the source can.
func (l leases[L]) AcquireRoles(ctx context.Context, sess *session.Session, database string, roles []string) (pgwire.Lease, error) {
	rs, ok := l.src.(interface {
		AcquireRoles(ctx context.Context, sess *session.Session, database string, roles []string) (L, error)
	})
	if !ok {
		return l.Acquire(ctx, sess, database)
	}
	lease, err := rs.AcquireRoles(ctx, sess, database, roles)
	if err != nil {
		return nil, err
	}
	return lease, nil
}

func (l leases[L]) Acquire(ctx context.Context, sess *session.Session, database string) (pgwire.Lease, error) {
	lease, err := l.src.Acquire(ctx, sess, database)
	if err != nil {
		return nil, err
	}
	return lease, nil
}
