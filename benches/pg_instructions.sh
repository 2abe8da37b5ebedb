#!/usr/bin/env bash
# PostgreSQL's instructions per transaction for plain vs verified context (valgrind
# callgrind on a copy of the demo cluster; counts are repeatable on a busy machine).
#
#   bash benches/pg_instructions.sh
#   PGTENANT_BIN=/path/to/other/pgtenant bash benches/pg_instructions.sh   # a before/after pair
#
# Needs valgrind and python3 with psycopg (installed by .ci/run). Prints one table; see
# benches/pg_instructions.py for the cases.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PGTENANT_BIN:-}" ]; then BIN=$PGTENANT_BIN; else
  cargo build --release --quiet --bin pgtenant; BIN=${CARGO_TARGET_DIR:-target}/release/pgtenant; fi
WORK=$(mktemp -d /tmp/pgtenant-pgi-XXXX); chmod 755 "$WORK"
LOG="$WORK/demo.log"
"$BIN" demo --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log warn > "$LOG" 2>&1 & DEMO=$!
cleanup() { kill "$DEMO" 2>/dev/null || true; [ -n "${PG:-}" ] && kill "$PG" 2>/dev/null || true; sleep 1; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "data in" "$LOG" && break; sleep 0.2; done
DATA=$(sed -n 's/.*(data in \(.*\)), pgtenant.*/\1/p' "$LOG")
SRC_PORT=$(sed -n 's/^PostgreSQL 127.0.0.1:\([0-9]*\) .*/\1/p' "$LOG")
PGPASSWORD=postgres psql -qX "host=127.0.0.1 port=$SRC_PORT user=postgres dbname=app" -c CHECKPOINT
cp -a "$DATA" "$WORK/data"; rm -f "$WORK/data/postmaster.pid"
kill "$DEMO"; wait "$DEMO" 2>/dev/null || true
mkdir -p "$WORK/cg" "$WORK/sock"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AS=(); [ "$(id -u)" = 0 ] && { chown -R postgres "$WORK"; AS=(runuser -u postgres --); }
"${AS[@]}" valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$WORK/cg/cg.%p" \
  "$PGBIN/postgres" -D "$WORK/data" -p "$PORT" -c listen_addresses=127.0.0.1 -k "$WORK/sock" \
  > "$WORK/pg.log" 2>&1 & PG=$!
for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
echo "commit $(git rev-parse --short HEAD) (binary: $BIN), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') under callgrind"
PGPORT=$PORT CG_OUT="$WORK/cg" python3 benches/pg_instructions.py
