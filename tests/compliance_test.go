package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/compliance"
)

// The compliance copy end to end: a masked query through the daemon, the
// originals readable only with the private key via `airlock audit reveal`,
// which the record notes; no key, a wrong key and a non-auditor get clear
// refusals; no original reaches the record, the export or the log.
func TestComplianceCopyReveal(t *testing.T) {
	keyFile, pub, err := compliance.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	otherFile, _, err := compliance.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	// Readable by the non-auditor too, so that its refusal is airlockd's.
	dir, err := os.MkdirTemp("", "airlock-compliance-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	key, other := filepath.Join(dir, "officer.key"), filepath.Join(dir, "other.key")
	for p, body := range map[string]string{key: keyFile, other: otherFile} {
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	w := newMaskedWorld(t, maskingRules+"  compliance:\n    recipient: "+pub+"\n")
	got := w.psql(t, w.dsn, "-c", "select id, email, card from customers where id in (3, 4) order by id /*officer*/")
	if got != "3|[redacted]|**** **** **** 0003\n4|[redacted]|**** **** **** 0004" {
		t.Fatalf("psql got %q", got)
	}
	w.psql(t, w.dsn, "-c", "select count(*) from customers /*nothing masked*/")

	var sid string
	waitFor(t, "the session's compliance copy", 15*time.Second, func() bool {
		for _, r := range w.exportRecords(t) {
			if r.Kind == audit.KindMaskOriginals {
				sid = r.Session
			}
		}
		return sid != ""
	})

	out := w.mustAirlock(t, "audit", "reveal", sid, "--identity", key)
	for _, want := range []string{"/*officer*/", "user3@example.com", "user4@example.com", "4111 1111 1111 0003", "[redacted]", "**** **** **** 0004", "email", "pii", "cards"} {
		if !strings.Contains(out, want) {
			t.Fatalf("reveal lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "nothing masked") {
		t.Fatalf("reveal shows a statement with nothing masked:\n%s", out)
	}
	// One statement by its number, as replay prints it.
	replay := w.mustAirlock(t, "replay", sid)
	num := ""
	for _, l := range strings.Split(replay, "\n") {
		if strings.Contains(l, "/*officer*/") {
			if i := strings.Index(l, "] #"); i >= 0 {
				num = strings.Fields(l[i+3:])[0]
			}
		}
	}
	if num == "" {
		t.Fatalf("replay shows no statement number:\n%s", replay)
	}
	var js []struct {
		Statement int64
		Entries   []struct{ Original, Name, Rule string }
	}
	mustJSON(t, w.mustAirlock(t, "audit", "reveal", sid, "--statement", num, "--identity", key, "--json"), &js)
	if len(js) != 1 || len(js[0].Entries) != 4 || js[0].Entries[0].Original != "user3@example.com" || js[0].Entries[0].Name != "email" {
		t.Fatalf("reveal --statement %s --json: %+v", num, js)
	}

	for _, tc := range []struct {
		name string
		uid  uint32
		args []string
		want string
	}{
		{"no key", 0, []string{"audit", "reveal", sid}, "needs --identity KEYFILE"},
		{"wrong key", 0, []string{"audit", "reveal", sid, "--identity", other}, "does not open this session's compliance copies: they are encrypted to " + pub},
		{"not an auditor", 65534, []string{"audit", "reveal", sid, "--identity", key}, "only root and members of audit.auditor_group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := w.airlock(tc.uid, tc.args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("airlock %v as uid %d: err %v, output %q; want a refusal saying %q", tc.args, tc.uid, err, out, tc.want)
			}
			if strings.Contains(out, "user3@example.com") {
				t.Fatal("a refused reveal showed an original")
			}
		})
	}

	// Two reveals by root (the wrong key's fetch counts: the ciphertexts
	// left the daemon), none for the refused caller.
	var recs []audit.Record
	waitFor(t, "three audit.reveal records", 15*time.Second, func() bool {
		recs = w.exportRecords(t)
		n := 0
		for _, r := range recs {
			if r.Kind == audit.KindAuditReveal {
				n++
			}
		}
		return n >= 3
	})
	var reveals []audit.RevealData
	for _, r := range recs {
		if r.Kind == audit.KindAuditReveal {
			var d audit.RevealData
			if err := json.Unmarshal(r.Data, &d); err != nil {
				t.Fatal(err)
			}
			if r.Session != sid || d.Session != sid {
				t.Fatalf("reveal record of another session: %+v", r)
			}
			reveals = append(reveals, d)
		}
	}
	if len(reveals) != 3 {
		t.Fatalf("%d audit.reveal records, want 3 (all, --statement, wrong key): %+v", len(reveals), reveals)
	}
	for _, d := range reveals {
		if d.UID != 0 || d.Person != "root" || d.Copies == 0 {
			t.Fatalf("reveal record %+v: want uid 0, person root, copies > 0", d)
		}
	}
	if reveals[1].Statements == nil || len(reveals[1].Statements) != 1 {
		t.Fatalf("the --statement reveal does not say which: %+v", reveals[1])
	}
	raw, _ := json.Marshal(recs)
	for _, leak := range []string{"user3@example.com", "4111 1111 1111 0003", "AGE-SECRET-KEY"} {
		if strings.Contains(string(raw), leak) || strings.Contains(w.daemonOut.String(), leak) {
			t.Fatalf("%q reached the audit record or the daemon's log", leak)
		}
	}
	if out := w.mustAirlock(t, "audit", "verify"); !strings.Contains(out, "verified") {
		t.Fatalf("verify after reveals:\n%s", out)
	}
}
