package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// maskingRules is the masking section the sample and compliance tests share.
const maskingRules = `masking:
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
`

// newMaskedWorld is a daemon with masking rules on the customers table and
// extra configuration (an audit: section, a compliance recipient).
func newMaskedWorld(t *testing.T, extra string) *pgWorld {
	t.Helper()
	w := &pgWorld{env: newEnv(t)}
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host, SSL: true})
	w.srv.Psql(t, "postgres", pgSetup)
	w.srv.Psql(t, "app", pgAppSetup)
	w.pwFile = filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(w.pwFile, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.config(w.daemonConfig("10m") + extra)
	w.startDaemon()
	w.dsn = fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=10", w.host.V4)
	return w
}

// statementRecords decodes the statement records of recs whose SQL has part.
func statementRecords(t *testing.T, recs []audit.Record, part string) []audit.Statement {
	t.Helper()
	var out []audit.Statement
	for _, r := range recs {
		if r.Kind != "statement" {
			continue
		}
		var st audit.Statement
		if err := json.Unmarshal(r.Data, &st); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(st.SQL, part) {
			out = append(out, st)
		}
	}
	return out
}

// The result sample in the audit record is what the client saw: masked
// values masked (a column computed from a masked one, upper(email), masked
// whole), capped at audit.sample_rows, flagged truncated; export and replay
// show it.
func TestResultSamplesThroughAirlock(t *testing.T) {
	w := newMaskedWorld(t, maskingRules+"audit:\n  sample_rows: 3\n")
	got := w.psql(t, w.dsn, "-c", "select id, email, card, upper(email) as shout from customers where id <= 5 order by id /*sampled*/")
	if !strings.HasPrefix(got, "1|[redacted]|**** **** **** 0001|[redacted]") {
		t.Fatalf("psql got %q", got)
	}
	w.psql(t, w.dsn, "-c", "select c.email as e from (select * from customers) c where id = 7 /*aliased*/")
	// The extended protocol (pgx): the masking stage's own Describe of
	// the portal is consumed, yet the sample has the column's name.
	cmd := w.clientIn(w.clients, 0, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=query", "PGX_DSN="+w.dsn,
		"PGX_SQL=SELECT email AS contact FROM customers WHERE id = $1::int /*pgx*/", "PGX_PARAM=8")
	pgxOut, err := cmd.Output()
	if err != nil || !strings.Contains(string(pgxOut), `"result":"[redacted]"`) {
		t.Fatalf("pgx: %v %s", err, pgxOut)
	}

	var sts []audit.Statement
	var recs []audit.Record
	waitFor(t, "the statements in the audit record", 15*time.Second, func() bool {
		recs = w.exportRecords(t)
		sts = statementRecords(t, recs, "/*sampled*/")
		return len(sts) == 1 && len(statementRecords(t, recs, "/*aliased*/")) == 1 && len(statementRecords(t, recs, "/*pgx*/")) == 1
	})
	sm := sts[0].Sample
	if sm == nil {
		t.Fatalf("no sample in %+v", sts[0])
	}
	if c := strings.Join(sm.Columns, ","); c != "id,email,card,shout" {
		t.Fatalf("columns %q", c)
	}
	if len(sm.Rows) != 3 || !sm.Truncated {
		t.Fatalf("%d rows, truncated %v: want the first 3 of 5, truncated", len(sm.Rows), sm.Truncated)
	}
	for i, row := range sm.Rows {
		want := []string{fmt.Sprint(i + 1), "[redacted]", fmt.Sprintf("**** **** **** %04d", i+1), "[redacted]"}
		for j, v := range row {
			if v == nil || *v != want[j] {
				t.Fatalf("row %d column %d: %v, want %q", i, j, v, want[j])
			}
		}
	}
	al := statementRecords(t, recs, "/*aliased*/")[0].Sample
	if al == nil || len(al.Rows) != 1 || al.Rows[0][0] == nil || *al.Rows[0][0] != "[redacted]" || al.Truncated {
		t.Fatalf("aliased sample %+v", al)
	}
	px := statementRecords(t, recs, "/*pgx*/")[0]
	if px.Protocol != "extended" || px.Sample == nil || len(px.Sample.Columns) != 1 || px.Sample.Columns[0] != "contact" ||
		len(px.Sample.Rows) != 1 || px.Sample.Rows[0][0] == nil || *px.Sample.Rows[0][0] != "[redacted]" {
		t.Fatalf("pgx statement %+v, sample %+v", px, px.Sample)
	}
	raw, _ := json.Marshal(recs)
	if strings.Contains(string(raw), "@example.com") || strings.Contains(string(raw), "4111 1111 1111") {
		t.Fatal("an unmasked value reached the audit record")
	}

	var sid string
	for _, r := range recs {
		if r.Kind == "statement" && strings.Contains(string(r.Data), "/*sampled*/") {
			sid = r.Session
		}
	}
	out := w.mustAirlock(t, "replay", sid)
	for _, want := range []string{"| id | email | card | shout", "| 1 | [redacted] | **** **** **** 0001 | [redacted]", "| …"} {
		if !strings.Contains(out, want) {
			t.Fatalf("replay lacks %q:\n%s", want, out)
		}
	}
}
