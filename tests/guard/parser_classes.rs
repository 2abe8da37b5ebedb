//! The classes the parser path (src/policy/parsed.rs) refuses that the lexical guard let
//! through. Each is first shown effective straight against PostgreSQL as the app role, then
//! refused through pgtenant; and the ParameterStatus watch ends a session whose backend
//! reports an unsafe setting that code the guard never saw changed.

use super::CTX;
use super::common::raw::{self, RawConn};
use super::common::*;

/// The one error of a simple query through pgtenant, as "code".
async fn refused_code(c: &mut RawConn, sql: &str) -> String {
    let m = c.simple(sql).await;
    let errs = raw::errors(&m);
    assert_eq!(errs.len(), 1, "{sql}: {m:?}");
    errs[0].code.clone()
}

#[tokio::test]
async fn parser_path_refuses_what_the_lexer_missed() {
    let env = TestEnv::start().await;
    let su = env.superuser().await;
    let direct = env.app_user_direct().await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();

    // 1. The shared role alters itself: a per-role default reaches every tenant's next
    //    connection.
    direct
        .batch_execute("ALTER ROLE CURRENT_USER SET work_mem = '77kB'")
        .await
        .unwrap();
    let fresh = env.app_user_direct().await;
    assert_eq!(one(&fresh, "SHOW work_mem").await, "77kB");
    su.batch_execute("ALTER ROLE app_user RESET work_mem")
        .await
        .unwrap();
    for sql in [
        "ALTER ROLE CURRENT_USER SET work_mem = '77kB'",
        "ALTER USER SESSION_USER SET work_mem = '77kB'",
        "ALTER ROLE CURRENT_USER PASSWORD 'hijacked'",
        "ALTER ROLE app_user CONNECTION LIMIT 1",
    ] {
        assert_eq!(refused_code(&mut c, sql).await, "42501", "{sql}");
    }

    // 2. A catalog relation named by OID: table_to_xml reads pg_prepared_statements (the
    //    statements earlier clients prepared on the backend; pg_stat_activity, the other
    //    such view, is revoked in the demo schema).
    let oid = one(&su, "SELECT 'pg_prepared_statements'::regclass::oid::text").await;
    let by_oid = format!("SELECT table_to_xml({oid}, true, false, '')::text");
    let _kept = direct
        .prepare("SELECT 'an earlier client''s statement'")
        .await
        .unwrap();
    let xml = one(&direct, &by_oid).await;
    assert!(xml.contains("an earlier client"), "direct: {xml}");
    assert_eq!(refused_code(&mut c, &by_oid).await, "42501", "{by_oid}");

    // 3. Settings through a quoted catalog view name and a quoted setting name.
    for sql in [
        "UPDATE \"pg_settings\" SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "SET \"standard_conforming_strings\" = 'off'",
    ] {
        direct.batch_execute(sql).await.unwrap();
        assert_eq!(
            one(&direct, "SHOW standard_conforming_strings").await,
            "off",
            "direct: {sql}"
        );
        direct
            .batch_execute("RESET standard_conforming_strings")
            .await
            .unwrap();
        assert_eq!(refused_code(&mut c, sql).await, "42501", "{sql}");
    }

    // 4. Session state changed inside a function body: the setting outlives the call, and
    //    DEALLOCATE ALL drops the prepared statements of whoever holds the backend.
    direct
        .batch_execute(
            "CREATE FUNCTION pg_temp.leak() RETURNS void LANGUAGE sql AS $$ SET work_mem = '78kB' $$;
             SELECT pg_temp.leak()",
        )
        .await
        .unwrap();
    assert_eq!(one(&direct, "SHOW work_mem").await, "78kB");
    let stmt = direct.prepare("SELECT 1").await.unwrap();
    direct
        .batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .await
        .unwrap();
    let gone = direct.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&gone).as_deref(), Some("26000"), "{gone}");
    for sql in [
        "CREATE FUNCTION pg_temp.leak() RETURNS void LANGUAGE sql AS $$ SET work_mem = '78kB' $$",
        "CREATE FUNCTION pg_temp.leak() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET work_mem = '78kB'; END $$",
        "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
        "DO $$ BEGIN DISCARD ALL; END $$",
    ] {
        assert_eq!(refused_code(&mut c, sql).await, "42501", "{sql}");
    }

    // 5. State no cleanup removes: a seed set by one client decides the next client's
    //    random() on that connection, and DISCARD ALL does not reset it.
    direct.batch_execute("SELECT setseed(0.5)").await.unwrap();
    let seeded = one(&direct, "SELECT random()::text").await;
    direct.batch_execute("SELECT setseed(0.5)").await.unwrap();
    direct.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(one(&direct, "SELECT random()::text").await, seeded);
    for sql in [
        "SELECT setseed(0.5)",
        "SELECT pg_catalog.setseed(0.5)",
        "DO $$ BEGIN PERFORM setseed(0.5); END $$",
    ] {
        assert_eq!(refused_code(&mut c, sql).await, "42501", "{sql}");
    }

    // 6. A strong explicit lock on a table every tenant shares makes the others wait.
    su.batch_execute(
        "CREATE TABLE guard_lock (a int); GRANT SELECT, UPDATE ON guard_lock TO app_user",
    )
    .await
    .unwrap();
    direct
        .batch_execute("BEGIN; LOCK TABLE guard_lock")
        .await
        .unwrap();
    let other = env.app_user_direct().await;
    let waited = other
        .batch_execute("SET lock_timeout = '200ms'; SELECT * FROM guard_lock")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&waited).as_deref(), Some("55P03"), "{waited}");
    direct.batch_execute("ROLLBACK").await.unwrap();
    for sql in [
        "LOCK TABLE guard_lock",
        "LOCK guard_lock IN SHARE MODE NOWAIT",
    ] {
        assert_eq!(refused_code(&mut c, sql).await, "42501", "{sql}");
    }
    let m = c
        .simple("BEGIN; LOCK TABLE guard_lock IN ROW EXCLUSIVE MODE; COMMIT")
        .await;
    assert!(raw::errors(&m).is_empty(), "{m:?}");

    // 7. Statement kinds the allow-list does not know, and text the grammar rejects.
    assert_eq!(refused_code(&mut c, "LOAD 'plpgsql'").await, "0A000");
    assert_eq!(refused_code(&mut c, "SELEC 1; SELECT 1").await, "42601");

    // The connection still carries its own tenant.
    assert_eq!(
        raw::data_rows(
            &c.simple("SELECT current_setting('app.current_tenant')")
                .await
        ),
        vec![vec![Some(ACME.to_string())]]
    );
}

