#!/usr/bin/env bash
# Load benchmark: pgbench against direct PostgreSQL, PgBouncer (transaction mode) and
# pgtenant, with the same backend pool size and the same RLS work in every arm.
#
#   bash benches/load.sh                                   # defaults below
#   ROUNDS=3 DURATION=5 bash benches/load.sh
#   CLIENTS="1 16" SCRIPTS=tpcb MODES=prepared bash benches/load.sh
#   SCRIPTS= LEAK=1 bash benches/load.sh                   # only the 1M-transaction RSS check
#
# Scripts (every table they touch has a forced RLS policy on app.current_tenant, read through
# the NOSUPERUSER NOBYPASSRLS app_user):
#   select  BEGIN; SELECT abalance FROM pgbench_accounts WHERE aid = :aid; END;
#   tpcb    BEGIN; UPDATE accounts; SELECT; UPDATE tellers; UPDATE branches; INSERT history; END;
# The direct and PgBouncer arms put `SELECT set_config('app.current_tenant', '<tid>', true);`
# right after BEGIN (what an app must do for the same isolation); the pgtenant arm runs the
# same statements without it, because pgtenant injects the context itself.
#
# Cells are (script, protocol mode, clients); in each cell the arms run interleaved
# (direct, PgBouncer, pgtenant, direct, ...) ROUNDS times and the table shows medians:
# TPS, mean and p99 latency (from pgbench's per-transaction log, -l), the ratios, each
# proxy's CPU time per transaction (utime+stime from /proc/<pid>/stat over the run, client
# connection setup included, both proxies doing SCRAM) and its RSS sampled mid-run.
# PgBouncer 1.18 cannot serve `-M prepared` in transaction mode: its prepared cells run only
# when a probe succeeds, otherwise they print n/a. Prepared cells run pgbench with 2 threads
# like the others (PREPARED_THREADS=per-client: one per client, see run_arm). RESET_ON_RELEASE=tracked sets pgtenant's
# context.reset_on_release (default: pgtenant's default, always).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"1 16 64 256"}
DURATION=${DURATION:-10}
SCRIPTS=${SCRIPTS-"select tpcb"}
MODES=${MODES:-"simple extended prepared"}
ROUNDS=${ROUNDS:-3}
LEAK=${LEAK:-0}
LEAK_TX=${LEAK_TX:-1000000}
LEAK_CLIENTS=${LEAK_CLIENTS:-16}
OUT=${OUT:-}   # optional file for the raw per-round numbers (TSV)

max_c=0; for c in $CLIENTS; do [ "$c" -gt "$max_c" ] && max_c=$c; done
MAX_CLIENTS=$(( max_c * 2 + 100 ))
# shellcheck source=benches/setup.sh
source benches/setup.sh

for s in select tpcb; do write_script "$s" ctx; write_script "$s" plain; done

