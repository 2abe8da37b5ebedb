#!/usr/bin/env bash
# libpq clients through pgtenant: a scripted psql session (CRUD, rollback, error + rollback,
# \copy in and out, isolation), a psql cancel (SIGINT sends a CancelRequest), and pgbench
# -M prepared. Env: see tests/drivers.rs. In direct mode every transaction sets the context.
set -uo pipefail
cd "$(dirname "$0")"
MODE=${PGT_MODE:-proxy}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=()
passed=0
check() { # check NAME OK(0/1) [DETAIL]
  if [ "$2" = 0 ]; then echo "ok   psql+pgbench [$MODE] $1"; passed=$((passed + 1))
  else echo "FAIL psql+pgbench [$MODE] $1 -- ${3:-}"; fails+=("$1"); fi
}
conninfo() { echo "host=$PGT_HOST port=$PGT_PORT dbname=$PGT_DB user=$1 connect_timeout=10"; }

# The psql script for tenant id $1 (other tenant $2). `ctx` opens each transaction.
session_script() {
  local id=$1 other=$2 ctx=""
  [ "$MODE" = direct ] && ctx="SELECT set_config('app.current_tenant', '$id', true) \\g /dev/null"
  cat <<SQL
\\set ON_ERROR_STOP 1
\\set QUIET 1
\\pset tuples_only on
\\pset format unaligned
-- isolation
BEGIN;
$ctx
SELECT string_agg(DISTINCT tenant_id::text, ',') = '$id' AS ok FROM invoices \\gset
\\if :ok \\echo ok isolation: only own tenant_id visible \\else \\echo FAIL isolation: only own tenant_id visible \\endif
SELECT current_setting('app.current_tenant') = '$id' AS ok \\gset
\\if :ok \\echo ok context set \\else \\echo FAIL context set \\endif
COMMIT;
-- CRUD
BEGIN;
$ctx
INSERT INTO invoices (tenant_id, amount_cents) VALUES ('$id', 4242) RETURNING id AS rid \\gset
COMMIT;
BEGIN;
$ctx
UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = :rid;
SELECT (SELECT amount_cents || '/' || status FROM invoices WHERE id = :rid) = '4343/paid' AS ok \\gset
\\if :ok \\echo ok crud: read updated \\else \\echo FAIL crud: read updated \\endif
DELETE FROM invoices WHERE id = :rid;
COMMIT;
BEGIN;
$ctx
SELECT count(*) = 0 AS ok FROM invoices WHERE id = :rid \\gset
\\if :ok \\echo ok crud: row gone \\else \\echo FAIL crud: row gone \\endif
COMMIT;
-- rollback
BEGIN;
$ctx
INSERT INTO invoices (tenant_id, amount_cents) VALUES ('$id', 99) RETURNING id AS rid \\gset
ROLLBACK;
BEGIN;
$ctx
SELECT count(*) = 0 AS ok FROM invoices WHERE id = :rid \\gset
\\if :ok \\echo ok rollback: row gone \\else \\echo FAIL rollback: row gone \\endif
COMMIT;
-- errors inside a transaction, then rollback and go on
\\set ON_ERROR_STOP 0
BEGIN;
$ctx
INSERT INTO invoices (tenant_id, amount_cents) VALUES ('$other', 1);
\\echo rls-sqlstate :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
$ctx
SELECT 1 / 0;
\\echo error-sqlstate :LAST_ERROR_SQLSTATE
SELECT 1;
\\echo aborted-sqlstate :LAST_ERROR_SQLSTATE
ROLLBACK;
\\set ON_ERROR_STOP 1
BEGIN;
$ctx
SELECT 41 + 1 = 42 AS ok \\gset
\\if :ok \\echo ok error: next transaction works \\else \\echo FAIL error: next transaction works \\endif
COMMIT;
-- \\copy (COPY FROM into an RLS table is refused by PostgreSQL, so via a temp table)
BEGIN;
$ctx
CREATE TEMP TABLE invoices_in (tenant_id uuid, amount_cents bigint) ON COMMIT DROP;
\\copy invoices_in (tenant_id, amount_cents) FROM STDIN
$id	7001
$id	7002
$id	7003
\\.
INSERT INTO invoices (tenant_id, amount_cents) SELECT tenant_id, amount_cents FROM invoices_in;
COMMIT;
BEGIN;
$ctx
\\copy (SELECT 'copyout', tenant_id, amount_cents FROM invoices WHERE amount_cents IN (7001, 7002, 7003) ORDER BY 3) TO STDOUT
DELETE FROM invoices WHERE amount_cents IN (7001, 7002, 7003);
COMMIT;
SQL
}

