#!/usr/bin/env bash
# Load benchmark: pgbench against direct PostgreSQL, PgBouncer (transaction mode) and
# pgtenant, interleaved, with the same backend pool size and the same RLS work in every arm.
#
#   bash benches/load.sh                # defaults below
#   CLIENTS="1 16 64" DURATION=10 bash benches/load.sh
#
# Every arm reads pgbench_accounts through a NOSUPERUSER NOBYPASSRLS role with an RLS
# policy on app.current_tenant. Direct and PgBouncer arms set the context the way an app
# must without pgtenant (a set_config at the start of each transaction, inside BEGIN/END);
# pgtenant injects it itself. Prints TPS, mean latency, ratios and the proxies' CPU time.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-"1 16 64"}
DURATION=${DURATION:-10}
POOL=${POOL:-20}
SCALE=${SCALE:-10}
MODES=${MODES:-"simple extended"}
ROUNDS=${ROUNDS:-1}

export DEBIAN_FRONTEND=noninteractive
command -v pgbouncer >/dev/null || { apt-get update -q && apt-get install -y -q pgbouncer; }
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
cargo build --release -q
PGT=$PWD/target/release/pgtenant

WORK=$(mktemp -d /tmp/pgtenant-bench-XXXX); chmod 777 "$WORK"
RUN=(); [ "$(id -u)" = 0 ] && RUN=(runuser -u postgres --)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); BPORT=$(free_port); TPORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== PostgreSQL on $PGPORT (scale $SCALE)"
"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust -N >/dev/null
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB" start >/dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -c "CREATE DATABASE bench"
pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1
TID=11111111-1111-4111-8111-111111111111
"${PSQL[@]}" -d bench <<SQL
CREATE ROLE app_user LOGIN PASSWORD 'app_password' NOSUPERUSER NOBYPASSRLS;
ALTER TABLE pgbench_accounts ADD COLUMN tid uuid NOT NULL DEFAULT '$TID';
ALTER TABLE pgbench_accounts ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY t ON pgbench_accounts TO app_user
  USING (tid = current_setting('app.current_tenant')::uuid)
  WITH CHECK (tid = current_setting('app.current_tenant')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user;
VACUUM ANALYZE;
SQL

echo "== PgBouncer on $BPORT, pgtenant on $TPORT (pool $POOL each)"
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench user=app_user password=app_password
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 2000
logfile = $WORK/pgbouncer.log
INI
echo '"bench" ""' > "$WORK/users.txt"
chmod 644 "$WORK"/pgbouncer.ini "$WORK/users.txt"
"${RUN[@]}" pgbouncer -q "$WORK/pgbouncer.ini" & PIDS+=($!)
VERIFIER=$($PGT hash-password bench-secret)
cat > "$WORK/pgtenant.toml" <<TOML
[server]
listen = "127.0.0.1:$TPORT"
metrics_listen = "127.0.0.1:0"
max_client_connections = 5000
[databases.bench]
host = "127.0.0.1"
port = $PGPORT
user = "app_user"
password = "app_password"
pool_size = $POOL
[tenants.bench]
id = "$TID"
password = '$VERIFIER'
TOML
$PGT --config "$WORK/pgtenant.toml" --log warn & PIDS+=($!)
sleep 1
BOUNCER_PID=$(pgrep -n -x pgbouncer); TENANT_PID=${PIDS[1]}

# Scripts: the app-side context (direct, PgBouncer) and the plain read (pgtenant).
cat > "$WORK/ctx.sql" <<SQL
\set aid random(1, 100000 * $SCALE)
BEGIN;
SELECT set_config('app.current_tenant', '$TID', true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
SQL
cat > "$WORK/plain.sql" <<SQL
\set aid random(1, 100000 * $SCALE)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # arm port user password script clients mode
  PGPASSWORD=$4 pgbench -n -h 127.0.0.1 -p "$2" -U "$3" -M "$7" -c "$6" -j "$(( $6 < 2 ? 1 : 2 ))" \
    -T "$DURATION" -f "$5" bench 2>/dev/null | awk '/^tps/ {tps=$3} /latency average/ {lat=$4} END {printf "%s %s", tps, lat}'
}
TICK=$(getconf CLK_TCK)
printf '\n%-9s %-8s %5s | %10s %10s %10s | %8s %8s | %9s %9s\n' mode arm clients direct pgbouncer pgtenant pgt/pgb pgt/dir "pgb us/tx" "pgt us/tx"
for mode in $MODES; do
  for c in $CLIENTS; do
    for r in $(seq "$ROUNDS"); do
      read -r dtps dlat <<<"$(run direct "$PGPORT" app_user app_password "$WORK/ctx.sql" "$c" "$mode")"
      b0=$(cpu "$BOUNCER_PID")
      read -r btps blat <<<"$(run pgbouncer "$BPORT" bench x "$WORK/ctx.sql" "$c" "$mode")"
      b1=$(cpu "$BOUNCER_PID"); t0=$(cpu "$TENANT_PID")
      read -r ttps tlat <<<"$(run pgtenant "$TPORT" bench bench-secret "$WORK/plain.sql" "$c" "$mode")"
      t1=$(cpu "$TENANT_PID")
      awk -v m="$mode" -v c="$c" -v d="$dtps" -v b="$btps" -v t="$ttps" -v dl="$dlat" -v bl="$blat" -v tl="$tlat" \
          -v bc="$((b1 - b0))" -v tc="$((t1 - t0))" -v hz="$TICK" -v dur="$DURATION" 'BEGIN {
        printf "%-9s %-8s %5d | %10.0f %10.0f %10.0f | %8.2f %8.2f | %9.1f %9.1f\n", m, "tps", c, d, b, t, t/b, t/d,
          bc/hz*1e6/(b*dur), tc/hz*1e6/(t*dur);
        printf "%-9s %-8s %5d | %10.3f %10.3f %10.3f |   (mean latency, ms)\n", m, "lat", c, dl, bl, tl }'
    done
  done
done
echo
echo "pgtenant RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$TENANT_PID/status); PgBouncer RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$BOUNCER_PID/status)"
