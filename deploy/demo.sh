#!/usr/bin/env bash
# Airlock demo: run as root on a fresh Debian machine (`sudo make demo`).
#
# Builds a throwaway "remote" PostgreSQL server in a network namespace, starts
# airlockd with deploy/examples-like settings, and shows a process named like
# Cursor reaching the database by its usual address: the connection is
# intercepted, attributed to the process and its person, served with a
# just-in-time role that the client never sees, masked, and recorded. The person
# is proven by a real OIDC login (device flow) against a local test issuer,
# answered by this script. The same query is then masked for the agent and not
# for bob, whose group (dba) the masking rules exempt; the compliance officer
# reads the agent's masked originals with `airlock audit reveal` and the record
# notes it. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo make demo)"; exit 1; }

NS=airlock-demo
DIR=/tmp/airlock-demo
REMOTE=10.250.77.2
LOCAL=10.250.77.1
PORT=15499  # not the service default (15432), so a running airlockd is left alone
BIN=$PWD/bin
PGBIN=""

# The namespaced "remote" host, its PostgreSQL server and the cgroup helpers
# are shared with the benchmarks (tests/bench/run.sh).
. ./tests/lib/remote-pg.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  [ -n "${CURSOR_PID:-}" ] && kill "$CURSOR_PID" 2>/dev/null
  [ -n "${LOGIN_PID:-}" ] && kill "$LOGIN_PID" 2>/dev/null
  if [ -n "${IDP_PID:-}" ]; then kill "$IDP_PID" 2>/dev/null; wait "$IDP_PID" 2>/dev/null; fi
  if [ -n "${DAEMON_PID:-}" ]; then kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; fi
  [ -f "$DIR/airlock.yaml" ] && "$BIN/airlockd" uninstall --config "$DIR/airlock.yaml" >/dev/null 2>&1
  rmdir /sys/fs/bpf/airlock-demo 2>/dev/null
  rpg_pg_stop "$DIR" "${PG_PID:-}" 5
  rpg_netns_down "$NS" alk-demo0
  CG=$(rpg_cgroup2_mount)
  [ -n "$CG" ] && rpg_cgroup_remove "$CG/airlock-demo"
  rm -rf "$DIR"
}
trap cleanup EXIT
cleanup; trap cleanup EXIT

say "Installing what the demo needs (Debian packages)"
./tests/deps.sh
[ -x "$BIN/airlockd" ] || make build
# The local test issuer is demo-only: never installed.
"${GO:-go}" build -o "$BIN/airlock-testidp" ./cmd/airlock-testidp
PGBIN=$(rpg_pgbin)

say "A 'remote' database host: network namespace $NS at $REMOTE"
mkdir -p "$DIR"; chmod 755 "$DIR"
rpg_netns_up "$NS" alk-demo0 alk-demo1 "$LOCAL" "$REMOTE" 30

rpg_pg_init "$DIR" demo-superuser-pw "$REMOTE" "fsync = off"
rpg_pg_start "$NS" "$DIR"
PG_PID=$RPG_PG_PID
rpg_pg_wait "$DIR"
PSQL_ADMIN=(psql -X -q -h "$DIR/pg" -U postgres)
"${PSQL_ADMIN[@]}" -d postgres <<SQL
CREATE ROLE airlock_admin LOGIN CREATEROLE PASSWORD 'demo-admin-pw';
CREATE ROLE app_readonly NOLOGIN;
CREATE DATABASE app;
SQL
"${PSQL_ADMIN[@]}" -d app <<SQL
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Alan Turing', 'alan@example.com', '5500 0000 0000 0004'),
  (3, 'Grace Hopper', 'grace@example.com', '3400 0000 0000 009');
GRANT SELECT ON customers TO app_readonly;
SQL
echo "PostgreSQL is up at $REMOTE:5432 (database app, group role app_readonly)"

say "A local OIDC issuer (test only): alice@example.com (group analysts) and bob@example.com (group dba)"
"$BIN/airlock-testidp" serve --url-file "$DIR/idp.url" --user alice --email alice@example.com --groups analysts \
  --also "bob:bob@example.com:dba" >/dev/null 2>"$DIR/idp.log" &
IDP_PID=$!
for _ in $(seq 100); do [ -s "$DIR/idp.url" ] && break; sleep 0.1; done
IDP_URL=$(cat "$DIR/idp.url")
echo "issuer at $IDP_URL"

