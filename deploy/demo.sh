#!/usr/bin/env bash
# Airlock demo: run as root on a fresh Debian machine (`sudo make demo`).
#
# Builds a throwaway "remote" PostgreSQL server in a network namespace, starts
# airlockd with deploy/examples-like settings, and shows a process named like
# Cursor reaching the database by its usual address: the connection is
# intercepted, attributed to the process and its person, served with a
# just-in-time role that the client never sees, and recorded. Everything it
# creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo make demo)"; exit 1; }

NS=airlock-demo
DIR=/tmp/airlock-demo
REMOTE=10.250.77.2
LOCAL=10.250.77.1
PORT=15432
BIN=$PWD/bin
PGBIN=""

# cgroup v2 may be at /sys/fs/cgroup or, on hybrid hosts, elsewhere.
cgroup2_mount() { awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup2") { print $5; exit } break }}' /proc/self/mountinfo; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  [ -n "${CURSOR_PID:-}" ] && kill "$CURSOR_PID" 2>/dev/null
  if [ -n "${DAEMON_PID:-}" ]; then kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; fi
  [ -f "$DIR/airlock.yaml" ] && "$BIN/airlockd" uninstall --config "$DIR/airlock.yaml" >/dev/null 2>&1
  [ -n "${PG_PID:-}" ] && kill -INT "$PG_PID" 2>/dev/null && sleep 1
  ip netns del "$NS" 2>/dev/null
  ip link del alk-demo0 2>/dev/null
  CG=$(cgroup2_mount)
  if [ -n "$CG" ] && [ -d "$CG/airlock-demo" ]; then
    for d in $(find "$CG/airlock-demo" -mindepth 1 -type d | sort -r); do
      cat "$d/cgroup.procs" 2>/dev/null | xargs -r kill -9 2>/dev/null; rmdir "$d" 2>/dev/null
    done
    rmdir "$CG/airlock-demo" 2>/dev/null
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
cleanup; trap cleanup EXIT

say "Installing what the demo needs (Debian packages)"
./tests/deps.sh
[ -x "$BIN/airlockd" ] || make build
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | tail -1)")

say "A 'remote' database host: network namespace $NS at $REMOTE"
mkdir -p "$DIR"; chmod 755 "$DIR"
ip netns add "$NS"
ip link add alk-demo0 type veth peer name alk-demo1
ip link set alk-demo1 netns "$NS"
ip addr add "$LOCAL/30" dev alk-demo0; ip link set alk-demo0 up
ip -n "$NS" addr add "$REMOTE/30" dev alk-demo1; ip -n "$NS" link set alk-demo1 up; ip -n "$NS" link set lo up

install -d -o postgres -g postgres "$DIR/pg"
echo "demo-superuser-pw" > "$DIR/pg/pw"; chown postgres "$DIR/pg/pw"
runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/pg/data" -U postgres --pwfile "$DIR/pg/pw" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >/dev/null
rm -f "$DIR/pg/pw"
cat >> "$DIR/pg/data/postgresql.conf" <<CONF
listen_addresses = '$REMOTE'
unix_socket_directories = '$DIR/pg'
fsync = off
CONF
echo "local all all trust
host all all 0.0.0.0/0 scram-sha-256" > "$DIR/pg/data/pg_hba.conf"
ip netns exec "$NS" runuser -u postgres -- "$PGBIN/postgres" -D "$DIR/pg/data" >"$DIR/pg/log" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h "$DIR/pg" && break; sleep 0.1; done
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

say "airlockd configuration: tree mode for Cursor, db.internal:5432 with just-in-time roles"
install -d -m 700 "$DIR/secrets"
echo "demo-admin-pw" > "$DIR/secrets/appdb-admin"; chmod 600 "$DIR/secrets/appdb-admin"
echo "$REMOTE db.internal" > "$DIR/hosts"
CG=$(cgroup2_mount)
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
dns:
  hosts: $DIR/hosts   # the demo's name for the remote host
targets:
  - name: appdb
    address: db.internal:5432
connections:
  - name: appdb
    protocol: postgres
    targets: [appdb]
    postgres:
      databases: [app]
      upstream:
        tls: {mode: disable}
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: $DIR/secrets/appdb-admin
        group_roles: [app_readonly]
        ttl: 15m
YAML
sed 's/^/    /' "$DIR/airlock.yaml"

say "Starting airlockd"
"$BIN/airlockd" --config "$DIR/airlock.yaml" >"$DIR/airlockd.log" 2>&1 &
DAEMON_PID=$!
export AIRLOCK_SOCKET=$DIR/run/airlock.sock
for _ in $(seq 100); do "$BIN/airlock" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/airlock" status >/dev/null || { cat "$DIR/airlockd.log"; exit 1; }

say "A process named like Cursor opens a terminal that runs psql against $REMOTE:5432"
mkdir -p "$DIR/Cursor"; cp /bin/bash "$DIR/Cursor/cursor"
cat > "$DIR/agent.sh" <<AGENT
# What the agent types in Cursor's terminal: no password, the usual address.
sleep 0.5
psql -X "host=$REMOTE port=5432 dbname=app user=agent sslmode=prefer" \
  -c "SELECT current_user AS upstream_role, current_setting('application_name') AS attributed_as" \
  -c "SELECT id, name, email, card FROM customers ORDER BY id" \
  -c "SELECT pg_sleep(3)" >"$DIR/agent.out" 2>&1
AGENT
# The cgroup is the demo's: Cursor is recognised by its executable.
(echo $BASHPID > "$CG/airlock-demo/apps/cgroup.procs"; exec "$DIR/Cursor/cursor" "$DIR/agent.sh") &
CURSOR_PID=$!
sleep 1.5

say "airlock status, while the session is live"
"$BIN/airlock" status

wait "$CURSOR_PID" || true; CURSOR_PID=""
say "What the agent saw"
cat "$DIR/agent.out"

sleep 1
say "What airlockd recorded (session, credential and statement events)"
grep -E 'msg=event' "$DIR/airlockd.log" | sed -E 's/^time=[^ ]+ level=INFO msg=event /  /'

say "The just-in-time role is gone"
"${PSQL_ADMIN[@]}" -d postgres -At -c "SELECT 'roles left by airlock: ' || count(*) FROM pg_roles WHERE rolname LIKE 'airlock\_%' AND rolname <> 'airlock_admin'"

say "Fail closed: with airlockd stopped, the same connection is refused, not sent around it"
kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
(echo $BASHPID > "$CG/airlock-demo/apps/cgroup.procs"; exec "$DIR/Cursor/cursor" -c "psql -X 'host=$REMOTE port=5432 dbname=app user=agent connect_timeout=3' -c 'select 1' 2>&1") | sed 's/^/  /' || true

say "Done; cleaning up"
