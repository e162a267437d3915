package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/frontdoor"
	"github.com/airlockhq/airlock/internal/localtls"
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
}

// lookupFunc resolves upstream hostnames with the daemon's resolver, so the
// names and hosts file that define targets also define where upstreams are.
type lookupFunc func(ctx context.Context, host string) ([]string, error)

func newRouter(ctx context.Context, cfg *config.Config, set *targets.Set, dialer upstream.Dialer, lookup lookupFunc, log *slog.Logger) (*router, error) {
	r := &router{set: set, hosts: map[string]string{}, byTarget: map[string]frontdoor.Route{}, fallback: relay.TCP{Dialer: dialer}}
	for _, t := range cfg.Targets {
		if t.Host != "" {
			r.hosts[t.Name] = t.Host
		}
	}
	var clientTLS *tls.Config
	for _, conn := range cfg.Connections {
		var h frontdoor.Handler
		var refuser frontdoor.Refuser
		switch conn.Protocol {
		case "tcp":
			h = r.fallback
		case "postgres":
			if clientTLS == nil {
				var err error
				clientTLS, err = localtls.LoadOrCreate(cfg.StateDir)
				if err != nil {
					return nil, fmt.Errorf("client-leg TLS certificate: %w", err)
				}
			}
			p, err := r.postgres(ctx, conn, clientTLS, dialer, lookup, log, cfg.Proxy.Driver)
			if err != nil {
				r.close()
				return nil, fmt.Errorf("connection %s: %w", conn.Name, err)
			}
			h = p
			refuser = pgRefuser{tls: clientTLS}
		}
		for _, t := range conn.Targets {
			rt := frontdoor.Route{Target: t, Connection: conn.Name, Protocol: conn.Protocol, Handler: h, Refuser: refuser}
			if conn.Protocol == "postgres" {
				rt.Exempt = func(c net.Conn) bool { return pgrefuse.IsCancelRequest(c, 2*time.Second) }
			}
			r.byTarget[t] = rt
		}
	}
	return r, nil
}

func (r *router) postgres(ctx context.Context, conn config.Connection, clientTLS *tls.Config, dialer upstream.Dialer, lookup lookupFunc, log *slog.Logger, driver string) (*pgwire.Proxy, error) {
	pg := conn.Postgres
	var creds pgwire.Credentials
	switch pg.Credential.Mode {
	case "static":
		pw, err := pgcred.ReadSecretFile(pg.Credential.PasswordFile)
		if err != nil {
			return nil, err
		}
		creds = leases[*pgcred.Lease]{pgcred.NewStatic(pg.Credential.User, pw)}
	case "ephemeral":
		pw, err := pgcred.ReadSecretFile(pg.Credential.AdminPasswordFile)
		if err != nil {
			return nil, err
		}
		admin, err := adminConfig(pg, pw, dialer, lookup)
		if err != nil {
			return nil, err
		}
		eph, err := pgcred.NewEphemeral(ctx, pgcred.EphemeralOptions{
			Admin:      admin,
			GroupRoles: pg.Credential.GroupRoles,
			TTL:        pg.Credential.TTL.D(),
			Prefix:     pg.Credential.RolePrefix,
			Logger:     log.With("connection", conn.Name),
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
		ClientTLS:   clientTLS,
		Dial:        dialer.DialContext,
		Lookup:      lookup,
		Logger:      log.With("connection", conn.Name),
		Driver:      driver,
	})
}

func adminConfig(pg *config.Postgres, password string, dialer upstream.Dialer, lookup lookupFunc) (*pgx.ConnConfig, error) {
	sslmode := pg.Upstream.TLS.Mode
	dsn := "host=" + quoteDSN(pg.Upstream.Host) + " port=" + strconv.Itoa(int(pg.Upstream.Port)) +
		" user=" + quoteDSN(pg.Credential.AdminUser) + " dbname=" + quoteDSN(pg.Credential.AdminDatabase) +
		" sslmode=" + sslmode + " application_name=airlock-admin connect_timeout=10"
	if pg.Upstream.TLS.CAFile != "" {
		dsn += " sslrootcert=" + quoteDSN(pg.Upstream.TLS.CAFile)
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("admin connection settings: %w", err)
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

func (l leases[L]) Acquire(ctx context.Context, sess *session.Session, database string) (pgwire.Lease, error) {
	lease, err := l.src.Acquire(ctx, sess, database)
	if err != nil {
		return nil, err
	}
	return lease, nil
}