say "A compliance key pair: the private key stays with the compliance officer, airlockd gets the public key"
COMPLIANCE_PUB=$("$BIN/airlock" audit compliance-key -o "$DIR/officer.key")
echo "  public key $COMPLIANCE_PUB (private key in $DIR/officer.key)"

say "airlockd configuration: tree mode for Cursor, identity from the issuer, db.internal:5432 with just-in-time roles for analysts"
install -d -m 700 "$DIR/secrets"
echo "demo-admin-pw" > "$DIR/secrets/appdb-admin"; chmod 600 "$DIR/secrets/appdb-admin"
echo "$REMOTE db.internal" > "$DIR/hosts"
CG=$(rpg_cgroup2_mount)
mkdir -p "$CG/airlock-demo/apps"
cat > "$DIR/airlock.yaml" <<YAML
state_dir: $DIR/state
runtime_dir: $DIR/run
proxy:
  port: $PORT
intercept:
  mode: tree
  executables: [cursor, Cursor]
  # The demo attaches to a cgroup of its own; a workstation uses "/".
  attach_cgroup: /airlock-demo
  # Pins of its own too, for the same reason (the service pins under /sys/fs/bpf/airlock).
  bpffs: /sys/fs/bpf/airlock-demo
dns:
  hosts: $DIR/hosts   # the demo's name for the remote host
identity:
  issuers:
    - name: demo-idp
      url: $IDP_URL
      client_id: airlock
targets:
  - name: appdb
    address: db.internal:5432
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb]
    access:
      - group: analysts
        roles: [app_readonly]
      - group: dba
        roles: [app_readonly]
    postgres:
      databases: [app]
      upstream:
        tls: {mode: disable}
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: $DIR/secrets/appdb-admin
        ttl: 15m
masking:
  rules:
    # Nobody sees emails or card numbers, whatever the query looks like,
    # except people in the dba group.
    - name: pii
      columns: [public.customers.email]
      detectors: [email]
      strategy: redact
      except_groups: [dba]
    - name: cards
      columns: [public.customers.card]
      detectors: [card]
      strategy: partial
      keep: 4
      except_groups: [dba]
  # The originals of masked values, encrypted to the compliance officer's key.
  compliance:
    recipient: $COMPLIANCE_PUB
YAML
sed 's/^/    /' "$DIR/airlock.yaml"

say "Starting airlockd"
"$BIN/airlockd" --config "$DIR/airlock.yaml" >"$DIR/airlockd.log" 2>&1 &
DAEMON_PID=$!
export AIRLOCK_SOCKET=$DIR/run/airlock.sock
for _ in $(seq 100); do "$BIN/airlock" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/airlock" status >/dev/null || { cat "$DIR/airlockd.log"; exit 1; }

say "Before login: the session is refused, with what to do"
mkdir -p "$DIR/Cursor"; cp /bin/bash "$DIR/Cursor/cursor"
rpg_in_cgroup "$CG/airlock-demo/apps" "$DIR/Cursor/cursor" -c "psql -X 'host=$REMOTE port=5432 dbname=app user=agent connect_timeout=5' -c 'select 1' 2>&1" | sed 's/^/  /' || true

say "airlock login --device (the demo script plays the person approving on another device)"
"$BIN/airlock" login --device >"$DIR/login.out" 2>"$DIR/login.err" &
LOGIN_PID=$!
for _ in $(seq 100); do grep -q 'enter the code' "$DIR/login.err" 2>/dev/null && break; sleep 0.1; done
sed 's/^/  /' "$DIR/login.err"
VERIFY_URL=$(grep -o 'open [^ ]* and enter' "$DIR/login.err" | head -1 | cut -d' ' -f2)
USER_CODE=$(grep -o 'enter the code [A-Za-z0-9_-]*' "$DIR/login.err" | head -1 | awk '{print $4}')
echo "  (approving code $USER_CODE at $VERIFY_URL)"
"$BIN/airlock-testidp" approve --url "$VERIFY_URL" --code "$USER_CODE"
wait "$LOGIN_PID"; LOGIN_PID=""
sed 's/^/  /' "$DIR/login.out"

say "airlock whoami"
"$BIN/airlock" whoami | sed 's/^/  /'

