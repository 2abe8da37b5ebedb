#!/usr/bin/env bash
# Where a proxy spends its time per transaction: runs one pgbench cell against PgBouncer and
# pgtenant (same set-up as load.sh) and, for each, counts system calls, context switches and
# CPU per transaction with `perf stat` (software events and tracepoints, which work on VMs
# without hardware counters), then records a CPU profile of pgtenant with `perf record`.
#
#   bash benches/profile.sh                                # select, extended, 16 clients
#   SCRIPT=tpcb MODE=simple CLIENTS=64 DURATION=10 bash benches/profile.sh
#   SCRIPT=tpcb MODE=simple CLIENTS=64 RECORD=0 BUDGET_ROUNDS=3 bash benches/profile.sh
#   VIEW=plain SCRIPT=tpcb MODE=simple RECORD=0 bash benches/profile.sh   # plain.sh's view
#
# VIEW=isolation (the default) is load.sh's equal-isolation view: PgBouncer's arm runs the
# app's set_config itself, RLS on. VIEW=plain is plain.sh's: RLS off, the same plain
# pgbench script through both proxies (pgtenant still injects its context).
#
# Out, on stdout: a CPU budget of the whole machine per transaction (how busy both cores
# were; what PostgreSQL, pgbench and the proxy each used; the TPS the run would reach if the
# proxy cost no CPU at all), from BUDGET_ROUNDS interleaved runs (2 by default) with no
# profiler attached; then the perf stat table. In $PROFILE_DIR: pgtenant.perf.data and its
# flat report (pgtenant.report.txt). Needs linux-perf (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=${SCRIPT:-select}
MODE=${MODE:-extended}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10}
BUDGET_ROUNDS=${BUDGET_ROUNDS:-2}
PROFILE_DIR=${PROFILE_DIR:-target/profile}
MAX_CLIENTS=$(( CLIENTS * 2 + 100 ))
command -v perf >/dev/null || { apt-get update -q && apt-get install -y -q linux-perf; }
mkdir -p "$PROFILE_DIR"; PROFILE_DIR=$(cd "$PROFILE_DIR" && pwd)
# shellcheck source=benches/setup.sh
source benches/setup.sh

case $SCRIPT in select|tpcb) ;; *) echo "SCRIPT=$SCRIPT: select or tpcb" >&2; exit 2 ;; esac
write_script "$SCRIPT" ctx; write_script "$SCRIPT" plain
VIEW=${VIEW:-isolation}
case $VIEW in
  isolation) BOUNCER_SQL=$WORK/$SCRIPT.ctx.sql ;;
  plain)
    BOUNCER_SQL=$WORK/$SCRIPT.plain.sql
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
      echo "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;"
    done | "${PSQL[@]}" -d bench ;;
  *) echo "VIEW=$VIEW: isolation or plain" >&2; exit 2 ;;
esac

# Whole-machine busy and idle jiffies, and the CPU ticks of every PostgreSQL process.
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
postgres_ticks() {
  local p t=0
  for p in $(pgrep -x postgres); do t=$(( t + $(cpu_ticks "$p" 2>/dev/null || echo 0) )); done
  echo "$t"
}

# One pgbench run of the cell through a proxy. Sets TX (transactions), PROXY_USER and
# PROXY_SYS (the proxy's ticks), BUSY and IDLE (the machine's), PG (PostgreSQL's ticks) and
# BENCH_S (pgbench's own CPU seconds).
run_cell() { # name pid port file
  local name=$1 pid=$2 port=$3 file=$4 u0 s0 u1 s1 b0 i0 b1 i1 pg0 pg1 TIMEFORMAT='%U %S'
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  read -r b0 i0 < <(machine_ticks); pg0=$(postgres_ticks)
  { time PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$port" -U bench -M "$MODE" \
      -c "$CLIENTS" -j 2 -T "$DURATION" -f "$file" bench >"$WORK/$name.out" 2>/dev/null; } 2>"$WORK/$name.time"
  read -r b1 i1 < <(machine_ticks); pg1=$(postgres_ticks)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  TX=$(awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); print b[1]}' "$WORK/$name.out")
  PROXY_USER=$(( u1 - u0 )); PROXY_SYS=$(( s1 - s0 ))
  BUSY=$(( b1 - b0 )); IDLE=$(( i1 - i0 )); PG=$(( pg1 - pg0 ))
  BENCH_S=$(awk '{print $1 + $2}' "$WORK/$name.time")
}

