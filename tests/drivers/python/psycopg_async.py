"""psycopg 3 (async) through pgtenant: both tenants concurrently; CRUD, rollback, server-side
prepared statements (prepare=True) reused across transactions, errors, COPY (and ~10 MB out and back
in), cancel, isolation."""
import asyncio
import time
from contextlib import asynccontextmanager

import psycopg

from pgt import CONTEXT_SQL, COPY_AMOUNTS, PREPARED_ROUNDS, STAGE_SQL, UNSTAGE_SQL, Checks, Env

E = Env()
C = Checks("psycopg-async", E.mode)


async def one(conn, sql, params=None, prepare=None):
    return await (await conn.execute(sql, params, prepare=prepare)).fetchone()


async def run_tenant(t):
    p, other = f"{t.label}:", E.other(t)
    conn = None
    with C.step(f"{p} connect"):
        conn = await psycopg.AsyncConnection.connect(host=E.host, port=E.port, dbname=E.db, user=t.user, password=t.password,
                                                     autocommit=True, connect_timeout=10)
        C.check(f"{p} connect", True)
    if conn is None:
        return
    seen = []

    async def set_context():
        if E.direct:
            await conn.execute("SELECT set_config('app.current_tenant', %s, true)", [t.id])

    @asynccontextmanager
    async def tx(force_rollback=False):
        async with conn.transaction(force_rollback=force_rollback):
            await set_context()
            yield
            seen.append((await one(conn, CONTEXT_SQL))[0])

    with C.step(f"{p} isolation"):
        async with tx():
            ids = [r[0] for r in await (await conn.execute("SELECT DISTINCT tenant_id::text FROM invoices")).fetchall()]
        C.eq(f"{p} isolation: only own tenant_id visible", ids, [t.id])

    with C.step(f"{p} crud"):
        async with tx():
            rid = (await one(conn, "INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, %s) RETURNING id", [t.id, 4242]))[0]
        async with tx():
            C.eq(f"{p} crud: read back", await one(conn, "SELECT amount_cents, status FROM invoices WHERE id = %s", [rid]), (4242, "open"))
        async with tx():
            cur = await conn.execute("UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = %s", [rid])
            C.eq(f"{p} crud: update rowcount", cur.rowcount, 1)
        async with tx():
            C.eq(f"{p} crud: read updated", await one(conn, "SELECT amount_cents, status FROM invoices WHERE id = %s", [rid]), (4343, "paid"))
        async with tx():
            C.eq(f"{p} crud: delete rowcount", (await conn.execute("DELETE FROM invoices WHERE id = %s", [rid])).rowcount, 1)
        async with tx():
            C.eq(f"{p} crud: row gone", (await one(conn, "SELECT count(*) FROM invoices WHERE id = %s", [rid]))[0], 0)

    with C.step(f"{p} rls refuses a foreign tenant_id"):
        try:
            async with tx():
                await conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 1)", [other.id])
            C.check(f"{p} rls refuses a foreign tenant_id", False, "insert succeeded")
        except psycopg.Error as e:
            C.eq(f"{p} rls refuses a foreign tenant_id", e.sqlstate, "42501")

    with C.step(f"{p} rollback"):
        async with tx(force_rollback=True):
            rid = (await one(conn, "INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 99) RETURNING id", [t.id]))[0]
        async with tx():
            C.eq(f"{p} rollback: row gone", (await one(conn, "SELECT count(*) FROM invoices WHERE id = %s", [rid]))[0], 0)

    with C.step(f"{p} prepared"):
        q = "SELECT current_setting('app.current_tenant'), count(*) FROM invoices WHERE amount_cents >= %s"
        results = []
        for _ in range(PREPARED_ROUNDS):
            async with tx():
                results.append(await one(conn, q, [0], prepare=True))
        C.check(f"{p} prepared statement reused in {PREPARED_ROUNDS} transactions",
                len(set(results)) == 1 and results[0][0] == t.id and results[0][1] > 0, results[:3])

    with C.step(f"{p} error in transaction"):
        await conn.execute("BEGIN")
        await set_context()
        try:
            await conn.execute("SELECT 1 / 0")
            C.check(f"{p} error: division by zero raised", False, "no error")
        except psycopg.errors.DivisionByZero:
            C.check(f"{p} error: division by zero raised", True)
        try:
            await conn.execute("SELECT 1")
            C.check(f"{p} error: transaction aborted", False, "statement ran")
        except psycopg.errors.InFailedSqlTransaction:
            C.check(f"{p} error: transaction aborted", True)
        await conn.execute("ROLLBACK")
        async with tx():
            C.eq(f"{p} error: next transaction works", (await one(conn, "SELECT 41 + 1"))[0], 42)

    with C.step(f"{p} copy"):
        try:
            async with tx():
                async with conn.cursor().copy("COPY invoices (tenant_id, amount_cents) FROM STDIN") as cp:
                    await cp.write_row((t.id, 1))
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", False, "accepted")
        except psycopg.errors.FeatureNotSupported:
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", True)
        async with tx():
            await conn.execute(STAGE_SQL)
            async with conn.cursor().copy("COPY invoices_in (tenant_id, amount_cents) FROM STDIN") as cp:
                for a in COPY_AMOUNTS:
                    await cp.write_row((t.id, a))
            await conn.execute(UNSTAGE_SQL)
        rows = []
        async with tx():
            sql = f"COPY (SELECT tenant_id, amount_cents FROM invoices WHERE amount_cents IN {COPY_AMOUNTS} ORDER BY 2) TO STDOUT"
            async with conn.cursor().copy(sql) as cp:
                rows = [tuple(r) async for r in cp.rows()]
        C.eq(f"{p} copy: FROM STDIN rows read back with COPY TO STDOUT", rows, [(t.id, str(a)) for a in COPY_AMOUNTS])
        async with tx():
            C.eq(f"{p} copy: cleanup", (await conn.execute(f"DELETE FROM invoices WHERE amount_cents IN {COPY_AMOUNTS}")).rowcount, 3)

    with C.step(f"{p} large copy"):
        # ~10 MB out and back in through one connection (a large result once stayed inside
        # pgtenant for a TLS peer until the client timed out).
        rows, out = 150_000, []
        async with tx():
            async with conn.cursor().copy(f"COPY (SELECT g, repeat('x', 60) FROM generate_series(1, {rows}) g) TO STDOUT") as cp:
                async for data in cp:
                    out.append(bytes(data))
        size = sum(map(len, out))
        C.check(f"{p} large copy: {size / 1e6:.1f} MB out with COPY TO STDOUT", size > 10_000_000, size)
        async with tx():
            await conn.execute("CREATE TEMP TABLE big_in (g int, pad text) ON COMMIT DROP")
            async with conn.cursor().copy("COPY big_in FROM STDIN") as cp:
                for data in out:
                    await cp.write(data)
            got = await one(conn, "SELECT count(*), sum(g), sum(length(pad)), current_setting('app.current_tenant') FROM big_in")
        C.eq(f"{p} large copy: the same rows back in with COPY FROM STDIN", got, (rows, rows * (rows + 1) // 2, rows * 60, t.id))

    with C.step(f"{p} cancel"):
        async def cancel_later():
            await asyncio.sleep(0.5)
            await conn.cancel_safe()
        start = time.monotonic()
        canceller = asyncio.create_task(cancel_later())
        try:
            async with tx():
                await conn.execute("SELECT pg_sleep(10)")
            C.check(f"{p} cancel: pg_sleep(10) canceled", False, "not canceled")
        except psycopg.errors.QueryCanceled:
            C.check(f"{p} cancel: pg_sleep(10) canceled", time.monotonic() - start < 5, f"{time.monotonic() - start:.1f}s")
        await canceller
        async with tx():
            C.eq(f"{p} cancel: connection usable afterwards", (await one(conn, "SELECT 1"))[0], 1)

    with C.step(f"{p} final isolation"):
        async with tx():
            ids = [r[0] for r in await (await conn.execute("SELECT DISTINCT tenant_id::text FROM invoices")).fetchall()]
        C.eq(f"{p} final isolation: only own tenant_id visible", ids, [t.id])
    C.check(f"{p} app.current_tenant = own id in all {len(seen)} transactions", seen and set(seen) == {t.id}, set(seen))
    await conn.close()


async def main():
    await asyncio.gather(*(run_tenant(t) for t in E.tenants))  # both tenants at once, sharing the pool


asyncio.run(main())
C.exit()
