package daemon

import (
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/airlockhq/airlock/internal/compliance"
	"github.com/airlockhq/airlock/internal/config"
	"github.com/airlockhq/airlock/internal/mask"
	"github.com/airlockhq/airlock/internal/pgcred"
	"github.com/airlockhq/airlock/internal/pgmask"
	"github.com/airlockhq/airlock/internal/pgwire"
	"github.com/airlockhq/airlock/internal/session"
	"github.com/airlockhq/airlock/internal/upstream"
)

// loadMasking compiles the masking policy with its key, read under the
// same root-only rule as the other secrets. nil when masking is off.
func loadMasking(cfg *config.Config) (*mask.RuleSet, error) {
	if cfg.Masking == nil || len(cfg.Masking.Rules) == 0 {
		return nil, nil
	}
	var key []byte
	if cfg.Masking.KeyFile != "" {
		k, err := pgcred.ReadSecretFile(cfg.Masking.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("masking key: %w", err)
		}
		key = []byte(k)
	}
	rs, err := mask.Compile(*cfg.Masking, key)
	if err != nil {
		return nil, fmt.Errorf("masking: %w", err)
	}
	return rs, nil
}

// loadCompliance reads the compliance recipients (public keys only): nil
// when no copy is kept.
func loadCompliance(cfg *config.Config) (*compliance.Sealer, int, error) {
	if cfg.Masking == nil || cfg.Masking.Compliance == nil {
		return nil, 0, nil
	}
	c := cfg.Masking.Compliance
	var s *compliance.Sealer
	var err error
	if c.RecipientFile != "" {
		s, err = compliance.LoadRecipients(c.RecipientFile)
	} else {
		s, err = compliance.ParseRecipients(c.Recipient)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("masking.compliance: %w", err)
	}
	return s, c.Limit(), nil
}

// catalogConfig is how a connection's masking stage reads the catalog: with
// the connection's own configured credential (the admin's for ephemeral
// roles, the static user's otherwise), never a session's.
func catalogConfig(pg *config.Postgres, user, password string, dialer upstream.Dialer, lookup lookupFunc) (*pgx.ConnConfig, error) {
	cc, err := upstreamConfig(pg, user, pg.Databases[0], "airlock-catalog", password, dialer, lookup)
	if err != nil {
		return nil, fmt.Errorf("catalog connection settings: %w", err)
	}
	return cc, nil
}

// maskingStages builds each session's masking stage, or nil when masking
// is off. A session whose rules in force are none gets no stage (its
// results are not looked at).
func (r *router) maskingStages(cc *pgx.ConnConfig, log *slog.Logger) func(*session.Session) pgwire.Stages {
	if r.masking == nil {
		return nil
	}
	cat := pgmask.NewCatalog(cc, 4)
	r.closers = append(r.closers, cat.Close)
	rs := r.masking
	return func(sess *session.Session) pgwire.Stages {
		st := pgmask.New(rs.ForSubject(pgmask.Subject(sess)), cat, sess, log)
		if st == nil {
			return pgwire.Stages{}
		}
		// Statements' lineage, read with the guard's classifier: what
		// a query computes from or copies out of a masked column.
		st.TrackLineage(r.classifier)
		if r.sealer != nil {
			st.KeepOriginals(pgmask.NewOriginals(r.sealer, sess, r.sealMax, log))
		}
		return pgwire.Stages{Client: []pgwire.ClientStage{st}, Server: []pgwire.ServerStage{st}}
	}
}
