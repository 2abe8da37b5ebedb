#!/usr/bin/env bash
# Many tenants over one pool: TENANTS pgbench processes at once, each logged in as its own
# tenant with PER clients, through pgtenant plain, verified with the carried context, and
# verified without it (context.carry = false). With more tenants than pooled backends most
# transactions land on a backend another tenant used last: verified mode then pays a switch
# (DISCARD ALL, the proxy's statements prepared again, enter() with its HMAC), so this is
# where the carried context costs instead of saving. Plain view: no RLS, no app-side context.
#
#   bash benches/tenants.sh
#   TENANTS=64 PER=1 SCRIPT=tpcb MODE=extended ROUNDS=3 bash benches/tenants.sh
#   OVERTAKES=0 bash benches/tenants.sh    # affinity_overtakes for every arm (0: arrival order)
#   HOLD=0s bash benches/tenants.sh        # affinity_hold for every arm ("0s": never)
#   TENANTS=64 PER=1 RATE=3000 SKEW=1 bash benches/tenants.sh   # paced, a few busy tenants
#
# Per arm: median total TPS over ROUNDS interleaved rounds, proxy and PostgreSQL CPU per
# transaction, and (verified arms) how many transactions found their context carried and how
# many backends were switched to another tenant or handed straight to a waiting client of the
# same tenant (affinity_overtakes) or kept by their client for its next transaction
# (affinity_hold), from /metrics; p50 and p99 latency over every transaction
# (pgbench -l) and the slowest tenant's transaction count over the fastest one's (fairness).
set -euo pipefail
cd "$(dirname "$0")/.."
TENANTS=${TENANTS:-32}
PER=${PER:-2}
SCRIPT=${SCRIPT:-select}
MODE=${MODE:-simple}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
MAX_CLIENTS=$(( TENANTS * PER * 2 + 100 ))
# shellcheck source=benches/setup.sh
source benches/setup.sh
write_script "$SCRIPT" plain
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
  echo "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;"
done | "${PSQL[@]}" -d bench

# --- the tenants, and one pgtenant per arm ---------------------------------------------
: > "$WORK/tenants.toml"
for i in $(seq "$TENANTS"); do
  printf '[tenants.t%d]\nid = "%s"\npassword = %s\n' "$i" "$(cat /proc/sys/kernel/random/uuid)" "'$VERIFIER'" >> "$WORK/tenants.toml"
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$WORK/context.key"; chmod 644 "$WORK/context.key"
declare -A PORT PID METRICS
for arm in plain carried uncarried; do
  PORT[$arm]=$(free_port); METRICS[$arm]=$(free_port)
  case $arm in
    plain) ctx="" ;;
    carried) ctx="mode = \"verified\"\ncarry = true\nkey_file = \"$WORK/context.key\"" ;;
    uncarried) ctx="mode = \"verified\"\ncarry = false\nkey_file = \"$WORK/context.key\"" ;;
  esac
  sed -e "s/127.0.0.1:$TPORT/127.0.0.1:${PORT[$arm]}/" \
      -e "s/^metrics_listen = .*/metrics_listen = \"127.0.0.1:${METRICS[$arm]}\"/" \
      -e "s|^\[context\]|[context]\n$ctx|" "$WORK/pgtenant.toml" > "$WORK/$arm.toml"
  cat "$WORK/tenants.toml" >> "$WORK/$arm.toml"
  if [ -n "${OVERTAKES:-}" ]; then
    sed -i "/^\[databases.bench\]/a affinity_overtakes = $OVERTAKES" "$WORK/$arm.toml"
  fi
  if [ -n "${HOLD:-}" ]; then
    sed -i "/^\[databases.bench\]/a affinity_hold = \"$HOLD\"" "$WORK/$arm.toml"
  fi
  if [ "$arm" = carried ]; then
    $PGT db install --config "$WORK/$arm.toml" \
      --dba-url "postgresql://postgres@127.0.0.1:$PGPORT/bench" >/dev/null
  fi
  $PGT --config "$WORK/$arm.toml" --log warn & PID[$arm]=$!; PIDS+=("${PID[$arm]}")
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "${PORT[$arm]}" && break; sleep 0.1; done
done

metric() { # arm name -> value (0 when absent)
  curl -s "http://127.0.0.1:${METRICS[$1]}/metrics" | awk -v n="$2" '$1 == n {print $2; f=1} END {if (!f) print 0}'
}

