use super::*;

fn prot(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sql_prepared_statements() {
    for (q, want) in [
        ("PREPARE p AS SELECT 1", true),
        ("select 1; execute p(1)", true),
        ("DEALLOCATE p", true),
        ("DEALLOCATE ALL", false),
        ("deallocate prepare all", false),
        ("PREPARE TRANSACTION 'x'", false),
        ("SELECT 'prepare'", false),
    ] {
        assert_eq!(uses_sql_prepared_statements(q.as_bytes()), want, "{q}");
    }
}

#[test]
#[rustfmt::skip]
fn lexer_basics() {
    use TokenKind::*;
    let sql = b"SELECT \"a\"\"b\", E'x\\'y', U&'d', $q$ $$ $q$, $1, 1.5e3, x'0f' -- c\n/* a /* b */ c */ ;";
    let got: Vec<(TokenKind, &[u8])> = Lexer::new(sql).map(|t| (t.kind, t.text)).collect();
    let want: Vec<(TokenKind, &[u8])> = vec![
        (Ident, b"SELECT"), (QuotedIdent, b"a\"\"b"), (Op, b","), (EStr, b"x\\'y"), (Op, b","),
        (UStr, b"d"), (Op, b","), (DollarStr, b" $$ "), (Op, b","), (Param, b"$1"), (Op, b","),
        (Number, b"1.5e3"), (Op, b","), (BitStr, b"0f"), (Op, b";"),
    ];
    assert_eq!(got, want);
    for bad in [&b"select 'abc"[..], b"/* /* */", b"$a$ x", b"\"x", b"E'\\", b"a--", b"$", b"U&"] {
        assert!(Lexer::new(bad).count() <= 2);
    }
    assert_eq!(decode(b"\\x53ET \\u0041\\101\\n''", EStr, b'\\').as_ref(), b"SET AA\n'");
    assert_eq!(decode(b"!0053!+000045!!x", UStr, b'!').as_ref(), b"SE!x");
    assert_eq!(decode(b"a\"\"b", QuotedIdent, 0).as_ref(), b"a\"b");
}

#[test]
fn protected_changes() {
    let p = prot(&["app.current_tenant", "role", "session_authorization"]);
    let t = Some("app.current_tenant");
    let u = Some(SET_CONFIG_UNVERIFIABLE);
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>)] = &[
        ("SET app.current_tenant = 'x'", t),
        ("set APP.Current_Tenant to 'x'", t),
        ("SET SESSION app.current_tenant = 1", t),
        ("SET LOCAL app.current_tenant TO DEFAULT", t),
        ("SET /* x */ app.current_tenant = 1", t),
        ("set\napp.current_tenant to 'x'", t),
        ("SET \"app\".current_tenant = 1", t),
        ("SET app.\"current_tenant\" = 1", t),
        ("SET \"app.current_tenant\" = 1", t),
        ("SELECT 1; SET app.current_tenant='x'", t),
        ("ALTER ROLE bob SET app.current_tenant = '5'", t),
        ("ALTER ROLE bob IN DATABASE d RESET app.current_tenant", t),
        ("ALTER DATABASE d SET app.current_tenant TO '5'", t),
        ("ALTER SYSTEM SET app.current_tenant = '5'", t),
        ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = '1' AS $$ select 1 $$", t),
        ("CREATE PROCEDURE p(a int DEFAULT CASE WHEN true THEN 1 ELSE 2 END) SET app.current_tenant FROM CURRENT AS 'x'", t),
        ("RESET app.current_tenant", t),
        ("reset \"app\".\"current_tenant\"", t),
        ("RESET ALL", None),
        ("SET ROLE admin", Some("role")),
        ("set local role none", Some("role")),
        ("SET role = 'x'", Some("role")),
        ("RESET ROLE", Some("role")),
        ("SET SESSION AUTHORIZATION bob", Some("session_authorization")),
        ("SET session_authorization = 'bob'", Some("session_authorization")),
        ("RESET SESSION AUTHORIZATION", Some("session_authorization")),
        ("SELECT set_config('app.current_tenant','x',false)", t),
        ("SELECT set_config('APP.CURRENT_TENANT'::text, 'x', false)", t),
        ("SELECT pg_catalog.set_config(E'\\x61pp.current_tenant', 'x', false)", t),
        ("SELECT \"set_config\"($$app.current_tenant$$, 'x', false)", t),
        ("SELECT set_config('app.'\n'current_tenant', 'x', false)", t),
        ("select pg_catalog.set_config($1,$2,true)", u),
        ("select set_config('app.' || 'current_tenant', 'x', false)", u),
        ("select set_config(lower('APP.CURRENT_TENANT'), 'x', false)", u),
        ("select set_config(setting_name => 'x', new_value => 'y', is_local => false)", u),
        ("DO $$ BEGIN SET app.current_tenant = 'x'; END $$", t),
        ("DO $$BEGIN PERFORM set_config('app.current_tenant', '1', false); END$$", t),
        ("DO $a$ BEGIN EXECUTE $b$ SET app.current_tenant = 1 $b$; END $a$", t),
        ("DO $$ BEGIN IF x THEN RESET ROLE; END IF; END $$", Some("role")),
        ("DO $$ BEGIN EXECUTE 'SET app.current_tenant = ''x'''; END $$", t),
        ("DO $$ BEGIN EXECUTE E'\\x53ET app.current_tenant = 1'; END $$", t),
        ("DO $$ BEGIN EXECUTE 'select set_config(''app.current_tenant'', ''1'', false)'; END $$", t),
        ("DO $$ BEGIN EXECUTE format('SET %I = %L', 'app.current_tenant', '1'); END $$", Some("dynamic sql in a function body")),
        ("CREATE FUNCTION f() RETURNS void AS 'SET app.current_tenant = 1' LANGUAGE sql", t),
        ("SELECT 'SET app.current_tenant = 1'", t), // known false positive (literal contains "set ")
        ("SELECT 'x'; -- SET app.current_tenant = 1\nSELECT 1", None),
        ("SELECT 1 /* SET app.current_tenant = 1 */", None),
        ("SELECT current_setting('app.current_tenant')", None),
        ("SHOW app.current_tenant", None),
        ("SELECT current_tenant, 'app.current_tenant' FROM t", None),
        ("UPDATE t SET col = 1", None),
        ("UPDATE t SET role = 1, current_tenant = 2", None),
        ("UPDATE begin SET role = 1", None),
        ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET role = excluded.role", None),
        ("DO $$ BEGIN UPDATE t SET role = 1; END $$", None),
        ("SET search_path = public", None),
        ("SET app.current_tenant_other = 1", None),
        ("select set_config('search_path','x',false)", None),
        ("ALTER TABLE t ALTER COLUMN role SET DEFAULT 'x'", None),
        ("ALTER TABLE t SET (fillfactor = 50)", None),
        ("CREATE FUNCTION f() RETURNS int BEGIN ATOMIC UPDATE t SET role = 1; END", None),
        // Named without a call (a column, an alias, `SFUNC = set_config`): refused.
        ("SELECT set_config", Some("set_config named as a function")),
        ("UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'app.current_tenant'", Some("pg_settings")),
        ("update only pg_settings set setting = 'x'", Some("pg_settings")),
        ("SELECT * FROM pg_settings WHERE name = 'app.current_tenant'", None),
        ("SELECT 'unterminated SET app.current_tenant = 1", None),
    ];
    for (sql, want) in cases {
        let got = find_protected_change(sql.as_bytes(), &p);
        assert_eq!(got.as_ref().map(|v| v.setting.as_str()), *want, "{sql}");
    }
    // Only listed names are protected.
    let only_tenant = prot(&["app.current_tenant"]);
    for sql in [
        "SET ROLE admin",
        "RESET SESSION AUTHORIZATION",
        "SET TIME ZONE 'UTC'",
    ] {
        assert_eq!(
            find_protected_change(sql.as_bytes(), &only_tenant),
            None,
            "{sql}"
        );
    }
    assert_eq!(
        find_protected_change(b"SET app.current_tenant = 1", &[]),
        None
    );
    let tz = find_protected_change(b"SET TIME ZONE 'UTC'", &prot(&["timezone"]));
    assert_eq!(tz, Some(GuardViolation::new("timezone".into())));
    // RESET ALL only clears settings and is allowed.
    assert_eq!(find_protected_change(b"RESET ALL", &prot(&["role"])), None);
    // Depth limit: a body nested deeper than the guard reads is refused, not let through
    // unread (it ran, shown in tests/guard/protocol_paths.rs).
    let nest = |n: usize| {
        let mut s = "SET app.current_tenant = 1".to_string();
        for k in 0..n {
            s = format!("SELECT $t{k}${s}$t{k}$");
        }
        s
    };
    assert!(find_protected_change(nest(4).as_bytes(), &p).is_some());
    assert_eq!(
        find_protected_change(nest(5).as_bytes(), &p).map(|v| v.setting),
        Some("sql nested too deep to verify".into())
    );
    assert_eq!(
        find_protected_change(nest(5).replace("app.current_tenant", "x").as_bytes(), &p)
            .map(|v| v.setting),
        Some("sql nested too deep to verify".into())
    );
}

