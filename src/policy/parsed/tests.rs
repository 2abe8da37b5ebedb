use super::*;

fn prot() -> Vec<String> {
    ["app.current_tenant", "role", "session_authorization"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn verdict(sql: &str) -> Parsed {
    check(sql.as_bytes(), &prot())
}

#[test]
fn allows_what_privileges_govern() {
    for sql in [
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7; SELECT 1",
        "SET search_path = x",
        "SET LOCAL work_mem = '8MB'",
        "RESET ALL",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "VACUUM t",
        "SET client_encoding TO 'UTF8'",
        "SET standard_conforming_strings = on",
        "SELECT table_to_xml('invoices', true, false, '')",
        "SELECT query_to_xml('SELECT 1', true, false, '')",
        "SELECT pg_advisory_lock(1)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS $$ SELECT 1 $$",
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int; BEGIN x := a + 1; IF x > 2 THEN RETURN x; END IF; EXECUTE 'SELECT 1'; RETURN 0; END $$",
        "CREATE FUNCTION f() RETURNS int RETURN 1",
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t VALUES (1); COMMIT; END $$",
        "CREATE FUNCTION g(n int) RETURNS SETOF int LANGUAGE plpgsql AS $$ DECLARE r record; c CURSOR FOR SELECT 1; BEGIN FOR r IN SELECT generate_series(1, n) AS v LOOP RETURN NEXT r.v; END LOOP; RAISE NOTICE 'n %', n; RETURN QUERY SELECT 1; END $$",
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM t) THEN CREATE TABLE t2 (a int); END IF; END $$",
        "DO $$ DECLARE r record; x int := 1; BEGIN r := ROW(x); SELECT 1 AS a INTO r; END $$",
        "LOCK TABLE t IN ROW EXCLUSIVE MODE",
        "LOCK TABLE t IN ACCESS SHARE MODE NOWAIT",
        "DO $$ BEGIN PERFORM 1; SET search_path = x; END $$",
        "DO $$ BEGIN SET LOCAL work_mem = '1MB'; END $$",
        "SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c",
        "SELECT 'set_config'",
        "COPY t FROM STDIN",
        "EXPLAIN ANALYZE SELECT 1",
    ] {
        let v = verdict(sql);
        assert_eq!(v, Parsed::Allowed, "{sql}: {v:?}");
    }
}

fn refused(sql: &str) -> GuardViolation {
    match verdict(sql) {
        Parsed::Refused(v) => v,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn refuses_each_class() {
    for sql in [
        // The context, in any spelling.
        "SELECT pg_catalog.set_config('app.current_tenant', 'b', true)",
        "SELECT \"set_config\"('App.Current_Tenant', 'b', true)",
        "SELECT U&\"set\\005fconfig\"('app.current_tenant', 'b', true)",
        "SELECT set_config(x, 'b', true) FROM t",
        "SET \"app.current_tenant\" = 'b'",
        "RESET app.current_tenant",
        "SET ROLE other",
        "SET SESSION AUTHORIZATION other",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = 'b' AS 'SELECT 1'",
        // The proxy's own prepared statements, run, replaced or dropped by SQL.
        "EXECUTE pgtenant_ctx('b', 'free')",
        "EXECUTE \"pgtenant_ctx\"('b', 'free')",
        "execute PGTENANT_CTX('b', 'free')",
        "EXPLAIN ANALYZE EXECUTE pgtenant_ctx('b', 'free')",
        "CREATE TABLE x AS EXECUTE pgtenant_ctx('b', 'free')",
        "EXECUTE pgtenant_param('idle_session_timeout', '1')",
        "DEALLOCATE pgtenant_ctx",
        "DEALLOCATE PREPARE \"pgtenant_ctx\"",
        "PREPARE pgtenant_ctx AS SELECT 1",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'EXECUTE pgtenant_ctx(''b'', ''free'')'",
        // Transaction control in a body: what follows runs without the context.
        "DO $$ BEGIN COMMIT; PERFORM 1; END $$",
        "DO $$ BEGIN IF true THEN ROLLBACK; END IF; END $$",
        "DO $$ BEGIN FOR i IN 1..3 LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END $$",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; INSERT INTO t VALUES (1); END $$",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN ROLLBACK; COMMIT; END $$",
        "DO $$ BEGIN CALL pg_temp.p(); INSERT INTO t VALUES (1); END $$",
        // A record default the PL/pgSQL tree does not carry, after a label or inner BEGIN.
        "DO $$ <<l>> DECLARE r record := ROW(pg_advisory_lock(1)); BEGIN END $$",
        "DO $$ BEGIN DECLARE r record := ROW(pg_advisory_lock(1)); BEGIN END; END $$",
        // RESET ALL in a body clears the context where the proxy cannot see it.
        "DO $$ BEGIN RESET ALL; END $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'RESET ALL'",
        // Inside bodies.
        "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'b', true); END $$",
        "DO $$ DECLARE x text; BEGIN x := set_config('app.current_tenant', 'b', true); END $$",
        "DO $$ BEGIN IF set_config('app.current_tenant', 'b', true) IS NULL THEN RETURN; END IF; END $$",
        "DO $$ BEGIN EXECUTE 'SELECT set_config(''app.current_tenant'', ''b'', true)'; END $$",
        "DO $$ BEGIN EXECUTE 'SE' || 'T app.current_tenant = 1'; END $$",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
        "DO $$ BEGIN DISCARD ALL; END $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SET search_path = x'",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DEALLOCATE ALL'",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET work_mem = '1MB'; END $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plperl AS $$ 1 $$",
        // The role, the database, the server.
        "ALTER ROLE CURRENT_USER PASSWORD 'x'",
        "ALTER USER SESSION_USER SET work_mem = '1MB'",
        "ALTER ROLE app SET search_path = x",
        "ALTER DATABASE app SET work_mem = '1MB'",
        "ALTER DATABASE app CONNECTION LIMIT 1",
        "ALTER SYSTEM SET work_mem = '1MB'",
        "LOAD 'auto_explain'",
        // Settings through catalog views; settings that change how text is read.
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "UPDATE pg_catalog.\"pg_settings\" SET setting = 'b' WHERE name = 'app.current_tenant'",
        "WITH x AS (UPDATE pg_settings SET setting = 'b' RETURNING 1) SELECT 1",
        // A view or rule makes pg_settings writable under another name.
        "CREATE TEMP VIEW s AS SELECT * FROM pg_settings",
        "CREATE VIEW s AS SELECT name, setting FROM pg_catalog.\"pg_settings\" WHERE true",
        "CREATE OR REPLACE VIEW s AS WITH w AS (SELECT * FROM pg_settings) SELECT * FROM w",
        "CREATE RULE r AS ON UPDATE TO t DO INSTEAD UPDATE pg_settings SET setting = 'off'",
        // Hidden from the guard's reading, seen in another PostgreSQL could be switched to:
        // standard_conforming_strings = off (`\'` ends no string, `\145` is `e`) ...
        "SELECT query_to_xml('select 1 /* \\052\\057, (select s\\145t_config(''app.curr\\145nt_tenant'', ''x'', true)) as b \\057\\052 */ --\\', true, false, '''') as q, ', true, false, current_user::text) as z --' as r",
        // ... and a client-only encoding (SJIS: `Ã` is 0xC3 0x83, and 0x83 0x5C is one
        // character, so the string ends at the next quote).
        "SELECT E'Ã\\', (SELECT set_config($$app.current_tenant$$, $$x$$, true)) --'",
        // Attribute notation calls a one-argument function (red-team: `(0.5).setseed`).
        "SELECT (0.5::float8).setseed",
        "SELECT (0.5::float8).\"setseed\"",
        "SELECT ((0.5)::float8).pg_catalog.setseed",
        "SELECT t.setseed FROM (SELECT 0.5::float8) t",
        "SELECT ('SELECT 1'::text).ts_stat",
        "SELECT (42).pg_terminate_backend",
        // Two-phase commit: any tenant could finish another's prepared transaction.
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "rollback   prepared 'x'",
        "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'x'",
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO 0",
        "SET \"standard_conforming_strings\" = 'off'",
        "SET NAMES 'SJIS'",
        "SELECT set_config('client_encoding', 'BIG5', false)",
        // Other sessions, by name or by OID.
        "SELECT query FROM pg_stat_activity",
        "SELECT pg_terminate_backend(42)",
        "SELECT table_to_xml(12345, true, false, '')",
        "SELECT table_to_xml(12345::oid::regclass, true, false, '')",
        "SELECT table_to_xml('pg_catalog.pg_stat_activity', true, false, '')",
        "SELECT 'pg_stat_activity'::regclass",
        "SELECT query_to_xml('SELECT query FROM pg_stat_activity', true, false, '')",
        "SELECT query_to_xml(q, true, false, '') FROM t",
        "SELECT 'set_config'::regproc",
        "CREATE AGGREGATE a(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text)",
        "SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        // State no cleanup removes: the next tenant's random() would follow this seed.
        "SELECT setseed(0.5)",
        "SELECT pg_catalog.setseed(0.5)",
        "SELECT \"setseed\"(0.5)",
        "DO $$BEGIN PERFORM setseed(0.5); END$$",
        "SELECT 'setseed'::regproc",
        // A record variable's default, which the PL/pgSQL tree leaves out.
        "DO $$DECLARE r record := ROW(pg_stat_file('PG_VERSION')); BEGIN NULL; END$$",
        "DO $$DECLARE x int; r record DEFAULT ROW(pg_advisory_lock(7)); BEGIN NULL; END$$",
        "DO $$DECLARE \"R\" record = ROW(1); BEGIN NULL; END$$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$DECLARE r record := ROW(1); BEGIN END$$",
    ] {
        let v = refused(sql);
        assert!(!v.message().is_empty(), "{sql}");
    }
}

#[test]
fn kind_refusals_are_widenable_and_nothing_else_is() {
    let v = refused("ALTER ROLE CURRENT_USER PASSWORD 'x'");
    assert_eq!(v.code, "42501");
    assert!(v.widened_by(&["AlterRoleStmt".into()]));
    assert!(!v.widened_by(&["AlterDatabaseStmt".into()]));
    for sql in [
        "LOCK TABLE t",
        "LOCK t IN SHARE UPDATE EXCLUSIVE MODE",
        "LOCK TABLE t IN SHARE MODE",
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT",
    ] {
        let v = refused(sql);
        assert_eq!(v.code, "42501", "{sql}");
        assert!(v.widened_by(&["LockStmt".into()]), "{sql}");
    }
    let v = refused("LOAD 'x'");
    assert_eq!(v.code, "0A000");
    let v = refused("ALTER ROLE app SET app.current_tenant = 'b'");
    assert!(
        v.widenable.is_empty(),
        "a protected setting is never widened"
    );
}

#[test]
fn syntax_errors_are_reported_as_postgresql_would() {
    match verdict("SELEC 1") {
        Parsed::SyntaxError(m, _) => assert!(m.contains("syntax error at or near"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tree_too_deep_to_decode_is_a_limit_not_a_syntax_error() {
    let deep = format!("SELECT 1; SELECT 'a'{}", " || 'a'".repeat(80));
    match verdict(&deep) {
        Parsed::Refused(v) => {
            assert_eq!(v.code, crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED);
            assert!(v.message().contains("too complex"), "{}", v.message());
        }
        other => panic!("{other:?}"),
    }
    // Within the decoder's depth it is read as usual.
    let shallow = format!("SELECT 1; SELECT 'a'{}", " || 'a'".repeat(20));
    assert_eq!(verdict(&shallow), Parsed::Allowed);
}