# arm -> "tps proxy_cpu_us_tx pg_cpu_us_tx carried switches handoffs p50_ms p99_ms fairness holds"
# (fairness: the slowest tenant's transactions over the fastest one's)
run() {
  local arm=$1 c0 c1 g0 g1 m0 m1 s0 s1 h0 h1 k0 k1 i tx=0 tps=0 pids=() lat
  rm -rf "$WORK/lat"; mkdir -p "$WORK/lat"
  c0=$(cpu_ticks "${PID[$arm]}"); g0=$(pg_ticks)
  m0=$(metric "$arm" pgtenant_context_carried_total); s0=$(metric "$arm" pgtenant_context_switches_total)
  h0=$(metric "$arm" 'pgtenant_pool_affinity_handoffs_total{pool="bench"}')
  k0=$(metric "$arm" 'pgtenant_pool_affinity_holds_total{pool="bench"}')
  for i in $(seq "$TENANTS"); do
    PGPASSWORD=bench-secret pgbench -n -h 127.0.0.1 -p "${PORT[$arm]}" -U "t$i" -M "$MODE" ${RATE_OF[$i]:+-R "${RATE_OF[$i]}"} \
      -c "$PER" -j 1 -T "$DURATION" -f "$WORK/$SCRIPT.plain.sql" -l --log-prefix="$WORK/lat/t$i" bench \
      >"$WORK/out.$i" 2>"$WORK/err.$i" & pids+=($!)
  done
  wait "${pids[@]}" || true
  sleep 0.5
  c1=$(cpu_ticks "${PID[$arm]}"); g1=$(pg_ticks)
  m1=$(metric "$arm" pgtenant_context_carried_total); s1=$(metric "$arm" pgtenant_context_switches_total)
  h1=$(metric "$arm" 'pgtenant_pool_affinity_handoffs_total{pool="bench"}')
  k1=$(metric "$arm" 'pgtenant_pool_affinity_holds_total{pool="bench"}')
  for i in $(seq "$TENANTS"); do
    tx=$(( tx + $(awk '/^number of transactions actually processed/ {print $NF}' "$WORK/out.$i" | cut -d/ -f1 || echo 0) ))
    tps=$(awk -v a="$tps" -v b="$(awk '/^tps/ {print $3; exit}' "$WORK/out.$i")" 'BEGIN {print a + b}')
  done
  lat=$(cat "$WORK"/lat/t* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk '
    function q(p,   i) { i = int(NR * p); if (i < NR * p) i++; if (i < 1) i = 1; return v[i] / 1000 }
    {v[NR] = $1} END { printf "%.2f %.2f", q(0.5), q(0.99) }')
  lat="$lat $(for i in $(seq "$TENANTS"); do awk '/^number of transactions actually processed/ {print $NF}' "$WORK/out.$i" | cut -d/ -f1; done \
    | sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f", (hi > 0) ? lo / hi : 0}')"
  awk -v lat="$lat" -v tps="$tps" -v tx="$tx" -v pc=$(( c1 - c0 )) -v gc=$(( g1 - g0 )) -v hz="$(getconf CLK_TCK)" \
      -v m=$(( ${m1%.*} - ${m0%.*} )) -v s=$(( ${s1%.*} - ${s0%.*} )) -v h=$(( ${h1%.*} - ${h0%.*} )) \
      -v k=$(( ${k1%.*} - ${k0%.*} )) \
      'BEGIN { printf "%.0f %.1f %.1f %.2f %.2f %.2f %s %.2f\n", tps, pc / hz * 1e6 / tx, gc / hz * 1e6 / tx, m / tx, s / tx, h / tx, lat, k / tx }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# RATE: total transactions per second over all tenants (pgbench -R per tenant), tenant i's
# share proportional to 1 / i^SKEW (0: equal shares; 1: Zipf, a few busy tenants and a long
# tail). Unset: every client as fast as it can.
declare -A RATE_OF
if [ -n "${RATE:-}" ]; then
  while read -r i r; do RATE_OF[$i]=$r; done < <(awk -v n="$TENANTS" -v s="${SKEW:-0}" -v total="$RATE" '
    BEGIN { for (i = 1; i <= n; i++) { w[i] = 1 / i ^ s; sum += w[i] }
            for (i = 1; i <= n; i++) printf "%d %.1f\n", i, total * w[i] / sum }')
fi

declare -A R
for r in $(seq "$ROUNDS"); do
  for arm in plain carried uncarried; do
    R[$arm.$r]=$(run "$arm")
    echo "   round $r $arm: ${R[$arm.$r]}" >&2
  done
done
echo
echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $TENANTS tenants x $PER clients ($SCRIPT, $MODE, one pgbench per tenant, -j 1${RATE:+, $RATE tx/s in all, shares 1/i^${SKEW:-0}}), pool $POOL, scale $SCALE; medians of $ROUNDS interleaved rounds of ${DURATION}s; load $(cut -d' ' -f1-3 /proc/loadavg) at the end."
echo
echo "| arm | TPS | vs plain | proxy CPU µs/tx | PostgreSQL CPU µs/tx | carried per tx | switches per tx | hand-overs per tx | p50 ms | p99 ms | slowest/fastest tenant | holds per tx |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for arm in plain carried uncarried; do
  declare -a col=()
  for k in 1 2 3 4 5 6 7 8 9 10; do
    vals=(); for r in $(seq "$ROUNDS"); do vals+=("$(awk -v k=$k '{print $k}' <<<"${R[$arm.$r]}")"); done
    col[$k]=$(median "${vals[@]}")
  done
  [ "$arm" = plain ] && base=${col[1]}
  awk -v a="$arm" -v t="${col[1]}" -v b="$base" -v p="${col[2]}" -v g="${col[3]}" -v m="${col[4]}" -v s="${col[5]}" -v h="${col[6]}" -v rest="${col[7]} | ${col[8]} | ${col[9]} | ${col[10]}" \
    'BEGIN { printf "| %s | %.0f | %.2f | %s | %s | %s | %s | %s | %s |\n", a, t, t / b, p, g, m, s, h, rest }'
done