run_tenant() { # label user password id other-id
  local p="$1:" out err
  out=$(session_script "$4" "$5" | PGPASSWORD=$3 psql -X "$(conninfo "$2")" -f - 2>"$WORK/err")
  local rc=$?
  err=$(cat "$WORK/err")
  check "$p psql session exit status" "$rc" "rc=$rc: $err"
  while read -r status name; do check "$p $name" "$([ "$status" = ok ] && echo 0 || echo 1)"; done < <(grep -E '^(ok|FAIL) ' <<<"$out")
  check "$p rls refuses a foreign tenant_id" "$(grep -qx 'rls-sqlstate 42501' <<<"$out"; echo $?)" "$out"
  check "$p error: division by zero raised" "$(grep -qx 'error-sqlstate 22012' <<<"$out"; echo $?)" "$out"
  check "$p error: transaction aborted" "$(grep -qx 'aborted-sqlstate 25P02' <<<"$out"; echo $?)" "$out"
  local want got
  want=$(printf 'copyout\t%s\t%s\n' "$4" 7001 "$4" 7002 "$4" 7003)
  got=$(grep '^copyout' <<<"$out")
  check "$p copy: \\copy in, read back with \\copy out" "$([ "$got" = "$want" ]; echo $?)" "got: $got"
}

cancel_check() { # label user password: SIGINT makes psql send a CancelRequest
  local p="$1:" start=$SECONDS pid
  PGPASSWORD=$3 psql -X "$(conninfo "$2")" -c 'SELECT pg_sleep(10)' >/dev/null 2>"$WORK/cancel" &
  pid=$!
  sleep 1
  kill -INT "$pid"
  wait "$pid"
  check "$p cancel: pg_sleep(10) canceled" "$(grep -q 'canceling statement due to user request' "$WORK/cancel"; echo $?)" "$(cat "$WORK/cancel")"
  check "$p cancel: within 5 s" "$([ $((SECONDS - start)) -lt 5 ]; echo $?)" "$((SECONDS - start)) s"
}

# pgbench -M prepared, both tenants at once (8 clients on the proxy's pool of 5). The direct-
# mode script sets the context first in each transaction. -j 4 (a thread per client): pgbench
# prepares each command with a blocking PQprepare the first time, and BEGIN's prepare needs a
# pooled backend; with several clients per thread, the clients of the blocked thread that are
# inside a transaction hold backends they cannot give back, so a pool smaller than the
# client count starves until the checkout timeout (as with any transaction pooler).
for x in A B; do
  user=PGT_USER_$x pw=PGT_PASSWORD_$x id=PGT_TENANT_$x
  script=bench_proxy.sql
  if [ "$MODE" = direct ]; then
    script=$WORK/bench_direct_$x.sql
    sed "s/^BEGIN;\$/BEGIN;\nSELECT set_config('app.current_tenant', '${!id}', true);/" bench_proxy.sql >"$script"
  fi
  PGPASSWORD=${!pw} pgbench -n -M prepared -c 4 -j 4 -t 50 -f "$script" "$(conninfo "${!user}")" >"$WORK/bench_$x" 2>&1 &
  eval "bench_pid_$x=$!"
done
for x in A B; do
  pid_var=bench_pid_$x
  wait "${!pid_var}"
  rc=$?
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/bench_$x")
  check "$x: pgbench -M prepared -c 4 -j 4 -t 50: 200 transactions, no errors" "$([ $rc = 0 ] && [ "$tx" = 200 ]; echo $?)" \
    "rc=$rc: $(cat "$WORK/bench_$x")"
done

cancel_check A "$PGT_USER_A" "$PGT_PASSWORD_A"
cancel_check B "$PGT_USER_B" "$PGT_PASSWORD_B"
run_tenant A "$PGT_USER_A" "$PGT_PASSWORD_A" "$PGT_TENANT_A" "$PGT_TENANT_B"
run_tenant B "$PGT_USER_B" "$PGT_PASSWORD_B" "$PGT_TENANT_B" "$PGT_TENANT_A"

# Last, because when it fails the pool's backends stay unusable for new clients: a client leaves session state (SET, so the proxy cleans its backend with
# DISCARD ALL on release); a new client with its own application_name must still connect.
PGPASSWORD=$PGT_PASSWORD_A psql -X "$(conninfo "$PGT_USER_A")" -qc "SET statement_timeout = '30s'"
sleep 0.5
err=$(PGPASSWORD=$PGT_PASSWORD_B psql -X "$(conninfo "$PGT_USER_B") application_name=pgt-reconnect" -Atc 'SELECT 1' 2>&1)
check "B: new connection after a client left session state" "$([ "$err" = 1 ]; echo $?)" "$err"

echo "psql+pgbench [$MODE]: $passed passed, ${#fails[@]} failed"
if [ ${#fails[@]} -gt 0 ]; then
  printf 'failed: %s\n' "$(IFS=';'; echo "${fails[*]}")"
  exit 1
fi
