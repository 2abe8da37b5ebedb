"""PostgreSQL's instructions per transaction for the tenant context, plain vs verified.

Driven by benches/pg_instructions.sh, which starts a copy of the demo cluster under
valgrind's callgrind (every backend writes its own count). Each case runs one connection of
A transactions and one of B; the difference of the two backends' totals divided by B - A is
the cost of one transaction, with connection set-up cancelled out. Counts are repeatable
whatever else the machine is doing, unlike TPS.

Cases (one autocommit pipeline per transaction, as pgtenant sends it):
  plain    set_config x2 (policies on current_setting) + the statement
  carried  pgtenant.enter() once per connection, then the statement alone (policies on
           the readers): a backend that carries its tenant's context, pgtenant's steady state
  verified pgtenant.enter(key id, proof, true, values) + the statement (policies on the
           readers); "alternating" switches between two tenants every transaction: DISCARD
           ALL, then enter() checks the proof in full (nothing prepared)
"""
import hashlib
import hmac
import os
import struct
import sys
import time

import psycopg

PORT = int(os.environ["PGPORT"])
OUT = os.environ["CG_OUT"]
KEY = b"pgtenant-demo-context-key-not-secret-0123456789"
ACME = ("11111111-1111-4111-8111-111111111111", "enterprise")
GLOBEX = ("22222222-2222-4222-8222-222222222222", "free")
SU = f"host=127.0.0.1 port={PORT} dbname=app user=postgres password=postgres"
APP = f"host=127.0.0.1 port={PORT} dbname=app user=app_user password=app_password"
A, B = 40, 240


def key_id():
    d = hashlib.sha256(b"pgtenant key id\0" + KEY.strip()).digest()
    return struct.unpack(">i", bytes([d[0] & 0x7F]) + d[1:4])[0]


def quote_literal(v):
    s = v.replace("'", "''")
    return "E'" + s.replace("\\", "\\\\") + "'" if "\\" in v else "'" + s + "'"


def proof(pid, values):
    msg = ("P %d " % pid + " ".join(quote_literal(v) for v in values)).encode()
    return hmac.new(KEY.strip(), msg, hashlib.sha256).hexdigest()


def total(pid):
    path = f"{OUT}/cg.{pid}"
    for _ in range(200):
        if os.path.exists(path):
            for line in open(path):
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise SystemExit(f"no callgrind totals in {path}")


def run(mode, n, statements):
    with psycopg.connect(APP, autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        tenants = [ACME, GLOBEX] if mode == "alternating" else [ACME]
        proofs = [proof(pid, t) for t in tenants]
        if mode == "carried":
            c.execute("SELECT pgtenant.enter(%s, %s, true, %s, %s)", [key_id(), proofs[0], *ACME])
        # A session that carries one tenant's context refuses enter() for another until it
        # was emptied, as pgtenant empties a backend (DISCARD ALL, which also drops prepared
        # statements) before another tenant uses it.
        prep = mode != "alternating"
        for i in range(n):
            t = i % len(tenants)
            with c.pipeline():
                if not prep:
                    c.execute("DISCARD ALL", prepare=False)
                if mode == "plain":
                    c.execute(
                        "SELECT pg_catalog.set_config('app.current_tenant', %s, true), "
                        "pg_catalog.set_config('app.tenant_plan', %s, true)",
                        tenants[t], prepare=True)
                elif mode != "carried":
                    c.execute("SELECT pgtenant.enter(%s, %s, true, %s, %s)",
                              [key_id(), proofs[t], *tenants[t]], prepare=prep)
                for s in statements:
                    c.execute(s, prepare=prep)
    return total(pid)


def policies(mode):
    read = ("current_setting('app.current_tenant', true)::uuid" if mode == "plain"
            else "(SELECT pgtenant.tenant_id())::uuid")
    with psycopg.connect(SU, autocommit=True) as c:
        for table, col in [("tenants", "id"), ("projects", "tenant_id"), ("invoices", "tenant_id")]:
            c.execute(f"ALTER POLICY tenant_isolation ON {table} "
                      f"USING ({col} = {read}) WITH CHECK ({col} = {read})")


CASES = [
    ("context only (SELECT 1)", ["SELECT 1"]),
    ("select one row by key", ["SELECT amount_cents FROM invoices WHERE id = 1"]),
    ("+ one reader call", ["SELECT 1", "SELECT pgtenant.tenant_id()"]),
    ("update one row by key (USING + WITH CHECK)",
     ["UPDATE invoices SET amount_cents = amount_cents WHERE id = 1"]),
    ("TPC-B-like: 3 updates, a select, an insert",
     ["BEGIN",
      "UPDATE invoices SET amount_cents = amount_cents + 1 WHERE id = 1",
      "SELECT amount_cents FROM invoices WHERE id = 1",
      "UPDATE projects SET name = name WHERE id = 1",
      "UPDATE tenants SET name = name WHERE name = 'acme'",
      "INSERT INTO invoices (tenant_id, project_id, amount_cents) "
      "SELECT tenant_id, id, 1 FROM projects WHERE id = 1",
      "COMMIT"]),
]

if __name__ == "__main__":
    print(f"{'case':44} {'plain':>10} {'carried':>10} {'verified':>10} {'alternating':>12}"
          "  (Ir per transaction)")
    for name, statements in CASES:
        row = []
        for mode in ["plain", "carried", "verified", "alternating"]:
            if mode == "plain" and "tenant_id()" in " ".join(statements):
                row.append("-")
                continue
            policies("plain" if mode == "plain" else "verified")
            row.append(f"{(run(mode, B, statements) - run(mode, A, statements)) / (B - A):,.0f}")
        print(f"{name:44} {row[0]:>10} {row[1]:>10} {row[2]:>10} {row[3]:>12}")
    sys.stdout.flush()
