package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/approval"
)

// A statement held by the SQL policy file (a hold rule, no
// approvals.hold_statements) goes to the approval broker through the
// guard: an approver on another uid decides it with the CLI.
const policyHoldFile = `rules:
  - name: ddl-needs-approval
    action: hold
    reason: schema changes wait for a DBA
    kinds: [ddl]
`

func TestPolicyHoldApproved(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(policyHoldFile), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newIDWorld(t, fmt.Sprintf("approvals:\n  approvers_group: dba\n  timeout: 60s\npolicy_file: %s\n", pol))
	w.loginToken(t, uidA, alice) // analysts: asks
	w.loginToken(t, uidB, bob)   // dba: asks too
	w.loginToken(t, uidC, carol) // dba: decides

	// Any role may create a temporary table (TEMP on the database is
	// PUBLIC's), so the statement succeeds once released.
	const ddl = "CREATE TEMP TABLE e2e_held AS SELECT 4712 AS n"
	_, wait := w.psqlBG(t, uidA, ddl)
	r := w.pendingOne(t, uidC)
	if r.Kind != approval.KindStatement || r.Person.Subject != "sub-alice" || r.Statement != ddl ||
		r.Rule != "ddl-needs-approval" || r.Connection != "appdb" || r.Process.UID != uidA {
		t.Fatalf("policy-held request as approvers see it: %+v", r)
	}
	if out, e, err := w.cli(uidC, "", "approve", r.ID); err != nil || !strings.Contains(out, "approved") {
		t.Fatalf("carol approving: %v %s %s", err, out, e)
	}
	if out, err := wait(); err != nil || out != "SELECT 1" {
		t.Fatalf("approved statement: %v\n%s", err, out)
	}

	// Denied: the client gets 42501 naming who and why.
	_, wait = w.psqlBG(t, uidB, ddl)
	r = w.pendingOne(t, uidC)
	if r.Rule != "ddl-needs-approval" || r.Person.Subject != "sub-bob" {
		t.Fatalf("second request: %+v", r)
	}
	if _, e, err := w.cli(uidC, "", "deny", r.ID, "--reason", "no schema changes today"); err != nil {
		t.Fatalf("carol denying: %v %s", err, e)
	}
	out, err := wait()
	if err == nil || !strings.Contains(out, "42501") || !strings.Contains(out, "carol <carol@example.com> denied this statement (rule ddl-needs-approval): no schema changes today") {
		t.Fatalf("denied statement: %v\n%s", err, out)
	}
}
