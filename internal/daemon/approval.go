package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/airlockhq/airlock/internal/access"
	"github.com/airlockhq/airlock/internal/approval"
	"github.com/airlockhq/airlock/internal/approval/pgstage"
	"github.com/airlockhq/airlock/internal/approval/team"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/frontdoor"
	"github.com/airlockhq/airlock/internal/guard"
	"github.com/airlockhq/airlock/internal/identity"
	"github.com/airlockhq/airlock/internal/pgcred"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/procinfo"
	"github.com/airlockhq/airlock/internal/session"
)

// startApprovals builds the approval broker when the configuration has an
// approvals section. Grants are kept in state_dir/grants.json (root-only,
// like the rest of state_dir) so that an approved grant survives a restart
// of the daemon; pending requests do not (their sessions are gone).
func (d *Daemon) startApprovals(ctx context.Context, sink session.Sink) error {
	a := d.cfg.Approvals
	if a == nil {
		return nil
	}
	grants, err := approval.OpenGrants(filepath.Join(d.cfg.StateDir, "grants.json"))
	if err != nil {
		return err
	}
	opts := approval.Options{ApproversGroup: a.ApproversGroup, Timeout: a.Timeout.D(), Grants: grants,
		Record: sink.Record, Logger: d.log}
	if d.audit != nil {
		opts.Daemon = d.audit.Daemon()
	}
	opts.Host, _ = os.Hostname()
	var shared *team.Store
	var late lateBroker
	if audit.IsPostgres(d.cfg.Audit.Store) {
		// The team store holds the team's requests too: approvers on
		// other machines see and decide them.
		var password string
		if f := d.cfg.Audit.PasswordFile; f != "" {
			if password, err = pgcred.ReadSecretFile(f); err != nil {
				return fmt.Errorf("audit.password_file: %w", err)
			}
		}
		if shared, err = team.Open(d.cfg.Audit.Store, password, &late, team.Options{Daemon: opts.Daemon, Host: opts.Host,
			Poll: a.TeamPoll.D(), Logger: d.log}); err != nil {
			return err
		}
		opts.Shared = shared.Changed
	}
	if a.WebhookURL != "" {
		var token string
		if a.WebhookTokenFile != "" {
			if token, err = pgcred.ReadSecretFile(a.WebhookTokenFile); err != nil {
				return fmt.Errorf("approvals webhook token: %w", err)
			}
		}
		wh := approval.NewWebhook(approval.Webhook{URL: a.WebhookURL, Token: token, Logger: d.log})
		d.closers = append(d.closers, d.watch(ctx, wh.Run))
		opts.Notifier = wh
	}
	d.approvals = approval.New(opts)
	if shared != nil {
		late.Broker = d.approvals
		d.team = shared
		// Closers run last first: the Broker cancels its requests, then
		// the team store writes that down and stops.
		// Run stops by its closer, not with the daemon's context, so that
		// it can still write down the requests the Broker cancels.
		d.closers = append(d.closers, func() { _ = shared.Close() }, d.watch(context.WithoutCancel(ctx), shared.Run))
	}
	d.closers = append(d.closers, d.approvals.Close)
	for _, p := range a.HoldStatements {
		d.holdPatterns = append(d.holdPatterns, regexp.MustCompile(p)) // validated by config
	}
	return nil
}

// lateBroker lets the team store be built before the Broker it serves
// (the Broker calls the store's Changed); Run starts after both exist.
type lateBroker struct{ *approval.Broker }

// pgStages is each PostgreSQL session's pipeline: the interim pattern holds.
func (d *Daemon) pgStages() func(*session.Session) pgwire.Stages {
	if d.approvals == nil || len(d.holdPatterns) == 0 {
		return nil
	}
	return func(sess *session.Session) pgwire.Stages {
		return pgwire.Stages{Client: []pgwire.ClientStage{&pgstage.PatternStage{Patterns: d.holdPatterns, Broker: d.approvals, Session: sess}}}
	}
}

// grantAccess admits a person to a connection that requires a grant only
// while they hold one; the access rules apply as well.
type grantAccess struct {
	rules  access.Rules
	broker *approval.Broker
}