#[tokio::test]
async fn guard_allow_widens_the_allow_list_for_one_database() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.guard_allow = vec!["AlterRoleSetStmt".into()];
        }
    })
    .await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let m = c
        .simple("ALTER ROLE CURRENT_USER SET work_mem = '79kB'")
        .await;
    assert!(raw::errors(&m).is_empty(), "{m:?}");
    // Only the listed kind, and never a protected setting.
    for (sql, code) in [
        ("ALTER ROLE CURRENT_USER PASSWORD 'x'", "42501"),
        (
            "ALTER ROLE CURRENT_USER SET app.current_tenant = 'x'",
            "42501",
        ),
    ] {
        assert_eq!(refused_code(&mut c, sql).await, code, "{sql}");
    }
    env.superuser()
        .await
        .batch_execute("ALTER ROLE app_user RESET ALL")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_backend_reporting_unsafe_string_syntax_ends_the_session() {
    let env = TestEnv::start().await;
    // Code already in the database, which the guard never reads.
    env.superuser()
        .await
        .batch_execute(
            "CREATE FUNCTION public.old_strings() RETURNS text LANGUAGE sql
               AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$;
             GRANT EXECUTE ON FUNCTION public.old_strings() TO app_user",
        )
        .await
        .unwrap();
    // Straight to PostgreSQL it works: the session now reads strings the old way.
    let direct = env.app_user_direct().await;
    direct.batch_execute("SELECT old_strings()").await.unwrap();
    assert_eq!(
        one(&direct, "SHOW standard_conforming_strings").await,
        "off"
    );

    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let m = c.simple("SELECT old_strings()").await;
    let errs = raw::errors(&m);
    assert!(
        errs.iter().any(|e| e.severity == "FATAL"
            && e.code == "42501"
            && e.message.contains("standard_conforming_strings=off")),
        "{m:?}"
    );
    assert!(c.is_closed().await, "the session must end");
    // The backend was closed, not handed to the next client.
    let next = env.proxy.connect("globex").await;
    for _ in 0..6 {
        assert_eq!(one(&next, "SHOW standard_conforming_strings").await, "on");
    }
}

/// What a client sees of an error: SQLSTATE, message, position, and whether it carries a
/// DETAIL or CONTEXT (PostgreSQL's syntax errors carry neither).
fn seen<T>(r: Result<T, tokio_postgres::Error>) -> String {
    let e = match r {
        Ok(_) => return "success".into(),
        Err(e) => e,
    };
    let Some(db) = e.as_db_error() else {
        return format!("non-server error: {e}");
    };
    let position = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => p.to_string(),
        Some(other) => format!("{other:?}"),
        None => "none".into(),
    };
    format!(
        "{} {:?} at {position}, detail {:?}, context {:?}",
        db.code().code(),
        db.message(),
        db.detail(),
        db.where_()
    )
}

