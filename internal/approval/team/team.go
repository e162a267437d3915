// Package team shares approval requests between the daemons of a team
// through the team's PostgreSQL store (audit.store): a statement held on
// one machine can be seen and decided by an approver on another.
//
// The holding daemon owns each request. It publishes its pending requests
// to approval_requests and closes them there once they end; an approver's
// daemon only ever inserts a row into approval_decisions, naming who
// decided (person and daemon). The holding daemon honours such a row only
// after checking it again under its own rules (the decider is in its
// approvers group, and is not the requester) and writes the outcome back,
// so that the approver's CLI can say what happened.
//
// Only airlockd (root) holds the store's password: the processes Airlock
// watches cannot write decisions. A root on any machine of the team can;
// the store's credential is the trust boundary, as it is for the audit
// record itself.
package team

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/airlockhq/airlock/internal/approval"
)

// channel is the LISTEN/NOTIFY channel; the payload is the id of the
// daemon that should look at its decisions.
const channel = "airlock_approvals"

// migrations of the approval tables, versioned apart from the audit
// tables (approval_schema) so that each side evolves alone. Only append.
var migrations = []string{
	`CREATE TABLE approval_requests (
		id         TEXT        PRIMARY KEY,
		daemon     TEXT        NOT NULL,
		host       TEXT        NOT NULL DEFAULT '',
		kind       TEXT        NOT NULL,
		issuer     TEXT        NOT NULL DEFAULT '',
		subject    TEXT        NOT NULL DEFAULT '',
		name       TEXT        NOT NULL DEFAULT '',
		request    TEXT        NOT NULL,
		created    TIMESTAMPTZ NOT NULL,
		expires    TIMESTAMPTZ NOT NULL,
		state      TEXT        NOT NULL,
		decided_by TEXT        NOT NULL DEFAULT '',
		why        TEXT        NOT NULL DEFAULT '',
		decided    TIMESTAMPTZ,
		grant_end  TIMESTAMPTZ
	);
	CREATE INDEX approval_requests_pending ON approval_requests (daemon) WHERE state = 'pending';
	CREATE TABLE approval_decisions (
		seq       BIGSERIAL   PRIMARY KEY,
		id        TEXT        NOT NULL REFERENCES approval_requests (id) ON DELETE CASCADE,
		approve   BOOLEAN     NOT NULL,
		reason    TEXT        NOT NULL DEFAULT '',
		daemon    TEXT        NOT NULL,
		host      TEXT        NOT NULL DEFAULT '',
		person    TEXT        NOT NULL,
		uid       BIGINT      NOT NULL,
		time      TIMESTAMPTZ NOT NULL DEFAULT now(),
		outcome   TEXT        NOT NULL DEFAULT ''
	);
	CREATE INDEX approval_decisions_open ON approval_decisions (id) WHERE outcome = ''`,
}

// Outcomes of a decision row, written by the holding daemon.
const (
	outcomeHonoured = "honoured"
	outcomeRefused  = "refused: "
	outcomeLate     = "too late: "
)

// Broker is the daemon's approval.Broker, as the team store uses it.
type Broker interface {
	Pending() []approval.Request
	Find(id string) (approval.Request, bool)
	SetTeam(id, team string)
	DecideRemote(d approval.Remote) (approval.Request, error)
	CheckRemote(a approval.Approver, r approval.Request) error
	CanApprove(a approval.Approver) bool
	Record(r approval.Request, state, by, why string)
}

// Options configures a Store.
type Options struct {
	Daemon string // this daemon's audit chain id
	Host   string
	// Poll is how often pending requests are compared with the store
	// (default 1s); a NOTIFY from a deciding daemon wakes it at once.
	Poll time.Duration
	// Wait bounds how long Decide waits for the holding daemon to act
	// on a decision (default 6s: the control socket's call lasts 10s).
	Wait   time.Duration
	Logger *slog.Logger
}

// Store is one daemon's view of the team's approval tables.
type Store struct {
	o      Options
	db     *sql.DB
	cfg    *pgx.ConnConfig
	name   string
	broker Broker
	wake   chan struct{}

	mu        sync.Mutex
	migrated  bool
	published map[string]bool // pending requests the store has
	down      bool            // the last attempt failed (logged once)
	pruned    time.Time       // last removal of this daemon's old rows
}

// keep is how long a daemon's ended requests stay in the team tables (the
// audit records keep every decision for good; these rows only serve
// `airlock approvals` and the decision hand-off).
const keep = 30 * 24 * time.Hour

