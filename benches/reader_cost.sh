#!/usr/bin/env bash
# What one policy reference to the verified reader costs PostgreSQL, by part, in instructions
# (valgrind callgrind on the backend: repeatable on a busy machine). No proxy: pgbench talks
# straight to PostgreSQL as a member of app_user whose role defaults hold the tenant id and
# its verified copy (what a backend carrying pgtenant's verified context holds), and the RLS
# policies of the pgbench tables are switched between forms of the tenant read:
#
#   plain              current_setting('app.current_tenant')::uuid  (plain mode's policies)
#   subquery           (SELECT current_setting(...))::uuid          (the scalar-subquery form alone)
#   plpgsql-invoker    (SELECT f())::uuid, f a PL/pgSQL function reading the setting
#   plpgsql-definer    the same function, SECURITY DEFINER
#   sql-definer        a SQL-language SECURITY DEFINER function (not inlined)
#   verified           (SELECT pgtenant.tenant_id())::uuid          (verified mode's policies)
#
# The workload is one transaction of 8 single-row SELECTs by primary key through RLS (8
# policy references). Per form: one backend runs 20, another 60 transactions; the difference
# over 40 is the cost of a transaction with start-up cancelled out.
#
#   bash benches/reader_cost.sh
#   MODES="simple extended prepared" bash benches/reader_cost.sh
#
# Needs valgrind. Prints Ir per transaction and, against plain, per policy reference.
set -euo pipefail
cd "$(dirname "$0")/.."
MODES=${MODES:-"simple prepared"}
SCALE=1
# shellcheck source=benches/setup.sh
source benches/setup.sh
kill "$TENANT_PID" "$BOUNCER_PID" 2>/dev/null || true
$PGT db install --config "$WORK/pgtenant.toml" --dba-url "postgresql://postgres@127.0.0.1:$PGPORT/bench" \
  >/dev/null 2>&1 || {
  # db install needs a key in verified mode: give the config one.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$WORK/context.key"; chmod 644 "$WORK/context.key"
  sed -i "s|^\[context\]|[context]\nmode = \"verified\"\nkey_file = \"$WORK/context.key\"|" "$WORK/pgtenant.toml"
  $PGT db install --config "$WORK/pgtenant.toml" --dba-url "postgresql://postgres@127.0.0.1:$PGPORT/bench" >/dev/null
}
SLOT=$("${PSQL[@]}" -d bench -Atc "SELECT pg_sequence_last_value('pgtenant.slot')")
"${PSQL[@]}" -d bench <<SQL
CREATE ROLE direct_user LOGIN IN ROLE app_user;
ALTER ROLE direct_user SET app.current_tenant = '$TID';
ALTER ROLE direct_user SET "pgtenant.s${SLOT}_1" = '$TID';
CREATE SCHEMA rc; GRANT USAGE ON SCHEMA rc TO app_user;
CREATE FUNCTION rc.plpgsql_invoker() RETURNS text LANGUAGE plpgsql STABLE AS \$f\$
DECLARE v text := pg_catalog.current_setting('app.current_tenant', true);
BEGIN
  IF v <> '' AND v = pg_catalog.current_setting('app.current_tenant', true) THEN RETURN v; END IF;
  RETURN NULL;
END \$f\$;
CREATE FUNCTION rc.plpgsql_definer() RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER AS \$f\$
DECLARE v text := pg_catalog.current_setting('app.current_tenant', true);
BEGIN
  IF v <> '' AND v = pg_catalog.current_setting('app.current_tenant', true) THEN RETURN v; END IF;
  RETURN NULL;
END \$f\$;
CREATE FUNCTION rc.sql_definer() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS \$f\$
  SELECT pg_catalog.current_setting('app.current_tenant', true)
\$f\$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rc TO app_user;
SQL
cat > "$WORK/sel8.sql" <<'SQL'
\set aid random(1, 99990)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 1;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 2;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 3;
SELECT tbalance FROM pgbench_tellers WHERE tid = 1;
SELECT tbalance FROM pgbench_tellers WHERE tid = 2;
SELECT bbalance FROM pgbench_branches WHERE bid = 1;
SELECT bbalance FROM pgbench_branches WHERE bid = 1;
END;
SQL

# The same cluster again, under callgrind (every backend writes its own profile).
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
mkdir -p "$WORK/cg"; chmod 777 "$WORK/cg"
"${RUN[@]}" valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$WORK/cg/cg.%p" \
  "$BIN/postgres" -D "$WORK/data" -p "$PGPORT" -c listen_addresses=127.0.0.1 -k "$WORK" \
  -c fsync=off -c synchronous_commit=off >"$WORK/pg-cg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.2; done

policies() { # expression
  for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
    echo "ALTER POLICY tenant_isolation ON $t USING (tenant_id = $1) WITH CHECK (tenant_id = $1);"
  done | "${PSQL[@]}" -d bench
}
# mode transactions -> total Ir of the backend that served them (the largest new profile)
backend_ir() {
  local before best=0 f v
  before=$(ls "$WORK/cg")
  pgbench -n -h 127.0.0.1 -p "$PGPORT" -U direct_user -c 1 -j 1 -t "$2" -M "$1" \
    -f "$WORK/sel8.sql" bench >"$WORK/pgbench.out" 2>&1 || { cat "$WORK/pgbench.out" >&2; exit 1; }
  sleep 1.5
  for f in $(comm -13 <(echo "$before" | sort) <(ls "$WORK/cg" | sort)); do
    for _ in $(seq 30); do grep -q '^totals:\|^summary:' "$WORK/cg/$f" 2>/dev/null && break; sleep 0.3; done
    v=$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK/cg/$f")
    [ "${v:-0}" -gt "$best" ] && best=$v
  done
  echo "$best"
}
per_tx() { local a b; a=$(backend_ir "$1" 20); b=$(backend_ir "$1" 60); echo $(( (b - a) / 40 )); }

FORMS=(plain subquery plpgsql-invoker plpgsql-definer sql-definer verified)
declare -A EXPR=(
  [plain]="current_setting('app.current_tenant')::uuid"
  [subquery]="(SELECT current_setting('app.current_tenant'))::uuid"
  [plpgsql-invoker]="(SELECT rc.plpgsql_invoker())::uuid"
  [plpgsql-definer]="(SELECT rc.plpgsql_definer())::uuid"
  [sql-definer]="(SELECT rc.sql_definer())::uuid"
  [verified]="(SELECT pgtenant.tenant_id())::uuid"
)
echo
echo "commit $(git rev-parse --short HEAD), PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') under callgrind; 8 policy references per transaction"
echo
echo "| mode | form | Ir per transaction | more than plain, per reference |"
echo "|---|---|---|---|"
for mode in $MODES; do
  base=
  for form in "${FORMS[@]}"; do
    policies "${EXPR[$form]}"
    ir=$(per_tx "$mode")
    [ -z "$base" ] && base=$ir
    echo "| $mode | $form | $ir | $(( (ir - base) / 8 )) |"
  done
done
