#!/usr/bin/env bash
# Robustness figures (issue 18): normal pgbench clients through pgtenant, quiet and under
# three attacks, with pgtenant's memory throughout.
#
#   bash benches/robustness.sh                                # 10,000 attackers, 20 s runs
#   COUNT=2000 DURATION=10 COPY_MB=100 bash benches/robustness.sh
#   SCENARIOS="loris copy" bash benches/robustness.sh
#
# Scenarios (each: a quiet run, the run under attack, a quiet run again; the ratio is the
# attack's TPS over the mean of the two quiet ones):
#   loris  COUNT connections that send their startup packet one byte per second (every 4th
#          sends an SSLRequest first and then stalls), reopened whenever pgtenant closes them
#          (server.auth_timeout), so COUNT stay open; normal clients are NORMAL pgbench
#          clients (select script, -M extended). Also checks they never take a backend.
#   idle   COUNT SCRAM-authenticated idle clients held open while a burst of BURST pgbench
#          clients (pool POOL, so BURST/POOL clients per backend) runs; compared with the
#          same burst without the idle clients.
#   copy   one client COPYs COPY_MB MiB into a table through pgtenant while the normal
#          clients run.
#   lockout  as loris, but pgtenant's max_client_connections is COUNT (every place held by
#          an attacker) and the normal clients open a new connection for every transaction
#          (pgbench -C): they get in only by taking the place of a slow start-up
#          (server.startup_evict_after). Not in the default set; e.g.
#            COUNT=2000 SCENARIOS=lockout bash benches/robustness.sh
# Normal clients' errors: pgbench's aborted clients (each is one error a client saw).
# Memory: pgtenant's VmRSS before, peak during each scenario (VmHWM, reset per scenario
# through /proc/<pid>/clear_refs) and after (attackers gone, 5 s later).
# Attackers and pgbench share this machine with pgtenant and PostgreSQL: on a small machine
# the ratio also measures the attacker's own CPU use (reported as load average).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-10000}
DURATION=${DURATION:-20}
NORMAL=${NORMAL:-16}
BURST=${BURST:-200}
COPY_MB=${COPY_MB:-1024}
SCENARIOS=${SCENARIOS:-"loris idle copy"}
POOL=${POOL:-20}
SCALE=${SCALE:-10}
MAX_CLIENTS=$(( COUNT + BURST + NORMAL + 500 ))
case " $SCENARIOS " in *" lockout "*) MAX_CLIENTS=$COUNT ;; esac
# shellcheck source=benches/setup.sh
source benches/setup.sh
if [ "$(ulimit -n)" -le $(( COUNT + BURST + 100 )) ]; then
  echo "descriptor limit $(ulimit -n) is too low for $COUNT connections" >&2; exit 1
fi
python3 -c 'import asyncpg' 2>/dev/null ||
  python3 -m pip install --quiet asyncpg || python3 -m pip install --quiet --break-system-packages asyncpg
write_script select plain
"${PSQL[@]}" -d bench <<SQL
-- PostgreSQL refuses COPY FROM into a table under RLS (0A000), so the sink has none.
CREATE UNLOGGED TABLE copy_sink (tenant_id uuid NOT NULL DEFAULT '$TID', payload text);
GRANT SELECT, INSERT ON copy_sink TO app_user;
SQL

reset_hwm() { echo 5 > "/proc/$TENANT_PID/clear_refs" 2>/dev/null || true; }
backends() { "${PSQL[@]}" -d bench -Atc "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user'"; }

# pgbench CLIENTS [more pgbench options] -> "tps p99_ms aborted"
bench() {
  local c=$1 logdir="$WORK/log"; rm -rf "$logdir"; mkdir -p "$logdir"
  PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$TPORT" -U bench -M extended -c "$c" -j 2 "${@:2}" \
    -T "$DURATION" -f "$WORK/select.plain.sql" -l --log-prefix="$logdir/tx" bench \
    >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" || true
  local tps aborted
  tps=$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out"); tps=${tps:-0}
  aborted=$(grep -c 'aborted' "$WORK/pgbench.err" || true)
  grep -m3 -iE 'error|fatal' "$WORK/pgbench.err" | sed 's/^/      pgbench: /' >&2 || true
  cat "$logdir"/tx.* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk \
      -v tps="$tps" -v ab="$aborted" '{v[NR] = $1}
    END {i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
         printf "%s %.2f %d\n", tps, (NR ? v[i] / 1000 : 0), ab}'
}