# Where the machine's CPU went per transaction, without perf attached (tracing syscalls
# slows the proxy it watches). The last column scales TPS by the CPU that would be left if
# the proxy used none, at the same busy share: the most any relay could reach in this cell.
budget() { # name pid port file
  run_cell "$@"
  awk -v name="$1" -v tx="$TX" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" -v busy="$BUSY" \
      -v idle="$IDLE" -v pg="$PG" -v bench="$BENCH_S" -v proxy=$(( PROXY_USER + PROXY_SYS )) 'BEGIN {
    total = busy / hz * 1e6 / tx; pg = pg / hz * 1e6 / tx; bench = bench * 1e6 / tx
    px = proxy / hz * 1e6 / tx
    printf "| %s | %.0f | %.0f %% | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", name, tx / d,
      100 * busy / (busy + idle), total, pg, bench, px, total - pg - bench - px,
      tx / d * total / (total - px)
  }'
}

EVENTS=cpu-clock,context-switches,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
measure() { # name pid port file [record]
  local name=$1 pid=$2 port=$3 file=$4 rec=${5:-}
  local stat="$WORK/$name.stat"
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$stat" &
  local sp=$! rp=""
  if [ -n "$rec" ]; then
    perf record -q -e cpu-clock -F 1999 -g -p "$pid" -o "$PROFILE_DIR/$name.perf.data" 2>/dev/null &
    rp=$!
  fi
  sleep 0.2
  run_cell "$name" "$pid" "$port" "$file"
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
  [ -z "$rp" ] || { kill -INT "$rp"; wait "$rp" 2>/dev/null || true; }
  awk -F, -v name="$name" -v tx="$TX" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" \
      -v user="$PROXY_USER" -v sys="$PROXY_SYS" '
    $3 ~ /cpu-clock/ {cpu = $1}
    $3 !~ /cpu-clock/ && $1 ~ /^[0-9]/ {n[$3] = $1}
    END {
      printf "| %s | %.0f | %.1f | %.1f / %.1f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", name, tx / d, cpu * 1000 / tx,
        user / hz * 1e6 / tx, sys / hz * 1e6 / tx,
        n["context-switches"] / tx,
        (n["syscalls:sys_enter_read"] + n["syscalls:sys_enter_recvfrom"]) / tx,
        (n["syscalls:sys_enter_write"] + n["syscalls:sys_enter_sendto"] + n["syscalls:sys_enter_writev"]) / tx,
        n["syscalls:sys_enter_epoll_wait"] / tx, n["syscalls:sys_enter_futex"] / tx
    }' "$stat"
}

echo
echo "$SCRIPT, -M $MODE, $CLIENTS clients, ${DURATION}s each, view: $VIEW"
echo
echo "CPU budget of the whole machine ($(nproc) cores), µs per transaction, no profiler attached:"
echo
echo "| proxy | TPS | busy | all processes | PostgreSQL | pgbench | proxy | rest | TPS if the proxy cost no CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
for _ in $(seq "$BUDGET_ROUNDS"); do # interleaved, so drift on a shared machine hits both
  budget pgbouncer "$BOUNCER_PID" "$BPORT" "$BOUNCER_SQL"
  budget pgtenant "$TENANT_PID" "$TPORT" "$WORK/$SCRIPT.plain.sql"
done

echo
echo "The proxies under perf stat (syscall tracing slows them), per transaction:"
echo
echo "| proxy | TPS | CPU µs | user / sys µs | context switches | reads | writes | epoll_wait | futex |"
echo "|---|---|---|---|---|---|---|---|---|"
measure pgbouncer "$BOUNCER_PID" "$BPORT" "$BOUNCER_SQL"
measure pgtenant "$TENANT_PID" "$TPORT" "$WORK/$SCRIPT.plain.sql"
[ "${RECORD:-1}" = 0 ] || measure pgtenant "$TENANT_PID" "$TPORT" "$WORK/$SCRIPT.plain.sql" record
perf report -i "$PROFILE_DIR/pgtenant.perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -v '^$' > "$PROFILE_DIR/pgtenant.report.txt" || true
echo
echo "pgtenant profile: $PROFILE_DIR/pgtenant.report.txt (perf report -i $PROFILE_DIR/pgtenant.perf.data)"
