//! The guard against the protocol's other paths: reserved statement names, startup
//! settings, FunctionCall, and obfuscated spellings of a context change, each checked
//! against another tenant's rows.

use super::*;

#[tokio::test]
async fn reserved_statement_names_and_startup_settings_are_refused() {
    let env = TestEnv::start().await;
    let addr = env.proxy.addr;
    let mut f = Failures::default();
    let mut c = RawConn::connect(addr, "acme", "acme-secret")
        .await
        .expect("raw connect");

    // Parse / Bind / Describe / Close / Execute naming the proxy's statements, outside and
    // inside a transaction. Each is refused; after Sync comes ReadyForQuery.
    let attempts: Vec<(&str, BytesMut)> = vec![
        ("Parse pgtenant_ctx", {
            let mut b = BytesMut::new();
            messages::parse(&mut b, "pgtenant_ctx", "SELECT 1");
            b
        }),
        ("Bind pgtenant_ctx with another tenant's id", {
            let mut b = BytesMut::new();
            messages::bind(
                &mut b,
                "pgtenant_ctx",
                [GLOBEX.as_bytes(), b"free"].into_iter(),
            );
            messages::execute(&mut b);
            b
        }),
        ("Bind pgtenant_ctx_session", {
            let mut b = BytesMut::new();
            messages::bind(
                &mut b,
                "pgtenant_ctx_session",
                [GLOBEX.as_bytes(), b"free"].into_iter(),
            );
            messages::execute(&mut b);
            b
        }),
        ("Bind pgtenant_param", {
            let mut b = BytesMut::new();
            messages::bind(
                &mut b,
                "pgtenant_param",
                [&b"app.current_tenant"[..], GLOBEX.as_bytes()].into_iter(),
            );
            messages::execute(&mut b);
            b
        }),
        ("Describe pgtenant_ctx", {
            let mut b = BytesMut::new();
            messages::write_msg(&mut b, b'D', |b| b.extend_from_slice(b"Spgtenant_ctx\0"));
            b
        }),
        ("Close pgtenant_ctx", {
            let mut b = BytesMut::new();
            messages::write_msg(&mut b, b'C', |b| b.extend_from_slice(b"Spgtenant_ctx\0"));
            b
        }),
    ];
    for in_tx in [false, true] {
        for (what, bytes) in &attempts {
            let what = format!("{what} (in transaction: {in_tx})");
            if in_tx {
                let m = c.simple("BEGIN").await;
                f.check(raw::tags(&m).ends_with('Z'), || {
                    format!("{what}: BEGIN gave {}", raw::tags(&m))
                });
            }
            let mut out = bytes.clone();
            raw::sync(&mut out);
            c.send(&out).await;
            let msgs = c.until_ready().await;
            let errs = raw::errors(&msgs);
            f.check(
                errs.len() == 1 && errs[0].code == "42501" && errs[0].message.contains("pgtenant_"),
                || {
                    format!(
                        "{what}: expected one 42501 about reserved names, got {errs:?} ({})",
                        raw::tags(&msgs)
                    )
                },
            );
            f.check(raw::tags(&msgs).ends_with('Z'), || {
                format!("{what}: no ReadyForQuery ({})", raw::tags(&msgs))
            });
            f.check(raw::data_rows(&msgs).is_empty(), || {
                format!("{what}: returned rows {:?}", raw::data_rows(&msgs))
            });
            if in_tx {
                let status = msgs
                    .last()
                    .map(|(_, b)| b.first().copied().unwrap_or(0) as char);
                f.check(status == Some('E'), || {
                    format!("{what}: transaction status {status:?}, expected E")
                });
                let m = c.simple("ROLLBACK").await;
                f.check(raw::errors(&m).is_empty(), || {
                    format!("{what}: ROLLBACK failed {:?}", raw::errors(&m))
                });
            }
            let m = c.simple(CTX).await;
            f.check(
                raw::data_rows(&m) == vec![vec![Some(ACME.to_string())]],
                || {
                    format!(
                        "{what}: context afterwards {:?} {:?}",
                        raw::data_rows(&m),
                        raw::errors(&m)
                    )
                },
            );
        }
    }
    // The extended protocol still works normally on the same connection.
    let mut out = BytesMut::new();
    raw::extended(
        &mut out,
        "SELECT current_setting('app.current_tenant'), $1::text",
        &["x"],
    );
    raw::sync(&mut out);
    c.send(&out).await;
    let m = c.until_ready().await;
    f.check(
        raw::data_rows(&m) == vec![vec![Some(ACME.to_string()), Some("x".into())]],
        || {
            format!(
                "extended query after reserved names: {:?} {:?}",
                raw::data_rows(&m),
                raw::errors(&m)
            )
        },
    );

    // Startup: options and parameters naming protected settings are refused before auth.
    let port = addr.port();
    for (opts, setting) in [
        (
            format!("-c app.current_tenant={GLOBEX}"),
            "app.current_tenant",
        ),
        (
            format!("--app.current_tenant={GLOBEX}"),
            "app.current_tenant",
        ),
        (
            "-c app.tenant_plan=enterprise".to_string(),
            "app.tenant_plan",
        ),
        ("-c role=postgres".to_string(), "role"),
        (
            "-c session_authorization=postgres".to_string(),
            "session_authorization",
        ),
        (
            "-c search_path=public -c APP.CURRENT_TENANT=x".to_string(),
            "app.current_tenant",
        ),
    ] {
        let s = format!(
            "host=127.0.0.1 port={port} user=acme password=acme-secret dbname=app options='{opts}'"
        );
        let r = connect(&s).await;
        let ok = r
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .is_some_and(|db| {
                db.code().code() == "42501"
                    && db.message().contains(setting)
                    && db.severity() == "FATAL"
            });
        f.check(ok, || format!("options {opts:?}: {}", describe(&r)));
    }
    for (name, value) in [
        ("app.current_tenant", "x"),
        ("app.current_tenant", GLOBEX),
        ("App.Current_Tenant", GLOBEX),
        ("role", "postgres"),
        ("session_authorization", "postgres"),
        ("app.tenant_plan", "x"),
        // Values that would make PostgreSQL read SQL differently from the guard.
        ("client_encoding", "SJIS"),
        ("standard_conforming_strings", "off"),
    ] {
        let r = RawConn::connect_with(
            addr,
            &[("user", "acme"), ("database", "app"), (name, value)],
            "acme-secret",
        )
        .await;
        match r {
            Ok(_) => f.check(false, || {
                format!("startup parameter {name}={value} was accepted")
            }),
            Err(e) => f.check(
                e.code == "42501"
                    && e.severity == "FATAL"
                    && e.message.contains(&name.to_ascii_lowercase()),
                || format!("startup parameter {name}={value}: {e:?}"),
            ),
        }
    }
    // A harmless startup setting is fine.
    let s = format!(
        "host=127.0.0.1 port={port} user=acme password=acme-secret dbname=app options='-c search_path=public'"
    );
    match connect(&s).await {
        Ok(c2) => {
            let r = c2.query_one(CTX, &[]).await;
            f.check(
                r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == ACME),
                || format!("context with harmless options: {}", describe(&r)),
            );
        }
        Err(e) => f.check(false, || {
            format!("harmless options refused: {}", describe::<()>(&Err(e)))
        }),
    }

    let text = env.proxy.metrics().await;
    f.check(
        text.contains("pgtenant_context_change_rejections_total{source=\"startup\"}"),
        || "no startup rejection metric".into(),
    );
    f.check(
        text.contains("pgtenant_context_change_rejections_total{source=\"reserved_name\"}"),
        || "no reserved_name rejection metric".into(),
    );
    f.finish();
}

