"""psycopg 3 (sync) through pgtenant: CRUD, rollback, server-side prepared statements reused
across transactions (prepare_threshold=0) and prepared again after DDL, errors, COPY, cancel,
tenant isolation; libpq pipeline mode (conn.pipeline(), with another tenant running
meanwhile), isolation levels and read only; a temp table and LISTEN across transactions."""
import threading
import time
from contextlib import contextmanager

import psycopg
from psycopg import IsolationLevel

from pgt import CONTEXT_SQL, COPY_AMOUNTS, PREPARED_ROUNDS, STAGE_SQL, UNSTAGE_SQL, Checks, Env

E = Env()
C = Checks("psycopg-sync", E.mode)


def run_tenant(t):
    p, other = f"{t.label}:", E.other(t)
    conn = None
    with C.step(f"{p} connect"):
        conn = psycopg.connect(host=E.host, port=E.port, dbname=E.db, user=t.user, password=t.password,
                               autocommit=True, prepare_threshold=0, connect_timeout=10)
        C.check(f"{p} connect", True)
    if conn is None:
        return
    seen = []  # app.current_tenant of every transaction

    def set_context():
        if E.direct:
            conn.execute("SELECT set_config('app.current_tenant', %s, true)", [t.id])

    @contextmanager
    def tx(force_rollback=False):
        with conn.transaction(force_rollback=force_rollback):
            set_context()
            yield
            seen.append(conn.execute(CONTEXT_SQL).fetchone()[0])

    with C.step(f"{p} isolation"):
        with tx():
            ids = [r[0] for r in conn.execute("SELECT DISTINCT tenant_id::text FROM invoices")]
        C.eq(f"{p} isolation: only own tenant_id visible", ids, [t.id])

    with C.step(f"{p} crud"):
        with tx():
            rid = conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, %s) RETURNING id", [t.id, 4242]).fetchone()[0]
        with tx():
            C.eq(f"{p} crud: read back", conn.execute("SELECT amount_cents, status FROM invoices WHERE id = %s", [rid]).fetchone(), (4242, "open"))
        with tx():
            C.eq(f"{p} crud: update rowcount", conn.execute("UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = %s", [rid]).rowcount, 1)
        with tx():
            C.eq(f"{p} crud: read updated", conn.execute("SELECT amount_cents, status FROM invoices WHERE id = %s", [rid]).fetchone(), (4343, "paid"))
        with tx():
            C.eq(f"{p} crud: delete rowcount", conn.execute("DELETE FROM invoices WHERE id = %s", [rid]).rowcount, 1)
        with tx():
            C.eq(f"{p} crud: row gone", conn.execute("SELECT count(*) FROM invoices WHERE id = %s", [rid]).fetchone()[0], 0)

    with C.step(f"{p} rls refuses a foreign tenant_id"):
        try:
            with tx():
                conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 1)", [other.id])
            C.check(f"{p} rls refuses a foreign tenant_id", False, "insert succeeded")
        except psycopg.Error as e:
            C.eq(f"{p} rls refuses a foreign tenant_id", e.sqlstate, "42501")

    with C.step(f"{p} rollback"):
        with tx(force_rollback=True):
            rid = conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 99) RETURNING id", [t.id]).fetchone()[0]
        with tx():
            C.eq(f"{p} rollback: row gone", conn.execute("SELECT count(*) FROM invoices WHERE id = %s", [rid]).fetchone()[0], 0)

    with C.step(f"{p} prepared"):
        q = "SELECT current_setting('app.current_tenant'), count(*) FROM invoices WHERE amount_cents >= %s"
        results = []
        for _ in range(PREPARED_ROUNDS):
            with tx():
                results.append(conn.execute(q, [0]).fetchone())
        C.check(f"{p} prepared statement reused in {PREPARED_ROUNDS} transactions",
                len(set(results)) == 1 and results[0][0] == t.id and results[0][1] > 0, results[:3])

    with C.step(f"{p} prepare again after DDL"):
        # psycopg sends DEALLOCATE ALL after ALTER/DROP and prepares the same text again (same
        # parameter types): the new statement must have the new result type.
        sql = "SELECT a, %s::int FROM reprep"
        with tx():
            conn.execute("CREATE TEMP TABLE reprep (a int) ON COMMIT DROP")
            conn.execute("INSERT INTO reprep VALUES (1)")
            C.eq(f"{p} prepare again after DDL: first statement", conn.execute(sql, [2]).fetchone(), (1, 2))
            conn.execute("ALTER TABLE reprep ALTER a TYPE text USING a::text || 'x'")
            C.eq(f"{p} prepare again after DDL: new result type", conn.execute(sql, [2]).fetchone(), ("1x", 2))

    with C.step(f"{p} error in transaction"):
        conn.execute("BEGIN")
        set_context()
        try:
            conn.execute("SELECT 1 / 0")
            C.check(f"{p} error: division by zero raised", False, "no error")
        except psycopg.errors.DivisionByZero:
            C.check(f"{p} error: division by zero raised", True)
        try:
            conn.execute("SELECT 1")
            C.check(f"{p} error: transaction aborted", False, "statement ran")
        except psycopg.errors.InFailedSqlTransaction:
            C.check(f"{p} error: transaction aborted", True)
        conn.execute("ROLLBACK")
        with tx():
            C.eq(f"{p} error: next transaction works", conn.execute("SELECT 41 + 1").fetchone()[0], 42)

    with C.step(f"{p} copy"):
        try:  # PostgreSQL itself refuses COPY FROM into a table with RLS, for every client
            with tx():
                with conn.cursor().copy("COPY invoices (tenant_id, amount_cents) FROM STDIN") as cp:
                    cp.write_row((t.id, 1))
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", False, "accepted")
        except psycopg.errors.FeatureNotSupported:
            C.check(f"{p} copy: FROM STDIN into an RLS table refused", True)
        with tx():  # the usual way around it: COPY into a temp table, INSERT ... SELECT
            conn.execute(STAGE_SQL)
            with conn.cursor().copy("COPY invoices_in (tenant_id, amount_cents) FROM STDIN") as cp:
                for a in COPY_AMOUNTS:
                    cp.write_row((t.id, a))
            conn.execute(UNSTAGE_SQL)
        rows = []
        with tx():
            cur = conn.cursor()
            with cur.copy(f"COPY (SELECT tenant_id, amount_cents FROM invoices WHERE amount_cents IN {COPY_AMOUNTS} ORDER BY 2) TO STDOUT") as cp:
                rows = [tuple(r) for r in cp.rows()]
        C.eq(f"{p} copy: FROM STDIN rows read back with COPY TO STDOUT", rows, [(t.id, str(a)) for a in COPY_AMOUNTS])
        with tx():
            C.eq(f"{p} copy: cleanup", conn.execute(f"DELETE FROM invoices WHERE amount_cents IN {COPY_AMOUNTS}").rowcount, 3)

    with C.step(f"{p} cancel"):
        timer = threading.Timer(0.5, conn.cancel)
        start = time.monotonic()
        timer.start()
        try:
            with tx():
                conn.execute("SELECT pg_sleep(10)")
            C.check(f"{p} cancel: pg_sleep(10) canceled", False, "not canceled")
        except psycopg.errors.QueryCanceled:
            C.check(f"{p} cancel: pg_sleep(10) canceled", time.monotonic() - start < 5, f"{time.monotonic() - start:.1f}s")
        timer.join()
        with tx():
            C.eq(f"{p} cancel: connection usable afterwards", conn.execute("SELECT 1").fetchone()[0], 1)

    with C.step(f"{p} pipeline"):
        # libpq pipeline mode: psycopg sends Flush, not Sync, to fetch results inside the
        # pipeline, so the implicit transaction stays open until the pipeline's Sync. With the
        # pool at one backend (tests/drivers.rs), a backend released early would be handed to
        # tenant B's connection, which would then run inside A's transaction.
        b = psycopg.connect(host=E.host, port=E.port, dbname=E.db, user=other.user, password=other.password,
                            autocommit=True, connect_timeout=10)
        seen_b = {}

        def tenant_b():  # runs while A's pipeline is open; gets a backend only after A's Sync
            try:
                seen_b["txid"] = b.execute("SELECT txid_current()").fetchone()[0]
                b.execute("SELECT 1 / 0")
            except psycopg.errors.DivisionByZero:
                seen_b["error"] = True
            except Exception as e:  # noqa: BLE001 - reported by the checks below
                seen_b["exception"] = repr(e)

        with conn.pipeline() as pl:
            if E.direct:
                conn.execute("SELECT set_config('app.current_tenant', %s, true)", [t.id])
            c1 = conn.execute("SELECT txid_current(), current_setting('app.current_tenant')")
            c2 = conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 8101) RETURNING id", [t.id])
            txid, ctx = c1.fetchone()  # results fetched with a Flush: no Sync yet
            rid = c2.fetchone()[0]
            other_tenant = threading.Thread(target=tenant_b)
            other_tenant.start()
            time.sleep(0.5)  # B would get A's backend now if it had been released
            c3 = conn.execute("SELECT txid_current(), count(*) FROM invoices WHERE id = %s", [rid])
            txid3, n3 = c3.fetchone()
            pl.sync()
        other_tenant.join(30)
        C.eq(f"{p} pipeline: context in the implicit transaction", ctx, t.id)
        C.check(f"{p} pipeline: one implicit transaction until Sync", txid3 == txid and n3 == 1, (txid, txid3, n3))
        C.check(f"{p} pipeline: other tenant ran after the Sync, in its own transaction",
                seen_b.get("txid") not in (None, txid) and seen_b.get("error") and "exception" not in seen_b, (txid, seen_b))
        with tx():
            C.eq(f"{p} pipeline: INSERT committed at the Sync", conn.execute("SELECT count(*) FROM invoices WHERE id = %s", [rid]).fetchone()[0], 1)
        # An error inside a pipeline aborts its implicit transaction: the INSERT before it is
        # rolled back, the statement after it is skipped, the next Sync ends the pipeline.
        aborted = False
        try:
            with conn.pipeline():
                if E.direct:
                    conn.execute("SELECT set_config('app.current_tenant', %s, true)", [t.id])
                conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 8102)", [t.id])
                conn.execute("SELECT 1 / 0")
                conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 8103)", [t.id])
        except psycopg.errors.DivisionByZero:
            aborted = True
        C.check(f"{p} pipeline: error inside the pipeline raised", aborted, "no error")
        with tx():
            C.eq(f"{p} pipeline: statements around the error rolled back",
                 conn.execute("SELECT count(*) FROM invoices WHERE amount_cents IN (8102, 8103)").fetchone()[0], 0)
            conn.execute("DELETE FROM invoices WHERE id = %s", [rid])
        b.close()

    with C.step(f"{p} isolation levels"):
        for level, want, ro in [(IsolationLevel.SERIALIZABLE, "serializable", True),
                                (IsolationLevel.REPEATABLE_READ, "repeatable read", False)]:
            conn.isolation_level, conn.read_only = level, ro
            with tx():  # psycopg sends BEGIN ISOLATION LEVEL ... [READ ONLY]
                got = conn.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                                   "current_setting('app.current_tenant')").fetchone()
            C.eq(f"{p} isolation level {want}{' read only' if ro else ''}: level, access mode and context",
                 got, (want, "on" if ro else "off", t.id))
        conn.isolation_level, conn.read_only = None, None
        conn.read_only = True
        refused = False
        try:
            with tx():
                conn.execute("INSERT INTO invoices (tenant_id, amount_cents) VALUES (%s, 8104)", [t.id])
        except psycopg.errors.ReadOnlySqlTransaction:
            refused = True
        conn.read_only = None
        C.check(f"{p} read only: INSERT refused (25006)", refused, "INSERT ran")

    with C.step(f"{p} session state across transactions"):
        # A temp table and LISTEN outlive their transaction (pgtenant pins the client to its
        # backend until they are gone).
        conn.execute("CREATE TEMP TABLE scratch (n int)")
        for i in range(3):
            with tx():
                conn.execute("INSERT INTO scratch VALUES (%s)", [i])
        with tx():
            C.eq(f"{p} temp table across transactions", conn.execute("SELECT count(*) FROM scratch").fetchone()[0], 3)
        conn.execute("LISTEN driver_jobs")
        with tx():
            conn.execute("SELECT 1")
        conn.execute("NOTIFY driver_jobs, 'hello'")
        got = [(n.channel, n.payload) for n in conn.notifies(timeout=5, stop_after=1)]
        C.eq(f"{p} LISTEN across transactions hears its NOTIFY", got, [("driver_jobs", "hello")])
        conn.execute("UNLISTEN *")
        conn.execute("DROP TABLE scratch")

    with C.step(f"{p} final isolation"):
        with tx():
            ids = [r[0] for r in conn.execute("SELECT DISTINCT tenant_id::text FROM invoices")]
        C.eq(f"{p} final isolation: only own tenant_id visible", ids, [t.id])
    C.check(f"{p} app.current_tenant = own id in all {len(seen)} transactions", seen and set(seen) == {t.id}, set(seen))
    conn.close()


for tenant in E.tenants:
    run_tenant(tenant)
C.exit()
