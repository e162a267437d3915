package tests

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/control"
	"github.com/airlockhq/airlock/internal/oidctest"
	"github.com/airlockhq/airlock/internal/pgtest"
	"github.com/airlockhq/airlock/internal/testnet"
)

// Two local accounts that exist on Debian: the identities of uid A must
// never serve uid B.
const (
	uidA = 1     // daemon
	uidB = 65534 // nobody
)

var (
	alice = oidctest.User{Subject: "sub-alice", Name: "alice", Email: "alice@example.com", Groups: []string{"analysts"}}
	bob   = oidctest.User{Subject: "sub-bob", Name: "bob", Email: "bob@example.com", Groups: []string{"dba", "staff"}}
)

const idPGSetup = `
CREATE ROLE airlock_admin LOGIN CREATEROLE PASSWORD 'admin-secret-1234';
CREATE ROLE app_readonly NOLOGIN;
CREATE ROLE app_admin NOLOGIN;
CREATE DATABASE app;
`

const idAppSetup = `
CREATE TABLE t (id int);
GRANT SELECT ON t TO app_readonly;
GRANT ALL ON t TO app_admin;
`

// idWorld is a PostgreSQL in a namespace, two test issuers (people and
// CI) on loopback, and airlockd with an identity section.
type idWorld struct {
	*env
	host *testnet.Host
	srv  *pgtest.Server
	corp *oidctest.Provider
	ci   *oidctest.Provider
	dsn  string
}

