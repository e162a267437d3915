# shellcheck shell=bash
# Shared by deploy/demo.sh and tests/bench/run.sh (source it; run as root).
#
# A "remote" PostgreSQL host: a network namespace joined to this host by a
# veth pair, a PostgreSQL server started inside it as the postgres user with
# SCRAM on TCP and trust on its private unix socket, and the cgroup v2 helpers
# used to run clients inside an intercepted cgroup. Every name and address is
# the caller's, so the demo, the benchmarks and the tests never collide.
#
#   rpg_netns_up NS HOST_IF NS_IF LOCAL_IP REMOTE_IP [PREFIXLEN]
#   rpg_netns_down NS HOST_IF
#   rpg_pgbin                              -> directory of postgres/initdb
#   rpg_pg_init DIR SUPERUSER_PASSWORD LISTEN_ADDR [CONF_LINE...]
#   rpg_pg_start NS DIR                    -> sets RPG_PG_PID
#   rpg_pg_wait DIR [TENTHS]               -> waits until the socket answers
#   rpg_pg_stop DIR [PID] [SECONDS]        -> fast shutdown (pg_ctl), bounded wait
#   rpg_cgroup2_mount                      -> prints the cgroup v2 mount point
#   rpg_in_cgroup CGROUP_DIR CMD [ARGS...] -> runs CMD inside that cgroup (exec)
#   rpg_cgroup_remove CGROUP_DIR           -> kills what is left in it, removes it

# cgroup v2 may be at /sys/fs/cgroup or, on hybrid hosts, elsewhere.
rpg_cgroup2_mount() {
  awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup2") { print $5; exit } break }}' /proc/self/mountinfo
}

# The newest installed server's binaries (Debian keeps them off PATH).
rpg_pgbin() {
  local pg
  pg=$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)
  [ -n "$pg" ] || { echo "remote-pg: no PostgreSQL server installed (tests/deps.sh)" >&2; return 1; }
  dirname "$pg"
}

rpg_netns_up() {
  local ns=$1 hif=$2 nif=$3 local_ip=$4 remote_ip=$5 plen=${6:-30}
  ip netns add "$ns"
  ip link add "$hif" type veth peer name "$nif"
  ip link set "$nif" netns "$ns"
  ip addr add "$local_ip/$plen" dev "$hif"; ip link set "$hif" up
  ip -n "$ns" addr add "$remote_ip/$plen" dev "$nif"; ip -n "$ns" link set "$nif" up; ip -n "$ns" link set lo up
}

rpg_netns_down() {
  ip netns del "$1" 2>/dev/null
  ip link del "$2" 2>/dev/null
  return 0
}

# Creates DIR/pg/data (initdb as postgres: it refuses root) listening on
# LISTEN_ADDR:5432 and on the unix socket directory DIR/pg. Extra arguments
# are postgresql.conf lines appended after the defaults.
rpg_pg_init() {
  local dir=$1 pw=$2 listen=$3; shift 3
  local pgbin; pgbin=$(rpg_pgbin) || return 1
  install -d -o postgres -g postgres "$dir/pg"
  echo "$pw" > "$dir/pg/pw"; chown postgres "$dir/pg/pw"
  runuser -u postgres -- "$pgbin/initdb" -D "$dir/pg/data" -U postgres --pwfile "$dir/pg/pw" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >/dev/null
  rm -f "$dir/pg/pw"
  {
    echo "listen_addresses = '$listen'"
    echo "unix_socket_directories = '$dir/pg'"
    local line
    for line in "$@"; do echo "$line"; done
  } >> "$dir/pg/data/postgresql.conf"
  printf 'local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n' > "$dir/pg/data/pg_hba.conf"
}

# Starts the server inside the namespace, in the background; its log is
# DIR/pg/log. The caller waits with rpg_pg_wait.
rpg_pg_start() {
  local ns=$1 dir=$2
  local pgbin; pgbin=$(rpg_pgbin) || return 1
  ip netns exec "$ns" runuser -u postgres -- "$pgbin/postgres" -D "$dir/pg/data" >"$dir/pg/log" 2>&1 &
  RPG_PG_PID=$!
}

rpg_pg_wait() {
  local dir=$1 tenths=${2:-100} i
  local pgbin; pgbin=$(rpg_pgbin) || return 1
  for ((i = 0; i < tenths; i++)); do
    "$pgbin/pg_isready" -q -h "$dir/pg" && return 0
    sleep 0.1
  done
  echo "remote-pg: server at $dir/pg not ready after $((tenths / 10))s; log:" >&2
  tail -20 "$dir/pg/log" >&2 2>/dev/null
  return 1
}

# Fast shutdown with pg_ctl (signalling the runuser that started the server
# does not reach the postmaster), then SIGINT to PID if it is still there.
# Waits at most SECONDS.
rpg_pg_stop() {
  local dir=$1 pid=${2:-} secs=${3:-5} i pgbin
  if [ -f "$dir/pg/data/postmaster.pid" ] && pgbin=$(rpg_pgbin); then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg/data" stop -m fast -w -t "$secs" >/dev/null 2>&1
  fi
  [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  return 0
}

# Runs CMD inside the cgroup at CGROUP_DIR (an absolute path under the
# cgroup v2 mount): the subshell moves itself, then execs, so CMD and all it
# starts stay there.
rpg_in_cgroup() {
  local cg=$1; shift
  (echo "$BASHPID" > "$cg/cgroup.procs" && exec "$@")
}

# Kills whatever is left in CGROUP_DIR and its children, deepest first, and
# removes them.
rpg_cgroup_remove() {
  local top=$1 d
  [ -n "$top" ] && [ -d "$top" ] || return 0
  local i
  for d in $(find "$top" -mindepth 1 -type d | sort -r) "$top"; do
    xargs -r kill -9 < "$d/cgroup.procs" 2>/dev/null
    for ((i = 0; i < 20; i++)); do # killed processes take a moment to leave
      rmdir "$d" 2>/dev/null && break
      sleep 0.1
    done
  done
  return 0
}
