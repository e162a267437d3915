package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/airlockhq/airlock/internal/access"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/frontdoor"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/session"
)

// accessRules are a connection's access rules. They are enforced when
// identity is configured (deny by default) or when rules are written.
func accessRules(cfg *config.Config, conn config.Connection) access.Rules {
	r := access.Rules{Connection: conn.Name, Enforce: cfg.Identity != nil || len(conn.Access) > 0}
	for _, a := range conn.Access {
		r.Rules = append(r.Rules, access.Rule{Group: a.Group, Roles: a.Roles})
	}
	return r
}

// people returns who stands behind uids: verified OIDC identities when
// identity is configured, the local account otherwise.
func (d *Daemon) people(sink session.Sink) (frontdoor.People, error) {
	id := d.cfg.Identity
	if id == nil {
		return identity.LocalUsers{}, nil
	}
	store, err := identity.OpenStore(filepath.Join(d.cfg.StateDir, "identities"))
	if err != nil {
		return nil, err
	}
	var issuers []identity.IssuerConfig
	for _, is := range id.Issuers {
		issuers = append(issuers, identity.IssuerConfig{Name: is.Name, URL: is.URL, ClientID: is.ClientID,
			Audience: is.Audience, Kind: is.Kind, Scopes: is.Scopes,
			NameClaim: is.Claims.Name, EmailClaim: is.Claims.Email, GroupsClaim: is.Claims.Groups})
	}
	d.ident = identity.NewService(identity.ServiceOptions{
		Issuers:       identity.NewIssuers(identity.IssuersOptions{Issuers: issuers, KeysRefresh: id.KeysRefresh.D()}),
		Store:         store,
		RefreshBefore: id.RefreshBefore.D(),
		ExpiryGrace:   id.ExpiryGrace.D(),
		Logger:        d.log,
		Audit: func(c identity.Change) {
			kind := map[string]session.Kind{"login": session.KindIdentityLogin, "logout": session.KindIdentityLogout,
				"refresh": session.KindIdentityRefresh, "lost": session.KindIdentityLost}[c.Action]
			p := c.Person
			sink.Record(session.Event{Kind: kind, Person: &p,
				Identity: &session.Identity{UID: c.UID, By: c.By, Outcome: c.Outcome, Error: c.Error}})
		},
	})
	return d.ident, nil
}

// subject is the uid a call acts on: the caller's, from SO_PEERCRED, or
// for root only, the one it names.
func subject(p control.Peer, forUID *uint32) (uint32, error) {
	if forUID == nil || *forUID == p.UID {
		return p.UID, nil
	}
	if p.UID != 0 {
		return 0, errors.New("only root may act for another uid (--for-uid)")
	}
	return *forUID, nil
}

var errNoIdentity = errors.New("identity is not configured on this machine (no identity: section in airlockd's configuration): sessions act as your local account, no login needed")

// Issuers implements control.IdentityHandler.
func (d *Daemon) Issuers(_ context.Context, _ control.Peer) ([]control.IssuerInfo, error) {
	if d.ident == nil {
		return nil, errNoIdentity
	}
	var out []control.IssuerInfo
	for _, is := range d.cfg.Identity.Issuers {
		out = append(out, control.IssuerInfo{Name: is.Name, URL: is.URL, ClientID: is.ClientID, Kind: is.Kind, Scopes: is.Scopes})
	}
	return out, nil
}

// Login implements control.IdentityHandler: the tokens are verified and
// bound to the caller's uid (or, for root, the uid it names).
func (d *Daemon) Login(ctx context.Context, p control.Peer, forUID *uint32, req *control.LoginRequest) (*control.IdentityInfo, error) {
	if d.ident == nil {
		return nil, errNoIdentity
	}
	uid, err := subject(p, forUID)
	if err != nil {
		return nil, err
	}
	if uid != p.UID {
		d.log.Warn("identity: root logs in for another uid", "uid", uid, "by", p.UID, "pid", p.PID)
	}
	rec, err := d.ident.Login(ctx, uid, p.UID, req.IDToken, req.RefreshToken)
	if err != nil {
		return nil, err
	}
	return d.identityInfo(rec), nil
}

// Whoami implements control.IdentityHandler.
func (d *Daemon) Whoami(ctx context.Context, p control.Peer, forUID *uint32) (*control.IdentityInfo, error) {
	uid, err := subject(p, forUID)
	if err != nil {
		return nil, err
	}
	if d.ident == nil {
		person, err := identity.LocalUsers{}.Resolve(ctx, uid)
		if err != nil {
			return nil, err
		}
		info := d.identityInfo(&identity.Record{UID: uid, Person: person})
		info.Local = true
		return info, nil
	}
	rec, err := d.ident.Current(ctx, uid)
	if err != nil {
		return nil, err
	}
	return d.identityInfo(rec), nil
}

// Logout implements control.IdentityHandler.
func (d *Daemon) Logout(_ context.Context, p control.Peer, forUID *uint32) error {
	if d.ident == nil {
		return errNoIdentity
	}
	uid, err := subject(p, forUID)
	if err != nil {
		return err
	}
	return d.ident.Logout(uid, p.UID)
}

func (d *Daemon) identityInfo(rec *identity.Record) *control.IdentityInfo {
	pp := rec.Person
	info := &control.IdentityInfo{UID: rec.UID, Name: pp.Name, Email: pp.Email, Issuer: pp.Issuer, Subject: pp.Subject,
		Groups: pp.Groups, Expires: rec.Expiry, Renewable: rec.RefreshToken != "", LoggedInBy: rec.LoggedInBy,
		Connections: []control.ConnectionAccess{}}
	for _, conn := range d.cfg.Connections {
		ca := control.ConnectionAccess{Name: conn.Name, Targets: conn.Targets}
		dec, err := accessRules(d.cfg, conn).Decide(pp)
		if err != nil {
			ca.Reason = err.Error()
		} else {
			ca.Allowed = true
			ca.Roles = dec.Roles
			if ca.Roles == nil && conn.Postgres != nil && conn.Postgres.Credential.Mode == "ephemeral" {
				ca.Roles = conn.Postgres.Credential.GroupRoles
			}
		}
		info.Connections = append(info.Connections, ca)
	}
	return info
}

var _ control.IdentityHandler = (*Daemon)(nil)

// gated refuses plain-TCP sessions (which cannot carry an error message)
// whose uid has no identity or whose person the access rules do not admit:
// the connection is closed and the refusal recorded.
type gated struct {
	h     frontdoor.Handler
	rules access.Rules
}

func (g gated) Serve(ctx context.Context, conn net.Conn, sess *session.Session) error {
	var why string
	if sess.Person.Name == "" {
		why = sess.Attrs()[frontdoor.AttrIdentityError]
		if why == "" {
			why = fmt.Sprintf("no identity for uid %d: run `airlock login`", sess.Origin.UID)
		}
	} else if _, err := g.rules.Decide(sess.Person); err != nil {
		why = err.Error()
	}
	if why != "" {
		_ = conn.Close()
		sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: why}})
		return fmt.Errorf("refused: %s", why)
	}
	return g.h.Serve(ctx, conn, sess)
}