# --- one pgbench run ------------------------------------------------------------------
# arm script clients mode -> "tps mean_ms p99_ms cpu_us_per_tx rss_kb" or "n/a"
run_arm() {
  local arm=$1 script=$2 c=$3 mode=$4 port user pw file pid="" j=$(( $3 < 2 ? 1 : 2 ))
  # pgbench prepares each command with a blocking PQprepare the first time a client runs
  # it, which stalls every other client of that thread. pgtenant answers such a Parse
  # without a backend, so 2 threads work; PREPARED_THREADS=per-client keeps one thread per
  # client in prepared cells (how this table was measured before that fix).
  [ "$mode" = prepared ] && [ "${PREPARED_THREADS:-2}" = per-client ] && j=$c
  case $arm in
    direct) port=$PGPORT user=app_user pw=app_password file="$WORK/$script.ctx.sql" ;;
    pgbouncer) port=$BPORT user=bench pw=bench-secret file="$WORK/$script.ctx.sql" pid=$BOUNCER_PID ;;
    pgtenant) port=$TPORT user=bench pw=bench-secret file="$WORK/$script.plain.sql" pid=$TENANT_PID ;;
  esac
  local logdir="$WORK/log"; rm -rf "$logdir"; mkdir -p "$logdir"
  local c0=0; [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
  PGPASSWORD=$pw pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -M "$mode" -c "$c" -j "$j" \
    -T "$DURATION" -f "$file" -l --log-prefix="$logdir/tx" bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" &
  local bench=$! rss=0
  sleep $(( DURATION / 2 + 1 ))
  [ -n "$pid" ] && rss=$(rss_kb "$pid")
  if ! wait "$bench"; then
    echo "   $arm $script $mode c=$c failed: $(grep -m1 -iE 'error|abort' "$WORK/pgbench.err" || tail -n1 "$WORK/pgbench.err")" >&2
    echo n/a; return
  fi
  local c1=0; [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  local tps; tps=$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out")
  cat "$logdir"/tx.* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk -v tps="$tps" \
      -v cpu=$(( c1 - c0 )) -v hz="$(getconf CLK_TCK)" -v rss="$rss" '
    {v[NR] = $1; sum += $1}
    END {
      i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
      printf "%s %.3f %.3f %.1f %d\n", tps, sum / NR / 1000, v[i] / 1000, cpu / hz * 1e6 / NR, rss
    }'
}

median() { # values... (n/a ignored) -> median or n/a
  printf '%s\n' "$@" | awk '/^[-+0-9.eE]+$/' | sort -g | awk '{a[NR] = $1}
    END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# --- can PgBouncer serve -M prepared at all? --------------------------------------------
BOUNCER_PREPARED=0
if PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$BPORT" -U bench -M prepared -c 8 -j 2 \
     -t 200 -f "$WORK/select.ctx.sql" bench >/dev/null 2>"$WORK/probe.err"; then
  BOUNCER_PREPARED=1
else
  echo "== PgBouncer cannot run -M prepared in transaction mode ($(grep -m1 -i error "$WORK/probe.err" | cut -c1-100)): n/a" >&2
fi

# --- the matrix -------------------------------------------------------------------------
ROWS=()
START=$(date +%s)
[ -z "$OUT" ] || printf 'script\tmode\tclients\tround\tarm\ttps\tmean_ms\tp99_ms\tcpu_us_tx\trss_kb\n' > "$OUT"
for script in $SCRIPTS; do
  for mode in $MODES; do
    for c in $CLIENTS; do
      declare -A R=()
      for r in $(seq "$ROUNDS"); do
        for arm in direct pgbouncer pgtenant; do
          if [ "$arm" = pgbouncer ] && [ "$mode" = prepared ] && [ "$BOUNCER_PREPARED" = 0 ]; then
            R[$arm.$r]=n/a; continue
          fi
          R[$arm.$r]=$(run_arm "$arm" "$script" "$c" "$mode")
          echo "   $script $mode c=$c round $r $arm: ${R[$arm.$r]}" >&2
          if [ -n "$OUT" ]; then
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$script" "$mode" "$c" "$r" "$arm" \
              "$(tr ' ' '\t' <<<"${R[$arm.$r]}")" >> "$OUT"
          fi
        done
      done
      # medians per arm and field (1 tps, 2 mean, 3 p99, 4 cpu/tx, 5 rss)
      declare -A M=()
      for arm in direct pgbouncer pgtenant; do
        for k in 1 2 3 4 5; do
          vals=(); for r in $(seq "$ROUNDS"); do vals+=("$(awk -v k=$k '{print $k}' <<<"${R[$arm.$r]}")"); done
          M[$arm.$k]=$(median "${vals[@]}")
        done
      done
      ROWS+=("$(awk -v s="$script" -v m="$mode" -v c="$c" \
        -v dt="${M[direct.1]}" -v bt="${M[pgbouncer.1]}" -v tt="${M[pgtenant.1]}" \
        -v dm="${M[direct.2]}" -v bm="${M[pgbouncer.2]}" -v tm="${M[pgtenant.2]}" \
        -v dp="${M[direct.3]}" -v bp="${M[pgbouncer.3]}" -v tp="${M[pgtenant.3]}" \
        -v bc="${M[pgbouncer.4]}" -v tc="${M[pgtenant.4]}" \
        -v br="${M[pgbouncer.5]}" -v tr="${M[pgtenant.5]}" '
        function f(fmt, v) { return v == "n/a" ? "n/a" : sprintf(fmt, v) }
        function mib(v) { return v == "n/a" ? "n/a" : sprintf("%.1f", v / 1024) }
        function ratio(a, b) { return (a == "n/a" || b == "n/a" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
        BEGIN {
          printf "| %s | %s | %d | %s | %s | %s | %s | %s | %s / %s / %s | %s / %s / %s | %s | %s | %s / %s |",
            s, m, c, f("%.0f", dt), f("%.0f", bt), f("%.0f", tt), ratio(tt, bt), ratio(tt, dt),
            f("%.2f", dm), f("%.2f", bm), f("%.2f", tm), f("%.2f", dp), f("%.2f", bp), f("%.2f", tp),
            f("%.1f", bc), f("%.1f", tc), mib(br), mib(tr)
        }')")
      unset R M
    done
  done
done

if [ -n "$SCRIPTS" ]; then
  echo
  echo "Medians of $ROUNDS interleaved rounds of ${DURATION}s; pool $POOL; scale $SCALE; $(( $(date +%s) - START ))s total."
  echo "Latencies in ms (direct / PgBouncer / pgtenant); CPU in µs per transaction; RSS in MiB mid-run."
  echo
  echo "| script | mode | clients | direct TPS | PgBouncer TPS | pgtenant TPS | pgt/pgb | pgt/direct | mean ms d / b / t | p99 ms d / b / t | PgBouncer CPU µs/tx | pgtenant CPU µs/tx | RSS MiB b / t |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "After the matrix: pgtenant RSS $(( $(rss_kb "$TENANT_PID") / 1024 )) MiB (peak $(( $(hwm_kb "$TENANT_PID") / 1024 )) MiB); PgBouncer RSS $(( $(rss_kb "$BOUNCER_PID") / 1024 )) MiB (peak $(( $(hwm_kb "$BOUNCER_PID") / 1024 )) MiB)."
fi

# --- no growth after a million transactions ---------------------------------------------
if [ "$LEAK" = 1 ]; then
  leak_run() { # transactions -> runs select through pgtenant with -M prepared
    PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$TPORT" -U bench -M prepared \
      -c "$LEAK_CLIENTS" -j 2 -t $(( $1 / LEAK_CLIENTS )) -f "$WORK/select.plain.sql" bench \
      | awk '/^tps/ {printf "%.0f tps", $3}'
  }
  echo
  echo "== RSS growth check: $LEAK_TX transactions through pgtenant (-M prepared, $LEAK_CLIENTS clients)"
  echo "   warm-up 50000 tx: $(leak_run 50000)"
  before=$(rss_kb "$TENANT_PID")
  t0=$(date +%s)
  leak_run "$LEAK_TX" > "$WORK/leak.out" & lp=$!
  samples="$before"
  while kill -0 "$lp" 2>/dev/null; do sleep 10; kill -0 "$lp" 2>/dev/null && samples+=" $(rss_kb "$TENANT_PID")"; done
  wait "$lp"
  after=$(rss_kb "$TENANT_PID")
  echo "   run: $(cat "$WORK/leak.out") in $(( $(date +%s) - t0 ))s"
  echo "   pgtenant RSS before ${before} KiB, after ${after} KiB, growth $(( after - before )) KiB"
  echo "   samples every 10 s (KiB): $samples $after"
fi