// Open prepares the store at spec (a postgres:// URL without password)
// for b. It does not connect: Run does, and keeps retrying.
func Open(spec, password string, b Broker, o Options) (*Store, error) {
	cfg, err := pgx.ParseConfig(spec)
	if err != nil {
		return nil, fmt.Errorf("team approvals store: %v", redactURL(err.Error()))
	}
	if cfg.Password != "" {
		return nil, errors.New("team approvals store: put the password in audit.password_file, not in the URL")
	}
	cfg.Password = password
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Wait <= 0 {
		o.Wait = 6 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	name := spec
	if u, err := url.Parse(spec); err == nil {
		u.User = url.User(u.User.Username())
		name = u.Redacted()
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	return &Store{o: o, db: db, cfg: cfg, name: name, broker: b, wake: make(chan struct{}, 1), published: map[string]bool{}}, nil
}

func redactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.Index(s[i:], "@"); j >= 0 {
			return s[:i+3] + "…" + s[i+j:]
		}
	}
	return s
}

// Changed asks Run to catch up now; it never blocks (approval.Options.Shared).
func (s *Store) Changed() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close releases the database handle (after Run has returned).
func (s *Store) Close() error { return s.db.Close() }

// Run keeps the store and the Broker in step until ctx ends: it publishes
// new requests, honours (or refuses) decisions other daemons sent, and
// closes ended requests. A store that is down is retried every poll.
func (s *Store) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.listen(ctx) }()
	defer wg.Wait()
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		s.sync(ctx)
		select {
		case <-ctx.Done():
			// Requests the Broker ended as the daemon stops are closed
			// in the store too, if it answers at once.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			s.sync(fctx)
			cancel()
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}

// listen wakes Run when another daemon notifies this one of a decision.
// Polling alone is correct; this only makes a decision take effect at once.
func (s *Store) listen(ctx context.Context) {
	backoff := s.o.Poll
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.o.Logger.Debug("team approvals: LISTEN ended; polling meanwhile", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	conn, err := pgx.ConnectConfig(cctx, s.cfg)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	s.Changed() // decisions sent while not listening
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Payload == s.o.Daemon {
			s.Changed()
		}
	}
}

func (s *Store) failed(what string, err error) {
	s.mu.Lock()
	first := !s.down
	s.down = true
	s.mu.Unlock()
	if first {
		s.o.Logger.Warn("team approvals store unreachable: requests stay local-only (this machine's approvers decide them) until it is back",
			"store", s.name, "while", what, "err", err)
	}
}

func (s *Store) ok() {
	s.mu.Lock()
	was := s.down
	s.down = false
	s.mu.Unlock()
	if was {
		s.o.Logger.Info("team approvals store reachable again", "store", s.name)
	}
}

func (s *Store) sync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !s.migrated {
		if err := s.migrate(ctx); err != nil {
			s.failed("migrate", err)
			return
		}
		s.migrated = true
	}
	for _, r := range s.broker.Pending() {
		if s.published[r.ID] {
			continue
		}
		if err := s.publish(ctx, r); err != nil {
			s.failed("publish "+r.ID, err)
			return
		}
		s.published[r.ID] = true
		s.broker.SetTeam(r.ID, approval.TeamShared)
	}
	// Decisions only ever name published requests: an idle daemon sends
	// no query at all.
	if len(s.published) > 0 {
		if err := s.honour(ctx); err != nil {
			s.failed("read decisions", err)
			return
		}
	}
	for id := range s.published {
		if r, ok := s.broker.Find(id); ok && r.State == approval.StatePending {
			continue
		}
		if err := s.close(ctx, id); err != nil {
			s.failed("close "+id, err)
			return
		}
		delete(s.published, id)
	}
	if time.Since(s.pruned) > time.Hour {
		if _, err := s.db.ExecContext(ctx, `DELETE FROM approval_requests WHERE daemon = $1 AND state <> 'pending' AND created < $2`,
			s.o.Daemon, time.Now().Add(-keep)); err != nil {
			s.failed("prune old requests", err)
			return
		}
		s.pruned = time.Now()
	}
	s.ok()
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Daemons starting together must not migrate at once (a lock of its
	// own: the audit writer migrates its tables under another).
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7215348130)`); err != nil {
		return fmt.Errorf("lock for migration: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS approval_schema (version BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema table: %w", err)
	}
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM approval_schema`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("approval tables have schema version %d, newer than this airlockd knows (%d): upgrade airlockd", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		for _, stmt := range strings.Split(migrations[i], ";\n") {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO approval_schema (version) VALUES ($1)`, i+1); err != nil {
			return fmt.Errorf("record migration %d: %w", i+1, err)
		}
	}
	// This daemon's requests left pending by an earlier run ended with it:
	// their sessions are gone.
	if _, err := tx.ExecContext(ctx, `UPDATE approval_requests SET state = $2, why = 'airlockd restarted; the request ended with it', decided = now()
		WHERE daemon = $1 AND state = 'pending'`, s.o.Daemon, approval.StateCanceled); err != nil {
		return fmt.Errorf("close requests of an earlier run: %w", err)
	}
	return tx.Commit()
}

func (s *Store) publish(ctx context.Context, r approval.Request) error {
	r.Team = approval.TeamShared
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// A clash of ids with another daemon's request (40 random bits) must
	// not take that one over: the conflict leaves it alone, and the check
	// below keeps this request local-only.
	res, err := s.db.ExecContext(ctx, `INSERT INTO approval_requests (id, daemon, host, kind, issuer, subject, name, request, created, expires, state)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending') ON CONFLICT (id) DO NOTHING`,
		r.ID, s.o.Daemon, s.o.Host, r.Kind, r.Person.Issuer, r.Person.Subject, r.Person.Name, string(body), r.Created, r.Expires)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var owner string
		if err := s.db.QueryRowContext(ctx, `SELECT daemon FROM approval_requests WHERE id = $1`, r.ID).Scan(&owner); err != nil {
			return err
		}
		if owner != s.o.Daemon {
			return fmt.Errorf("request id %s is taken by daemon %s", r.ID, owner)
		}
	}
	return nil
}

