//! The schemas the doctor tests run on: one clean schema on the verified readers, and one
//! deliberate breakage per finding with the fix the doctor must print.

/// A tenant table whose policy reads the verified reader (stubbed here: the real one comes
/// from `pgtenant db install`), and nothing the app role should not have. `DB` is replaced
/// by the database name.
pub const CLEAN: &str = r#"
CREATE SCHEMA pgtenant;
CREATE FUNCTION pgtenant.tenant_id() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.current_tenant', true) $$;
CREATE FUNCTION pgtenant.setting(name text) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting(name, true) $$;
GRANT USAGE ON SCHEMA pgtenant TO app_user;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE "DB" FROM PUBLIC;
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND (p.proname IN ('pg_stat_get_activity', 'pg_stat_get_backend_activity',
                                  'pg_cancel_backend', 'pg_terminate_backend', 'loread', 'lowrite')
                    OR p.proname LIKE 'lo\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;
CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
    USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
    WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);
GRANT CONNECT ON DATABASE "DB" TO app_user;
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO app_user;
GRANT USAGE ON SEQUENCE notes_id_seq TO app_user;
"#;

/// One deliberately broken schema: the breakage, the finding it must produce (check id and
/// object), its exact fix SQL, and cluster-wide leftovers to drop afterwards.
pub struct Case {
    pub breakage: &'static str,
    pub check: &'static str,
    pub object: &'static str,
    pub fix: &'static str,
    pub cleanup: &'static str,
}

