#!/usr/bin/env bash
# The cost of the verified context: pgbench through pgtenant in plain mode (policies read
# current_setting) and in verified mode (policies read pgtenant.tenant_id(), the injection is
# pgtenant.enter()), with PgBouncer (the app sets the context itself) as the yardstick. The
# arms run interleaved in each cell; the RLS policies are switched before each arm
# (ALTER POLICY), so both pgtenant instances serve the same tables.
#
#   bash benches/verified.sh
#   ROUNDS=3 DURATION=8 CLIENTS="16 64" SCRIPTS="select tpcb" MODES="simple extended" bash benches/verified.sh
#
# Per cell: median TPS of each arm, the ratios, and CPU per transaction of the proxy and of
# PostgreSQL (all postgres processes: utime+stime from /proc over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"16 64"}
DURATION=${DURATION:-6}
SCRIPTS=${SCRIPTS:-"select tpcb"}
MODES=${MODES:-"simple extended"}
ROUNDS=${ROUNDS:-2}
max_c=0; for c in $CLIENTS; do [ "$c" -gt "$max_c" ] && max_c=$c; done
MAX_CLIENTS=$(( max_c * 2 + 100 ))
# shellcheck source=benches/setup.sh
source benches/setup.sh
for s in select tpcb; do write_script "$s" ctx; write_script "$s" plain; done

# --- a second pgtenant, in verified mode, on the same database ----------------------------
VPORT=$(free_port)
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$WORK/context.key"; chmod 644 "$WORK/context.key"
sed -e "s/127.0.0.1:$TPORT/127.0.0.1:$VPORT/" \
    -e "s|^\[context\]|[context]\nmode = \"verified\"\nkey_file = \"$WORK/context.key\"|" \
    "$WORK/pgtenant.toml" > "$WORK/verified.toml"
$PGT db install --config "$WORK/verified.toml" \
  --dba-url "postgresql://postgres@127.0.0.1:$PGPORT/bench" >/dev/null
$PGT --config "$WORK/verified.toml" --log warn & VERIFIED_PID=$!; PIDS+=("$VERIFIED_PID")
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$VPORT" && break; sleep 0.1; done
TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
policies() { # plain | verified
  local read="current_setting('app.current_tenant')::uuid"
  [ "$1" = verified ] && read="(SELECT pgtenant.tenant_id())::uuid"
  for t in $TABLES; do
    echo "ALTER POLICY tenant_isolation ON $t USING (tenant_id = $read) WITH CHECK (tenant_id = $read);"
  done | "${PSQL[@]}" -d bench
}
pg_ticks() { # CPU ticks of every postgres process now
  local sum=0 p
  for p in $(pgrep -x postgres); do
    sum=$(( sum + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$sum"
}

# arm script clients mode -> "tps proxy_cpu_us_tx pg_cpu_us_tx"
run() {
  local arm=$1 script=$2 c=$3 mode=$4 port pid file=$WORK/$2.plain.sql j=$(( $3 < 2 ? 1 : 2 ))
  case $arm in
    pgbouncer) policies plain; port=$BPORT pid=$BOUNCER_PID file=$WORK/$script.ctx.sql ;;
    plain) policies plain; port=$TPORT pid=$TENANT_PID ;;
    verified) policies verified; port=$VPORT pid=$VERIFIED_PID ;;
  esac
  local c0 g0 c1 g1 tx
  c0=$(cpu_ticks "$pid"); g0=$(pg_ticks)
  PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$port" -U bench -M "$mode" -c "$c" -j "$j" \
    -T "$DURATION" -f "$file" bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" || { echo "n/a n/a n/a"; return; }
  c1=$(cpu_ticks "$pid"); g1=$(pg_ticks)
  tx=$(awk '/^number of transactions actually processed/ {print $NF}' "$WORK/pgbench.out" | cut -d/ -f1)
  awk -v tps="$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out")" -v tx="$tx" \
      -v pc=$(( c1 - c0 )) -v gc=$(( g1 - g0 )) -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%s %.1f %.1f\n", tps, pc / hz * 1e6 / tx, gc / hz * 1e6 / tx }'
}
median() { printf '%s\n' "$@" | awk '/^[-+0-9.eE]+$/' | sort -g | awk '{a[NR] = $1}
  END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

ROWS=(); START=$(date +%s)
for script in $SCRIPTS; do for mode in $MODES; do for c in $CLIENTS; do
  declare -A R=()
  for r in $(seq "$ROUNDS"); do
    for arm in pgbouncer plain verified; do
      R[$arm.$r]=$(run "$arm" "$script" "$c" "$mode")
      echo "   $script $mode c=$c round $r $arm: ${R[$arm.$r]}" >&2
    done
  done
  declare -A M=()
  for arm in pgbouncer plain verified; do for k in 1 2 3; do
    vals=(); for r in $(seq "$ROUNDS"); do vals+=("$(awk -v k=$k '{print $k}' <<<"${R[$arm.$r]}")"); done
    M[$arm.$k]=$(median "${vals[@]}")
  done; done
  ROWS+=("$(awk -v s="$script" -v m="$mode" -v c="$c" -v b="${M[pgbouncer.1]}" -v p="${M[plain.1]}" \
    -v v="${M[verified.1]}" -v bc="${M[pgbouncer.2]}" -v pc="${M[plain.2]}" -v vc="${M[verified.2]}" \
    -v bg="${M[pgbouncer.3]}" -v pg="${M[plain.3]}" -v vg="${M[verified.3]}" '
    function r(a, b) { return (a == "n/a" || b == "n/a" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
    BEGIN { printf "| %s | %s | %d | %.0f | %.0f | %.0f | %s | %s | %s | %s / %s / %s | %s / %s / %s |",
      s, m, c, b, p, v, r(v, p), r(p, b), r(v, b), bc, pc, vc, bg, pg, vg }')")
  unset R M
done; done; done
echo
echo "Medians of $ROUNDS interleaved rounds of ${DURATION}s; pool $POOL; scale $SCALE; $(( $(date +%s) - START ))s total."
echo
echo "| script | mode | clients | PgBouncer TPS | plain TPS | verified TPS | verified/plain | plain/pgb | verified/pgb | proxy CPU µs/tx b / p / v | PostgreSQL CPU µs/tx b / p / v |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
