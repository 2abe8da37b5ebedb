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
# PostgreSQL (this cluster's processes: utime+stime from /proc over the run).
#
# DIRECT=1 adds two arms with no proxy at all, to show what the policies alone cost
# PostgreSQL: pgbench straight to PostgreSQL as a member of app_user whose role defaults
# hold the tenant id and its verified copy (what a backend carrying pgtenant's verified
# context holds), once with the plain policies and once with the verified readers. Their
# ratio is the verified/plain that a proxy adding nothing would reach.
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
ARMS="pgbouncer plain verified"
if [ "${DIRECT:-0}" = 1 ]; then
  ARMS="$ARMS direct-plain direct-verified"
  # Not a way in for tenants: this role exists only in the benchmark's cluster, and its
  # defaults name the verified copy's secret slot, read here by the superuser.
  SLOT=$("${PSQL[@]}" -d bench -Atc "SELECT pg_sequence_last_value('pgtenant.slot')")
  "${PSQL[@]}" -d bench <<SQL
CREATE ROLE direct_user LOGIN IN ROLE app_user;
ALTER ROLE direct_user SET app.current_tenant = '$TID';
ALTER ROLE direct_user SET "pgtenant.s${SLOT}_1" = '$TID';
SQL
fi

# arm script clients mode -> "tps proxy_cpu_us_tx pg_cpu_us_tx"
run() {
  local arm=$1 script=$2 c=$3 mode=$4 port pid file=$WORK/$2.plain.sql j=$(( $3 < 2 ? 1 : 2 ))
  case $arm in
    pgbouncer) policies plain; port=$BPORT pid=$BOUNCER_PID file=$WORK/$script.ctx.sql ;;
    plain) policies plain; port=$TPORT pid=$TENANT_PID ;;
    verified) policies verified; port=$VPORT pid=$VERIFIED_PID ;;
    direct-plain) policies plain; port=$PGPORT pid=$$ ;;
    direct-verified) policies verified; port=$PGPORT pid=$$ ;;
  esac
  local user=bench; [ "$port" = "$PGPORT" ] && user=direct_user
  local c0 g0 c1 g1 tx
  c0=$(cpu_ticks "$pid"); g0=$(pg_ticks)
  PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -M "$mode" -c "$c" -j "$j" \
    -T "$DURATION" -f "$file" bench >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" || { echo "n/a n/a n/a"; return; }
  # A direct arm's backends have just exited: let the postmaster reap them (their time then
  # counts in its children's, not in the next arm's).
  [ "$port" = "$PGPORT" ] && sleep 0.5
  c1=$(cpu_ticks "$pid"); g1=$(pg_ticks)
  tx=$(awk '/^number of transactions actually processed/ {print $NF}' "$WORK/pgbench.out" | cut -d/ -f1)
  awk -v tps="$(awk '/^tps/ {print $3; exit}' "$WORK/pgbench.out")" -v tx="$tx" \
      -v pc=$(( c1 - c0 )) -v gc=$(( g1 - g0 )) -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%s %.1f %.1f\n", tps, pc / hz * 1e6 / tx, gc / hz * 1e6 / tx }'
}
median() { printf '%s\n' "$@" | awk '/^[-+0-9.eE]+$/' | sort -g | awk '{a[NR] = $1}
  END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

ROWS=(); DROWS=(); START=$(date +%s)
for script in $SCRIPTS; do for mode in $MODES; do for c in $CLIENTS; do
  declare -A R=()
  for r in $(seq "$ROUNDS"); do
    for arm in $ARMS; do
      R[$arm.$r]=$(run "$arm" "$script" "$c" "$mode")
      echo "   $script $mode c=$c round $r $arm: ${R[$arm.$r]}" >&2
    done
  done
  declare -A M=()
  for arm in $ARMS; do for k in 1 2 3; do
    vals=(); for r in $(seq "$ROUNDS"); do vals+=("$(awk -v k=$k '{print $k}' <<<"${R[$arm.$r]}")"); done
    M[$arm.$k]=$(median "${vals[@]}")
  done; done
  ROWS+=("$(awk -v s="$script" -v m="$mode" -v c="$c" -v b="${M[pgbouncer.1]}" -v p="${M[plain.1]}" \
    -v v="${M[verified.1]}" -v bc="${M[pgbouncer.2]}" -v pc="${M[plain.2]}" -v vc="${M[verified.2]}" \
    -v bg="${M[pgbouncer.3]}" -v pg="${M[plain.3]}" -v vg="${M[verified.3]}" '
    function r(a, b) { return (a == "n/a" || b == "n/a" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
    BEGIN { printf "| %s | %s | %d | %.0f | %.0f | %.0f | %s | %s | %s | %s / %s / %s | %s / %s / %s |",
      s, m, c, b, p, v, r(v, p), r(p, b), r(v, b), bc, pc, vc, bg, pg, vg }')")
  if [ "${DIRECT:-0}" = 1 ]; then
    DROWS+=("$(awk -v s="$script" -v m="$mode" -v c="$c" -v dp="${M[direct-plain.1]}" \
      -v dv="${M[direct-verified.1]}" -v dpg="${M[direct-plain.3]}" -v dvg="${M[direct-verified.3]}" \
      -v p="${M[plain.1]}" -v v="${M[verified.1]}" '
      function r(a, b) { return (a == "n/a" || b == "n/a" || b == 0) ? "n/a" : sprintf("%.2f", a / b) }
      BEGIN { printf "| %s | %s | %d | %.0f | %.0f | %s | %s / %s | %s |",
        s, m, c, dp, dv, r(dv, dp), dpg, dvg, r(v, p) }')")
  fi
  unset R M
done; done; done
echo
echo "Medians of $ROUNDS interleaved rounds of ${DURATION}s; pool $POOL; scale $SCALE; $(( $(date +%s) - START ))s total."
echo
echo "| script | mode | clients | PgBouncer TPS | plain TPS | verified TPS | verified/plain | plain/pgb | verified/pgb | proxy CPU µs/tx b / p / v | PostgreSQL CPU µs/tx b / p / v |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ "${DIRECT:-0}" = 1 ]; then
  echo
  echo "No proxy: pgbench straight to PostgreSQL as direct_user (context from role defaults)."
  echo
  echo "| script | mode | clients | direct plain TPS | direct verified TPS | direct verified/plain | PostgreSQL CPU µs/tx plain / verified | through pgtenant verified/plain |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${DROWS[@]}"
fi
