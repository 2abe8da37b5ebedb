#!/usr/bin/env bash
# Many clients, short tails (issue 19 item 5): CLIENTS concurrently active pgbench clients
# (select-only, the plain view: no RLS, no app-side context) through PgBouncer and pgtenant
# on a pool of POOL, the arms interleaved ROUNDS times. Per run: TPS, p50 / p99 / p99.9
# latency and p99/p50 from pgbench's per-transaction log (-l), and each proxy's CPU per
# transaction. pgbench opens every client's connection (SCRAM) before its clock starts, so
# the logins are not in the latencies.
#
#   bash benches/tails.sh                              # 1,000 clients, pool 20, 2 x 15 s
#   CLIENTS=2000 MODE=extended ROUNDS=3 bash benches/tails.sh
#   KEEP_LOGS=/tmp/tails bash benches/tails.sh         # keep each run's pgbench -l logs
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-1000}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
MODE=${MODE:-simple}
THREADS=${THREADS:-2}
MAX_CLIENTS=$(( CLIENTS + 100 ))
# shellcheck source=benches/setup.sh
source benches/setup.sh
write_script select plain
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
  echo "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;"
done | "${PSQL[@]}" -d bench

# arm -> "tps p50_ms p99_ms p999_ms cpu_us_per_tx"
run_arm() {
  local arm=$1 port pid
  case $arm in
    pgbouncer) port=$BPORT pid=$BOUNCER_PID ;;
    pgtenant) port=$TPORT pid=$TENANT_PID ;;
  esac
  local logdir="$WORK/log"; rm -rf "$logdir"; mkdir -p "$logdir"
  local c0; c0=$(cpu_ticks "$pid")
  if ! PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$port" -U bench -M "$MODE" \
      -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -f "$WORK/select.plain.sql" \
      -l --log-prefix="$logdir/tx" bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err"; then
    echo "   $arm failed: $(grep -m1 -iE 'error|abort' "$WORK/pgbench.err" || tail -n1 "$WORK/pgbench.err")" >&2
    echo n/a; return
  fi
  local c1; c1=$(cpu_ticks "$pid")
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp -r "$logdir" "$KEEP_LOGS/$arm.$(date +%s)"; fi
  local tps; tps=$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out")
  cat "$logdir"/tx.* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk -v tps="$tps" \
      -v cpu=$(( c1 - c0 )) -v hz="$(getconf CLK_TCK)" '
    function q(p,   i) { i = int(NR * p); if (i < NR * p) i++; if (i < 1) i = 1; return v[i] / 1000 }
    {v[NR] = $1}
    END { printf "%s %.2f %.2f %.2f %.1f\n", tps, q(0.5), q(0.99), q(0.999), cpu / hz * 1e6 / NR }'
}

echo "== $CLIENTS clients, -M $MODE, -j $THREADS, pool $POOL, $ROUNDS x ${DURATION}s; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "| round | arm | TPS | p50 ms | p99 ms | p99.9 ms | p99/p50 | proxy CPU µs/tx |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for arm in pgbouncer pgtenant; do
    res=$(run_arm "$arm")
    if [ "$res" = n/a ]; then echo "| $r | $arm | n/a | | | | | |"; continue; fi
    read -r tps p50 p99 p999 cpu <<<"$res"
    echo "| $r | $arm | $(printf '%.0f' "$tps") | $p50 | $p99 | $p999 | $(awk -v a="$p99" -v b="$p50" 'BEGIN {printf "%.2f", a / b}') | $cpu |"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); pgtenant RSS $(( $(rss_kb "$TENANT_PID") / 1024 )) MiB (peak $(( $(hwm_kb "$TENANT_PID") / 1024 )) MiB), PgBouncer $(( $(rss_kb "$BOUNCER_PID") / 1024 )) MiB" >&2
