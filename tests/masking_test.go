package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// A real airlockd with a masking: section: what an intercepted psql gets is
// masked whatever the query's wording, and the session's end counts it.
func TestMaskingThroughAirlock(t *testing.T) {
	w := &pgWorld{env: newEnv(t)}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host, SSL: true})
	w.srv.Psql(t, "postgres", pgSetup)
	w.srv.Psql(t, "app", pgAppSetup+"CREATE VIEW contacts AS SELECT id, email AS mail FROM customers; GRANT SELECT ON contacts TO app_rw;")
	w.pwFile = filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.config(w.daemonConfig("10m") + `masking:
  rules:
    - name: pii
      columns: [public.customers.email]
      detectors: [email]
      strategy: redact
    - name: cards
      columns: [public.customers.card]
      detectors: [card]
      strategy: partial
      keep: 4
`)
	w.startDaemon()
	w.dsn = fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=10", w.host.V4)

	for _, tc := range []struct{ sql, want string }{
		{"select email, card from customers where id = 7", "[redacted]|**** **** **** 0007"},
		{"select c.email as e from (select * from customers) c where id = 7", "[redacted]"},
		{"select mail from contacts where id = 7", "[redacted]"},
		// A computed column of a masked column: masked whole (issue 11),
		// whatever the detectors would make of it.
		{"select 'card: ' || card from customers where id = 6", "[redacted]"},
		{"select reverse(email) from customers where id = 7", "[redacted]"},
		// A computed column of columns no rule names: the detectors read
		// it, as before (user 7's id is not a secret).
		{"select 'id ' || id from customers where id = 7", "id 7"},
	} {
		got := w.psql(t, w.dsn, "-c", tc.sql)
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.sql, got, tc.want)
		}
		if strings.Contains(got, "user7@") || strings.Contains(got, "user6@") || strings.Contains(got, "4111 1111 1111") {
			t.Errorf("%s leaked: %q", tc.sql, got)
		}
	}
	waitFor(t, "the session end with masked counts in the daemon log", 10*time.Second, func() bool {
		return strings.Contains(w.daemonOut.String(), "masked.pii.column=1")
	})
}
