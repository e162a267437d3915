#!/usr/bin/env bash
# Airlock benchmarks (`sudo make bench`), written to docs/BENCHMARKS.md.
#
# A "remote" PostgreSQL server in a network namespace (tests/lib/remote-pg.sh)
# is reached three ways by pgbench, interleaved per configuration so that
# drift hits every path alike:
#   direct     pgbench -> 10.250.78.2:5432 as a static user (SCRAM)
#   airlock    pgbench in an intercepted cgroup -> the same address, served by
#              airlockd with a just-in-time role per session (ephemeral mode)
#   pgbouncer  pgbench -> PgBouncer (session mode) on 127.0.0.1 -> the server
# plus session setup (pgbench -C), the memory of 1,000 idle sessions, and the
# connect() latency that interception adds (BenchmarkConnectLatency).
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]        pgbench -T for each throughput run
#   BENCH_CLIENTS ["1 10 50"] client counts
#   BENCH_SETUP_SECONDS [10]  pgbench -C -T for session setup
#   BENCH_IDLE [1000]         idle sessions for the memory figure
#   BENCH_SCALE [10]          pgbench -i -s
#   BENCH_LOG_LEVEL [info]    airlockd's log_level (warn drops the per-statement event lines)
#   BENCH_OUT [docs/BENCHMARKS.md]
# Runs as root; about 10 minutes with the defaults. Everything it creates
# (namespace, cgroups, pins, servers, files) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "bench: run as root (sudo make bench)"; exit 1; }
. ./tests/lib/remote-pg.sh

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 10 50"}
BENCH_SETUP_SECONDS=${BENCH_SETUP_SECONDS:-10}
BENCH_IDLE=${BENCH_IDLE:-1000}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-info}
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}
COMMAND="sudo make bench  # = BENCH_SECONDS=$BENCH_SECONDS BENCH_CLIENTS=\"$BENCH_CLIENTS\" BENCH_SETUP_SECONDS=$BENCH_SETUP_SECONDS BENCH_IDLE=$BENCH_IDLE BENCH_SCALE=$BENCH_SCALE BENCH_LOG_LEVEL=$BENCH_LOG_LEVEL ./tests/bench/run.sh"