// honour applies the decisions other daemons sent for this daemon's
// pending requests, first come first served, each re-checked here.
func (s *Store) honour(ctx context.Context) error {
	rows, err := s.db.QueryContext(ctx, `SELECT d.seq, d.id, d.approve, d.reason, d.daemon, d.host, d.person
		FROM approval_decisions d JOIN approval_requests r ON r.id = d.id
		WHERE r.daemon = $1 AND r.state = 'pending' AND d.outcome = '' ORDER BY d.seq`, s.o.Daemon)
	if err != nil {
		return err
	}
	type row struct {
		seq    int64
		d      approval.Remote
		person string
	}
	var todo []row
	for rows.Next() {
		var x row
		if err := rows.Scan(&x.seq, &x.d.ID, &x.d.Approve, &x.d.Reason, &x.d.Daemon, &x.d.Host, &x.person); err != nil {
			rows.Close()
			return err
		}
		todo = append(todo, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, x := range todo {
		outcome := outcomeHonoured
		if err := json.Unmarshal([]byte(x.person), &x.d.Person); err != nil {
			outcome = outcomeRefused + "the decider's identity is unreadable"
		} else if _, err := s.broker.DecideRemote(x.d); err != nil {
			if r, ok := s.broker.Find(x.d.ID); ok && r.State != approval.StatePending {
				outcome = outcomeLate + "the request is already " + r.State
			} else {
				outcome = outcomeRefused + err.Error()
			}
			s.o.Logger.Warn("team approvals: a decision from another daemon was not honoured", "id", x.d.ID, "by", x.d.By(),
				"daemon", x.d.Daemon, "outcome", outcome)
		}
		if _, err := s.db.ExecContext(ctx, `UPDATE approval_decisions SET outcome = $2 WHERE seq = $1`, x.seq, outcome); err != nil {
			return err
		}
	}
	return nil
}

// close writes how a published request ended; decisions that arrived too
// late are told so.
func (s *Store) close(ctx context.Context, id string) error {
	r, ok := s.broker.Find(id)
	if !ok { // evicted from the Broker's recent list: long over
		r = approval.Request{ID: id, State: approval.StateCanceled, Why: "ended", Decided: time.Now()}
	}
	var grantEnd any
	if !r.GrantEnd.IsZero() {
		grantEnd = r.GrantEnd
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE approval_requests SET state = $3, decided_by = $4, why = $5, decided = $6, grant_end = $7
		WHERE id = $1 AND daemon = $2`, id, s.o.Daemon, r.State, r.By, r.Why, r.Decided, grantEnd); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `UPDATE approval_decisions SET outcome = $2 WHERE id = $1 AND outcome = ''`, id, outcomeLate+"the request is already "+r.State)
	return err
}

// List returns the other daemons' pending requests a may see: every one
// for an approver, else a's own.
func (s *Store) List(ctx context.Context, a approval.Approver) ([]approval.Request, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q := `SELECT request FROM approval_requests WHERE daemon <> $1 AND state = 'pending' AND expires > now()`
	args := []any{s.o.Daemon}
	if !s.broker.CanApprove(a) {
		// Not an approver: their own, as a person (uids are per machine).
		if a.Person.Subject != "" {
			q += ` AND issuer = $2 AND subject = $3`
			args = append(args, a.Person.Issuer, a.Person.Subject)
		} else {
			q += ` AND subject = '' AND name = $2`
			args = append(args, a.Person.Name)
		}
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY created`, args...)
	if err != nil {
		return nil, fmt.Errorf("list the team's approval requests (%s): %w", s.name, err)
	}
	defer rows.Close()
	var out []approval.Request
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			return nil, err
		}
		var r approval.Request
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			continue // a newer daemon's shape; it is listed there
		}
		r.Remote = true
		out = append(out, r)
	}
	return out, rows.Err()
}