func newIDWorld(t *testing.T, identityExtra string) *idWorld {
	t.Helper()
	w := &idWorld{env: newEnv(t)}
	var err error
	if w.corp, err = oidctest.Start("airlock"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.corp.Close)
	if w.ci, err = oidctest.Start("airlock-ci"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.ci.Close)
	w.host = testnet.NewHost(t)
	w.srv = pgtest.Start(t, pgtest.Options{Host: w.host, SSL: true})
	w.srv.Psql(t, "postgres", idPGSetup)
	w.srv.Psql(t, "app", idAppSetup)
	echoServer(t, w.host, "echo", fmt.Sprintf("%s:7000", w.host.V4))
	pw := filepath.Join(t.TempDir(), "admin-password")
	if err := os.WriteFile(pw, []byte("admin-secret-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.writeConfig(identityExtra, pw)
	w.startDaemon()
	w.dsn = fmt.Sprintf("host=%s port=5432 dbname=app user=agent sslmode=disable connect_timeout=10", w.host.V4)
	return w
}

// writeConfig writes airlockd's configuration for this world (another
// daemon of the same team shares the issuers and the database).
func (w *idWorld) writeConfig(identityExtra, pw string) {
	w.config(fmt.Sprintf(`intercept:
  mode: all
identity:
  issuers:
    - name: corp
      url: %s
      client_id: airlock
      scopes: [openid, offline_access]
    - name: ci
      url: %s
      audience: airlock-ci
      kind: workload
%s
targets:
  - name: appdb
    address: %s:5432
  - name: echo
    address: %s:7000
connections:
  - name: echo
    protocol: tcp
    targets: [echo]
    access:
      - group: analysts
  - name: appdb
    protocol: postgres
    targets: [appdb]
    access:
      - group: analysts
        roles: [app_readonly]
      - group: dba
        roles: [app_admin]
    postgres:
      databases: [app]
      upstream:
        tls:
          mode: verify-full
          ca_file: %s
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: %s
        ttl: 1h
`, w.corp.URL, w.ci.URL, identityExtra, w.host.V4, w.host.V4, w.srv.CACert, pw))
}

// cli runs the airlock CLI as uid (outside the intercepted cgroup).
func (w *idWorld) cli(uid uint32, stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "airlock"), append(args, "--socket", w.socket())...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

var urlRE = regexp.MustCompile(`https?://\S+`)

// loginInteractive runs `airlock login` (PKCE, or the device flow) as uid,
// the test playing the person at the browser, logged in at the provider
// as user.
func (w *idWorld) loginInteractive(t *testing.T, uid uint32, user oidctest.User, device bool) string {
	t.Helper()
	w.corp.SetUser(user)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"login", "--socket", w.socket(), "--no-browser"}
	if device {
		args = append(args, "--device")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "airlock"), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	stderr, _ := cmd.StderrPipe()
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var shown []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		shown = append(shown, line)
		u := urlRE.FindString(line)
		if u == "" {
			continue
		}
		if device {
			// The person opens the verification page elsewhere and types
			// the code shown.
			m := regexp.MustCompile(`enter the code (\S+)`).FindStringSubmatch(line)
			if m == nil {
				continue
			}
			resp, err := http.PostForm(u, url.Values{"user_code": {m[1]}})
			if err != nil {
				t.Fatalf("approve device code: %v", err)
			}
			resp.Body.Close()
		} else {
			// The browser follows the provider's redirect to the CLI's
			// loopback callback.
			resp, err := http.Get(u)
			if err != nil {
				t.Fatalf("browser: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), "login complete") {
				t.Fatalf("callback page: %d %s", resp.StatusCode, body)
			}
		}
		break
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("airlock login: %v\n%s\ndaemon:\n%s", err, strings.Join(shown, "\n"), w.daemonOut.String())
	}
	return out.String()
}

// psqlAs runs psql as uid inside the intercepted cgroup.
func (w *idWorld) psqlAs(uid uint32, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", w.dsn, "-c", sql)
	cmd.SysProcAttr = w.clientIn(w.clients, uid).SysProcAttr
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=10", "HOME=/tmp"}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// refused asserts that uid is turned away with a message containing want:
// psql shows the message, pgx also the SQLSTATE, which must be 28000.
func (w *idWorld) refused(t *testing.T, uid uint32, want string) {
	t.Helper()
	out, err := w.psqlAs(uid, "SELECT 1")
	if err == nil || !strings.Contains(out, "FATAL:  Airlock: ") || !strings.Contains(out, want) {
		t.Fatalf("psql as uid %d: %v\n%s\nwant a refusal containing %q", uid, err, out, want)
	}
	cmd := w.clientIn(w.clients, uid, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=hold", "PGX_DSN="+w.dsn)
	b, _ := cmd.Output()
	if !strings.Contains(string(b), "SQLSTATE 28000") || !strings.Contains(string(b), want) {
		t.Fatalf("pgx as uid %d: %s\nwant SQLSTATE 28000 and %q", uid, b, want)
	}
}

const roleQuery = `SELECT current_user, pg_has_role('app_readonly', 'MEMBER'), pg_has_role('app_admin', 'MEMBER'), current_setting('application_name')`

func (w *idWorld) roles(t *testing.T, uid uint32) []string {
	t.Helper()
	out, err := w.psqlAs(uid, roleQuery)
	if err != nil {
		t.Fatalf("psql as uid %d: %v\n%s\ndaemon:\n%s", uid, err, out, w.daemonOut.String())
	}
	return strings.Split(out, "|")
}

func TestIdentityLoginAndAccess(t *testing.T) {
	w := newIDWorld(t, "")

	// No login yet: refused before any upstream work, told what to run.
	w.refused(t, uidA, "no Airlock identity for uid 1")
	w.refused(t, uidA, "airlock login")

	// Alice logs in with the browser flow (PKCE) as uid A.
	if out := w.loginInteractive(t, uidA, alice, false); !strings.Contains(out, "Logged in as alice") {
		t.Fatalf("login output: %q", out)
	}
	r := w.roles(t, uidA)
	if !strings.HasPrefix(r[0], "airlock_") || r[1] != "t" || r[2] != "f" || !strings.Contains(r[3], "alice@example.com") {
		t.Fatalf("alice's session: %v (want an airlock_ role in app_readonly only, application_name naming her)", r)
	}
	// whoami --json, as uid A.
	out, errOut, err := w.cli(uidA, "", "whoami", "--json")
	if err != nil {
		t.Fatalf("whoami: %v %s", err, errOut)
	}
	var who control.IdentityInfo
	mustJSON(t, out, &who)
	if who.Name != "alice" || who.Subject != "sub-alice" || who.Issuer != w.corp.URL || !who.Renewable ||
		len(who.Connections) != 2 || !who.Connections[1].Allowed || strings.Join(who.Connections[1].Roles, ",") != "app_readonly" {
		t.Fatalf("whoami = %+v", who)
	}

	// uid B has not logged in: alice's identity is never used for it.
	w.refused(t, uidB, "no Airlock identity for uid 65534")

	// Bob logs in with the device flow as uid B: dba → app_admin only.
	w.loginInteractive(t, uidB, bob, true)
	if r := w.roles(t, uidB); r[1] != "f" || r[2] != "t" || !strings.Contains(r[3], "bob@example.com") {
		t.Fatalf("bob's session: %v", r)
	}
	if r := w.roles(t, uidA); !strings.Contains(r[3], "alice@example.com") {
		t.Fatalf("uid A's session after bob's login: %v", r)
	}

	// Plain TCP cannot carry a message, but is refused all the same: the
	// echo connection admits analysts (alice), not dba (bob), nor uids
	// without an identity.
	echo := fmt.Sprintf("%s:7000", w.host.V4)
	if r := w.dial(w.clients, uidA, echo); r.Reply == "" {
		t.Fatalf("alice over plain TCP: %+v", r)
	}
	if r := w.dial(w.clients, uidB, echo); r.Reply != "" {
		t.Fatalf("bob (not in analysts) got through plain TCP: %+v", r)
	}
	if r := w.dial(w.clients, 2, echo); r.Reply != "" {
		t.Fatalf("a uid without identity got through plain TCP: %+v", r)
	}

	// The person is on the session's events.
	waitFor(t, "the person on the session's events and the login event in the daemon log", 10*time.Second, func() bool {
		log := w.daemonOut.String()
		return strings.Contains(log, "person_subject=sub-bob") && strings.Contains(log, "kind=identity.login")
	})

	// A person in no allowed group.
	tok, err := w.corp.IDToken(oidctest.User{Subject: "sub-carol", Name: "carol", Groups: []string{"staff"}}, oidctest.TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, e, err := w.cli(uidA, tok, "login", "--id-token-file", "-"); err != nil {
		t.Fatalf("login carol: %v %s", err, e)
	}
	w.refused(t, uidA, "carol (groups: staff) is not in a group allowed on connection appdb")

	// A CI pipeline's workload token (another issuer) works through the
	// same path.
	// The pipeline's token file, readable by uid A.
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		_ = os.Chmod(d, 0o755)
	}
	f := filepath.Join(dir, "ci-token")
	ciTok, err := w.ci.IDToken(oidctest.User{Subject: "repo:acme/app:ref:main", Name: "ci-app", Groups: []string{"analysts"}},
		oidctest.TokenOptions{Audience: "airlock-ci"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte(ciTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(f, uidA, uidA); err != nil {
		t.Fatal(err)
	}
	if _, e, err := w.cli(uidA, "", "login", "--id-token-file", f); err != nil {
		t.Fatalf("CI login: %v %s", err, e)
	}
	if r := w.roles(t, uidA); r[1] != "t" || !strings.Contains(r[3], "ci-app") {
		t.Fatalf("CI session: %v", r)
	}

	// Tokens never reach the daemon's log or events.
	for _, secret := range []string{tok, ciTok} {
		if strings.Contains(w.daemonOut.String(), secret[len(secret)-40:]) {
			t.Fatal("a token was written to the daemon's log")
		}
	}

	// Bad tokens are refused by the daemon with what is wrong, and the uid
	// then has no identity: sessions get 28000.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts oidctest.TokenOptions
		want string
	}{
		{"expired", oidctest.TokenOptions{Expiry: time.Now().Add(-time.Minute)}, "expired at"},
		{"wrong audience", oidctest.TokenOptions{Audience: "not-airlock"}, "not meant for Airlock"},
		{"wrong issuer", oidctest.TokenOptions{Issuer: "https://idp.evil.example"}, "does not trust"},
		{"bad signature", oidctest.TokenOptions{Key: other}, "does not verify"},
		{"unknown key", oidctest.TokenOptions{Key: other, Kid: "stolen-key"}, "does not publish"},
	}
	if _, e, err := w.cli(uidA, "", "logout"); err != nil {
		t.Fatalf("logout: %v %s", err, e)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := w.corp.IDToken(alice, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			_, e, err := w.cli(uidA, tok, "login", "--id-token-file", "-")
			if err == nil || !strings.Contains(e, c.want) || !strings.Contains(e, "airlock login") {
				t.Fatalf("login with a bad token: %v\n%s\nwant %q", err, e, c.want)
			}
			if strings.Contains(e, tok[len(tok)-20:]) {
				t.Fatal("the token was echoed back")
			}
			w.refused(t, uidA, "no Airlock identity for uid 1")
		})
	}

	// A token that expires after login: the session is refused with why.
	short, err := w.corp.IDToken(alice, oidctest.TokenOptions{Expiry: time.Now().Add(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if _, e, err := w.cli(uidA, short, "login", "--id-token-file", "-"); err != nil {
		t.Fatalf("login: %v %s", err, e)
	}
	waitFor(t, "the short token to expire", 10*time.Second, func() bool {
		out, err := w.psqlAs(uidA, "SELECT 1")
		return err != nil && strings.Contains(out, "expired at")
	})
	w.refused(t, uidA, "expired at")

	// Keys rotated at the issuer: once the daemon has seen the new set
	// (here: a login signed with the new key), the withdrawn key's tokens
	// stop working.
	w.loginInteractive(t, uidA, alice, false)
	if err := w.corp.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	// The daemon fetches keys for an unknown key id at most once a second.
	time.Sleep(1100 * time.Millisecond)
	w.loginInteractive(t, uidB, bob, false)
	w.refused(t, uidA, "withdrawn (keys rotated)")
	w.roles(t, uidB)

	// Root acting for another uid is explicit and recorded; others may not.
	tok, _ = w.corp.IDToken(alice, oidctest.TokenOptions{})
	if _, e, err := w.cli(uidB, tok, "login", "--id-token-file", "-", "--for-uid", "1"); err == nil || !strings.Contains(e, "only root") {
		t.Fatalf("uid B logging in for uid A: %v %s", err, e)
	}
	if _, e, err := w.cli(0, tok, "login", "--id-token-file", "-", "--for-uid", "1"); err != nil {
		t.Fatalf("root --for-uid: %v %s", err, e)
	}
	out, _, _ = w.cli(uidA, "", "whoami", "--json")
	mustJSON(t, out, &who)
	if who.LoggedInBy != 0 || who.UID != uidA {
		t.Fatalf("whoami after root's login for uid 1: %+v", who)
	}
	// Events reach the log from the session's event queue, after the
	// control call has answered.
	loginEvent := regexp.MustCompile(`kind=identity.login .*uid=1 by=0 outcome=ok`)
	waitFor(t, "the audit event for root's login on behalf of uid 1", 10*time.Second, func() bool {
		return loginEvent.MatchString(w.daemonOut.String())
	})

	// The issuer goes down and the daemon restarts (nothing cached): the
	// identity it verified, still unexpired and kept encrypted at rest,
	// keeps working; a new login cannot be verified meanwhile.
	w.corp.SetDown(true)
	w.stopDaemon()
	w.startDaemon()
	if r := w.roles(t, uidA); r[1] != "t" || !strings.Contains(r[3], "alice@example.com") {
		t.Fatalf("session while the issuer is down: %v", r)
	}
	tok, _ = w.corp.IDToken(bob, oidctest.TokenOptions{})
	if _, e, err := w.cli(uidB, tok, "login", "--id-token-file", "-"); err == nil || !strings.Contains(e, "cannot be reached") {
		t.Fatalf("login while the issuer is down: %v %s", err, e)
	}
	w.corp.SetDown(false)
}

// A long session lives on through renewals from the refresh token; once
// the refresh token is revoked it ends after the grace, with the reason.
func TestIdentityRefreshAndRevocation(t *testing.T) {
	w := newIDWorld(t, "  refresh_before: 2s\n  expiry_grace: 1s\n")
	w.corp.SetTTL(4 * time.Second)
	w.loginInteractive(t, uidA, alice, false)

	hold := func() (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
		cmd := w.clientIn(w.clients, uidA, "AIRLOCK_E2E_HELPER=pgx", "PGX_MODE=hold", "PGX_DSN="+w.dsn)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(stdout)
		line, err := r.ReadString('\n')
		if err != nil || !strings.Contains(line, `"user":"airlock_`) {
			t.Fatalf("pgx hold: %q %v\n%s", line, err, w.daemonOut.String())
		}
		return cmd, stdin, r
	}
	after := func(cmd *exec.Cmd, stdin io.WriteCloser, r *bufio.Reader) string {
		_ = stdin.Close()
		rest, _ := io.ReadAll(r)
		_ = cmd.Wait()
		var m map[string]string
		_ = json.Unmarshal(rest, &m)
		return m["after"]
	}

	cmd, stdin, r := hold()
	// Outlive three token lifetimes: renewals keep the session.
	deadline := time.Now().Add(12 * time.Second)
	waitFor(t, "three renewals", 30*time.Second, func() bool {
		return strings.Count(w.daemonOut.String(), "kind=identity.refresh") >= 3 && time.Now().After(deadline)
	})
	if a := after(cmd, stdin, r); a != "ok" {
		t.Fatalf("session after renewals: %q\n%s", a, w.daemonOut.String())
	}

	cmd, stdin, r = hold()
	w.corp.RevokeRefreshTokens()
	waitFor(t, "the session to end once renewal fails", 30*time.Second, func() bool {
		return strings.Contains(w.daemonOut.String(), "kind=session.end") &&
			regexp.MustCompile(`kind=session.end .*reason=identity_lost detail="identity expired and could not be renewed: issuer corp refused`).MatchString(w.daemonOut.String())
	})
	if a := after(cmd, stdin, r); a == "ok" {
		t.Fatal("the session still answered after its identity was lost")
	}
	if !strings.Contains(w.daemonOut.String(), "kind=identity.lost") {
		t.Fatal("no identity.lost event")
	}
	w.refused(t, uidA, "airlock login")
}
