#!/usr/bin/env bash
# Airlock benchmarks (`sudo make bench`), written to docs/BENCHMARKS.md.
#
# This script only sets up; tests/bench/report (Go) measures and writes the
# report. A "remote" PostgreSQL server in a network namespace
# (tests/lib/remote-pg.sh) is reached by pgbench on several paths, measured
# back to back and rotated per cell:
#   direct        pgbench -> 10.250.78.2:5432 as a static user (SCRAM)
#   airlock       pgbench in an intercepted cgroup -> the same address, served
#                 by airlockd (default driver) with a just-in-time role per session
#   airlock-tls   the same with sslmode=require (TLS on the client leg)
#   airlock-DRV   another airlockd, proxy.driver: DRV (BENCH_DRIVERS)
#   pgbouncer     pgbench -> PgBouncer (session mode) on 127.0.0.1 -> the server
# Each part runs in a cgroup of its own under /sys/fs/cgroup/airlock-bench-host
# (server, pgbouncer, airlockd-*, pgbench) or, for airlock's clients, under
# the daemon's attach cgroup, so the report gives each one's CPU per transaction.
#
# Environment (defaults in brackets):
#   BENCH_QUICK [0]            1: 1/10/50 clients, 5 s, TPC-B in simple mode only (a few minutes)
#   BENCH_SECONDS [10]         pgbench -T per run
#   BENCH_CLIENTS ["1 10 50 200"]
#   BENCH_MODES ["simple extended prepared"]
#   BENCH_SCRIPTS ["select tpcb"] ("none": only the feature comparisons)
#   BENCH_DRIVERS [""]         extra airlockd drivers to compare, e.g. "loop"
#   BENCH_FEATURES ["mask,guard,audit"]  features measured on and off in the
#                              same run ("none": skip); each adds an airlockd:
#     airlock-mask     masking rules on bench_people (email: keyed hash, card:
#                      partial); a pgbench script reads 20 masked rows a
#                      transaction (against direct), and pgbench -S reads
#                      tables no rule names (against airlock, masking off)
#     airlock-noguard  AIRLOCK_BENCH_OFF=guard: no SQL policy stage
#     airlock-noaudit  AIRLOCK_BENCH_OFF=audit: events to the log only
#     airlock-pgstore  recording into a PostgreSQL team store (a database
#                      of its own on the same server) instead of SQLite
#   BENCH_ROUNDS [3]           rounds of the feature comparisons
#   BENCH_LOOPS [cores]        event loops of the loop driver (AIRLOCK_PGWIRE_LOOPS)
#   BENCH_IDLE [1000]          idle sessions held open for the memory figure (0: skip)
#   BENCH_SCALE [10]           pgbench -i -s
#   BENCH_LOG_LEVEL [info]     airlockd's log_level
#   BENCH_OUT [docs/BENCHMARKS.md]
#   BENCH_HOLD [""]           1: set everything up, then wait (to profile by hand);
#                              BENCH_HOLD_BIN, _ENV, _OFF, _PGSTORE: a further daemon (below);
#                              BENCH_HOLD_PGCONF: one more postgresql.conf line
#                              BENCH_HOLD_LADDER: recording's steps, one daemon each (below)
#                              BENCH_HOLD_YAML: config lines for that further daemon (e.g. the
#                              masking rules, to compare two builds masked)
#                              While held, `report -compare A,B` measures two of the paths
#                              (the held ones included) in pairs of back-to-back runs.
# Runs as root. Everything it creates (namespace, cgroups, pins, servers,
# files) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "bench: run as root (sudo make bench)"; exit 1; }
. ./tests/lib/remote-pg.sh

BENCH_IDLE=${BENCH_IDLE:-1000}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-info}
BENCH_DRIVERS=${BENCH_DRIVERS:-}
BENCH_FEATURES=${BENCH_FEATURES-mask,guard,audit}
FEATURES=" $(echo "$BENCH_FEATURES" | tr ',' ' ') "
[[ $FEATURES == *" none "* ]] && FEATURES=" "
has_feature() { [[ $FEATURES == *" $1 "* ]]; }
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}
COMMAND="sudo make bench  # BENCH_QUICK=${BENCH_QUICK:-0} BENCH_SECONDS=${BENCH_SECONDS:-} BENCH_CLIENTS='${BENCH_CLIENTS:-}' BENCH_MODES='${BENCH_MODES:-}' BENCH_SCRIPTS='${BENCH_SCRIPTS:-}' BENCH_DRIVERS='$BENCH_DRIVERS' BENCH_FEATURES='$BENCH_FEATURES' BENCH_ROUNDS=${BENCH_ROUNDS:-} BENCH_IDLE=$BENCH_IDLE BENCH_SCALE=$BENCH_SCALE BENCH_LOG_LEVEL=$BENCH_LOG_LEVEL (empty: the default)"

