# Shared by benches/load.sh and benches/idle.sh (sourced, not run): a throwaway PostgreSQL
# with pgbench tables under RLS, PgBouncer (transaction mode) and pgtenant in front of it,
# all on free loopback ports, removed again on exit.
#
# In: SCALE, POOL, MAX_CLIENTS, PGTENANT_BIN, RESET_ON_RELEASE and PGTENANT_WORKERS (optional).
# Out: PGPORT BPORT TPORT, BOUNCER_PID TENANT_PID, TID, WORK, PGT (the pgtenant binary),
# and the helpers cpu_ticks, pg_ticks (this cluster's CPU), rss_kb, hwm_kb.
# Every arm reaches PostgreSQL as app_user (NOSUPERUSER NOBYPASSRLS); both proxies
# authenticate their clients with SCRAM-SHA-256 against the same verifier
# (user bench, password bench-secret).

SCALE=${SCALE:-10}
POOL=${POOL:-20}
MAX_CLIENTS=${MAX_CLIENTS:-2000}
TID=11111111-1111-4111-8111-111111111111

export DEBIAN_FRONTEND=noninteractive
command -v pgbouncer >/dev/null || { apt-get update -q && apt-get install -y -q pgbouncer; }
command -v pgbench >/dev/null || { apt-get update -q && apt-get install -y -q postgresql; }
id -u postgres >/dev/null 2>&1 ||
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
# As many descriptors as we are allowed (raising the hard limit needs CAP_SYS_RESOURCE).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
# PGTENANT_BIN=/path/to/pgtenant benchmarks that binary instead of building this tree.
if [ -n "${PGTENANT_BIN:-}" ]; then
  PGT=$PGTENANT_BIN
else
  cargo build --release -q
  PGT=${CARGO_TARGET_DIR:-$PWD/target}/release/pgtenant
fi

WORK=$(mktemp -d /tmp/pgtenant-bench-XXXX); chmod 777 "$WORK"
RUN=(); [ "$(id -u)" = 0 ] && RUN=(runuser -u postgres --)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); BPORT=$(free_port); TPORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${BOUNCER_PID:-}" ]; then kill "$BOUNCER_PID" 2>/dev/null || true; fi
  "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

echo "== PostgreSQL on $PGPORT (scale $SCALE)" >&2
"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust -N >/dev/null
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB" start >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -c "CREATE DATABASE bench"
pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1
{
  echo "CREATE ROLE app_user LOGIN PASSWORD 'app_password' NOSUPERUSER NOBYPASSRLS;"
  # Every table the TPC-B-like script touches is tenant-owned and under a forced policy.
  for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
    echo "ALTER TABLE $t ADD COLUMN tenant_id uuid NOT NULL DEFAULT '$TID';"
    echo "ALTER TABLE $t ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;"
    echo "CREATE POLICY tenant_isolation ON $t TO app_user
            USING (tenant_id = current_setting('app.current_tenant')::uuid)
            WITH CHECK (tenant_id = current_setting('app.current_tenant')::uuid);"
  done
  echo "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user;"
  echo "VACUUM ANALYZE;"
} | "${PSQL[@]}" -d bench

VERIFIER=$($PGT hash-password bench-secret)
echo "== PgBouncer on $BPORT, pgtenant on $TPORT (pool $POOL each)" >&2
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench user=app_user password=app_password
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = $MAX_CLIENTS
pidfile = $WORK/pgbouncer.pid
logfile = $WORK/pgbouncer.log
INI
echo "\"bench\" \"$VERIFIER\"" > "$WORK/users.txt"
chmod 644 "$WORK"/pgbouncer.ini "$WORK/users.txt"
# As root, -u drops to postgres after start, keeping this shell's descriptor limit (runuser's
# PAM session would reset it to 1024).
if [ "$(id -u)" = 0 ]; then pgbouncer -q -u postgres "$WORK/pgbouncer.ini" & else pgbouncer -q "$WORK/pgbouncer.ini" & fi
PIDS+=($!)
cat > "$WORK/pgtenant.toml" <<TOML
[server]
listen = "127.0.0.1:$TPORT"
metrics_listen = "127.0.0.1:0"
max_client_connections = $MAX_CLIENTS
worker_threads = ${PGTENANT_WORKERS:-0}
[context]
reset_on_release = "${RESET_ON_RELEASE:-always}"
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
$PGT --config "$WORK/pgtenant.toml" --log warn & TENANT_PID=$!; PIDS+=("$TENANT_PID")
for _ in $(seq 50); do
  [ -s "$WORK/pgbouncer.pid" ] && pg_isready -q -h 127.0.0.1 -p "$TPORT" && break
  sleep 0.1
done
BOUNCER_PID=$(cat "$WORK/pgbouncer.pid")
echo "== fd limits: bench $(ulimit -n), pgbouncer $(awk '/open files/ {print $4}' "/proc/$BOUNCER_PID/limits"), pgtenant $(awk '/open files/ {print $4}' "/proc/$TENANT_PID/limits")" >&2

# CPU ticks of this cluster so far: the postmaster's own and its reaped children's, plus
# every live child's (a backend that exits moves from the second sum into the first).
POSTMASTER=$(head -n1 "$WORK/data/postmaster.pid")
pg_ticks() {
  local sum p
  sum=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$POSTMASTER/stat")
  for p in $(pgrep -P "$POSTMASTER"); do
    sum=$(( sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$sum"
}

# --- pgbench scripts (load.sh, profile.sh) ---------------------------------------------
write_script() { # name with_ctx
  local f="$WORK/$1.$2.sql" ctx=""
  [ "$2" = ctx ] && ctx="SELECT set_config('app.current_tenant', '$TID', true);"
  case $1 in
    select) cat > "$f" <<SQL
\set aid random(1, 100000 * $SCALE)
BEGIN;
$ctx
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
SQL
    ;;
    tpcb) cat > "$f" <<SQL
\set aid random(1, 100000 * $SCALE)
\set bid random(1, $SCALE)
\set tid random(1, 10 * $SCALE)
\set delta random(-5000, 5000)
BEGIN;
$ctx
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL
    ;;
  esac
  sed -i '/^$/d' "$f"
}
