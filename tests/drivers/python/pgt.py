"""Shared helpers for the Python driver checks (run by tests/drivers.rs).

Environment: PGT_HOST, PGT_PORT, PGT_DB, PGT_MODE (proxy|direct) and, per tenant X in A/B,
PGT_USER_X, PGT_PASSWORD_X, PGT_TENANT_X (the tenant id). In direct mode the programs set
app.current_tenant themselves at the start of every transaction; through the proxy never.
"""
import os
import sys
import traceback
from collections import namedtuple
from contextlib import contextmanager

Tenant = namedtuple("Tenant", "label user password id")

SET_CONTEXT_SQL = "SELECT set_config('app.current_tenant', {}, true)"
CONTEXT_SQL = "SELECT current_setting('app.current_tenant')"
COPY_AMOUNTS = (7001, 7002, 7003)
PREPARED_ROUNDS = 25
# PostgreSQL refuses COPY FROM into a table with row-level security (0A000), so COPY goes into
# a transaction-scoped temp table first.
STAGE_SQL = "CREATE TEMP TABLE invoices_in (tenant_id uuid, amount_cents bigint) ON COMMIT DROP"
UNSTAGE_SQL = "INSERT INTO invoices (tenant_id, amount_cents) SELECT tenant_id, amount_cents FROM invoices_in"


class Env:
    def __init__(self):
        g = os.environ.get
        self.host, self.port, self.db = g("PGT_HOST", "127.0.0.1"), int(g("PGT_PORT", "6432")), g("PGT_DB", "app")
        self.mode = g("PGT_MODE", "proxy")
        if self.mode not in ("proxy", "direct"):
            sys.exit(f"PGT_MODE must be proxy or direct, not {self.mode!r}")
        self.direct = self.mode == "direct"
        self.tenants = [Tenant(x, os.environ[f"PGT_USER_{x}"], os.environ[f"PGT_PASSWORD_{x}"], os.environ[f"PGT_TENANT_{x}"]) for x in "AB"]

    def other(self, t):
        return next(o for o in self.tenants if o.label != t.label)


class Checks:
    """Prints one line per check; exit() is non-zero when any check failed."""

    def __init__(self, driver, mode):
        self.driver, self.mode, self.failed, self.passed = driver, mode, [], 0

    def check(self, name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {self.driver} [{self.mode}] {name}{' -- ' + str(detail) if detail and not ok else ''}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return ok

    def eq(self, name, got, want):
        return self.check(name, got == want, f"got {got!r}, want {want!r}")

    @contextmanager
    def step(self, name):
        """Runs a block; an unexpected exception fails check `name` (and ends the block)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the run goes on
            traceback.print_exc()
            self.check(name, False, f"{type(e).__name__}: {e}")

    def exit(self):
        print(f"{self.driver} [{self.mode}]: {self.passed} passed, {len(self.failed)} failed", flush=True)
        if self.failed:
            print("failed: " + "; ".join(self.failed), flush=True)
        sys.exit(1 if self.failed else 0)
