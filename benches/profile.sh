#!/usr/bin/env bash
# Where a proxy spends its time per transaction: runs one pgbench cell against PgBouncer and
# pgtenant (same set-up as load.sh) and, for each, counts system calls, context switches and
# CPU per transaction with `perf stat` (software events and tracepoints, which work on VMs
# without hardware counters), then records a CPU profile of pgtenant with `perf record`.
#
#   bash benches/profile.sh                                # select, extended, 16 clients
#   SCRIPT=tpcb MODE=simple CLIENTS=64 DURATION=10 bash benches/profile.sh
#
# Out: a per-transaction table on stdout, and $PROFILE_DIR/pgtenant.perf.data plus its
# flat report (pgtenant.report.txt). Needs linux-perf (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=${SCRIPT:-select}
MODE=${MODE:-extended}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10}
PROFILE_DIR=${PROFILE_DIR:-target/profile}
MAX_CLIENTS=$(( CLIENTS * 2 + 100 ))
command -v perf >/dev/null || { apt-get update -q && apt-get install -y -q linux-perf; }
mkdir -p "$PROFILE_DIR"; PROFILE_DIR=$(cd "$PROFILE_DIR" && pwd)
# shellcheck source=benches/setup.sh
source benches/setup.sh

case $SCRIPT in select|tpcb) ;; *) echo "SCRIPT=$SCRIPT: select or tpcb" >&2; exit 2 ;; esac
write_script "$SCRIPT" ctx; write_script "$SCRIPT" plain

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
  local u0 s0 u1 s1 tx
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  tx=$(PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$port" -U bench -M "$MODE" \
        -c "$CLIENTS" -j 2 -T "$DURATION" -f "$file" bench 2>/dev/null |
       awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); print b[1]}')
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
  [ -z "$rp" ] || { kill -INT "$rp"; wait "$rp" 2>/dev/null || true; }
  awk -F, -v name="$name" -v tx="$tx" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" \
      -v user=$(( u1 - u0 )) -v sys=$(( s1 - s0 )) '
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
echo "$SCRIPT, -M $MODE, $CLIENTS clients, ${DURATION}s each; per transaction:"
echo
echo "| proxy | TPS | CPU µs | user / sys µs | context switches | reads | writes | epoll_wait | futex |"
echo "|---|---|---|---|---|---|---|---|---|"
measure pgbouncer "$BOUNCER_PID" "$BPORT" "$WORK/$SCRIPT.ctx.sql"
measure pgtenant "$TENANT_PID" "$TPORT" "$WORK/$SCRIPT.plain.sql"
[ "${RECORD:-1}" = 0 ] || measure pgtenant "$TENANT_PID" "$TPORT" "$WORK/$SCRIPT.plain.sql" record
perf report -i "$PROFILE_DIR/pgtenant.perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -v '^$' > "$PROFILE_DIR/pgtenant.report.txt" || true
echo
echo "pgtenant profile: $PROFILE_DIR/pgtenant.report.txt (perf report -i $PROFILE_DIR/pgtenant.perf.data)"