func (g grantAccess) Decide(p identity.Person) (access.Decision, error) {
	dec, err := g.rules.Decide(p)
	if err != nil {
		return dec, err
	}
	if _, ok := g.broker.GrantFor(p, g.rules.Connection); !ok {
		return dec, fmt.Errorf("connection %s needs an approved access grant and %s has none: run `airlock request %s --for 1h --reason \"…\"`, and wait for an approver",
			g.rules.Connection, p.Name, g.rules.Connection)
	}
	return dec, nil
}

// granted ends each session of a grant-requiring connection when the
// person's grant expires. A session without a grant is passed on for the
// handler to refuse in its protocol (PostgreSQL: grantAccess), or, for
// plain TCP, closed here.
type granted struct {
	h          frontdoor.Handler
	broker     *approval.Broker
	connection string
	plainTCP   bool
}

func (g granted) Serve(ctx context.Context, conn net.Conn, sess *session.Session) error {
	gr, ok := g.broker.GrantFor(sess.Person, g.connection)
	if !ok {
		if g.plainTCP {
			_ = conn.Close()
			why := fmt.Sprintf("connection %s needs an approved access grant: run `airlock request %s`", g.connection, g.connection)
			sess.Emit(session.Event{Kind: session.KindRefused, Refusal: &session.Refusal{Reason: why}})
			return errors.New("refused: " + why)
		}
		// pgwire's Access refuses it in the protocol. Should a grant
		// appear in between, the session still gets no time it was not
		// granted: its context is already over.
		ctx, cancel := context.WithDeadlineCause(ctx, time.Now(), &approval.GrantEnded{Connection: g.connection, Expires: time.Now()})
		defer cancel()
		return g.h.Serve(ctx, conn, sess)
	}
	sess.SetAttr("grant", gr.ID+" until "+gr.Expires.UTC().Format(time.RFC3339))
	ctx, cancel := context.WithDeadlineCause(ctx, gr.Expires, &approval.GrantEnded{Connection: g.connection, Expires: gr.Expires})
	defer cancel()
	if g.plainTCP {
		stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
		defer stop()
	}
	return g.h.Serve(ctx, conn, sess)
}

// wrapGrant applies a connection's require_grant.
func (d *Daemon) wrapGrant(conn config.Connection, h frontdoor.Handler) frontdoor.Handler {
	if !conn.RequireGrant || d.approvals == nil {
		return h
	}
	return granted{h: h, broker: d.approvals, connection: conn.Name, plainTCP: conn.Protocol == "tcp"}
}

// caller is the person behind a control call: the identity bound to the
// peer's uid (from SO_PEERCRED), or the local account without identity.
func (d *Daemon) caller(ctx context.Context, p control.Peer) approval.Approver {
	a := approval.Approver{UID: p.UID}
	if d.ident != nil {
		if rec, err := d.ident.Current(ctx, p.UID); err == nil {
			a.Person = rec.Person
		}
		return a
	}
	if person, err := (identity.LocalUsers{}).Resolve(ctx, p.UID); err == nil {
		a.Person = person
	}
	return a
}

var errNoApprovals = errors.New("approvals are not configured on this machine (no approvals: section in airlockd's configuration)")

// Approvals implements control.ApprovalHandler.
func (d *Daemon) Approvals(ctx context.Context, p control.Peer) ([]approval.Request, error) {
	if d.approvals == nil {
		return nil, errNoApprovals
	}
	a := d.caller(ctx, p)
	out := d.approvals.List(a)
	if d.team != nil {
		// The team's other requests; an unreachable store leaves this
		// machine's own list, which still works.
		others, err := d.team.List(ctx, a)
		if err != nil {
			d.log.Warn("list the team's approval requests", "err", err)
		}
		out = append(out, others...)
	}
	return out, nil
}

