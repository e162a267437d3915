package pgwire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/airlockhq/airlock/internal/session"
)

const connectTimeout = 15 * time.Second

// passParams are the startup parameters a client may carry through to the
// upstream. Each one is a setting the client could also SET after
// connecting, so passing it grants nothing; everything else (replication,
// protocol options, user, database, application_name) is ours to decide.
var passParams = map[string]bool{
	"client_encoding": true, "datestyle": true, "timezone": true, "intervalstyle": true,
	"extra_float_digits": true, "search_path": true, "options": true, "bytea_output": true,
	"statement_timeout": true, "lock_timeout": true, "idle_in_transaction_session_timeout": true,
	"standard_conforming_strings": true, "default_transaction_isolation": true,
	"default_transaction_read_only": true, "lc_monetary": true, "lc_numeric": true, "lc_time": true,
}

// upstreamConn is an authenticated upstream backend taken over from pgconn.
type upstreamConn struct {
	conn     net.Conn
	pid      uint32
	secret   []byte
	params   map[string]string
	txStatus byte
}

// connectUpstream logs in to the upstream with the lease's credential and
// takes the raw connection: from here on the proxy relays bytes.
func (p *Proxy) connectUpstream(ctx context.Context, sess *session.Session, lease Lease, database string,
	clientParams map[string]string) (*upstreamConn, *fatal) {
	u := p.opts.Upstream
	kv := []string{
		"host=" + quoteValue(u.Host),
		"port=" + strconv.Itoa(u.Port),
		"dbname=" + quoteValue(database),
		"user=" + quoteValue(lease.User()),
		"sslmode=" + u.TLSMode,
		// The daemon's own environment must not add a password or a service.
		"passfile=/dev/null",
		"connect_timeout=" + strconv.Itoa(int(connectTimeout/time.Second)),
		"max_protocol_version=3.0",
	}
	if u.CAFile != "" && strings.HasPrefix(u.TLSMode, "verify-") {
		kv = append(kv, "sslrootcert="+quoteValue(u.CAFile))
	}
	cfg, err := pgconn.ParseConfig(strings.Join(kv, " "))
	if err != nil {
		return nil, &fatal{codeUnableToConnect, fmt.Sprintf("upstream %s misconfigured: %v", p.opts.Name, err)}
	}
	cfg.Password = lease.Password()
	cfg.DialFunc = p.dial
	if p.opts.Lookup != nil {
		cfg.LookupFunc = p.opts.Lookup
	}
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.RuntimeParams = upstreamParams(sess, clientParams)
	if u.ServerName != "" {
		if cfg.TLSConfig != nil {
			cfg.TLSConfig.ServerName = u.ServerName
		}
		for _, fb := range cfg.Fallbacks {
			if fb.TLSConfig != nil {
				fb.TLSConfig.ServerName = u.ServerName
			}
		}
	}

	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, p.connectFailure(err, lease)
	}
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(context.Background())
		return nil, p.connectFailure(err, lease)
	}
	hc, err := pc.Hijack()
	if err != nil {
		_ = pc.Close(context.Background())
		return nil, p.connectFailure(err, lease)
	}
	return &upstreamConn{conn: hc.Conn, pid: hc.PID, secret: hc.SecretKey, params: hc.ParameterStatuses,
		txStatus: hc.TxStatus}, nil
}

// connectFailure words a failed upstream login for the client. The server's
// own refusal keeps its SQLSTATE; anything else is "unreachable".
func (p *Proxy) connectFailure(err error, lease Lease) *fatal {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &fatal{pgErr.Code, scrub(fmt.Sprintf("upstream %s refused the connection: %s", p.opts.Name, pgErr.Message), lease)}
	}
	return &fatal{codeUnableToConnect, scrub(fmt.Sprintf("upstream %s unreachable: %v", p.opts.Name, err), lease)}
}

// scrub removes the credential's password from a message. pgconn errors do
// not carry it; this is the second line, because a leak here reaches the
// client, the log and the audit record at once.
func scrub(msg string, lease Lease) string {
	if pw := lease.Password(); pw != "" {
		msg = strings.ReplaceAll(msg, pw, "********")
	}
	return msg
}

func upstreamParams(sess *session.Session, client map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range client {
		if passParams[strings.ToLower(k)] {
			out[k] = v
		}
	}
	// The DBA sees who is behind a backend in pg_stat_activity.
	who := sess.Person.Name
	if sess.Person.Email != "" {
		who = sess.Person.Email // an OIDC person: the address a DBA recognises
	}
	out["application_name"] = "airlock:" + sess.ID + ":" + who
	return out
}

// quoteValue quotes a keyword/value connection string value.
func quoteValue(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