say "A process named like Cursor opens a terminal that runs psql against $REMOTE:5432"
cat > "$DIR/agent.sh" <<AGENT
# What the agent types in Cursor's terminal: no password, the usual address.
sleep 0.5
psql -X "host=$REMOTE port=5432 dbname=app user=agent sslmode=prefer" \
  -c "SELECT current_user AS upstream_role, current_setting('application_name') AS attributed_as" \
  -c "SELECT id, name, email, card FROM customers ORDER BY id" \
  -c "SELECT c.email AS e, upper(c.card) AS looks_harmless FROM (SELECT * FROM customers) c WHERE id = 1" \
  -c "SELECT reverse(email) AS backwards, translate(card, '0123456789', 'abcdefghij') AS as_letters FROM customers WHERE id = 1" \
  -c "SELECT set_config('demo.stash', email, false) FROM customers WHERE id = 1" -c "SHOW demo.stash" \
  -c "SELECT pg_sleep(3)" >"$DIR/agent.out" 2>&1
AGENT
# The cgroup is the demo's: Cursor is recognised by its executable.
rpg_in_cgroup "$CG/airlock-demo/apps" "$DIR/Cursor/cursor" "$DIR/agent.sh" &
CURSOR_PID=$!
sleep 1.5

say "airlock status, while the session is live"
"$BIN/airlock" status

wait "$CURSOR_PID" || true; CURSOR_PID=""
say "What the agent saw"
cat "$DIR/agent.out"

sleep 1
say "The audit record (embedded SQLite in $DIR/state/audit): airlock sessions"
"$BIN/airlock" sessions
SID=$("$BIN/airlock" sessions --json | sed -n 's/^    "id": "\([a-z0-9]*\)",$/\1/p' | head -1)

say "airlock sessions show $SID: who, from which process, and the timeline"
"$BIN/airlock" sessions show "$SID"

say "airlock replay $SID: the statements in order, with timing, outcome and what the agent saw (masked)"
"$BIN/airlock" replay "$SID"

say "airlock audit reveal $SID --identity officer.key: the compliance officer reads the originals (and the record notes it)"
"$BIN/airlock" audit reveal "$SID" --identity "$DIR/officer.key"
"$BIN/airlock" sessions show "$SID" | grep -E 'mask\.originals|audit\.reveal' | sed 's/^/  /'

say "bob (group dba, exempt from the masking rules) logs in, and runs the same query through airlock run"
# bob's account: uid 65534 stands in for it. root logs him in (recorded as by=0).
"$BIN/airlock" login --device --for-uid 65534 >"$DIR/login-bob.out" 2>"$DIR/login-bob.err" &
LOGIN_PID=$!
for _ in $(seq 100); do grep -q 'enter the code' "$DIR/login-bob.err" 2>/dev/null && break; sleep 0.1; done
VERIFY_URL=$(grep -o 'open [^ ]* and enter' "$DIR/login-bob.err" | head -1 | cut -d' ' -f2)
USER_CODE=$(grep -o 'enter the code [A-Za-z0-9_-]*' "$DIR/login-bob.err" | head -1 | awk '{print $4}')
"$BIN/airlock-testidp" approve --url "$VERIFY_URL" --code "$USER_CODE" --as bob
wait "$LOGIN_PID"; LOGIN_PID=""
sed 's/^/  /' "$DIR/login-bob.out"
install -m 755 "$BIN/airlock" "$DIR/airlock-cli"   # where uid 65534 can run it
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp "$DIR/airlock-cli" run -- \
  psql -X "host=$REMOTE port=5432 dbname=app user=bob sslmode=prefer" -c "SELECT id, name, email, card FROM customers ORDER BY id" 2>&1 | sed 's/^/  /'

say "airlock audit verify: the hash chain and signed checkpoints are intact"
"$BIN/airlock" audit verify

say "The just-in-time role is gone (airlock_orphans, the NOLOGIN owner of anything a session leaves behind, stays)"
# The last session's role is dropped as its session ends, just after the
# client quits: give it a moment (bounded) before counting.
ROLES_LEFT="SELECT count(*) FROM pg_roles WHERE rolname LIKE 'airlock\_%' AND rolname NOT IN ('airlock_admin', 'airlock_orphans')"
for _ in $(seq 50); do [ "$("${PSQL_ADMIN[@]}" -d postgres -At -c "$ROLES_LEFT")" = 0 ] && break; sleep 0.1; done
echo "session roles left by airlock: $("${PSQL_ADMIN[@]}" -d postgres -At -c "$ROLES_LEFT")"

say "Fail closed: with airlockd stopped, the same connection is refused, not sent around it"
kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
rpg_in_cgroup "$CG/airlock-demo/apps" "$DIR/Cursor/cursor" -c "psql -X 'host=$REMOTE port=5432 dbname=app user=agent connect_timeout=3' -c 'select 1' 2>&1" | sed 's/^/  /' || true

say "Done; cleaning up"