ROWS=()
# scenario name quiet1 attack quiet2 peak_kb after_kb note
row() {
  local q1=($2) at=($3) q2=($4)
  ROWS+=("$(awk -v n="$1" -v a="${q1[0]}" -v b="${at[0]}" -v c="${q2[0]}" -v pa="${q1[1]}" \
    -v pb="${at[1]}" -v e="$(( ${q1[2]} + ${at[2]} + ${q2[2]} ))" -v ea="${at[2]}" \
    -v pk="$5" -v af="$6" -v note="$7" -v before="$RSS0" 'BEGIN {
      printf "| %s | %.0f / %.0f | %.0f | %.2f | %.1f / %.1f | %d (%d under attack) | %.1f | %.1f | %.1f | %s |",
        n, a, c, b, b / ((a + c) / 2), pa, pb, e, ea, before / 1024, pk / 1024, af / 1024, note}')")
}

settle_rss() { sleep 5; rss_kb "$TENANT_PID"; }

# The slow-loris attacker: COUNT connections, until pgtenant holds them all (at most 60 s;
# it keeps a descriptor for each). Sets ATT.
start_loris() {
  python3 benches/robustness.py loris --port "$TPORT" --count "$COUNT" >"$WORK/loris.out" &
  ATT=$!; PIDS+=("$ATT")
  for _ in $(seq 120); do
    [ "$(ls "/proc/$TENANT_PID/fd" | wc -l)" -ge "$COUNT" ] && break; sleep 0.5
  done
  echo "   pgtenant descriptors: $(ls "/proc/$TENANT_PID/fd" | wc -l), load: $(uptime | sed 's/.*load/load/')" >&2
}
stop_loris() {
  kill -TERM "$ATT"; wait "$ATT" || true
  echo "   attacker: $(cat "$WORK/loris.out")" >&2
}

RSS0=$(rss_kb "$TENANT_PID")
echo "== load before: $(uptime)" >&2
echo "== pgtenant RSS at start: $RSS0 KiB" >&2
# Warm-up, so the first quiet run is not a cold one.
bench "$NORMAL" >/dev/null