# Names and addresses of its own: never those of the demo (airlock-demo,
# 10.250.77.x, 15432) or of the Go tests.
NS=airlock-bench
HOST_IF=alk-bench0
NS_IF=alk-bench1
LOCAL=10.250.78.1
REMOTE=10.250.78.2
PORT=15433          # airlockd's front door
BOUNCER_PORT=16433  # PgBouncer, on 127.0.0.1
CGNAME=airlock-bench
BPFFS=/sys/fs/bpf/airlock-bench
DIR=/tmp/airlock-bench
BIN=$ROOT/bin
BENCH_PW=bench-static-pw-4711
ADMIN_PW=bench-admin-pw-4711

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
log() { printf '   %s\n' "$*" >&2; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

DAEMON_PID="" BOUNCER_PID="" PG_PID="" IDLE_PID="" OK=0
declare -A TPS LAT OTHER
cleanup() {
  set +e
  exec 7>&-
  [ -n "$IDLE_PID" ] && kill -9 "$IDLE_PID" 2>/dev/null
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; fi
  if [ "$OK" != 1 ] && [ -f "$DIR/airlockd.log" ]; then
    echo "bench: failed; the end of airlockd's log:" >&2; tail -20 "$DIR/airlockd.log" >&2
  fi
  [ -f "$DIR/airlock.yaml" ] && "$BIN/airlockd" uninstall --config "$DIR/airlock.yaml" >/dev/null 2>&1
  [ -d "$BPFFS" ] && rm -rf "$BPFFS"
  if [ -f "$DIR/bouncer/pgbouncer.pid" ]; then kill "$(cat "$DIR/bouncer/pgbouncer.pid")" 2>/dev/null; fi
  if [ -n "$BOUNCER_PID" ]; then kill "$BOUNCER_PID" 2>/dev/null; wait "$BOUNCER_PID" 2>/dev/null; fi
  rpg_pg_stop "$DIR" "$PG_PID" 10
  rpg_netns_down "$NS" "$HOST_IF"
  local cg; cg=$(rpg_cgroup2_mount)
  if [ -n "$cg" ]; then
    rpg_cgroup_remove "$cg/$CGNAME"
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
# The shared machine may be busy with other work. To say how busy, everything
# this script starts runs in two cgroups, $CGNAME-host (the script, servers,
# airlockd, direct and pgbouncer clients) and $CGNAME (airlock's clients):
# CPU time the kernel counts as busy beyond theirs is someone else's.
mkdir -p "$CG/$CGNAME-host"; echo $$ > "$CG/$CGNAME-host/cgroup.procs"
NCPU=$(nproc)
cpu_sample() { # busy µs of the machine, µs of our cgroups, wall µs
  local busy ours=0 f
  busy=$(awk '/^cpu / { printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e6 / '"$(getconf CLK_TCK)"' }' /proc/stat)
  for f in "$CG/$CGNAME-host/cpu.stat" "$CG/$CGNAME/cpu.stat"; do
    [ -f "$f" ] && ours=$((ours + $(awk '$1 == "usage_usec" { print $2 }' "$f")))
  done
  echo "$busy $ours $(date +%s%6N)"
}
other_cores() { # cores used by others between two cpu_sample outputs
  local a=($1) b=($2)
  calc "((${b[0]} - ${a[0]}) - (${b[1]} - ${a[1]})) / (${b[2]} - ${a[2]})" 2
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- setup
say "Remote PostgreSQL in namespace $NS at $REMOTE"
rpg_netns_up "$NS" "$HOST_IF" "$NS_IF" "$LOCAL" "$REMOTE" 30
rpg_pg_init "$DIR" bench-superuser-pw "$REMOTE" \
  "max_connections = 1200" "shared_buffers = 256MB" "fsync = off" "synchronous_commit = off" \
  "full_page_writes = off" "max_wal_size = 4GB" "log_min_messages = warning"
rpg_pg_start "$NS" "$DIR"; PG_PID=$RPG_PG_PID
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
default_pool_size = 100
max_db_connections = 200
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
runuser -u postgres -- pgbouncer "$DIR/bouncer/pgbouncer.ini" >"$DIR/bouncer/stdout" 2>&1 &
BOUNCER_PID=$!

say "airlockd: mode all in cgroup /$CGNAME, ephemeral roles in bench_rw"
install -d -m 700 "$DIR/secrets"
echo "$ADMIN_PW" > "$DIR/secrets/admin"; chmod 600 "$DIR/secrets/admin"
mkdir -p "$CG/$CGNAME/clients"
CLIENTS=$CG/$CGNAME/clients
cat > "$DIR/airlock.yaml" <<YAML
state_dir: $DIR/state
runtime_dir: $DIR/run
log_level: $BENCH_LOG_LEVEL
proxy:
  port: $PORT
intercept:
  mode: all
  attach_cgroup: /$CGNAME
  bpffs: $BPFFS
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
YAML
export AIRLOCK_SOCKET=$DIR/run/airlock.sock
start_daemon() {
  "$BIN/airlockd" --config "$DIR/airlock.yaml" >>"$DIR/airlockd.log" 2>&1 &
  DAEMON_PID=$!
  local i
  for ((i = 0; i < 150; i++)); do
    "$BIN/airlock" status >/dev/null 2>&1 && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: airlockd did not start" >&2; exit 1
}
start_daemon

# sslmode=disable on every path, so the comparison is like for like: airlockd
# answers SSLRequest with TLS, PostgreSQL (ssl off) and PgBouncer do not.
DSN_DIRECT="host=$REMOTE port=5432 dbname=bench user=bench password=$BENCH_PW sslmode=disable connect_timeout=30"
DSN_AIRLOCK="host=$REMOTE port=5432 dbname=bench user=agent sslmode=disable connect_timeout=30"
DSN_BOUNCER="host=127.0.0.1 port=$BOUNCER_PORT dbname=bench user=bench password=$BENCH_PW sslmode=disable connect_timeout=30"
# Runs a client on one path: airlock's clients run in the intercepted cgroup.
on_path() {
  local path=$1; shift
  if [ "$path" = airlock ]; then rpg_in_cgroup "$CLIENTS" "$@"; else "$@"; fi
}
dsn_of() { case $1 in direct) echo "$DSN_DIRECT" ;; airlock) echo "$DSN_AIRLOCK" ;; pgbouncer) echo "$DSN_BOUNCER" ;; esac; }