/// Less obvious ways to change the context inside a transaction. Whatever the proxy does
/// with each (refuse it or let it through), the transaction must never run with another
/// tenant's id or see another tenant's rows. Each attack is first run straight against
/// PostgreSQL as app_user to show it is valid SQL that really changes the setting.
#[tokio::test]
async fn obfuscated_context_changes_never_reach_another_tenants_rows() {
    let env = TestEnv::start().await;
    let addr = env.proxy.addr;
    let mut f = Failures::default();
    let check = format!(
        "SELECT current_setting('app.current_tenant', true), (SELECT count(*) FROM invoices WHERE tenant_id = '{GLOBEX}')::text"
    );
    let attacks = [
        format!("SELECT U&\"set\\005fconfig\"('app.current_tenant', '{GLOBEX}', true)"),
        format!("SET LOCAL U&\"app\\002ecurrent_tenant\" = '{GLOBEX}'"),
        format!("SET U&\"app\\002ecurrent_tenant\" TO '{GLOBEX}'"),
        format!("DO $$ BEGIN EXECUTE 'SE' || 'T LOCAL app.current_tenant = ''{GLOBEX}'''; END $$"),
        format!(
            "DO $$ BEGIN PERFORM set_config(chr(97) || 'pp.current_tenant', '{GLOBEX}', true); END $$"
        ),
        format!("SELECT set_config(n, '{GLOBEX}', true) FROM (VALUES ('app.current_tenant')) v(n)"),
        format!(
            "UPDATE pg_catalog.pg_settings SET setting = '{GLOBEX}' WHERE name = 'app.current_tenant'"
        ),
        format!("SELECT SET_CONFIG /* x */ ('app.current_tenant', '{GLOBEX}', true)"),
        // Functions that run a query given as text, the query built at run time.
        format!(
            "SELECT query_to_xml('SELECT set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true)', true, false, '')"
        ),
        format!(
            "SELECT query_to_xml_and_xmlschema('SELECT set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true)', true, false, '')"
        ),
        format!(
            "SELECT * FROM ts_stat('SELECT to_tsvector(set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true))')"
        ),
        format!(
            "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM (SELECT set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true)) s')"
        ),
        // The same with the query as a literal, and handed through a function of its own.
        format!(
            "SELECT query_to_xml('SELECT set_config(''app.current_tenant'', ''{GLOBEX}'', true)', true, false, '')"
        ),
        format!(
            "CREATE FUNCTION pg_temp.run(q text) RETURNS xml LANGUAGE sql AS 'SELECT query_to_xml(q, true, false, '''''''')'; SELECT pg_temp.run('SELECT set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true)')"
        ),
        // Named, not called: an aggregate whose transition function is set_config or a runner.
        format!(
            "CREATE AGGREGATE pg_temp.ctx(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.current_tenant'); SELECT pg_temp.ctx('{GLOBEX}', true)"
        ),
        format!(
            "CREATE AGGREGATE pg_temp.run(text) (SFUNC = ts_rewrite, STYPE = tsquery, INITCOND = 'a'); SELECT pg_temp.run('SELECT ''a''::tsquery, ''b''::tsquery FROM (SELECT set_' || 'config(''app.current_tenant'', ''{GLOBEX}'', true)) s')"
        ),
        // Function bodies in plain quotes, which the guard reads only when they could set
        // something or run SQL: SET with no space after it, and dynamic SQL.
        format!(
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS 'SET/**/app.current_tenant/**/TO/**/''{GLOBEX}'''; SELECT pg_temp.f()"
        ),
        format!(
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS 'SET\"app.current_tenant\"TO''{GLOBEX}'''; SELECT pg_temp.f()"
        ),
        format!(
            "CREATE FUNCTION pg_temp.f(q text) RETURNS void LANGUAGE plpgsql AS 'BEGIN EXECUTE q; END'; SELECT pg_temp.f('SE' || 'T LOCAL app.current_tenant = ''{GLOBEX}''')"
        ),
        // Bodies nested deeper than the guard reads.
        format!(
            "DO $a$ BEGIN EXECUTE $b$ DO $c$ BEGIN EXECUTE $d$ DO $e$ BEGIN EXECUTE $f$ SET LOCAL app.current_tenant = '{GLOBEX}' $f$; END $e$ $d$; END $c$ $b$; END $a$"
        ),
        // A language the guard cannot read (PL/Perl, where installed).
        "CREATE FUNCTION pg_temp.f(q text) RETURNS void LANGUAGE plperl AS 'spi_exec_query($_[0])'"
            .to_string(),
    ];

    // Straight to PostgreSQL: which attacks are valid and effective.
    let direct = env.app_user_direct().await;
    let mut effective = Vec::new();
    for sql in &attacks {
        direct.batch_execute("BEGIN").await.unwrap();
        let r = direct.batch_execute(sql).await;
        let v = direct.simple_query(&check).await.ok().map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
        });
        direct.batch_execute("ROLLBACK").await.unwrap();
        let works = r.is_ok() && v.as_deref() == Some(&[GLOBEX.to_string()][..]);
        println!("direct: {sql:?}: {} -> context {v:?}", describe(&r));
        effective.push(works);
    }

    let mut c = RawConn::connect(addr, "acme", "acme-secret")
        .await
        .expect("raw connect");
    for (sql, works_directly) in attacks.iter().zip(&effective) {
        let m = c.simple("BEGIN").await;
        assert!(raw::errors(&m).is_empty());
        let attempt = c.simple(sql).await;
        let m = c.simple(&check).await;
        let rows = raw::data_rows(&m);
        let errs = raw::errors(&attempt);
        println!("proxy: {sql:?} (valid directly: {works_directly}): {errs:?} -> {rows:?}");
        if let [row] = rows.as_slice() {
            f.check(
                row[0].as_deref() != Some(GLOBEX) && row[1].as_deref() == Some("0"),
                || {
                    format!(
                        "{sql:?}: transaction ran with context {:?} and sees {:?} globex invoices",
                        row[0], row[1]
                    )
                },
            );
        }
        if *works_directly {
            f.check(errs.first().is_some_and(|e| e.code == "42501"), || {
                format!("{sql:?}: not refused (errors {errs:?}); in the transaction afterwards: {rows:?}")
            });
        }
        c.simple("ROLLBACK").await;
        let m = c.simple(CTX).await;
        f.check(
            raw::data_rows(&m) == vec![vec![Some(ACME.to_string())]],
            || format!("{sql:?}: context afterwards {m:?}"),
        );

        // The same attack followed by the check in one simple query string (no chance for
        // the proxy to re-inject between the two).
        let m = c.simple(&format!("BEGIN; {sql}; {check}; ROLLBACK")).await;
        let rows = raw::data_rows(&m);
        println!(
            "proxy, one string: {sql:?}: {:?} -> {rows:?}",
            raw::errors(&m)
        );
        for row in rows.iter().filter(|r| r.len() == 2) {
            f.check(
                row[0].as_deref() != Some(GLOBEX) && row[1].as_deref() == Some("0"),
                || {
                    format!(
                        "one string {sql:?}: ran with context {:?} and sees {:?} globex invoices",
                        row[0], row[1]
                    )
                },
            );
        }
        let m = c.simple(CTX).await;
        f.check(
            raw::data_rows(&m) == vec![vec![Some(ACME.to_string())]],
            || format!("{sql:?}: context afterwards {m:?}"),
        );
    }

    // The FunctionCall message calls set_config by OID, with no SQL text to inspect.
    let su = env.superuser().await;
    let oid: u32 = su
        .query_one(
            "SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for local in ["true", "false"] {
        let m = c.simple("BEGIN").await;
        assert!(raw::errors(&m).is_empty());
        let mut out = BytesMut::new();
        raw::function_call(&mut out, oid, &["app.current_tenant", GLOBEX, local]);
        c.send(&out).await;
        let attempt = c.until_ready().await;
        let m = c.simple(&check).await;
        let rows = raw::data_rows(&m);
        println!(
            "FunctionCall set_config(is_local={local}): {:?} -> {rows:?}",
            raw::errors(&attempt)
        );
        f.check(raw::errors(&attempt).first().is_some_and(|e| e.code == "42501"), || {
            format!("FunctionCall set_config(is_local={local}) not refused; afterwards in the transaction: {rows:?}")
        });
        if let [row] = rows.as_slice() {
            f.check(row[0].as_deref() != Some(GLOBEX) && row[1].as_deref() == Some("0"), || {
                format!("FunctionCall set_config(is_local={local}): context {:?}, {:?} globex invoices visible", row[0], row[1])
            });
        }
        c.simple("ROLLBACK").await;
        let m = c.simple(CTX).await;
        f.check(
            raw::data_rows(&m) == vec![vec![Some(ACME.to_string())]],
            || {
                format!(
                    "FunctionCall(is_local={local}): context afterwards {:?}",
                    raw::data_rows(&m)
                )
            },
        );
    }
    f.finish();
}