#[test]
fn no_transaction_block() {
    #[rustfmt::skip]
    let cases: &[(&str, bool)] = &[
        ("VACUUM", true), ("vacuum analyze t;", true), (" /* c */ VACUUM FULL t ;; ", true),
        ("CREATE DATABASE d", true), ("DROP DATABASE IF EXISTS d", true), ("CREATE TABLESPACE s LOCATION '/x'", true),
        ("DROP TABLESPACE s", true), ("ALTER DATABASE d SET TABLESPACE s", true), ("ALTER SYSTEM SET work_mem = '1MB'", true),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", true), ("create unique index concurrently i on t(a)", true),
        ("DROP INDEX CONCURRENTLY i", true), ("REINDEX TABLE CONCURRENTLY t", true), ("REINDEX (VERBOSE) DATABASE d", true),
        ("REINDEX SYSTEM", true), ("REINDEX SCHEMA s", true), ("CLUSTER", true), ("CLUSTER VERBOSE;", true),
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", true), ("DROP SUBSCRIPTION s", true),
        ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", true), ("COMMIT PREPARED 'x'", true), ("ROLLBACK PREPARED 'x'", true),
        ("DISCARD ALL", true), ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", true),
        ("ANALYZE t", false), ("SELECT 1", false), ("VACUUM; SELECT 1", false), ("SELECT 1; VACUUM", false),
        ("CREATE INDEX i ON t (a)", false), ("REINDEX TABLE t", false), ("CLUSTER t USING i", false),
        ("ALTER DATABASE d SET work_mem = 1", false), ("COMMIT", false), ("DISCARD PLANS", false), ("", false),
        ("-- VACUUM", false), ("SELECT 'VACUUM'", false), ("DROP TABLE t", false),
    ];
    for (sql, want) in cases {
        assert_eq!(is_no_transaction_block(sql.as_bytes()), *want, "{sql}");
    }
}

