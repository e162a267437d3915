#!/usr/bin/env bash
# Installs the Debian packages that the tests, benchmarks and demo use.
set -euo pipefail
need=(clang-16 llvm-16 libbpf-dev postgresql postgresql-client pgbouncer python3-psycopg2 iproute2 procps psmisc)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a cluster on install; the tests start their own servers.
if command -v pg_ctlcluster >/dev/null; then
  for c in $(pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1"/"$2}'); do
    pg_ctlcluster "${c%/*}" "${c#*/}" stop || true
  done
fi