/// A text PostgreSQL's grammar refuses gets, through pgtenant, the error PostgreSQL sends
/// (the parser path refuses it before PostgreSQL sees it): same SQLSTATE, message and
/// position, no trace of how the proxy raised it; with the simple and the extended
/// protocol, with no backend attached and inside a transaction.
#[tokio::test]
async fn a_syntax_error_looks_as_postgresql_reports_it() {
    let env = TestEnv::start().await;
    let direct = env.app_user_direct().await;
    let proxied = env.proxy.connect("acme").await;
    let texts = [
        "selec 1",
        "select 1 +",
        "select 'unterminated",
        "select 1 from from t",
        "select é from, t",
        "select 1; selec 2",
        "select 'selec'; /* selec */ selec 2",
        "select 1 1 1",
        "select \"\" from t",
    ];
    let mut f = Failures::default();
    for in_transaction in [false, true] {
        for extended in [false, true] {
            for text in texts {
                let mut answers = Vec::new();
                for c in [&direct, &proxied] {
                    if in_transaction {
                        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
                    }
                    answers.push(if extended {
                        seen(c.prepare(text).await)
                    } else {
                        seen(c.simple_query(text).await)
                    });
                    if in_transaction {
                        c.batch_execute("ROLLBACK").await.unwrap();
                    }
                }
                f.check(answers[0] == answers[1] && !answers[0].contains(" at none"), || {
                    format!(
                        "{text} (extended {extended}, in a transaction {in_transaction}): PostgreSQL {}, pgtenant {}",
                        answers[0], answers[1]
                    )
                });
            }
        }
    }
    // A refusal of the policy carries no PL/pgSQL CONTEXT either.
    proxied.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let refused = seen(
        proxied
            .simple_query("SELECT set_config('app.current_tenant', 'x', false)")
            .await,
    );
    f.check(
        refused.starts_with("42501") && refused.contains("detail None, context None"),
        || format!("a refusal inside a transaction: {refused}"),
    );
    f.finish();
}

/// The proxy prepares its own statements on every backend (the context's set_config under
/// `pgtenant_ctx` in plain mode): SQL EXECUTE, PREPARE or DEALLOCATE of a reserved name, in
/// any spelling, is refused, and the tenant keeps its own context.
#[tokio::test]
async fn sql_cannot_run_the_proxys_own_statements() {
    let env = TestEnv::start().await;
    // Straight to PostgreSQL a prepared set_config switches the context: what a tenant that
    // could EXECUTE the proxy's statement would get.
    let direct = env.app_user_direct().await;
    direct
        .batch_execute(
            "PREPARE ctx AS SELECT set_config('app.current_tenant', $1, true); BEGIN; EXECUTE ctx('b')",
        )
        .await
        .unwrap();
    assert_eq!(one(&direct, CTX).await, "b");
    direct.batch_execute("ROLLBACK").await.unwrap();

    let acme = env.proxy.connect("acme").await;
    let globex = tenant_id("globex");
    let mut f = Failures::default();
    for sql in [
        format!("EXECUTE pgtenant_ctx('{globex}', 'free')"),
        format!("EXECUTE \"pgtenant_ctx\"('{globex}', 'free')"),
        format!("execute PGTENANT_CTX('{globex}', 'free')"),
        format!("EXPLAIN ANALYZE EXECUTE pgtenant_ctx('{globex}', 'free')"),
        "EXECUTE pgtenant_param('idle_session_timeout', '1')".to_string(),
        "DEALLOCATE pgtenant_ctx".to_string(),
        "PREPARE pgtenant_ctx AS SELECT 1".to_string(),
    ] {
        // Inside a transaction whose context was injected, so the statement is prepared.
        acme.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let r = acme.simple_query(&sql).await;
        let code = r.as_ref().err().and_then(sqlstate);
        f.check(code.as_deref() == Some("42501"), || {
            format!("{sql}: {:?}", r.map(|_| "success"))
        });
        acme.batch_execute("ROLLBACK").await.unwrap();
        f.check(one(&acme, CTX).await == tenant_id("acme"), || {
            format!("{sql}: acme's context changed")
        });
    }
    f.finish();
}