// ErrUnconfirmed: the decision is in the store, but the holding daemon
// did not act on it within Options.Wait.
var ErrUnconfirmed = errors.New("the decision was sent, but the holding daemon has not confirmed it yet")

// Decide sends a's decision on another daemon's request id and waits
// (bounded) for that daemon to honour or refuse it. The decision is
// recorded in this daemon's audit record as well.
func (s *Store) Decide(ctx context.Context, a approval.Approver, id string, approve bool, reason string) (approval.Request, error) {
	var r approval.Request
	var body, holder, state, by, why string
	var live bool
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := s.db.QueryRowContext(qctx, `SELECT request, daemon, state, decided_by, why, expires > now() FROM approval_requests WHERE id = $1`, id).
		Scan(&body, &holder, &state, &by, &why, &live)
	cancel()
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: %s (see `airlock approvals`)", approval.ErrNotFound, id)
	}
	if err != nil {
		return r, fmt.Errorf("read request %s from the team store (%s): %w", id, s.name, err)
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return r, fmt.Errorf("read request %s from the team store: %w", id, err)
	}
	r.Remote = holder != s.o.Daemon
	if state != approval.StatePending {
		r.State, r.By, r.Why = state, by, why
		return r, fmt.Errorf("%w: request %s is already %s", approval.ErrNotFound, id, state)
	}
	if !live {
		return r, fmt.Errorf("%w: request %s has expired", approval.ErrNotFound, id)
	}
	if err := s.broker.CheckRemote(a, r); err != nil {
		return r, err
	}
	person, err := json.Marshal(a.Person)
	if err != nil {
		return r, err
	}
	var seq int64
	qctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	err = s.db.QueryRowContext(qctx, `INSERT INTO approval_decisions (id, approve, reason, daemon, host, person, uid)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq`, id, approve, reason, s.o.Daemon, s.o.Host, string(person), int64(a.UID)).Scan(&seq)
	if err == nil {
		_, err = s.db.ExecContext(qctx, `SELECT pg_notify($1, $2)`, channel, holder)
	}
	cancel()
	if err != nil {
		return r, fmt.Errorf("send the decision on %s to the team store (%s): %w", id, s.name, err)
	}
	d := approval.Remote{ID: id, Approve: approve, Reason: reason, Person: a.Person, Daemon: s.o.Daemon, Host: s.o.Host}
	decision := approval.StateDenied
	if approve {
		decision = approval.StateApproved
	}
	s.o.Logger.Info("approval decision sent to the holding daemon", "id", id, "holder", holder, "decision", decision, "by", d.By())
	out, err := s.await(ctx, r, seq)
	// This daemon's record has the decision its approver made, and what
	// became of it on the holding daemon.
	note := reason
	if err != nil {
		note = strings.TrimSpace(reason + " (not in effect: " + err.Error() + ")")
	}
	s.broker.Record(r, decision, d.By(), note)
	return out, err
}

func (s *Store) await(ctx context.Context, r approval.Request, seq int64) (approval.Request, error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.Wait)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var outcome, state, by, why string
		var decided, grantEnd sql.NullTime
		err := s.db.QueryRowContext(ctx, `SELECT d.outcome, r.state, r.decided_by, r.why, r.decided, r.grant_end
			FROM approval_decisions d JOIN approval_requests r ON r.id = d.id WHERE d.seq = $1`, seq).
			Scan(&outcome, &state, &by, &why, &decided, &grantEnd)
		if err == nil {
			switch {
			case strings.HasPrefix(outcome, outcomeRefused):
				return r, fmt.Errorf("the daemon holding %s (on %s) refused the decision: %s", r.ID, dashHost(r.Host), strings.TrimPrefix(outcome, outcomeRefused))
			case strings.HasPrefix(outcome, outcomeLate):
				r.State, r.By, r.Why = state, by, why
				return r, fmt.Errorf("%w: %s", approval.ErrNotFound, strings.TrimPrefix(outcome, outcomeLate))
			case outcome == outcomeHonoured && state != approval.StatePending:
				r.State, r.By, r.Why = state, by, why
				r.Decided, r.GrantEnd = decided.Time, grantEnd.Time
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("%w (%s on %s polls the team store; run `airlock approvals` to see)", ErrUnconfirmed, r.ID, dashHost(r.Host))
		case <-tick.C:
		}
	}
}

func dashHost(h string) string {
	if h == "" {
		return "another machine"
	}
	return h
}