// Decide implements control.ApprovalHandler.
func (d *Daemon) Decide(ctx context.Context, p control.Peer, id string, approve bool, reason string) (*approval.Request, error) {
	if d.approvals == nil {
		return nil, errNoApprovals
	}
	if why := d.intercepted(p); why != "" {
		return nil, fmt.Errorf("decisions must come from the approver, not from a process Airlock watches (%s): run `airlock %s` in your own terminal", why,
			map[bool]string{true: "approve", false: "deny"}[approve])
	}
	a := d.caller(ctx, p)
	if a.Person.Name == "" {
		return nil, fmt.Errorf("uid %d has no identity: run `airlock login` as an approver first", p.UID)
	}
	id = strings.TrimSpace(id)
	r, err := d.approvals.Decide(a, id, approve, reason)
	if errors.Is(err, approval.ErrNotFound) && d.team != nil {
		if _, here := d.approvals.Find(id); !here {
			// Another machine's request: sent through the team store,
			// checked here and again by the daemon that holds it.
			r, err = d.team.Decide(ctx, a, id, approve, reason)
		}
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// RequestAccess implements control.ApprovalHandler.
func (d *Daemon) RequestAccess(ctx context.Context, p control.Peer, connection string, dur time.Duration, reason string) (*approval.Request, error) {
	if d.approvals == nil {
		return nil, errNoApprovals
	}
	var conn *config.Connection
	for i := range d.cfg.Connections {
		if d.cfg.Connections[i].Name == connection {
			conn = &d.cfg.Connections[i]
		}
	}
	if conn == nil {
		return nil, fmt.Errorf("no connection named %q (see `airlock whoami`)", connection)
	}
	if !conn.RequireGrant {
		return nil, fmt.Errorf("connection %s needs no grant (require_grant is off)", connection)
	}
	if maxd := d.cfg.Approvals.MaxGrant.D(); dur > maxd {
		return nil, fmt.Errorf("--for %s is longer than this machine allows (approvals.max_grant: %s)", dur, maxd)
	}
	if strings.TrimSpace(reason) == "" {
		return nil, errors.New("say why: --reason \"…\"")
	}
	a := d.caller(ctx, p)
	if a.Person.Name == "" {
		return nil, fmt.Errorf("uid %d has no identity: run `airlock login` first", p.UID)
	}
	if _, err := accessRules(d.cfg, *conn).Decide(a.Person); err != nil {
		return nil, fmt.Errorf("a grant would not help: %w", err)
	}
	r, err := d.approvals.RequestAccess(a.Person, p.UID, connection, dur, reason)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

var _ control.ApprovalHandler = (*Daemon)(nil)

// intercepted says why the caller is a process under Airlock's watch (an
// agent's tree, an `airlock run` command), or "". An agent runs as its
// person's uid: were the person an approver, the agent could otherwise
// approve requests with their login.
func (d *Daemon) intercepted(p control.Peer) string {
	if p.PID == 0 {
		return "caller has no pid"
	}
	if d.ic != nil && d.ic.IsTracked(p.PID) {
		return "it is in a tracked agent tree"
	}
	cg, err := procinfo.CgroupPath(p.PID)
	if err != nil {
		return "its cgroup cannot be read"
	}
	full := filepath.Join(d.cgRoot, cg)
	for _, root := range []string{d.runGroup, d.containRoot()} {
		if root != "" && (full == root || strings.HasPrefix(full, root+"/")) {
			return "it runs in " + cg
		}
	}
	return ""
}

func (d *Daemon) containRoot() string {
	if d.contain == nil {
		return ""
	}
	return d.contain.Root()
}

// brokerApprover hands the guard's held statements to the approval broker.
type brokerApprover struct{ b *approval.Broker }

// Timeout is approvals.timeout: how long a hold waits when its policy rule
// sets no timeout of its own.
func (a brokerApprover) Timeout() time.Duration { return a.b.Timeout() }

func (a brokerApprover) Ask(ctx context.Context, req guard.HoldRequest, done func(approved bool, by, reason string)) {
	var class []string
	if req.Class != nil {
		for _, k := range req.Class.Kinds() {
			class = append(class, string(k))
		}
		if w := req.Class.TablesWritten(); len(w) > 0 {
			class = append(class, "writes "+strings.Join(w, ", "))
		}
	}
	a.b.Ask(ctx, approval.HoldRequest{Session: req.Session, SQL: req.SQL, Class: strings.Join(class, "; "),
		Rule: req.Rule, Reason: req.Reason, Timeout: req.Timeout}, done)
}