#[test]
fn session_state() {
    #[rustfmt::skip]
    let cases: &[(&str, bool)] = &[
        ("SET search_path = x", true), ("SET SESSION x = 1", true), ("select 1; RESET ALL", true), ("DISCARD ALL", true),
        ("LISTEN c", true), ("UNLISTEN *", true), ("PREPARE p AS SELECT 1", true), ("DEALLOCATE p", true),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", true), ("LOAD 'auto_explain'", true),
        ("CREATE TEMP TABLE t (a int)", true), ("CREATE GLOBAL TEMPORARY TABLE t (a int)", true),
        ("SELECT * INTO TEMP t FROM x", true), ("SELECT * INTO LOCAL TEMPORARY t FROM x", true),
        ("SELECT set_config('a.b', 'c', false)", true), ("SELECT pg_advisory_lock(1)", true),
        ("SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", true), ("SELECT dblink_connect('x')", true),
        ("DO $$ BEGIN PERFORM 1; END $$", true), ("UPDATE pg_settings SET setting = 1 WHERE name = 'x'", true),
        ("SELECT 1", false), ("UPDATE t SET x=1", false), ("INSERT INTO t VALUES (1)", false), ("BEGIN", false),
        ("COMMIT", false), ("SET LOCAL x = 1", false), ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
        ("SET CONSTRAINTS ALL DEFERRED", false), ("LOCK TABLE t", false), ("SELECT pg_advisory_xact_lock(1)", false),
        ("SELECT 'SET x = 1'", false), ("SELECT * INTO t FROM x", false), ("CREATE TABLE t (a int)", false),
    ];
    for (sql, want) in cases {
        assert_eq!(may_change_session_state(sql.as_bytes()), *want, "{sql}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let p = prot(&["app.current_tenant", "role"]);
    let alphabet = b"$$''\"\"E U&xX/*-\n;()=.:,\\%_aSeEtT0123456789";
    let mut next = crate::policy::xorshift(0x9e37_79b9_7f4a_7c15u64);
    for iter in 0..100_000 {
        let len = (next() % 64) as usize;
        let buf: Vec<u8> = (0..len)
            .map(|_| match iter % 2 {
                0 => next() as u8,
                _ => alphabet[(next() % alphabet.len() as u64) as usize],
            })
            .collect();
        let mut sql = if iter % 3 == 0 {
            b"SET ".to_vec()
        } else {
            Vec::new()
        };
        sql.extend_from_slice(&buf);
        let _ = Lexer::new(&sql).count();
        let _ = find_protected_change(&sql, &p);
        let _ = is_no_transaction_block(&sql);
        let _ = may_change_session_state(&sql);
    }
}

#[test]
fn analyze_agrees_with_the_single_purpose_checks() {
    let protected = vec!["app.current_tenant".to_string(), "role".to_string()];
    for sql in [
        "SELECT 1",
        "SET app.current_tenant = 'x'",
        "VACUUM invoices",
        "PREPARE p AS SELECT 1",
        "CREATE TEMP TABLE t (x int)",
        "DO $$BEGIN PERFORM set_config('app.current_tenant', 'x', false); END$$",
        "SELECT 1; DISCARD ALL",
        "DISCARD ALL",
        "select set_config('role', 'x', true)",
    ] {
        let s = sql.as_bytes();
        let a = analyze(s, &protected);
        assert_eq!(
            a.protected_change,
            find_protected_change(s, &protected),
            "{sql}"
        );
        assert_eq!(
            a.sql_prepared_statements,
            uses_sql_prepared_statements(s),
            "{sql}"
        );
        assert_eq!(
            a.changes_session_state,
            may_change_session_state(s),
            "{sql}"
        );
        assert_eq!(a.no_transaction_block, is_no_transaction_block(s), "{sql}");
    }
}

#[test]
fn plain_begin() {
    for yes in [
        "BEGIN",
        "begin;",
        " Begin Work ; ",
        "BEGIN TRANSACTION;;",
        "start transaction",
        "/* c */ BEGIN -- trailing\n",
    ] {
        assert!(is_plain_begin(yes.as_bytes()), "{yes}");
    }
    for no in [
        "",
        ";",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "BEGIN READ ONLY",
        "START TRANSACTION READ WRITE",
        "BEGIN; SELECT 1",
        "BEGIN; BEGIN",
        "START",
        "begin work work",
        "\"BEGIN\"",
        "COMMIT",
        "SELECT 'BEGIN'",
        "DO $$BEGIN END$$",
    ] {
        assert!(!is_plain_begin(no.as_bytes()), "{no}");
    }
}

#[test]
fn substring_search_is_case_insensitive_and_bounded() {
    let naive = |h: &[u8], n: &[u8]| h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    let hays: [&[u8]; 7] = [
        b"",
        b"s",
        b"SET_CONFIG",
        b"select Set_Config(",
        b"xx set_confi",
        b"u&\"x\"",
        b"pg_advisory_lockpg_settings",
    ];
    let needles: [&[u8]; 5] = [
        b"set_config",
        b"u&\"",
        b"pg_settings",
        b"s",
        b"pg_advisory_lock",
    ];
    for h in hays {
        for n in needles {
            assert_eq!(contains_ci(h, n), naive(h, n), "{:?} in {:?}", n, h);
        }
    }
}
