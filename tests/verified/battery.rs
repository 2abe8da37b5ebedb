//! The spoofing battery: ways a hostile tenant (globex) may try to read or write another
//! tenant's rows by changing the context. Data, not code: grow the list whenever a new way
//! is found. `{A}` is acme's id. Every probe selects `'row:' || <tenant id>` so the runner
//! can tell whose rows came back.

/// How an attempt reaches the proxy.
pub enum Attempt {
    /// One simple-protocol Query (may hold several statements).
    Simple(&'static str),
    /// Extended-protocol Parse/Bind/Execute per (sql, params), one Sync at the end.
    Pipeline(&'static [(&'static str, &'static [&'static str])]),
    /// FunctionCall of set_config (OID 2078) by OID, then a probe.
    FunctionCallSetConfig,
}

/// The probe every attempt ends with (or that runs after it).
pub const PROBE: &str = "SELECT 'row:' || tenant_id FROM public.invoices";

/// (name, attempt). The attempts that create objects need CREATE on public, which the
/// test grants to app_user so that PostgreSQL alone has to stop them.
pub const ATTEMPTS: &[(&str, Attempt)] = &[
    (
        "set",
        Attempt::Simple("SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices"),
    ),
    (
        "set local",
        Attempt::Simple(
            "BEGIN; SET LOCAL app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "set to",
        Attempt::Simple(
            "SET app.current_tenant TO '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set quoted",
        Attempt::Simple(
            "SET \"app\".\"current_tenant\" = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set comments",
        Attempt::Simple(
            "set/**/app.current_tenant/* x */to/**/'{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set case",
        Attempt::Simple("SeT App.Current_Tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices"),
    ),
    (
        "set line comment",
        Attempt::Simple(
            "SET -- c\n app.current_tenant -- c\n = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set session",
        Attempt::Simple(
            "SET SESSION app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config session",
        Attempt::Simple(
            "SELECT set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config local",
        Attempt::Simple(
            "BEGIN; SELECT set_config('app.current_tenant', '{A}', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "set_config qualified",
        Attempt::Simple(
            "SELECT pg_catalog.set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config quoted name",
        Attempt::Simple(
            "SELECT \"set_config\"('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config escape string",
        Attempt::Simple(
            "SELECT set_config(E'app.current\\x5ftenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config unicode string",
        Attempt::Simple(
            "SELECT set_config(U&'app.current\\005ftenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config concatenated",
        Attempt::Simple(
            "SELECT set_config('app.current_' || 'tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config from a table",
        Attempt::Simple(
            "SELECT set_config(n, '{A}', false) FROM (VALUES ('app.current_tenant')) v(n); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config in the same statement",
        Attempt::Simple(
            "SELECT set_config('app.current_tenant', '{A}', true), 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config in a subquery filter",
        Attempt::Simple(
            "SELECT 'row:' || tenant_id FROM invoices WHERE (SELECT set_config('app.current_tenant', '{A}', true)) IS NOT NULL",
        ),
    ),
    (
        "every context setting",
        Attempt::Simple(
            "SELECT set_config('app.current_tenant', '{A}', false), set_config('app.tenant_plan', 'enterprise', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "do block perform",
        Attempt::Simple(
            "DO $$ BEGIN PERFORM set_config('app.current_tenant', '{A}', false); END $$; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "do block execute",
        Attempt::Simple(
            "DO $$ BEGIN EXECUTE 'SET app.current_tenant = ''{A}'''; END $$; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "do block reads rows",
        Attempt::Simple(
            "DO $$ DECLARE r record; BEGIN PERFORM set_config('app.current_tenant', '{A}', true); FOR r IN SELECT tenant_id FROM invoices LOOP RAISE NOTICE 'row:%', r.tenant_id; END LOOP; END $$",
        ),
    ),
    (
        "sql function body",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.spoof_sql() RETURNS text LANGUAGE sql AS $f$ SELECT set_config('app.current_tenant', '{A}', false) $f$; SELECT public.spoof_sql(); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "plpgsql function body",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.spoof_pl() RETURNS SETOF text LANGUAGE plpgsql AS $f$ BEGIN EXECUTE 'SET LOCAL app.current_tenant = ''{A}'''; RETURN QUERY SELECT 'row:' || tenant_id FROM public.invoices; END $f$; SELECT * FROM public.spoof_pl()",
        ),
    ),
    (
        "function set clause",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.spoof_set() RETURNS SETOF text LANGUAGE sql SET app.current_tenant = '{A}' AS $f$ SELECT 'row:' || tenant_id FROM public.invoices $f$; SELECT * FROM public.spoof_set()",
        ),
    ),
    (
        "function set clause copies every listed pgtenant setting",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.spoof_set2() RETURNS SETOF text LANGUAGE plpgsql SET app.current_tenant = '{A}' AS $f$ BEGIN PERFORM set_config(name, '{A}', true) FROM pg_settings WHERE name LIKE 'pgtenant.%'; RETURN QUERY SELECT 'row:' || tenant_id FROM public.invoices; END $f$; SELECT * FROM public.spoof_set2()",
        ),
    ),
    (
        "security definer wrapper",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.spoof_def() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER SET app.current_tenant = '{A}' AS $f$ SELECT 'row:' || tenant_id FROM public.invoices $f$; SELECT * FROM public.spoof_def()",
        ),
    ),
    (
        "temporary function",
        Attempt::Simple(
            "CREATE FUNCTION pg_temp.spoof() RETURNS text LANGUAGE sql AS $f$ SELECT set_config('app.current_tenant', '{A}', false) $f$; SELECT pg_temp.spoof(); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "temporary view",
        Attempt::Simple(
            "CREATE TEMP VIEW spoof_v AS SELECT set_config('app.current_tenant', '{A}', true) AS s, 'row:' || tenant_id AS r FROM invoices; SELECT r FROM spoof_v",
        ),
    ),
    (
        "temporary table shadows a reader",
        Attempt::Simple(
            "CREATE TEMP TABLE invoices (tenant_id text); INSERT INTO pg_temp.invoices VALUES ('fake'); SELECT set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM public.invoices",
        ),
    ),
    (
        "alter role current_user",
        Attempt::Simple(
            "ALTER ROLE CURRENT_USER SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "alter role in database",
        Attempt::Simple(
            "ALTER ROLE app_user IN DATABASE app SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "alter role stamp default",
        Attempt::Simple(
            "ALTER ROLE CURRENT_USER SET pgtenant.stamp = '1:0000000000000000000000000000000000000000000000000000000000000000'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "alter database",
        Attempt::Simple(
            "ALTER DATABASE app SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "client encoding sjis",
        Attempt::Simple(
            "SET client_encoding = 'SJIS'; SELECT set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set_config client encoding",
        Attempt::Simple(
            "SELECT set_config('client_encoding', 'BIG5', false); SELECT set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "standard_conforming_strings off",
        Attempt::Simple(
            "SET standard_conforming_strings = off; SELECT 'x\\'; SELECT set_config(''app.current_tenant'', ''{A}'', false); SELECT ''row:'' || tenant_id FROM invoices; --'",
        ),
    ),
    (
        "standard_conforming_strings off via set_config",
        Attempt::Simple(
            "SELECT set_config('standard_conforming_strings', 'off', false); SELECT set_config('app.current_tenant', '{A}', false); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "sql prepare execute",
        Attempt::Simple(
            "PREPARE spoof(text) AS SELECT set_config('app.current_tenant', $1, false); EXECUTE spoof('{A}'); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "sql prepared probe",
        Attempt::Simple(
            "PREPARE spoof_probe AS SELECT 'row:' || tenant_id FROM invoices; SET app.current_tenant = '{A}'; EXECUTE spoof_probe",
        ),
    ),
    (
        "copy out",
        Attempt::Simple(
            "SELECT set_config('app.current_tenant', '{A}', false); COPY (SELECT 'row:' || tenant_id FROM invoices) TO STDOUT",
        ),
    ),
    (
        "copy with set_config inside",
        Attempt::Simple(
            "COPY (SELECT set_config('app.current_tenant', '{A}', true), 'row:' || tenant_id FROM invoices) TO STDOUT",
        ),
    ),
    (
        "enter with a guessed proof",
        Attempt::Simple(
            "SELECT pgtenant.enter(1, repeat('0', 64), true, '{A}', 'enterprise'); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "slot from the sequence",
        Attempt::Simple(
            "BEGIN; SELECT set_config('pgtenant.s' || pg_sequence_last_value('pgtenant.slot') || '_1', '{A}', true), set_config('app.current_tenant', '{A}', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "slot from pg_sequences",
        Attempt::Simple(
            "BEGIN; SELECT set_config(COALESCE('pgtenant.s' || (SELECT last_value FROM pg_sequences WHERE schemaname = 'pgtenant' AND sequencename = 'slot') || '_1', 'pgtenant.none'), '{A}', true), set_config('app.current_tenant', '{A}', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "slot from currval",
        Attempt::Simple(
            "BEGIN; SELECT set_config('pgtenant.s' || currval('pgtenant.slot') || '_1', '{A}', true), set_config('app.current_tenant', '{A}', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "slot guessed",
        Attempt::Simple(
            "BEGIN; SELECT count(set_config('pgtenant.s' || g || '_1', '{A}', true)) FROM generate_series(1, 2000) g; SELECT set_config('app.current_tenant', '{A}', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "enter for the session",
        Attempt::Simple(
            "SELECT pgtenant.enter(1, repeat('a', 64), false, '{A}', ''); SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set every listed pgtenant setting",
        Attempt::Simple(
            "BEGIN; SELECT set_config(name, '{A}', true) FROM pg_settings WHERE name LIKE 'pgtenant.%' OR name LIKE 'app.%'; SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "forged slot settings",
        Attempt::Simple(
            "SET pgtenant.s1_1 = '{A}'; SET pgtenant.stamp = '1:00'; SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "read the key table",
        Attempt::Simple("SELECT 'row:' || encode(ipad, 'hex') FROM pgtenant.keys"),
    ),
    (
        "call the private hmac",
        Attempt::Simple("SELECT 'row:' || encode(pgtenant._hmac(1, 'x'), 'hex')"),
    ),
    (
        "call the private verifier",
        Attempt::Simple("SELECT 'row:' || encode(pgtenant._proof_message(1, ARRAY['x']), 'hex')"),
    ),
    (
        "replace the reader",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION pgtenant.tenant_id() RETURNS text LANGUAGE sql AS $f$ SELECT '{A}' $f$; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "shadow the reader in public",
        Attempt::Simple(
            "CREATE OR REPLACE FUNCTION public.sha256(bytea) RETURNS bytea LANGUAGE sql AS $f$ SELECT '\\x00'::bytea $f$; SET search_path = public, pg_catalog; SET app.current_tenant = '{A}'; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        // The readers pin no search_path (tests/verified/qualified.rs): an unqualified `||`
        // in them would build the trusted setting's name with the tenant's operator.
        "shadow the readers' operators",
        Attempt::Simple(
            "CREATE FUNCTION public.spoof_cat(text, bigint) RETURNS text LANGUAGE sql AS $f$ SELECT 'spoof.x' $f$; \
             CREATE FUNCTION public.spoof_cat(text, text) RETURNS text LANGUAGE sql AS $f$ SELECT 'spoof.x' $f$; \
             CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = bigint, FUNCTION = public.spoof_cat); \
             CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.spoof_cat); \
             SET search_path = public, pg_catalog; SET spoof.x = '{A}'; SET app.current_tenant = '{A}'; \
             SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "set role",
        Attempt::Simple("SET ROLE postgres; SELECT 'row:' || tenant_id FROM invoices"),
    ),
    (
        "session authorization",
        Attempt::Simple(
            "SET SESSION AUTHORIZATION postgres; SELECT 'row:' || tenant_id FROM invoices",
        ),
    ),
    (
        "reset the context",
        Attempt::Simple("RESET app.current_tenant; SELECT 'row:' || tenant_id FROM invoices"),
    ),
    (
        "reset all",
        Attempt::Simple("RESET ALL; SELECT 'row:' || tenant_id FROM invoices"),
    ),
    (
        "clear every value",
        Attempt::Simple(
            "BEGIN; SELECT set_config('app.current_tenant', '', true), set_config('app.tenant_plan', '', true); SELECT 'row:' || tenant_id FROM invoices; COMMIT",
        ),
    ),
    (
        "insert for another tenant",
        Attempt::Simple(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{A}', 900001) RETURNING 'row:' || tenant_id",
        ),
    ),
    (
        "insert after set",
        Attempt::Simple(
            "SET app.current_tenant = '{A}'; INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{A}', 900002) RETURNING 'row:' || tenant_id",
        ),
    ),
    (
        "update another tenant",
        Attempt::Simple(
            "UPDATE invoices SET amount_cents = 900003 WHERE tenant_id = '{A}' RETURNING 'row:' || tenant_id",
        ),
    ),
    (
        "move own row to another tenant",
        Attempt::Simple(
            "UPDATE invoices SET tenant_id = '{A}', amount_cents = 900004 RETURNING 'row:' || tenant_id",
        ),
    ),
    (
        "delete after set_config",
        Attempt::Simple(
            "BEGIN; SELECT set_config('app.current_tenant', '{A}', true); DELETE FROM invoices WHERE amount_cents = 1000 RETURNING 'row:' || tenant_id; ROLLBACK",
        ),
    ),
    (
        "tenants table",
        Attempt::Simple("SET app.current_tenant = '{A}'; SELECT 'row:' || id FROM tenants"),
    ),
    (
        "pipeline set_config then probe",
        Attempt::Pipeline(&[
            (
                "SELECT set_config('app.current_tenant', $1, false)",
                &["{A}"],
            ),
            ("SELECT 'row:' || tenant_id FROM invoices", &[]),
        ]),
    ),
    (
        "pipeline local set_config in a transaction",
        Attempt::Pipeline(&[
            ("BEGIN", &[]),
            (
                "SELECT set_config($1, $2, true)",
                &["app.current_tenant", "{A}"],
            ),
            ("SELECT 'row:' || tenant_id FROM invoices", &[]),
            ("COMMIT", &[]),
        ]),
    ),
    (
        "pipeline enter with bound guess",
        Attempt::Pipeline(&[
            (
                "SELECT pgtenant.enter($1::int, $2, true, $3, $4)",
                &["1", "00", "{A}", "free"],
            ),
            ("SELECT 'row:' || tenant_id FROM invoices", &[]),
        ]),
    ),
    ("function call protocol", Attempt::FunctionCallSetConfig),
];