/// The context lives as long as the client's transaction: a COMMIT or ROLLBACK inside a DO
/// block or procedure ends it, and what the block runs after it runs without one. Such
/// blocks are refused; one whose last statement is the COMMIT runs.
#[tokio::test]
async fn statements_after_a_commit_inside_a_do_block_are_refused() {
    let env = TestEnv::start_with(|c| c.context.mode = pgtenant::config::ContextMode::Plain).await;
    // Straight to PostgreSQL, with the context set in front of the DO block as the proxy
    // sets it (pipelined, no Sync between), the statements after its COMMIT see none.
    let mut direct = env.raw_acme_or_direct(false).await;
    direct.simple("CREATE TEMP TABLE seen (v text)").await;
    let mut out = bytes::BytesMut::new();
    raw::extended(
        &mut out,
        "SELECT set_config('app.current_tenant', 'a', true)",
        &[],
    );
    pgtenant::protocol::messages::query(
        &mut out,
        "DO $$ BEGIN INSERT INTO seen SELECT current_setting('app.current_tenant', true); COMMIT; \
         INSERT INTO seen SELECT current_setting('app.current_tenant', true); END $$",
    );
    direct.send(&out).await;
    let got = direct.until_ready().await;
    assert!(raw::errors(&got).is_empty(), "{got:?}");
    let rows = raw::data_rows(&direct.simple("SELECT v FROM seen").await);
    assert_eq!(
        rows,
        vec![vec![Some("a".into())], vec![Some(String::new())]]
    );

    let acme = env.proxy.connect("acme").await;
    for sql in [
        "DO $$ BEGIN COMMIT; PERFORM current_setting('app.current_tenant', true); END $$",
        "DO $$ BEGIN FOR i IN 1..2 LOOP PERFORM 1; COMMIT; END LOOP; END $$",
    ] {
        let r = acme.batch_execute(sql).await;
        assert_eq!(
            r.as_ref().err().and_then(sqlstate).as_deref(),
            Some("42501"),
            "{sql}: {r:?}"
        );
    }
    acme.batch_execute("DO $$ BEGIN PERFORM 1; COMMIT; END $$")
        .await
        .unwrap();
    assert_eq!(one(&acme, CTX).await, tenant_id("acme"));
}

/// Two-phase commit: every tenant is the same role, and PostgreSQL lets the role that
/// prepared a transaction finish it from any session, so one tenant could roll back (or
/// commit) another's prepared transaction, whose id `pg_prepared_xacts` lists (found by a
/// red-team pass). Refused unless the database's `guard_allow` lists `TwoPhaseCommit`.
#[tokio::test]
async fn one_tenant_cannot_finish_anothers_prepared_transaction() {
    use pgtenant::pgcluster::{ClusterOptions, TempCluster};
    let cluster = TempCluster::start(ClusterOptions {
        extra_conf: vec![("max_prepared_transactions".into(), "4".into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    pgtenant::demo::load_example(&cluster).await.unwrap();
    // Straight to PostgreSQL as the app role: one session prepares, another rolls it back.
    let direct = |c: &TempCluster| {
        format!(
            "host=127.0.0.1 port={} user=app_user password=app_password dbname=app",
            c.port()
        )
    };
    let first = connect(&direct(&cluster)).await.unwrap();
    let second = connect(&direct(&cluster)).await.unwrap();
    first
        .batch_execute("BEGIN; SELECT 1; PREPARE TRANSACTION 'globex-1'")
        .await
        .unwrap();
    let gid = one(&second, "SELECT gid FROM pg_prepared_xacts").await;
    assert_eq!(gid, "globex-1");
    second
        .batch_execute("ROLLBACK PREPARED 'globex-1'")
        .await
        .unwrap();

    for allow in [false, true] {
        let mut cfg = test_config(&cluster);
        if allow {
            for db in cfg.databases.values_mut() {
                db.guard_allow = vec!["TwoPhaseCommit".into()];
            }
        }
        let proxy = Proxy::start(cfg).await;
        let acme = proxy.connect("acme").await;
        for sql in [
            "BEGIN; SELECT 1; PREPARE TRANSACTION 'acme-1'",
            "ROLLBACK PREPARED 'acme-1'",
            "COMMIT PREPARED 'acme-1'",
        ] {
            let r = acme.batch_execute(sql).await;
            let code = r.as_ref().err().and_then(sqlstate);
            if allow {
                // Allowed, PostgreSQL answers (the last finds nothing left to commit).
                assert_ne!(code.as_deref(), Some("42501"), "{sql}: {r:?}");
            } else {
                assert_eq!(code.as_deref(), Some("42501"), "{sql}: {r:?}");
                let _ = acme.batch_execute("ROLLBACK").await;
            }
        }
        assert_eq!(one(&acme, CTX).await, tenant_id("acme"));
        proxy.shutdown().await;
    }
}
