#!/usr/bin/env bash
# Installs the Debian packages that the tests, benchmarks and demo use.
set -euo pipefail
need=(libbpf-dev bpftool postgresql postgresql-client pgbouncer python3-psycopg2 iproute2 procps tmux util-linux python3)
# clang only matters for `make generate`; Debian 12 has clang-16, Ubuntu 24.04 only its default.
apt_has() { local p; p=$(apt-cache policy "$1" 2>/dev/null); [[ $p == *"Candidate: "[0-9]* ]]; }
[ -z "$(apt-cache policy clang-16 2>/dev/null)" ] && apt-get update -qq
if apt_has clang-16; then need+=(clang-16 llvm-16); else need+=(clang llvm); fi
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