for p in direct airlock pgbouncer; do
  who=""
  for _ in $(seq 50); do
    who=$(on_path "$p" timeout 30 psql -X -At "$(dsn_of "$p")" -c "SELECT current_user" 2>&1) && break
    sleep 0.2
  done
  log "$p: connected as $who"
  case $p in airlock) [[ $who == airlock_* ]] ;; *) [ "$who" = bench ] ;; esac ||
    { echo "bench: $p path does not work: $who" >&2; exit 1; }
done

roles_left() { "${ADMIN[@]}" -d postgres -At -c "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'airlock\_%' AND rolname <> 'airlock_admin'"; }
wait_roles_dropped() {
  local i
  for ((i = 0; i < ${1:-600}; i++)); do [ "$(roles_left)" = 0 ] && return 0; sleep 0.1; done
  log "warning: $(roles_left) just-in-time roles still present"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status"; }

# ---------------------------------------------------------------- memory
# First, on a fresh daemon, so earlier runs' heap does not hide the cost.
say "Memory: $BENCH_IDLE idle sessions through airlockd"
go build -o "$DIR/idle" ./tests/bench/idle
wait_roles_dropped
kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
start_daemon
# Warm up: the first sessions allocate the proxy's long-lived state.
for _ in 1 2 3; do on_path airlock psql -X -At "$DSN_AIRLOCK" -c "SELECT 1" >/dev/null; done
wait_roles_dropped; sleep 2
RSS_BEFORE=$(rss_kib)
c0=$(cpu_sample)
mkfifo "$DIR/idle.in"
on_path airlock "$DIR/idle" -n "$BENCH_IDLE" -parallel 8 -timeout 5m -dsn "$DSN_AIRLOCK" <"$DIR/idle.in" >"$DIR/idle.out" 2>&1 &
IDLE_PID=$!
exec 7>"$DIR/idle.in"
for ((i = 0; i < 3300; i++)); do # at most 330 s; the program gives up at 300 s
  grep -q '^ready' "$DIR/idle.out" && break
  kill -0 "$IDLE_PID" 2>/dev/null || break
  sleep 0.1
done
grep -q '^ready' "$DIR/idle.out" || { echo "bench: idle sessions did not open:" >&2; cat "$DIR/idle.out" >&2; exit 1; }
IDLE_OPEN_S=$(awk '/^ready/ { print $3 }' "$DIR/idle.out")
OTHER[idle]=$(other_cores "$c0" "$(cpu_sample)")
sleep 3
RSS_AFTER=$(rss_kib)
LIVE=$("$BIN/airlock" status --json | /usr/bin/python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("sessions") or []))')
UPSTREAM=$("${ADMIN[@]}" -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'airlock\_%' AND usename <> 'airlock_admin'")
THREADS=$(awk '/^Threads:/ { print $2 }' "/proc/$DAEMON_PID/status")
FDS=$(ls "/proc/$DAEMON_PID/fd" | wc -l)
exec 7>&-
wait "$IDLE_PID" || { echo "bench: idle sessions failed after idling:" >&2; cat "$DIR/idle.out" >&2; exit 1; }
IDLE_PID=""
wait_roles_dropped 1200
sleep 2
RSS_CLOSED=$(rss_kib); RSS_HWM=$(hwm_kib)
PER_SESSION=$(calc "($RSS_AFTER - $RSS_BEFORE) / $BENCH_IDLE" 1)
log "RSS $RSS_BEFORE -> $RSS_AFTER KiB with $LIVE live sessions ($UPSTREAM upstream backends): $PER_SESSION KiB/session"

# ---------------------------------------------------------------- throughput
# pgbench NAME PATH ARGS... -> fills TPS[NAME] and LAT[NAME]; "fail" on error.
run_pgbench() {
  local key=$1 path=$2; shift 2
  local out="$DIR/pgbench.$key.log" rc=0 c0
  c0=$(cpu_sample)
  on_path "$path" timeout $((BENCH_SECONDS + BENCH_SETUP_SECONDS + 120)) pgbench -n "$@" "$(dsn_of "$path")" >"$out" 2>&1 || rc=$?
  if [ "$rc" = 0 ] && grep -q '^number of failed transactions: 0 ' "$out"; then
    TPS[$key]=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$out")
    LAT[$key]=$(awk '/^latency average = / { print $4; exit }' "$out")
    if [ -z "${TPS[$key]}" ] || [ -z "${LAT[$key]}" ]; then
      TPS[$key]=fail LAT[$key]=fail
      log "pgbench $key reported no TPS or latency:"; tail -5 "$out" | sed 's/^/     /' >&2
    fi
  else
    TPS[$key]=fail LAT[$key]=fail
    log "pgbench $key failed (rc $rc):"; tail -5 "$out" | sed 's/^/     /' >&2
  fi
  OTHER[$key]=$(other_cores "$c0" "$(cpu_sample)")
}

say "Warm-up (not recorded)"
for p in direct airlock pgbouncer; do
  for s in -S ""; do run_pgbench "warm.$p" "$p" $s -c 10 -j 2 -T 3; done
done
wait_roles_dropped

SCRIPTS=("S" "tpcb")
PROTOS=("simple" "prepared")
PATHS=(direct airlock pgbouncer)
k=0
say "Throughput: pgbench -T $BENCH_SECONDS, clients $BENCH_CLIENTS, paths interleaved"
for s in "${SCRIPTS[@]}"; do
  sarg=(); [ "$s" = S ] && sarg=(-S)
  for m in "${PROTOS[@]}"; do
    for c in $BENCH_CLIENTS; do
      j=1; [ "$c" -gt 1 ] && j=2
      # Rotate the order per configuration: no path always runs first.
      for ((r = 0; r < 3; r++)); do
        p=${PATHS[$(((k + r) % 3))]}
        run_pgbench "$s.$m.$c.$p" "$p" "${sarg[@]}" -M "$m" -c "$c" -j "$j" -T "$BENCH_SECONDS"
      done
      k=$((k + 1))
      log "$s -M $m -c $c: direct ${TPS[$s.$m.$c.direct]}  airlock ${TPS[$s.$m.$c.airlock]}  pgbouncer ${TPS[$s.$m.$c.pgbouncer]} tps (others used ${OTHER[$s.$m.$c.direct]}/${OTHER[$s.$m.$c.airlock]}/${OTHER[$s.$m.$c.pgbouncer]} cores)"
      wait_roles_dropped 300
    done
  done
done

# ---------------------------------------------------------------- session setup
say "Session setup: pgbench -C -S -c 1 -T $BENCH_SETUP_SECONDS"
declare -A CONN_MS
for p in direct airlock pgbouncer; do
  k2="setup.$p"
  c0=$(cpu_sample)
  on_path "$p" timeout $((BENCH_SETUP_SECONDS + 120)) pgbench -n -C -S -c 1 -T "$BENCH_SETUP_SECONDS" "$(dsn_of "$p")" >"$DIR/pgbench.$k2.log" 2>&1 || true
  TPS[$k2]=$(awk '/^tps = / { printf "%.1f", $3; exit }' "$DIR/pgbench.$k2.log")
  LAT[$k2]=$(awk '/^latency average = / { print $4; exit }' "$DIR/pgbench.$k2.log")
  CONN_MS[$p]=$(awk '/^average connection time = / { print $5; exit }' "$DIR/pgbench.$k2.log")
  OTHER[$k2]=$(other_cores "$c0" "$(cpu_sample)")
  grep -q '^number of failed transactions: 0 ' "$DIR/pgbench.$k2.log" && [ -n "${TPS[$k2]}" ] ||
    { echo "bench: session setup run failed on $p:" >&2; tail -5 "$DIR/pgbench.$k2.log" >&2; exit 1; }
  log "$p: ${TPS[$k2]} connections+transactions/s, connection ${CONN_MS[$p]} ms"
  wait_roles_dropped 600
done
# Wall time per new connection + one SELECT + close, the user's view.
SETUP_DIRECT_MS=$(calc "1000 / ${TPS[setup.direct]}" 3)
SETUP_AIRLOCK_MS=$(calc "1000 / ${TPS[setup.airlock]}" 3)
SETUP_BOUNCER_MS=$(calc "1000 / ${TPS[setup.pgbouncer]}" 3)
SETUP_ADDED_MS=$(calc "$SETUP_AIRLOCK_MS - $SETUP_DIRECT_MS" 2)

# ---------------------------------------------------------------- connect()
say "connect() latency: BenchmarkConnectLatency (go test)"
kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
CONNECT_CMD="go test -run '^\$' -bench BenchmarkConnectLatency -benchtime 2000x -count 5 ./internal/intercept/"
go test -c -o "$DIR/intercept.test" ./internal/intercept/ # compiling is not part of the measurement
c0=$(cpu_sample)
timeout 600 go test -run '^$' -bench BenchmarkConnectLatency -benchtime 2000x -count 5 -timeout 9m ./internal/intercept/ >"$DIR/connect.log" 2>&1 ||
  { echo "bench: BenchmarkConnectLatency failed:" >&2; tail -20 "$DIR/connect.log" >&2; exit 1; }
OTHER[connect]=$(other_cores "$c0" "$(cpu_sample)")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
median_of() { # median ns/op of sub-benchmark $1, in µs
  grep -E "^BenchmarkConnectLatency/$1(-[0-9]+)?[[:space:]]" "$DIR/connect.log" | awk '{ print $3 }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1000 }'
}
all_of() { grep -E "^BenchmarkConnectLatency/$1(-[0-9]+)?[[:space:]]" "$DIR/connect.log" | awk '{ printf "%s%.1f", (NR > 1 ? ", " : ""), $3 / 1000 }'; }
CONNECT_DIRECT=$(median_of direct)
CONNECT_PASS=$(median_of attached-passthrough)
CONNECT_INTER=$(median_of intercepted)
CONNECT_ADDED=$(calc "$CONNECT_INTER - $CONNECT_DIRECT" 1)
min_of() { grep -E "^BenchmarkConnectLatency/$1(-[0-9]+)?[[:space:]]" "$DIR/connect.log" | awk '{ print $3 }' | sort -n | head -1 | awk '{ printf "%.1f", $1 / 1000 }'; }
CONNECT_MIN_ADDED=$(calc "$(min_of intercepted) - $(min_of direct)" 1)
log "direct $CONNECT_DIRECT µs, intercepted $CONNECT_INTER µs: added $CONNECT_ADDED µs"

# ---------------------------------------------------------------- report
say "Writing $OUT"
MARKER="<!-- Everything below this line is written by hand and kept when tests/bench/run.sh regenerates the file. -->"
KEEP=""
if [ -f "$OUT" ] && grep -qF "$MARKER" "$OUT"; then
  KEEP=$(awk -v m="$MARKER" 'found { print } $0 == m { found = 1 }' "$OUT")
fi
ratio() { [[ $1 == fail || $2 == fail ]] && { echo "–"; return; }; calc "$1 / $2" 2; }
added_us() { [[ $1 == fail || $2 == fail ]] && { echo "–"; return; }; calc "($1 - $2) * 1000" 0; }
met() { [ "$1" = 1 ] && echo "**met**" || echo "**missed**"; }

PGV=$("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')
BOUNCERV=$(pgbouncer --version | head -1 | awk '{ print $2 }')
{
  echo "# Benchmarks"
  echo
  echo "Generated by \`tests/bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Re-run with:"
  echo
  echo '```'
  echo "$COMMAND"
  echo '```'
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| kernel | $(uname -r) |"
  echo "| CPU | $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) |"
  echo "| memory | $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) |"
  echo "| OS | $(. /etc/os-release; echo "$PRETTY_NAME") |"
  echo "| PostgreSQL | $PGV (server in a network namespace behind a veth pair) |"
  echo "| PgBouncer | $BOUNCERV |"
  echo "| pgbench | $(pgbench --version | awk '{ print $3 }') |"
  echo "| Go | $(go version | awk '{ print $3 }') |"
  echo "| airlock | $(git describe --always --dirty 2>/dev/null || echo unknown) |"
  echo "| load average (1, 5, 15 min) | $LOAD_START at the start, $LOAD_END at the end |"
  echo
  echo "## Setup"
  echo
  echo "- PostgreSQL: \`max_connections = 1200\`, \`shared_buffers = 256MB\`, \`fsync = off\`, \`synchronous_commit = off\`,"
  echo "  SCRAM-SHA-256 on TCP, no TLS; \`pgbench -i -s $BENCH_SCALE\` run by the superuser, the tables granted to the group role \`bench_rw\`."
  echo "- **direct**: pgbench connects to \`$REMOTE:5432\` as the static user \`bench\` (in \`bench_rw\`)."
  echo "- **airlock**: pgbench runs in a child of the attach cgroup of an airlockd in \`mode: all\` and connects to the same"
  echo "  address as \`agent\` without a password; the connection is redirected to airlockd's front door, which serves it"
  echo "  with a just-in-time role (ephemeral mode: \`CREATE ROLE ... IN ROLE bench_rw\` per session, dropped at its end),"
  echo "  upstream TLS off, \`log_level: $BENCH_LOG_LEVEL\` (at info, one event line per statement, to a file)."
  echo "- **pgbouncer**: pgbench connects to PgBouncer on \`127.0.0.1:$BOUNCER_PORT\` (session mode, SCRAM for the client,"
  echo "  the static user \`bench\` upstream, \`default_pool_size = 100\`)."
  echo "- Every client on every path connects with \`sslmode=disable\`, so none of them pays for TLS (airlockd would"
  echo "  otherwise answer the default \`sslmode=prefer\` with TLS, and the direct and PgBouncer paths cannot)."
  echo "- pgbench: \`-n -T $BENCH_SECONDS\`, \`-j 2\` for more than one client. Each configuration runs the three paths back to"
  echo "  back, the order rotated from one configuration to the next. TPS exclude the initial connection time; latency"
  echo "  is pgbench's average; \"added\" is airlock's average latency minus direct's."
  echo "- All of pgbench, airlockd or PgBouncer, and PostgreSQL share the same $NCPU cores. The machine is shared: the"
  echo "  \"others\" column is the CPU (in cores, the most over the row's three runs) that processes outside this"
  echo "  benchmark used while it ran — busy time in \`/proc/stat\` minus the benchmark's own cgroups. Rows where it"
  echo "  is well above 0 are disturbed."
  echo
  echo "## Throughput and latency"
  for s in "${SCRIPTS[@]}"; do
    for m in "${PROTOS[@]}"; do
      title="select-only (\`-S\`)"; [ "$s" = tpcb ] && title="TPC-B-like (default script)"
      echo
      echo "### $title, \`-M $m\`"
      echo
      echo "| clients | direct TPS | airlock TPS | pgbouncer TPS | airlock/direct | airlock/pgbouncer | direct ms | airlock ms | pgbouncer ms | airlock added µs | others (cores) |"
      echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for c in $BENCH_CLIENTS; do
        d=$s.$m.$c
        echo "| $c | ${TPS[$d.direct]} | ${TPS[$d.airlock]} | ${TPS[$d.pgbouncer]} | $(ratio "${TPS[$d.airlock]}" "${TPS[$d.direct]}") | $(ratio "${TPS[$d.airlock]}" "${TPS[$d.pgbouncer]}") | ${LAT[$d.direct]} | ${LAT[$d.airlock]} | ${LAT[$d.pgbouncer]} | $(added_us "${LAT[$d.airlock]}" "${LAT[$d.direct]}") | $(printf '%s\n' "${OTHER[$d.direct]}" "${OTHER[$d.airlock]}" "${OTHER[$d.pgbouncer]}" | sort -g | tail -1) |"
      done
    done
  done
  echo
  echo "## Session setup"
  echo
  echo "\`pgbench -C -S -c 1 -T $BENCH_SETUP_SECONDS\`: a new connection for every transaction, so setting up the session dominates."
  echo "\"ms per connection\" is wall time per connect + one SELECT + close (1000 / TPS); pgbench's own \"average connection"
  echo "time\" is shown too. Through airlock each connection also creates (and, after it, drops) a PostgreSQL role."
  echo
  echo "| path | connections/s | ms per connection | pgbench average connection time (ms) | others (cores) |"
  echo "|---|---:|---:|---:|---:|"
  echo "| direct | ${TPS[setup.direct]} | $SETUP_DIRECT_MS | ${CONN_MS[direct]} | ${OTHER[setup.direct]} |"
  echo "| airlock | ${TPS[setup.airlock]} | $SETUP_AIRLOCK_MS | ${CONN_MS[airlock]} | ${OTHER[setup.airlock]} |"
  echo "| pgbouncer | ${TPS[setup.pgbouncer]} | $SETUP_BOUNCER_MS | ${CONN_MS[pgbouncer]} | ${OTHER[setup.pgbouncer]} |"
  echo
  echo "airlock adds **$SETUP_ADDED_MS ms** per connection over direct."
  echo
  echo "## Memory per idle session"
  echo
  echo "A fresh airlockd (after three warm-up sessions) serves $BENCH_IDLE pgx connections opened by \`tests/bench/idle\`"
  echo "(8 at a time, \`SELECT 1\` on each, then idle). airlockd's VmRSS from \`/proc/PID/status\`:"
  echo
  echo "| | |"
  echo "|---|---:|"
  echo "| RSS before | $RSS_BEFORE KiB |"
  echo "| RSS with $BENCH_IDLE idle sessions | $RSS_AFTER KiB |"
  echo "| **per idle session** | **$PER_SESSION KiB** |"
  echo "| RSS after they closed (peak VmHWM) | $RSS_CLOSED KiB ($RSS_HWM KiB) |"
  echo "| live sessions in \`airlock status\` / upstream backends of just-in-time roles | $LIVE / $UPSTREAM |"
  echo "| airlockd threads / open fds with the sessions open | $THREADS / $FDS |"
  echo "| time to open $BENCH_IDLE sessions (others used ${OTHER[idle]} cores meanwhile) | ${IDLE_OPEN_S} s |"
  echo
  echo "## connect() latency"
  echo
  echo "\`$CONNECT_CMD\`: connect + close to a local listener, median of 5 runs of 2,000 (µs per connect)."
  echo
  echo "| direct | attached, passed through | intercepted (redirected) | added by interception |"
  echo "|---:|---:|---:|---:|"
  echo "| $CONNECT_DIRECT | $CONNECT_PASS | $CONNECT_INTER | **$CONNECT_ADDED** |"
  echo
  echo "Runs (µs): direct $(all_of direct); passthrough $(all_of attached-passthrough); intercepted $(all_of intercepted)."
  echo "Fastest intercepted minus fastest direct: $CONNECT_MIN_ADDED µs. Others used ${OTHER[connect]} cores meanwhile."
  echo
  echo "## Targets"
  echo
  echo "| target | measured | result |"
  echo "|---|---|---|"
  for s in "${SCRIPTS[@]}"; do
    for m in "${PROTOS[@]}"; do
      name="-S"; [ "$s" = tpcb ] && name="TPC-B"
      d=$s.$m.10
      if [[ " $BENCH_CLIENTS " == *" 10 "* ]]; then
        r=$(ratio "${TPS[$d.airlock]}" "${TPS[$d.direct]}")
        if [ "$r" = "–" ]; then ok=0 by="run failed"; else
          ok=$(awk "BEGIN { print ($r >= 0.90) }"); by=$(calc "($r - 0.90) * 100" 0)
          by="$( [ "$ok" = 1 ] && echo "+$by" || echo "$by") points"
        fi
        echo "| ≥ 0.90 × direct TPS at 10 clients ($name, $m) | $r | $(met "$ok") ($by) |"
      fi
    done
  done
  for s in "${SCRIPTS[@]}"; do
    for m in "${PROTOS[@]}"; do
      name="-S"; [ "$s" = tpcb ] && name="TPC-B"
      for c in $BENCH_CLIENTS; do
        d=$s.$m.$c
        r=$(ratio "${TPS[$d.airlock]}" "${TPS[$d.pgbouncer]}")
        if [ "$r" = "–" ]; then ok=0 by="run failed"; else
          ok=$(awk "BEGIN { print ($r >= 1.0) }"); by="$(calc "($r - 1) * 100" 0)%"
          [ "$ok" = 1 ] && by="+$by"
        fi
        echo "| ≥ PgBouncer TPS ($name, $m, $c clients) | $r × | $(met "$ok") ($by) |"
      done
    done
  done
  for s in "${SCRIPTS[@]}"; do
    for m in "${PROTOS[@]}"; do
      name="-S"; [ "$s" = tpcb ] && name="TPC-B"
      a=$(added_us "${LAT[$s.$m.1.airlock]}" "${LAT[$s.$m.1.direct]}")
      if [ "$a" = "–" ]; then ok=0 by="run failed"; else
        ok=$(awk "BEGIN { print ($a <= 25) }"); by="$(calc "$a - 25" 0) µs"
        [ "$ok" = 1 ] && by="$(calc "25 - $a" 0) µs to spare" || by="$by over"
      fi
      echo "| ≤ 25 µs added latency at 1 client ($name, $m) | $a µs | $(met "$ok") ($by) |"
    done
  done
  ok=$(awk "BEGIN { print ($SETUP_ADDED_MS <= 15) }")
  echo "| session setup within 15 ms of direct | +$SETUP_ADDED_MS ms | $(met "$ok") ($( [ "$ok" = 1 ] && echo "$(calc "15 - $SETUP_ADDED_MS" 1) ms to spare" || echo "$(calc "$SETUP_ADDED_MS - 15" 1) ms over")) |"
  ok=$(awk "BEGIN { print ($PER_SESSION < 64) }")
  echo "| < 64 KiB per idle session | $PER_SESSION KiB | $(met "$ok") ($( [ "$ok" = 1 ] && echo "$(calc "64 - $PER_SESSION" 1) KiB to spare" || echo "$(calc "$PER_SESSION - 64" 1) KiB over")) |"
  ok=$(awk "BEGIN { print ($CONNECT_ADDED < 5) }")
  echo "| connect() < 5 µs added | $CONNECT_ADDED µs | $(met "$ok") ($( [ "$ok" = 1 ] && echo "$(calc "5 - $CONNECT_ADDED" 1) µs to spare" || echo "$(calc "$CONNECT_ADDED - 5" 1) µs over")) |"
  echo
  echo "$MARKER"
  if [ -n "$KEEP" ]; then
    echo "$KEEP"
  else
    echo
    echo "## Analysis"
    echo
    echo "(Written by hand after a run: why a target was missed, and what would change it.)"
  fi
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
OK=1
say "Done: $OUT"