# Names and addresses of its own: never those of the demo (airlock-demo,
# 10.250.77.x, 15432) or of the Go tests.
NS=airlock-bench
HOST_IF=alk-bench0
NS_IF=alk-bench1
LOCAL=10.250.78.1
REMOTE=10.250.78.2
PORT=15433          # airlockd's front door (the next drivers take the next ports)
BOUNCER_PORT=16433  # PgBouncer, on 127.0.0.1
CGNAME=airlock-bench
BPFFS=/sys/fs/bpf/airlock-bench
DIR=/tmp/airlock-bench
BIN=$ROOT/bin
BENCH_PW=bench-static-pw-4711
ADMIN_PW=bench-admin-pw-4711
AUDIT_PW=bench-audit-pw-4711

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
log() { printf '   %s\n' "$*" >&2; }

BOUNCER_PID="" PG_PID="" OK=0
declare -A DAEMON_PIDS=()
cleanup() {
  set +e
  local d
  for d in "${!DAEMON_PIDS[@]}"; do kill "${DAEMON_PIDS[$d]}" 2>/dev/null; wait "${DAEMON_PIDS[$d]}" 2>/dev/null; done
  if [ "$OK" != 1 ]; then
    for d in "$DIR"/airlockd*.log; do
      [ -f "$d" ] && { echo "bench: failed; the end of $d:" >&2; tail -20 "$d" >&2; }
    done
  fi
  for d in "$DIR"/airlock*.yaml; do
    [ -f "$d" ] && "$BIN/airlockd" uninstall --config "$d" >/dev/null 2>&1
  done
  rm -rf "$BPFFS"*
  if [ -f "$DIR/bouncer/pgbouncer.pid" ]; then kill "$(cat "$DIR/bouncer/pgbouncer.pid")" 2>/dev/null; fi
  if [ -n "$BOUNCER_PID" ]; then kill "$BOUNCER_PID" 2>/dev/null; wait "$BOUNCER_PID" 2>/dev/null; fi
  rpg_pg_stop "$DIR" "$PG_PID" 10
  rpg_netns_down "$NS" "$HOST_IF"
  local cg; cg=$(rpg_cgroup2_mount)
  if [ -n "$cg" ]; then
    for d in "$cg/$CGNAME" "$cg/$CGNAME"-*; do
      [ "$d" = "$cg/$CGNAME-host" ] && continue
      rpg_cgroup_remove "$d"
    done
    # This script leaves its accounting cgroup before removing it.
    [ -d "$cg/$CGNAME-host" ] && echo $$ > "$cg/cgroup.procs"
    rpg_cgroup_remove "$cg/$CGNAME-host"
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup; set -e # cleanup turns errexit off

for t in pgbench psql pgbouncer go; do
  command -v "$t" >/dev/null || { echo "bench: $t not found (make deps)"; exit 1; }
done
[ -x "$BIN/airlockd" ] && [ -x "$BIN/airlock" ] || make build
PGBIN=$(rpg_pgbin)
CG=$(rpg_cgroup2_mount)
[ -n "$CG" ] || { echo "bench: no cgroup v2 mount"; exit 1; }
mkdir -p "$DIR"; chmod 755 "$DIR"
HOST=$CG/$CGNAME-host
mkdir -p "$HOST/script" "$HOST/server" "$HOST/pgbouncer" "$HOST/pgbench"
echo $$ > "$HOST/script/cgroup.procs"
# Starts "$@" in the background inside cgroup $1: this shell steps in for the
# fork and back out, so the process and all it forks are counted there.
start_in() {
  local cg=$1; shift
  echo $$ > "$cg/cgroup.procs"
  "$@" &
  STARTED=$!
  echo $$ > "$HOST/script/cgroup.procs"
}
go build -o "$DIR/report" ./tests/bench/report
go build -o "$DIR/idle" ./tests/bench/idle
go test -c -o "$DIR/pgwire.test" ./internal/pgwire/ # BenchmarkPipeRows; compiled before anything is measured
go test -c -o "$DIR/mask.test" ./internal/mask/     # BenchmarkDetectMixed, BenchmarkMaskMixed

# ---------------------------------------------------------------- setup
say "Remote PostgreSQL in namespace $NS at $REMOTE"
rpg_netns_up "$NS" "$HOST_IF" "$NS_IF" "$LOCAL" "$REMOTE" 30
rpg_pg_init "$DIR" bench-superuser-pw "$REMOTE" \
  "max_connections = 1400" "shared_buffers = 256MB" "fsync = off" "synchronous_commit = off" \
  "full_page_writes = off" "max_wal_size = 4GB" "log_min_messages = warning" ${BENCH_HOLD:+"${BENCH_HOLD_PGCONF:-}"}
echo $$ > "$HOST/server/cgroup.procs"
rpg_pg_start "$NS" "$DIR"; PG_PID=$RPG_PG_PID
echo $$ > "$HOST/script/cgroup.procs"
rpg_pg_wait "$DIR" 300
ADMIN=(psql -X -q -v ON_ERROR_STOP=1 -h "$DIR/pg" -U postgres)
"${ADMIN[@]}" -d postgres <<SQL
CREATE ROLE airlock_admin LOGIN CREATEROLE PASSWORD '$ADMIN_PW';
CREATE ROLE bench_rw NOLOGIN;
CREATE ROLE bench LOGIN PASSWORD '$BENCH_PW' IN ROLE bench_rw;
CREATE DATABASE bench;
SQL
log "pgbench -i -s $BENCH_SCALE (as the admin: ephemeral roles own nothing)"
pgbench -i -s "$BENCH_SCALE" -q -h "$DIR/pg" -U postgres bench >"$DIR/init.log" 2>&1 || { cat "$DIR/init.log"; exit 1; }
if has_feature mask; then
  # Rows with an email and a card number, which airlock-mask's rules cover.
  "${ADMIN[@]}" -d bench <<SQL
CREATE TABLE bench_people AS
  SELECT g AS id, 'Person ' || g AS name, 'user' || g || '@corp-mail.com' AS email,
         (4000000000000000 + g)::text AS card, (ARRAY['free', 'pro', 'team'])[1 + g % 3] AS plan
  FROM generate_series(1, 100000) g;
ALTER TABLE bench_people ADD PRIMARY KEY (id);
SQL
  cat > "$DIR/masked.sql" <<'SQL'
\set a random(1, 99981)
SELECT id, name, email, card, plan FROM bench_people WHERE id BETWEEN :a AND :a + 19;
SQL
fi
if has_feature audit; then
  # The team store of airlock-pgstore: its own role and database on the
  # same server (a team's store is another machine; here it shares the cores).
  "${ADMIN[@]}" -d postgres <<SQL
CREATE ROLE airlock_audit LOGIN PASSWORD '$AUDIT_PW';
CREATE DATABASE airlock_audit OWNER airlock_audit;
SQL
fi
"${ADMIN[@]}" -d bench <<SQL
GRANT USAGE ON SCHEMA public TO bench_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench_rw;
VACUUM ANALYZE;
SQL

say "PgBouncer $(pgbouncer --version | head -1 | awk '{print $2}') on 127.0.0.1:$BOUNCER_PORT (session mode)"
install -d -o postgres -g postgres "$DIR/bouncer"
cat > "$DIR/bouncer/pgbouncer.ini" <<INI
[databases]
bench = host=$REMOTE port=5432 dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/bouncer/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 250
max_db_connections = 300
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
logfile = $DIR/bouncer/pgbouncer.log
pidfile = $DIR/bouncer/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
echo "\"bench\" \"$BENCH_PW\"" > "$DIR/bouncer/userlist.txt"
chown postgres:postgres "$DIR/bouncer/pgbouncer.ini" "$DIR/bouncer/userlist.txt"
chmod 600 "$DIR/bouncer/userlist.txt"
start_in "$HOST/pgbouncer" runuser -u postgres -- pgbouncer "$DIR/bouncer/pgbouncer.ini" >"$DIR/bouncer/stdout" 2>&1
BOUNCER_PID=$STARTED

install -d -m 700 "$DIR/secrets"
echo "$ADMIN_PW" > "$DIR/secrets/admin"; chmod 600 "$DIR/secrets/admin"
# start_daemon NAME DRIVER PORT [OFF [YAML]]: an airlockd attached to
# /$CGNAME[-NAME], whose clients run in its clients/ child; OFF is its
# AIRLOCK_BENCH_OFF, YAML more configuration.
start_daemon() {
  local name=$1 driver=$2 port=$3 off=${4:-} extra=${5:-} suffix=""
  [ "$name" = airlock ] || suffix="-${name#airlock-}"
  local attach=$CGNAME$suffix cfg=$DIR/$name.yaml
  mkdir -p "$CG/$attach/clients" "$HOST/$name"
  local driverline=""
  [ -n "$driver" ] && driverline="  driver: $driver"
  cat > "$cfg" <<YAML
state_dir: $DIR/state-$name
runtime_dir: $DIR/run-$name
log_level: $BENCH_LOG_LEVEL
proxy:
  port: $port
$driverline
intercept:
  mode: all
  attach_cgroup: /$attach
  bpffs: $BPFFS$suffix
dns:
  hosts: "-"
targets:
  - name: benchdb
    address: $REMOTE:5432
connections:
  - name: benchdb
    protocol: postgres
    targets: [benchdb]
    postgres:
      databases: [bench]
      upstream:
        tls: {mode: disable}
      credential:
        mode: ephemeral
        admin_user: airlock_admin
        admin_password_file: $DIR/secrets/admin
        group_roles: [bench_rw]
        ttl: 1h
$extra
YAML
  start_in "$HOST/$name" env AIRLOCK_PGWIRE_LOOPS="${BENCH_LOOPS:-}" AIRLOCK_BENCH_OFF="$off" ${DAEMON_ENV:-} "${DAEMON_BIN:-$BIN/airlockd}" --config "$cfg" >>"$DIR/$name.log" 2>&1
  DAEMON_PIDS[$name]=$STARTED
  local i
  for ((i = 0; i < 300; i++)); do
    AIRLOCK_SOCKET=$DIR/run-$name/airlock.sock "$BIN/airlock" status >/dev/null 2>&1 && return 0
    kill -0 "$STARTED" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: airlockd $name did not start" >&2; exit 1
}

DSN_DIRECT="host=$REMOTE port=5432 dbname=bench user=bench password=$BENCH_PW sslmode=disable connect_timeout=30"
DSN_AIRLOCK="host=$REMOTE port=5432 dbname=bench user=agent sslmode=disable connect_timeout=30"
DSN_BOUNCER="host=127.0.0.1 port=$BOUNCER_PORT dbname=bench user=bench password=$BENCH_PW sslmode=disable connect_timeout=30"

say "airlockd: mode all, ephemeral roles in bench_rw"
start_daemon airlock "" $PORT
PATHS=$(cat <<JSON
{"name": "direct", "kind": "direct", "dsn": "$DSN_DIRECT", "client_cgroup": "$HOST/pgbench",
 "note": "pgbench connects to \`$REMOTE:5432\` as the static user \`bench\` (SCRAM)."},
{"name": "airlock", "kind": "airlock", "dsn": "$DSN_AIRLOCK", "client_cgroup": "$CG/$CGNAME/clients",
 "proxy_cgroup": "$HOST/airlock", "proxy_pid": ${DAEMON_PIDS[airlock]}, "socket": "$DIR/run-airlock/airlock.sock",
 "note": "pgbench in a child of the attach cgroup of an airlockd (\`mode: all\`, default \`proxy.driver\`) connects to the same address as \`agent\` without a password; redirected to airlockd's front door, served with a just-in-time role (\`CREATE ROLE ... IN ROLE bench_rw\` per session), upstream TLS off, \`sslmode=disable\`, \`log_level: $BENCH_LOG_LEVEL\`."},
{"name": "airlock-tls", "kind": "airlock-tls", "dsn": "${DSN_AIRLOCK/sslmode=disable/sslmode=require}", "client_cgroup": "$CG/$CGNAME/clients",
 "proxy_cgroup": "$HOST/airlock", "proxy_pid": ${DAEMON_PIDS[airlock]}, "socket": "$DIR/run-airlock/airlock.sock", "only": ["select"],
 "note": "the same airlockd with \`sslmode=require\`: TLS 1.3 on the client leg (airlockd's own certificate), plain upstream. Select-only cells only."},
JSON
)
p=$PORT
for d in $BENCH_DRIVERS; do
  p=$((p + 1))
  start_daemon "airlock-$d" "$d" $p
  PATHS+=$(cat <<JSON

{"name": "airlock-$d", "kind": "airlock", "dsn": "$DSN_AIRLOCK", "client_cgroup": "$CG/$CGNAME-$d/clients",
 "proxy_cgroup": "$HOST/airlock-$d", "proxy_pid": ${DAEMON_PIDS[airlock-$d]}, "socket": "$DIR/run-airlock-$d/airlock.sock",
 "note": "as **airlock**, from another airlockd configured with \`proxy.driver: $d\`."},
JSON
)
done
p=$((PORT + 20))
feature_path() { # NAME FEATURE NOTE
  PATHS+=$(cat <<JSON

{"name": "$1", "kind": "airlock", "feature": "$2", "dsn": "$DSN_AIRLOCK", "client_cgroup": "$CG/$CGNAME-${1#airlock-}/clients",
 "proxy_cgroup": "$HOST/$1", "proxy_pid": ${DAEMON_PIDS[$1]}, "socket": "$DIR/run-$1/airlock.sock",
 "note": "$3"},
JSON
)
}
if has_feature mask; then
  head -c 48 /dev/urandom > "$DIR/secrets/mask.key"; chmod 600 "$DIR/secrets/mask.key"
  MASK_YAML=$(cat <<YAML
masking:
  key_file: $DIR/secrets/mask.key
  rules:
    - name: pii
      columns: ["public.bench_people.email"]
      strategy: hash
    - name: cards
      columns: ["public.bench_people.card"]
      strategy: partial
      keep: 4
YAML
)
  start_daemon airlock-mask "" $((p += 1)) "" "$MASK_YAML"
  feature_path airlock-mask mask "as **airlock**, from an airlockd with masking rules on \`public.bench_people\` (\`email\`: keyed hash, \`card\`: partial, last 4 kept)."
fi
if has_feature guard; then
  start_daemon airlock-noguard "" $((p += 1)) guard
  feature_path airlock-noguard guard "as **airlock**, from an airlockd started with \`AIRLOCK_BENCH_OFF=guard\`: no SQL policy stage (guardrails off)."
fi
if has_feature audit; then
  start_daemon airlock-noaudit "" $((p += 1)) audit
  feature_path airlock-noaudit audit "as **airlock**, from an airlockd started with \`AIRLOCK_BENCH_OFF=audit\`: session and statement events go to the log only, not to the audit record (recording off). **airlock** records to the embedded SQLite store."
  echo "$AUDIT_PW" > "$DIR/secrets/audit"; chmod 600 "$DIR/secrets/audit"
  PGSTORE_YAML=$(cat <<YAML
audit:
  store: postgres://airlock_audit@$REMOTE:5432/airlock_audit?sslmode=disable
  password_file: $DIR/secrets/audit
YAML
)
  start_daemon airlock-pgstore "" $((p += 1)) "" "$PGSTORE_YAML"
  feature_path airlock-pgstore audit-pgstore "as **airlock**, recording into a PostgreSQL store (\`audit.store: postgres://…\`, a database of its own on the same server) instead of SQLite; compared with **airlock-noaudit**."
  if has_feature mask; then
    # Masking's cost on results it does not touch, measured with recording
    # off on both sides: two recording daemons differ from round to round
    # by more than the 5% this compares (the shipper's work lands unevenly).
    start_daemon airlock-mask-noaudit "" $((p += 1)) audit "$MASK_YAML"
    feature_path airlock-mask-noaudit mask-noaudit "as **airlock-mask**, started with \`AIRLOCK_BENCH_OFF=audit\` (recording off), compared with **airlock-noaudit**: masking alone."
  fi
fi
if [ -n "${BENCH_HOLD:-}" ] && has_feature audit; then
  # For profiling a driver's own cost by hand: recording off, each driver
  # compared (not measured by the report).
  for d in $BENCH_DRIVERS; do start_daemon "airlock-noaudit-$d" "$d" $((p += 1)) audit; done
  # BENCH_HOLD_ENV="GOMAXPROCS=1 ..." and/or BENCH_HOLD_BIN=path/to/airlockd
  # (another build, for A/B in one setup): one more with those, named
  # airlock-env, recording off unless BENCH_HOLD_OFF says otherwise ("").
  # BENCH_HOLD_PGSTORE=1: airlock-env records into a team store of its own
  # (database airlock_audit_env), so that two builds whose schemas differ
  # are compared against the same server.
  if [ -n "${BENCH_HOLD_ENV:-}${BENCH_HOLD_BIN:-}" ]; then
    ENV_YAML=${BENCH_HOLD_YAML:-}
    if [ -n "${BENCH_HOLD_PGSTORE:-}" ]; then
      "${ADMIN[@]}" -d postgres -c "CREATE DATABASE airlock_audit_env OWNER airlock_audit"
      ENV_YAML=${PGSTORE_YAML/\/airlock_audit\?//airlock_audit_env?}${BENCH_HOLD_YAML:+$'\n'$BENCH_HOLD_YAML}
    fi
    DAEMON_ENV=${BENCH_HOLD_ENV:-} DAEMON_BIN=${BENCH_HOLD_BIN:-} start_daemon airlock-env "" $((p += 1)) "${BENCH_HOLD_OFF-audit}" "$ENV_YAML"
    feature_path airlock-env hold "held only: ${BENCH_HOLD_BIN:-this build}, AIRLOCK_BENCH_OFF=${BENCH_HOLD_OFF-audit}."
  fi
  # BENCH_HOLD_LADDER="audit record ship storesync none": one daemon per
  # AIRLOCK_BENCH_OFF step of recording (internal/daemon/benchoff.go;
  # "none": recording on; "encode" and "ringcopy", between record and
  # ship, split Writer.Record's cost: a statement's record encoded into a
  # buffer in cache and dropped, or copied from it into the ring; "fused",
  # ship with each record chained by the drain, about the least a record
  # path built around one write would do), named
  # airlock-l-STEP, all started alike (with
  # BENCH_HOLD_LADDER_ENV, e.g. GODEBUG=gctrace=1), so that the ladder is
  # measured against itself. BENCH_HOLD_PROFILE=1: each serves Go's
  # profiles on $DIR/prof-airlock-l-STEP/pprof.sock.
  for step in ${BENCH_HOLD_LADDER:-}; do
    off=$step
    [ "$step" = none ] && off=""
    prof=""
    [ -n "${BENCH_HOLD_PROFILE:-}" ] && prof=AIRLOCK_BENCH_PROFILE=$DIR/prof-airlock-l-$step
    DAEMON_ENV="${BENCH_HOLD_LADDER_ENV:-} $prof" start_daemon "airlock-l-$step" "" $((p += 1)) "$off"
    feature_path "airlock-l-$step" hold "held only: recording's step $step."
  done
fi
PATHS+=$(cat <<JSON

{"name": "pgbouncer", "kind": "pgbouncer", "dsn": "$DSN_BOUNCER", "client_cgroup": "$HOST/pgbench",
 "proxy_cgroup": "$HOST/pgbouncer",
 "note": "pgbench connects to PgBouncer on \`127.0.0.1:$BOUNCER_PORT\` (session mode, SCRAM for the client, the static user \`bench\` upstream, pool of 250)."}
JSON
)

# Every path works before anything is measured.
for cg_dsn in "$HOST/pgbench|$DSN_DIRECT|bench" "$CG/$CGNAME/clients|$DSN_AIRLOCK|airlock_" "$HOST/pgbench|$DSN_BOUNCER|bench"; do
  IFS='|' read -r cg dsn want <<<"$cg_dsn"
  who=""
  for _ in $(seq 50); do
    who=$(rpg_in_cgroup "$cg" timeout 30 psql -X -At "$dsn" -c "SELECT current_user" 2>&1) && break
    sleep 0.2
  done
  log "connected as $who"
  [[ $who == "$want"* ]] || { echo "bench: a path does not work: $who" >&2; exit 1; }
done

if has_feature mask; then
  # Masking really masks on airlock-mask and only there.
  q="SELECT email || ' ' || card FROM bench_people WHERE id = 1"
  plain=$(rpg_in_cgroup "$CG/$CGNAME/clients" timeout 30 psql -X -At "$DSN_AIRLOCK" -c "$q")
  masked=$(rpg_in_cgroup "$CG/$CGNAME-mask/clients" timeout 30 psql -X -At "$DSN_AIRLOCK" -c "SELECT email, card FROM bench_people WHERE id = 1" -F ' ')
  log "bench_people row 1: '$plain' through airlock, '$masked' through airlock-mask"
  [ "$plain" = "user1@corp-mail.com 4000000000000001" ] && [ -n "$masked" ] && [[ $masked != *user1@* && $masked != *400000000000* ]] ||
    { echo "bench: masking is not in force on airlock-mask" >&2; exit 1; }
fi
for n in noguard noaudit pgstore; do
  [ -d "$CG/$CGNAME-$n" ] || continue
  who=$(rpg_in_cgroup "$CG/$CGNAME-$n/clients" timeout 30 psql -X -At "$DSN_AIRLOCK" -c "SELECT current_user" 2>&1)
  log "airlock-$n: connected as $who"
  [[ $who == airlock_* ]] || { echo "bench: airlock-$n does not work: $who" >&2; exit 1; }
done

ALSO=""
for d in $BENCH_DRIVERS; do ALSO+="${ALSO:+,}\"airlock-$d\""; done
OWN=$(find "$CG/$CGNAME" "$CG/$CGNAME"-* -maxdepth 0 -type d -printf '"%p",' | sed 's/,$//')
cat > "$DIR/setup.json" <<JSON
{
 "dir": "$DIR",
 "airlock": "$BIN/airlock",
 "command": "$COMMAND",
 "server_cgroup": "$HOST/server",
 "own_cgroups": [$OWN],
 "idle": {"path": "airlock", "binary": "$DIR/idle", "sessions": $BENCH_IDLE, "also": [$ALSO]},
 "pipe_bench": "$DIR/pgwire.test",
 "mask_bench": "$DIR/mask.test",
 "features": [$(for f in $FEATURES; do printf '"%s",' "$f"; done | sed 's/,$//')],
 "mask_script": "$DIR/masked.sql",
 "mask_rows": 20,
 "machine": {
  "memory": "$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)",
  "OS": "$(. /etc/os-release; echo "$PRETTY_NAME")",
  "PostgreSQL": "$("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) //') (in a network namespace behind a veth pair)",
  "PgBouncer": "$(pgbouncer --version | head -1 | awk '{ print $2 }')",
  "pgbench": "$(pgbench --version | awk '{ print $3 }')",
  "Go": "$(go version | awk '{ print $3 }')",
  "airlock": "$(git describe --always --dirty 2>/dev/null || echo unknown)"
 },
 "setup": [
  "PostgreSQL: \`max_connections = 1400\`, \`shared_buffers = 256MB\`, \`fsync = off\`, \`synchronous_commit = off\`, SCRAM-SHA-256 on TCP, no TLS; \`pgbench -i -s $BENCH_SCALE\` by the superuser, the tables granted to the group role \`bench_rw\`.",
  "pgbench, airlockd, PgBouncer and PostgreSQL all share the machine's $(nproc) cores."
 ],
 "paths": [$PATHS]
}
JSON

if [ -n "${BENCH_HOLD:-}" ]; then
  # For profiling by hand (perf record -g -p PID): everything stays up
  # until this script gets SIGTERM (a script started in the background ignores SIGINT).
  say "Holding (BENCH_HOLD): kill -TERM $$ to tear down"
  for d in "${!DAEMON_PIDS[@]}"; do log "$d: pid ${DAEMON_PIDS[$d]}, clients in $CG/$CGNAME${d#airlock}/clients"; done
  log "airlock: rpg_in_cgroup CGROUP pgbench '$DSN_AIRLOCK' ...; direct: '$DSN_DIRECT'; pgbouncer: '$DSN_BOUNCER'"
  log "two paths in pairs of runs: $DIR/report -setup $DIR/setup.json -compare A,B -pairs 24 -seconds 5 [-cell select/simple/10]"
  sleep infinity &
  wait $! || true
fi
say "Measuring (tests/bench/report)"
"$DIR/report" -setup "$DIR/setup.json" -out "$OUT"
OK=1
say "Done: $OUT"
