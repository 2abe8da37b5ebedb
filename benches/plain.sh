#!/usr/bin/env bash
# The plain view: the same pgbench workload through PgBouncer (transaction mode), pgtenant
# (plain and verified mode) and straight to PostgreSQL, as every pooler benchmark runs it:
# no RLS, no app-side context. pgtenant still injects its context into every transaction, so
# this measures what the isolation costs against bare pooling (load.sh's equal-isolation view
# gives the app the same isolation in every arm instead).
#
#   bash benches/plain.sh                        # the full matrix (about 50 minutes)
#   QUICK=1 bash benches/plain.sh                # select-only, 16/64 clients, 2 threads, 1 round
#   CLIENTS="64" SCRIPTS=tpcb MODES=prepared THREADS=2 bash benches/plain.sh
#   VERIFIED_CARRY=false bash benches/plain.sh  # verified mode without the carried context
#
# Cells are (script, protocol mode, pgbench threads, clients). Scripts: select (BEGIN; one
# SELECT by primary key; END) and tpcb (pgbench's TPC-B-like transaction in BEGIN/END).
# THREADS: "2" is pgbench -j 2 (as users run it), "per-client" one thread per client. In each
# cell the arms run interleaved ROUNDS times; the table shows medians: TPS, the ratios, each
# proxy's CPU per transaction and PostgreSQL's (every process of this cluster, backends that
# exited during the run included: the postmaster's own and reaped children's time plus the
# live children's, utime+stime from /proc), and the part of each proxy's CPU spent in user
# space (utime; the rest is the kernel's socket work for it). PgBouncer 1.18 cannot serve -M prepared in
# transaction mode; its prepared cells print n/a unless a probe succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QUICK:-0}" = 1 ]; then
  CLIENTS=${CLIENTS:-"16 64"} SCRIPTS=${SCRIPTS:-select} MODES=${MODES:-"simple extended prepared"}
  THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-4}
