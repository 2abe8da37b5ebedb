"""asyncpg through pgtenant: both tenants concurrently; CRUD, rollback, named prepared statements
(asyncpg's default) reused across transactions and prepared again after DDL, errors, COPY (copy_records_to_table /
copy_from_query), cancel (query timeout), isolation; executemany (one implicit transaction), a cursor
read in chunks, transaction(isolation=..., readonly=True, deferrable=True)."""
import asyncio
import time
import uuid
from contextlib import asynccontextmanager

import asyncpg

from pgt import CONTEXT_SQL, COPY_AMOUNTS, PREPARED_ROUNDS, STAGE_SQL, UNSTAGE_SQL, Checks, Env

E = Env()
C = Checks("asyncpg", E.mode)
COLS = ["tenant_id", "amount_cents"]


async def run_tenant(t):
    p, other, tid = f"{t.label}:", E.other(t), uuid.UUID(t.id)
    conn = None
    with C.step(f"{p} connect"):
        conn = await asyncpg.connect(host=E.host, port=E.port, database=E.db, user=t.user, password=t.password, timeout=10)
        C.check(f"{p} connect", True)
    if conn is None:
        return
    seen = []

    async def set_context():
        if E.direct:
            await conn.execute("SELECT set_config('app.current_tenant', $1, true)", t.id)

    @asynccontextmanager
    async def tx():
        async with conn.transaction():
            await set_context()
            yield
            seen.append(await conn.fetchval(CONTEXT_SQL))

    with C.step(f"{p} isolation"):
        async with tx():
            ids = [str(r[0]) for r in await conn.fetch("SELECT DISTINCT tenant_id FROM invoices")]
        C.eq(f"{p} isolation: only own tenant_id visible", ids, [t.id])

    with C.step(f"{p} crud"):
        async with tx():
            rid = await conn.fetchval("INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, $2) RETURNING id", tid, 4242)
        async with tx():
            C.eq(f"{p} crud: read back", tuple(await conn.fetchrow("SELECT amount_cents, status FROM invoices WHERE id = $1", rid)), (4242, "open"))
        async with tx():
            C.eq(f"{p} crud: update", await conn.execute("UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = $1", rid), "UPDATE 1")
        async with tx():
            C.eq(f"{p} crud: read updated", tuple(await conn.fetchrow("SELECT amount_cents, status FROM invoices WHERE id = $1", rid)), (4343, "paid"))
        async with tx():
            C.eq(f"{p} crud: delete", await conn.execute("DELETE FROM invoices WHERE id = $1", rid), "DELETE 1")
        async with tx():
            C.eq(f"{p} crud: row gone", await conn.fetchval("SELECT count(*) FROM invoices WHERE id = $1", rid), 0)

    with C.step(f"{p} rls refuses a foreign tenant_id"):
        try:
            async with tx():
                await conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, 1)", uuid.UUID(other.id))
            C.check(f"{p} rls refuses a foreign tenant_id", False, "insert succeeded")
        except asyncpg.PostgresError as e:
            C.eq(f"{p} rls refuses a foreign tenant_id", e.sqlstate, "42501")

    with C.step(f"{p} rollback"):
        tr = conn.transaction()
        await tr.start()
        await set_context()
        rid = await conn.fetchval("INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, 99) RETURNING id", tid)
        await tr.rollback()
        async with tx():
            C.eq(f"{p} rollback: row gone", await conn.fetchval("SELECT count(*) FROM invoices WHERE id = $1", rid), 0)

    with C.step(f"{p} prepared"):
        stmt = await conn.prepare("SELECT current_setting('app.current_tenant'), count(*) FROM invoices WHERE amount_cents >= $1")
        results = []
        for _ in range(PREPARED_ROUNDS):
            async with tx():
                results.append(tuple(await stmt.fetchrow(0)))
        C.check(f"{p} prepared statement reused in {PREPARED_ROUNDS} transactions",
                len(set(results)) == 1 and results[0][0] == t.id and results[0][1] > 0, results[:3])

    with C.step(f"{p} prepare again after DDL"):
        # asyncpg's prepare() makes a new named statement each time; after ALTER the new one
        # must have the new parameter and result types, as PostgreSQL parses afresh.
        sql = "SELECT a FROM reprep WHERE a = $1"
        async with tx():
            await conn.execute("CREATE TEMP TABLE reprep (a int) ON COMMIT DROP")
            await conn.execute("INSERT INTO reprep VALUES (1)")
            before = await conn.prepare(sql)
            C.eq(f"{p} prepare again after DDL: first statement", await before.fetchval(1), 1)
            await conn.execute("ALTER TABLE reprep ALTER a TYPE text USING a::text || 'x'")
            after = await conn.prepare(sql)
            C.eq(f"{p} prepare again after DDL: new parameter type",
                 [x.name for x in after.get_parameters()], ["text"])
            C.eq(f"{p} prepare again after DDL: new result", await after.fetchval("1x"), "1x")

    with C.step(f"{p} executemany"):
        # executemany sends every row's Bind/Execute and one Sync at the end: one implicit
        # transaction, so an error on the last row leaves none of them (asyncpg >= 0.22).
        ins = "INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, $2)"
        async with tx():
            stmt = await conn.prepare(ins)  # a named statement, then Bind/Execute per row
            await stmt.executemany([(tid, a) for a in (8201, 8202, 8203)])
        async with tx():
            C.eq(f"{p} prepare + executemany: rows inserted", await conn.fetchval("SELECT count(*) FROM invoices WHERE amount_cents IN (8201, 8202, 8203)"), 3)
        if E.direct:  # outside a transaction block: the session-wide context stands in for the proxy's
            await conn.execute("SELECT set_config('app.current_tenant', $1, false)", t.id)
        try:
            await conn.executemany(ins, [(tid, 8204), (tid, 8205), (uuid.UUID(other.id), 8206)])
            C.check(f"{p} executemany: a refused row raises", False, "no error")
        except asyncpg.PostgresError as e:
            C.eq(f"{p} executemany: a refused row raises", e.sqlstate, "42501")
        if E.direct:
            await conn.execute("RESET app.current_tenant")
        async with tx():
            C.eq(f"{p} executemany: all rows of the failed batch rolled back",
                 await conn.fetchval("SELECT count(*) FROM invoices WHERE amount_cents IN (8204, 8205, 8206)"), 0)
            await conn.execute("DELETE FROM invoices WHERE amount_cents BETWEEN 8201 AND 8206")

    with C.step(f"{p} cursor"):
        # A cursor read in chunks: each fetch(n) is an Execute with a row limit; the portal must
        # stay on the same backend between them.
        chunks = []
        async with tx():
            cur = await conn.cursor("SELECT g, current_setting('app.current_tenant') FROM generate_series(1, 100) g")
            for _ in range(4):
                chunks.append(await cur.fetch(30))
                await asyncio.sleep(0.05)
        C.eq(f"{p} cursor: fetch(30) four times", [len(c) for c in chunks], [30, 30, 30, 10])
        rows = [r for c in chunks for r in c]
        C.check(f"{p} cursor: rows in order, own context", [r[0] for r in rows] == list(range(1, 101)) and {r[1] for r in rows} == {t.id},
                rows[:3])

    with C.step(f"{p} isolation levels"):
        for iso, want in [("serializable", "serializable"), ("repeatable_read", "repeatable read")]:
            async with conn.transaction(isolation=iso, readonly=True, deferrable=True):
                await set_context()
                got = tuple(await conn.fetchrow(
                    "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                    "current_setting('transaction_deferrable'), current_setting('app.current_tenant')"))
                seen.append(got[3])
            C.eq(f"{p} transaction(isolation={iso!r}, readonly, deferrable): settings and context", got, (want, "on", "on", t.id))
        try:
            async with conn.transaction(isolation="serializable", readonly=True):
                await set_context()
                await conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1, 8207)", tid)
            C.check(f"{p} read only: INSERT refused", False, "INSERT ran")
        except asyncpg.ReadOnlySQLTransactionError:
            C.check(f"{p} read only: INSERT refused", True)

    with C.step(f"{p} error in transaction"):
        tr = conn.transaction()
        await tr.start()
        await set_context()
        try:
            await conn.fetchval("SELECT 1 / $1::int", 0)
            C.check(f"{p} error: division by zero raised", False, "no error")
        except asyncpg.DivisionByZeroError:
            C.check(f"{p} error: division by zero raised", True)
        try:
            await conn.fetchval("SELECT 1")
            C.check(f"{p} error: transaction aborted", False, "statement ran")
        except asyncpg.InFailedSQLTransactionError:
            C.check(f"{p} error: transaction aborted", True)
        await tr.rollback()
        async with tx():
            C.eq(f"{p} error: next transaction works", await conn.fetchval("SELECT 41 + 1"), 42)

    with C.step(f"{p} copy"):
        try:
            async with tx():
                await conn.copy_records_to_table("invoices", records=[(tid, 1)], columns=COLS)
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", False, "accepted")
        except asyncpg.FeatureNotSupportedError:
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", True)
        async with tx():
            await conn.execute(STAGE_SQL)
            await conn.copy_records_to_table("invoices_in", records=[(tid, a) for a in COPY_AMOUNTS], columns=COLS)
            await conn.execute(UNSTAGE_SQL)
        chunks = []

        async def sink(data):
            chunks.append(bytes(data))

        async with tx():
            await conn.copy_from_query(f"SELECT tenant_id, amount_cents FROM invoices WHERE amount_cents IN {COPY_AMOUNTS} ORDER BY 2",
                                       output=sink, format="csv")
        rows = b"".join(chunks).decode().splitlines()
        C.eq(f"{p} copy: records read back with copy_from_query", rows, [f"{t.id},{a}" for a in COPY_AMOUNTS])
        async with tx():
            C.eq(f"{p} copy: cleanup", await conn.execute(f"DELETE FROM invoices WHERE amount_cents IN {COPY_AMOUNTS}"), "DELETE 3")

    with C.step(f"{p} cancel"):
        start = time.monotonic()
        try:
            async with tx():
                await conn.execute("SELECT pg_sleep(10)", timeout=0.5)
            C.check(f"{p} cancel: pg_sleep(10) canceled by timeout", False, "not canceled")
        except asyncio.TimeoutError:
            C.check(f"{p} cancel: pg_sleep(10) canceled by timeout", True)
        async with tx():
            C.eq(f"{p} cancel: connection usable afterwards", await conn.fetchval("SELECT 1"), 1)
        C.check(f"{p} cancel: backend freed promptly", time.monotonic() - start < 5, f"{time.monotonic() - start:.1f}s")

    with C.step(f"{p} final isolation"):
        async with tx():
            ids = [str(r[0]) for r in await conn.fetch("SELECT DISTINCT tenant_id FROM invoices")]
        C.eq(f"{p} final isolation: only own tenant_id visible", ids, [t.id])
    C.check(f"{p} app.current_tenant = own id in all {len(seen)} transactions", seen and set(seen) == {t.id}, set(seen))
    await conn.close()


async def main():
    await asyncio.gather(*(run_tenant(t) for t in E.tenants))  # both tenants at once, sharing the pool


asyncio.run(main())
C.exit()