/// `standard_conforming_strings = off` and client-only encodings (SJIS, BIG5, GBK, ...)
/// make PostgreSQL end some string literals elsewhere than the guard does, so SQL the guard
/// takes for a string would run unread. The values are refused; harmless ones pass.
#[tokio::test]
async fn settings_that_change_how_sql_is_read_are_refused() {
    let env = TestEnv::start().await;
    let hidden = format!(
        "SELECT 'a\\' '; SET/**/LOCAL/**/app.current_tenant/**/TO/**/$q${GLOBEX}$q$; SELECT ''"
    );
    let check = "SELECT current_setting('app.current_tenant', true)";

    // Straight to PostgreSQL: with strings read the old way, the hidden SET runs.
    let direct = env.app_user_direct().await;
    direct
        .batch_execute("SET standard_conforming_strings = off; BEGIN")
        .await
        .unwrap();
    direct.batch_execute(&hidden).await.unwrap();
    assert_eq!(one(&direct, check).await, GLOBEX, "{hidden}");
    direct.batch_execute("ROLLBACK").await.unwrap();

    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    for sql in [
        "SET standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings TO false",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('standard_conforming_strings', 'o' || 'ff', false)",
        "SET NAMES 'SJIS'",
        "SET client_encoding TO 'BIG5'",
        "SET client_encoding = gbk",
        "SELECT set_config('client_encoding', 'Shift_JIS', false)",
        "ALTER ROLE app_user SET client_encoding = 'SJIS'",
    ] {
        let m = c.simple(sql).await;
        let errs = raw::errors(&m);
        assert!(errs.len() == 1 && errs[0].code == "42501", "{sql}: {m:?}");
    }
    // What drivers send (PQsetClientEncoding, for one) still works.
    for sql in [
        "SET client_encoding TO 'UTF8'",
        "SET NAMES 'UTF8'",
        "SET standard_conforming_strings = on",
    ] {
        let m = c.simple(sql).await;
        assert!(raw::errors(&m).is_empty(), "{sql}: {m:?}");
    }
    // Strings are still read the standard way: the text is an unterminated literal.
    let m = c.simple(&hidden).await;
    assert_eq!(
        raw::errors(&m).first().map(|e| e.code.as_str()),
        Some("42601"),
        "{m:?}"
    );
    assert_eq!(
        raw::data_rows(&c.simple(check).await),
        vec![vec![Some(ACME.to_string())]]
    );
}