for s in $SCENARIOS; do
  case $s in
  loris)
    echo "== slow-loris: $COUNT connections, one byte per second" >&2
    q1=$(bench "$NORMAL"); echo "   quiet: $q1" >&2
    reset_hwm
    start_loris
    c0=$(cpu_ticks "$TENANT_PID"); a0=$(cpu_ticks "$ATT")
    at=$(bench "$NORMAL"); echo "   under attack: $at" >&2
    cpu=$(awk -v t=$(( $(cpu_ticks "$TENANT_PID") - c0 )) -v a=$(( $(cpu_ticks "$ATT") - a0 )) \
      -v hz="$(getconf CLK_TCK)" -v d="$DURATION" 'BEGIN {printf "CPU pgtenant %.0f %%, attacker %.0f %%", t / hz / d * 100, a / hz / d * 100}')
    echo "   $cpu of one core" >&2
    b=$(backends)
    echo "   app_user backends during the attack: $b (pool $POOL)" >&2
    stop_loris
    peak=$(hwm_kb "$TENANT_PID"); after=$(settle_rss)
    q2=$(bench "$NORMAL"); echo "   quiet again: $q2" >&2
    row "slow-loris $COUNT + $NORMAL normal clients" "$q1" "$at" "$q2" "$peak" "$after" \
      "$(tr ' ' '\n' < "$WORK/loris.out" | grep -E '^(max_open|closed_by_proxy|lifetime_s_median)=' | paste -sd' '); backends $b; $cpu"
    ;;
  lockout)
    echo "== lockout: $COUNT slow-loris connections, max_client_connections $MAX_CLIENTS; normal clients connect per transaction" >&2
    q1=$(bench "$NORMAL" -C); echo "   quiet: $q1" >&2
    reset_hwm
    start_loris
    sleep 3 # the attackers' connections are older than startup_evict_after
    at=$(bench "$NORMAL" -C); echo "   under attack: $at" >&2
    stop_loris
    peak=$(hwm_kb "$TENANT_PID"); after=$(settle_rss)
    q2=$(bench "$NORMAL" -C); echo "   quiet again: $q2" >&2
    row "lockout: $COUNT slow-loris at max_client_connections $MAX_CLIENTS + $NORMAL clients connecting per transaction" \
      "$q1" "$at" "$q2" "$peak" "$after" \
      "$(tr ' ' '\n' < "$WORK/loris.out" | grep -E '^(max_open|closed_by_proxy)=' | paste -sd' ')"
    ;;
  idle)
    echo "== $COUNT idle clients + a burst of $BURST clients (pool $POOL)" >&2
    q1=$(bench "$BURST"); echo "   burst alone: $q1" >&2
    reset_hwm
    python3 benches/robustness.py idle --port "$TPORT" --count "$COUNT" >"$WORK/idle.out" 2>"$WORK/idle.err" &
    ATT=$!; PIDS+=("$ATT")
    until grep -q ready "$WORK/idle.err" || ! kill -0 "$ATT" 2>/dev/null; do sleep 1; done
    echo "   $(cat "$WORK/idle.err"), RSS $(rss_kb "$TENANT_PID") KiB, load: $(uptime | sed 's/.*load/load/')" >&2
    at=$(bench "$BURST"); echo "   burst with idle clients: $at" >&2
    kill -TERM "$ATT"; wait "$ATT" || true
    echo "   idle clients: $(cat "$WORK/idle.out")" >&2
    peak=$(hwm_kb "$TENANT_PID"); after=$(settle_rss)
    q2=$(bench "$BURST"); echo "   burst alone again: $q2" >&2
    row "$COUNT idle + burst of $BURST" "$q1" "$at" "$q2" "$peak" "$after" \
      "$(tr ' ' '\n' < "$WORK/idle.out" | grep -E '^(opened|failed|connect_s)=' | paste -sd' ')"
    ;;
  copy)
    echo "== one client COPYs $COPY_MB MiB" >&2
    q1=$(bench "$NORMAL"); echo "   quiet: $q1" >&2
    reset_hwm
    line=$(head -c 999 /dev/zero | tr '\0' x)
    t0=$(date +%s.%N)
    ( set +e +o pipefail
      yes "$line" | head -c $(( COPY_MB * 1024 * 1024 )) |
        PGPASSWORD=bench-secret psql -X -q -h 127.0.0.1 -p "$TPORT" -U bench -d bench \
          -c "COPY copy_sink (payload) FROM STDIN" >"$WORK/copy.out" 2>&1
      echo "rc=$? seconds=$(echo "$(date +%s.%N) - $t0" | bc)" >>"$WORK/copy.out" ) &
    ATT=$!; PIDS+=("$ATT")
    at=$(bench "$NORMAL"); echo "   during the COPY: $at" >&2
    wait "$ATT" || true
    rows=$("${PSQL[@]}" -d bench -Atc "SELECT count(*) FROM copy_sink")
    echo "   COPY: $(tr '\n' ' ' < "$WORK/copy.out") rows=$rows" >&2
    peak=$(hwm_kb "$TENANT_PID"); after=$(settle_rss)
    "${PSQL[@]}" -d bench -c "TRUNCATE copy_sink"
    q2=$(bench "$NORMAL"); echo "   quiet again: $q2" >&2
    row "COPY of $COPY_MB MiB + $NORMAL normal clients" "$q1" "$at" "$q2" "$peak" "$after" \
      "$(grep -o 'rc=.*' "$WORK/copy.out"), $rows rows"
    ;;
  esac
done

echo "== load after: $(uptime)" >&2
echo
echo "| scenario | quiet TPS before / after | TPS under attack | ratio | p99 ms quiet / attack | normal clients' errors | RSS MiB at start | peak RSS MiB | RSS MiB after | notes |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
