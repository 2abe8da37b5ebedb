#!/usr/bin/env bash
# Idle-connection memory: opens IDLE authenticated client connections (SCRAM-SHA-256, via
# asyncpg in benches/idle_clients.py) to PgBouncer and then to pgtenant, holds them idle,
# and prints each proxy's RSS before and after and the bytes per idle connection (average
# over all of them, and marginal from IDLE/10 to IDLE, which leaves out one-off start-up
# growth).
#
#   bash benches/idle.sh                  # 10,000 connections per proxy
#   IDLE=2000 bash benches/idle.sh
#
# Needs a descriptor limit above IDLE for the proxies and the client (the script raises it
# as far as it may); loopback ports are not a constraint at this size.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-10000}
MAX_CLIENTS=$(( IDLE + 100 ))
SCALE=${SCALE:-1}
# shellcheck source=benches/setup.sh
source benches/setup.sh
if [ "$(ulimit -n)" -le $(( IDLE + 100 )) ]; then
  echo "descriptor limit $(ulimit -n) is too low for $IDLE connections" >&2; exit 1
fi
python3 -c 'import asyncpg' 2>/dev/null ||
  python3 -m pip install --quiet asyncpg || python3 -m pip install --quiet --break-system-packages asyncpg

declare -A RES
for arm in pgbouncer pgtenant; do
  case $arm in
    pgbouncer) port=$BPORT pid=$BOUNCER_PID ;;
    pgtenant) port=$TPORT pid=$TENANT_PID ;;
  esac
  echo "== $IDLE idle connections to $arm" >&2
  RES[$arm]=$(python3 benches/idle_clients.py --port "$port" --pid "$pid" --count "$IDLE")
  echo "   ${RES[$arm]}" >&2
  sleep 2
done

field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
echo
echo "| proxy | idle clients | RSS MiB before | RSS MiB at $(( IDLE / 10 )) clients | RSS MiB at $IDLE clients | bytes per idle client (average) | bytes per idle client (marginal, $(( IDLE / 10 ))→$IDLE) | connect time s |"
echo "|---|---|---|---|---|---|---|---|"
for arm in pgbouncer pgtenant; do
  r=${RES[$arm]}
  awk -v a="$arm" -v n="$IDLE" -v b="$(field "$r" before_kb)" -v t="$(field "$r" tenth_kb)" \
      -v f="$(field "$r" after_kb)" -v avg="$(field "$r" bytes_per_conn)" \
      -v m="$(field "$r" marginal_bytes_per_conn)" -v s="$(field "$r" connect_s)" \
    'BEGIN {printf "| %s | %d | %.1f | %.1f | %.1f | %d | %d | %s |\n", a, n, b / 1024, t / 1024, f / 1024, avg, m, s}'
done
