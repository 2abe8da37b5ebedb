-- pgtenant example multi-tenant schema, isolated with row-level security (RLS).
--
-- Run as the superuser `postgres` in a fresh database (the demo uses `app`), e.g.
--   psql -v ON_ERROR_STOP=1 -X -q -d app -f demo_schema.sql
--
-- Run `pgtenant db install` first (the demo does): it creates the schema
-- `pgtenant` with the verified-context functions the policies call.
--
-- The model: the application connects as the unprivileged role `app_user`.
-- Every row carries a tenant id, and every table has a policy that only lets
-- app_user see and write rows whose tenant id equals the verified tenant
-- context, pgtenant.tenant_id(). pgtenant calls pgtenant.enter(...) with a
-- proof at the start of every pooled transaction; tenant_id() returns the copy
-- enter() verified for this transaction and raises (42501) when the visible
-- setting was changed by anyone else, so a tenant cannot switch to another
-- tenant's id even with SQL pgtenant's guard does not read. (Plain mode would read
-- current_setting('app.current_tenant'), which any SQL on app_user can change.)
--
-- The reader is written as a scalar subquery, (SELECT pgtenant.tenant_id()),
-- so it runs once per statement, not once per row. With no context at all it
-- returns NULL and the policy matches no row: fail closed.
--
-- The whole script is one transaction: it either applies completely or not at all.

BEGIN;

-- ---------------------------------------------------------------------------
-- The application role.
-- Roles are cluster-wide, so create it only if missing (the script can then be
-- run in several databases of one cluster, as tests do) and always (re)assert
-- its attributes. The password is public on purpose: this is a throwaway
-- demo/test cluster, and the demo prints it.
-- NOBYPASSRLS and NOSUPERUSER matter most: either would switch RLS off for it.
-- ---------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_user') THEN
        CREATE ROLE app_user;
    END IF;
END
$$;
ALTER ROLE app_user LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
    PASSWORD 'app_password';

-- Nobody but the owner (postgres) may create objects in public; app_user in
-- particular must not be able to create its own tables or functions.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Tables. They are owned by postgres (who runs this script), never by
-- app_user: an owner could ALTER TABLE ... DISABLE ROW LEVEL SECURITY or drop
-- the policies.
-- ---------------------------------------------------------------------------

-- One row per tenant (customer organisation).
CREATE TABLE tenants (
    id   uuid PRIMARY KEY,
    name text NOT NULL UNIQUE
);

-- A tenant's projects.
CREATE TABLE projects (
    id         bigserial PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A tenant's invoices, optionally attached to one of its projects.
CREATE TABLE invoices (
    id           bigserial PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    project_id   bigint REFERENCES projects (id),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    status       text NOT NULL DEFAULT 'open',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every tenant-scoped query filters on tenant_id (the policy adds it), so index it.
CREATE INDEX projects_tenant_id_idx ON projects (tenant_id);
CREATE INDEX invoices_tenant_id_idx ON invoices (tenant_id);

-- ---------------------------------------------------------------------------
-- Row-level security.
-- ENABLE turns RLS on for non-owners; FORCE applies it to the table owner too
-- (superusers and BYPASSRLS roles still bypass it, which is why app_user has
-- neither). With RLS on and no policy matching, a role sees no rows at all.
-- USING filters the rows a command can see/update/delete; WITH CHECK rejects
-- inserted or updated rows that would belong to another tenant (SQLSTATE 42501,
-- "new row violates row-level security policy").
-- ---------------------------------------------------------------------------
ALTER TABLE tenants  ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants  FORCE ROW LEVEL SECURITY;
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;

-- A tenant sees only its own tenants row (keyed by id, not tenant_id).
CREATE POLICY tenant_isolation ON tenants
    FOR ALL TO app_user
    USING (id = (SELECT pgtenant.tenant_id())::uuid)
    WITH CHECK (id = (SELECT pgtenant.tenant_id())::uuid);

CREATE POLICY tenant_isolation ON projects
    FOR ALL TO app_user
    USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
    WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);

CREATE POLICY tenant_isolation ON invoices
    FOR ALL TO app_user
    USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
    WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);

-- ---------------------------------------------------------------------------
-- Privileges: exactly what the application needs, nothing else.
-- (RLS narrows these grants further, row by row.)
-- ---------------------------------------------------------------------------
DO $$
BEGIN
    -- The demo's database is `app`; using current_database() keeps the script
    -- usable in a test database of another name.
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO app_user', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, projects, invoices TO app_user;
-- bigserial columns draw from these sequences on INSERT.
GRANT USAGE, SELECT ON SEQUENCE projects_id_seq, invoices_id_seq TO app_user;

-- ---------------------------------------------------------------------------
-- Shared-role channels (`pgtenant doctor` reports them). Every tenant reaches
-- PostgreSQL as app_user, and PostgreSQL lets a role read the query text of,
-- cancel and terminate every backend of its own role: only the DBA needs that.
-- pg_catalog privileges are per database, so this runs in each database.
-- The large-object functions go too: a large object belongs to the role that
-- created it, so any tenant could open, overwrite or unlink another's by OID.
-- Kept on purpose, and reported by the doctor (a WARNING) with the REVOKE for
-- deployments that do not use it: TEMPORARY on the database (clients stage COPY
-- through ON COMMIT DROP temp tables; pgtenant pins or sweeps temp objects).
-- ---------------------------------------------------------------------------
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND (p.proname IN ('pg_stat_get_activity', 'pg_stat_get_backend_activity',
                                  'pg_cancel_backend', 'pg_terminate_backend', 'loread', 'lowrite')
                    OR p.proname LIKE 'lo\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Seed data: two tenants with fixed ids so the demo and tests can refer to
-- them. Inserted as postgres (a superuser, so RLS does not apply here).
-- Amounts differ per tenant so a leak across tenants is easy to spot:
-- acme's invoices are 1000, 2000, 3000; globex's are 50000, 60000, 70000.
-- ---------------------------------------------------------------------------
INSERT INTO tenants (id, name) VALUES
    ('11111111-1111-4111-8111-111111111111', 'acme'),
    ('22222222-2222-4222-8222-222222222222', 'globex');

INSERT INTO projects (tenant_id, name) VALUES
    ('11111111-1111-4111-8111-111111111111', 'acme website'),
    ('11111111-1111-4111-8111-111111111111', 'acme rocket skates'),
    ('22222222-2222-4222-8222-222222222222', 'globex reactor'),
    ('22222222-2222-4222-8222-222222222222', 'globex logistics');

INSERT INTO invoices (tenant_id, project_id, amount_cents, status)
SELECT t.tenant_id, p.id, t.amount_cents, t.status
FROM (VALUES
    ('11111111-1111-4111-8111-111111111111'::uuid, 'acme website',       1000::bigint, 'paid'),
    ('11111111-1111-4111-8111-111111111111'::uuid, 'acme website',       2000::bigint, 'open'),
    ('11111111-1111-4111-8111-111111111111'::uuid, 'acme rocket skates', 3000::bigint, 'open'),
    ('22222222-2222-4222-8222-222222222222'::uuid, 'globex reactor',    50000::bigint, 'paid'),
    ('22222222-2222-4222-8222-222222222222'::uuid, 'globex reactor',    60000::bigint, 'open'),
    ('22222222-2222-4222-8222-222222222222'::uuid, 'globex logistics',  70000::bigint, 'open')
) AS t (tenant_id, project_name, amount_cents, status)
JOIN projects p ON p.tenant_id = t.tenant_id AND p.name = t.project_name;

COMMIT;