fi
CLIENTS=${CLIENTS:-"1 16 64 256"}
SCRIPTS=${SCRIPTS:-"select tpcb"}
MODES=${MODES:-"simple extended prepared"}
THREADS=${THREADS:-"2 per-client"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
ARMS="direct pgbouncer plain verified"
max_c=0; for c in $CLIENTS; do [ "$c" -gt "$max_c" ] && max_c=$c; done
MAX_CLIENTS=$(( max_c * 2 + 100 ))
# shellcheck source=benches/setup.sh
source benches/setup.sh
for s in select tpcb; do write_script "$s" plain; done
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the plain view: no row-level security --------------------------------------------------
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
  echo "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;"
done | "${PSQL[@]}" -d bench

# --- a second pgtenant, in verified mode, on the same database ------------------------------
VPORT=$(free_port)
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$WORK/context.key"; chmod 644 "$WORK/context.key"
sed -e "s/127.0.0.1:$TPORT/127.0.0.1:$VPORT/" \
    -e "s|^\[context\]|[context]\nmode = \"verified\"\ncarry = ${VERIFIED_CARRY:-true}\nkey_file = \"$WORK/context.key\"|" \
    "$WORK/pgtenant.toml" > "$WORK/verified.toml"
$PGT db install --config "$WORK/verified.toml" \
  --dba-url "postgresql://postgres@127.0.0.1:$PGPORT/bench" >/dev/null
$PGT --config "$WORK/verified.toml" --log warn & VERIFIED_PID=$!; PIDS+=("$VERIFIED_PID")
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$VPORT" && break; sleep 0.1; done


# arm script clients mode threads -> "tps proxy_cpu_us_tx pg_cpu_us_tx proxy_user_us_tx" (n/a
# when it failed)
run() {
  local arm=$1 script=$2 c=$3 mode=$4 j=$5 port user=bench pw=bench-secret pid=""
  [ "$j" = per-client ] && j=$c
  [ "$j" -gt "$c" ] && j=$c
  case $arm in
    direct) port=$PGPORT user=app_user pw=app_password ;;
    pgbouncer) port=$BPORT pid=$BOUNCER_PID ;;
    plain) port=$TPORT pid=$TENANT_PID ;;
    verified) port=$VPORT pid=$VERIFIED_PID ;;
  esac
  local c0=0 c1=0 u0=0 u1=0 g0 g1 tx
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid") && u0=$(user_ticks "$pid")
  g0=$(pg_ticks)
  PGPASSWORD=$pw pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -M "$mode" -c "$c" -j "$j" \
    -T "$DURATION" -f "$WORK/$script.plain.sql" bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" || {
    echo "   $arm $script $mode c=$c j=$j failed: $(grep -m1 -iE 'error|abort' "$WORK/pgbench.err" || true)" >&2
    echo "n/a n/a n/a n/a"; return; }
  # The direct arm's backends have just exited: let the postmaster reap them (their time
  # then counts in its children's).
  sleep 0.5
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid") && u1=$(user_ticks "$pid")
  g1=$(pg_ticks)
  tx=$(awk '/^number of transactions actually processed/ {print $NF}' "$WORK/pgbench.out" | cut -d/ -f1)
  if [ "${tx:-0}" = 0 ]; then
    echo "   $arm $script $mode c=$c j=$j: no transactions ($(tail -n1 "$WORK/pgbench.err"))" >&2
    echo "n/a n/a n/a n/a"; return
  fi
  awk -v tps="$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out")" -v tx="$tx" -v proxy="$pid" \
      -v pc=$(( c1 - c0 )) -v uc=$(( u1 - u0 )) -v gc=$(( g1 - g0 )) -v hz="$(getconf CLK_TCK)" \
      'function us(t) { return proxy == "" ? "n/a" : sprintf("%.1f", t / hz * 1e6 / tx) }
       BEGIN { printf "%s %s %.1f %s\n", tps, us(pc), gc / hz * 1e6 / tx, us(uc) }'
}
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
median() { printf '%s\n' "$@" | awk '/^[-+0-9.eE]+$/' | sort -g | awk '{a[NR] = $1}
  END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

BOUNCER_PREPARED=0
if PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$BPORT" -U bench -M prepared -c 4 -j 2 \
     -t 100 -f "$WORK/select.plain.sql" bench >/dev/null 2>&1; then BOUNCER_PREPARED=1; fi

ROWS=(); START=$(date +%s)
for script in $SCRIPTS; do for mode in $MODES; do for threads in $THREADS; do for c in $CLIENTS; do
  # One client: one thread either way.
  [ "$c" = 1 ] && [ "$threads" = per-client ] && [[ " $THREADS " == *" 2 "* ]] && continue
  declare -A R=()
  for r in $(seq "$ROUNDS"); do
    for arm in $ARMS; do
      if [ "$arm" = pgbouncer ] && [ "$mode" = prepared ] && [ "$BOUNCER_PREPARED" = 0 ]; then
        R[$arm.$r]="n/a n/a n/a n/a"; continue
      fi
      R[$arm.$r]=$(run "$arm" "$script" "$c" "$mode" "$threads")
      echo "   $script $mode j=$threads c=$c round $r $arm: ${R[$arm.$r]}" >&2
    done
  done
  declare -A M=()
  for arm in $ARMS; do for k in 1 2 3 4; do
    vals=(); for r in $(seq "$ROUNDS"); do vals+=("$(awk -v k=$k '{print $k}' <<<"${R[$arm.$r]}")"); done
    M[$arm.$k]=$(median "${vals[@]}")
  done; done
  ROWS+=("$(awk -v s="$script" -v m="$mode" -v j="$threads" -v c="$c" \
    -v d="${M[direct.1]}" -v b="${M[pgbouncer.1]}" -v p="${M[plain.1]}" -v v="${M[verified.1]}" \
    -v bc="${M[pgbouncer.2]}" -v pc="${M[plain.2]}" -v vc="${M[verified.2]}" \
    -v dg="${M[direct.3]}" -v bg="${M[pgbouncer.3]}" -v pg="${M[plain.3]}" -v vg="${M[verified.3]}" \
    -v bu="${M[pgbouncer.4]}" -v pu="${M[plain.4]}" -v vu="${M[verified.4]}" '
    function f(v) { return v == "n/a" ? "n/a" : sprintf("%.0f", v) }
    function r(a, b) { return (a == "n/a" || b == "n/a" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
    BEGIN { printf "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s / %s / %s | %s / %s / %s / %s |",
      s, m, j, c, f(d), f(b), f(p), f(v), r(p, b), r(v, b), r(v, p), bc, pc, vc, bu, pu, vu, dg, bg, pg, vg }')")
  unset R M
done; done; done; done
echo
echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); medians of $ROUNDS interleaved rounds of ${DURATION}s; pool $POOL; scale $SCALE; $(( $(date +%s) - START ))s total; load average $LOAD0 at start, $(cut -d' ' -f1-3 /proc/loadavg) at end ($(nproc) CPUs)."
echo "No RLS, no app-side context; pgtenant injects its context (plain: set_config; verified: enter(), or nothing where the backend carries the tenant's context, context.carry = ${VERIFIED_CARRY:-true}). CPU in µs per transaction."
echo
echo "| script | mode | threads | clients | direct TPS | PgBouncer TPS | pgtenant plain TPS | pgtenant verified TPS | plain/pgb | verified/pgb | verified/plain | proxy CPU µs/tx pgb / plain / verified | of it user space | PostgreSQL CPU µs/tx direct / pgb / plain / verified |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