pub const CASES: &[Case] = &[
    // 1. RLS off, or not forced, on a tenant table the role reaches directly, via PUBLIC, or
    //    through a role it belongs to.
    Case {
        breakage: "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
        check: "rls-not-forced",
        object: "public.notes",
        fix: "ALTER TABLE public.notes FORCE ROW LEVEL SECURITY;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE TABLE public.open_notes (tenant_id uuid); GRANT SELECT ON open_notes TO PUBLIC",
        check: "rls-not-forced",
        object: "public.open_notes",
        fix: "ALTER TABLE public.open_notes ENABLE ROW LEVEL SECURITY;\nALTER TABLE public.open_notes FORCE ROW LEVEL SECURITY;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE ROLE doctor_readers; GRANT doctor_readers TO app_user;
                   CREATE TABLE \"Odd Notes\" (tenant_id uuid); GRANT DELETE ON \"Odd Notes\" TO doctor_readers",
        check: "rls-not-forced",
        object: "public.\"Odd Notes\"",
        fix: "ALTER TABLE public.\"Odd Notes\" ENABLE ROW LEVEL SECURITY;\nALTER TABLE public.\"Odd Notes\" FORCE ROW LEVEL SECURITY;",
        cleanup: "DROP ROLE doctor_readers",
    },
    // 2. Policies without WITH CHECK, and commands with no policy.
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)",
        check: "policy-without-check",
        object: "public.notes policy tenant_isolation",
        fix: "ALTER POLICY tenant_isolation ON public.notes WITH CHECK ((tenant_id = (( SELECT pgtenant.tenant_id() AS tenant_id))::uuid));",
        cleanup: "",
    },
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY reads ON notes FOR ALL TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
                       WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);
                   CREATE POLICY adds ON notes FOR INSERT TO app_user",
        check: "policy-without-check",
        object: "public.notes policy adds",
        fix: "ALTER POLICY adds ON public.notes WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);",
        cleanup: "",
    },
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY reads ON notes FOR SELECT TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)",
        check: "command-without-policy",
        object: "public.notes",
        fix: "CREATE POLICY tenant_isolation_delete ON public.notes AS PERMISSIVE FOR DELETE TO app_user USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid);",
        cleanup: "",
    },
    // 3. The context read through a forgeable path (tenant id and an extra setting).
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
                       USING (tenant_id = current_setting('app.current_tenant')::uuid
                              AND current_setting('app.tenant_plan', true) <> 'frozen')
                       WITH CHECK (tenant_id = current_setting('app.current_tenant')::uuid)",
        check: "forgeable-context",
        object: "public.notes policy tenant_isolation",
        fix: "ALTER POLICY tenant_isolation ON public.notes USING (((tenant_id = ((SELECT pgtenant.tenant_id()))::uuid) AND ((SELECT pgtenant.setting('app.tenant_plan')) <> 'frozen'::text))) WITH CHECK ((tenant_id = ((SELECT pgtenant.tenant_id()))::uuid));",
        cleanup: "",
    },
    Case {
        breakage: "CREATE POLICY everyone ON notes FOR SELECT TO app_user USING (true)",
        check: "policy-ignores-context",
        object: "public.notes policy everyone",
        fix: "ALTER POLICY everyone ON public.notes USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid);",
        cleanup: "",
    },
    // 4. The role bypasses RLS, can become a role that does, or owns a tenant table.
    Case {
        breakage: "ALTER ROLE app_user SUPERUSER",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "ALTER ROLE app_user NOSUPERUSER;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER ROLE app_user BYPASSRLS",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "ALTER ROLE app_user NOBYPASSRLS;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE ROLE doctor_bypass NOLOGIN BYPASSRLS; CREATE ROLE doctor_ops NOLOGIN;
                   GRANT doctor_bypass TO doctor_ops; GRANT doctor_ops TO app_user",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "REVOKE doctor_ops FROM app_user;",
        cleanup: "DROP ROLE doctor_ops; DROP ROLE doctor_bypass",
    },
    Case {
        breakage: "ALTER TABLE notes OWNER TO app_user",
        check: "owns-tenant-table",
        object: "public.notes",
        fix: "ALTER TABLE public.notes OWNER TO postgres;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT TRUNCATE, TRIGGER ON notes TO app_user",
        check: "rls-bypassing-privilege",
        object: "public.notes",
        fix: "REVOKE TRIGGER ON public.notes FROM app_user;\nREVOKE TRUNCATE ON public.notes FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT TRUNCATE ON notes TO PUBLIC",
        check: "rls-bypassing-privilege",
        object: "public.notes",
        fix: "REVOKE TRUNCATE ON public.notes FROM PUBLIC;",
        cleanup: "",
    },
    // 5. CREATE on a schema (directly or via PUBLIC) or the database, TEMP on the database.
    Case {
        breakage: "GRANT CREATE ON SCHEMA public TO app_user",
        check: "create-on-schema",
        object: "public",
        fix: "REVOKE CREATE ON SCHEMA public FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT CREATE ON SCHEMA pgtenant TO PUBLIC",
        check: "create-on-schema",
        object: "pgtenant",
        fix: "REVOKE CREATE ON SCHEMA pgtenant FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT CREATE ON DATABASE \"DB\" TO app_user",
        check: "create-on-database",
        object: "DB",
        fix: "REVOKE CREATE ON DATABASE DB FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT TEMPORARY ON DATABASE \"DB\" TO PUBLIC",
        check: "temp-on-database",
        object: "DB",
        fix: "REVOKE TEMPORARY ON DATABASE DB FROM PUBLIC;",
        cleanup: "",
    },
    // 6. Role- and database-level defaults for context settings.
    Case {
        breakage: "ALTER ROLE app_user SET app.current_tenant = '11111111-1111-4111-8111-111111111111'",
        check: "context-default",
        object: "role app_user",
        fix: "ALTER ROLE app_user RESET app.current_tenant;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER DATABASE \"DB\" SET app.tenant_plan = 'pro'",
        check: "context-default",
        object: "database DB",
        fix: "ALTER DATABASE DB RESET app.tenant_plan;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER ROLE app_user IN DATABASE \"DB\" SET app.current_tenant = 'x'",
        check: "context-default",
        object: "role app_user in database DB",
        fix: "ALTER ROLE app_user IN DATABASE DB RESET app.current_tenant;",
        cleanup: "",
    },
    // 6b. Role- and database-level defaults pgtenant overrides on its own connections (the
    // doctor's own connection as the app role must survive them too).
    Case {
        breakage: "ALTER ROLE app_user SET standard_conforming_strings = off",
        check: "overridden-default",
        object: "role app_user",
        fix: "ALTER ROLE app_user RESET standard_conforming_strings;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER DATABASE \"DB\" SET client_encoding = 'SJIS'",
        check: "overridden-default",
        object: "database DB",
        fix: "ALTER DATABASE DB RESET client_encoding;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER ROLE app_user SET local_preload_libraries = 'pgtenant_no_such_library'",
        check: "overridden-default",
        object: "role app_user",
        fix: "ALTER ROLE app_user RESET local_preload_libraries;",
        cleanup: "",
    },
    // 7. Functions that cross tenants on a shared role, and pg_stat_activity's query text.
    Case {
        breakage: "GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO PUBLIC",
        check: "cross-tenant-function",
        object: "pg_catalog.pg_cancel_backend(integer)",
        fix: "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT EXECUTE ON FUNCTION pg_catalog.lo_open(oid, integer) TO app_user",
        check: "large-object-function",
        object: "large-object functions",
        fix: "REVOKE EXECUTE ON FUNCTION pg_catalog.lo_open(oid, integer) FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC;
                   GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) TO app_user",
        check: "stat-activity-query-text",
        object: "pg_catalog.pg_stat_activity",
        fix: "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT pg_monitor TO app_user",
        check: "stat-activity-query-text",
        object: "pg_monitor",
        fix: "REVOKE pg_monitor FROM app_user;",
        cleanup: "",
    },
];
