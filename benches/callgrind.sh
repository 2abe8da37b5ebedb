#!/usr/bin/env bash
# Instructions per transaction of pgtenant, counted by valgrind's callgrind: repeatable on a
# loaded, shared machine where wall-clock TPS and CPU time are not. Runs pgtenant under
# callgrind (same set-up as load.sh, no RLS, no app-side context) and drives it with a
# pgbench run of WARM, then (a fresh proxy) of WARM+TX transactions per client; the difference
# between the two runs' totals is the cost of TX transactions per client, with start-up and
# connection set-up (SCRAM) cancelled out.
#
#   bash benches/callgrind.sh                                  # select, simple, 16 clients
#   SCRIPT=tpcb MODE=extended CLIENTS=64 bash benches/callgrind.sh
#   PGTENANT_BIN=/path/to/other/pgtenant bash benches/callgrind.sh   # a before/after pair
#
# PgBouncer is not measured here: under callgrind it has to start as the postgres user and did
# not serve the runs; compare with it through plain.sh's CPU per transaction instead.
#
# Out: instructions (Ir) per transaction, and in $PROFILE_DIR the longer run's profile and its
# callgrind_annotate (start-up and connections included there).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=${SCRIPT:-select}
MODE=${MODE:-simple}
CLIENTS=${CLIENTS:-16}
WARM=${WARM:-100}
TX=${TX:-1000}
ARMS=pgtenant
# pgtenant's log level (LOG=info: the default in production, where the client span is on).
LOG=${LOG:-error}
PROFILE_DIR=${PROFILE_DIR:-target/callgrind}
MAX_CLIENTS=$(( CLIENTS * 2 + 100 ))
mkdir -p "$PROFILE_DIR"; PROFILE_DIR=$(cd "$PROFILE_DIR" && pwd)
# shellcheck source=benches/setup.sh
source benches/setup.sh
write_script "$SCRIPT" plain
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
  echo "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;"
done | "${PSQL[@]}" -d bench
# The pgtenant started by setup.sh makes way for copies under callgrind on the same port.
kill "$TENANT_PID"; sleep 0.5

bench() { # port transactions-per-client
  PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$1" -U bench -M "$MODE" -c "$CLIENTS" \
    -j 2 -t "$2" -f "$WORK/$SCRIPT.plain.sql" bench >"$WORK/pgbench.out" 2>&1 ||
    { cat "$WORK/pgbench.out" >&2; exit 1; }
}
total_ir() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

# One callgrind process per run (a dump request would wait for an idle proxy to wake up).
# arm transactions-per-client -> total Ir of a proxy that served one pgbench run of them
measure() {
  local arm=$1 n=$2 out="$WORK/cg.$1.$2" port vg
  port=$TPORT
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$PGT" --config "$WORK/pgtenant.toml" --log "$LOG" 2>"$WORK/vg.$arm.log" &
  vg=$!
  for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  bench "$port" "$n"
  kill -INT "$vg"; wait "$vg" 2>/dev/null || true
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.1; done
  [ -s "$out" ] || { echo "no profile from $arm:" >&2; tail -n 5 "$WORK/vg.$arm.log" >&2; exit 1; }
  total_ir "$out"
}

for arm in $ARMS; do
  a=$(measure "$arm" "$WARM"); b=$(measure "$arm" $(( WARM + TX )))
  echo "$arm $SCRIPT $MODE c=$CLIENTS: $(( (b - a) / (CLIENTS * TX) )) Ir per transaction ($b Ir for $(( CLIENTS * (WARM + TX) )) transactions, $a for $(( CLIENTS * WARM )), start-up and connections included)"
  cp "$WORK/cg.$arm.$(( WARM + TX ))" "$PROFILE_DIR/$arm.callgrind.out"
  callgrind_annotate --threshold=100 --auto=no "$PROFILE_DIR/$arm.callgrind.out" 2>/dev/null |
    head -n 90 > "$PROFILE_DIR/$arm.annotate.txt" || true
done
echo "(profiles: $PROFILE_DIR/*.callgrind.out, *.annotate.txt)"
