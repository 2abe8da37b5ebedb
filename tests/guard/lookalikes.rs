//! What the guard lets through on purpose, and what it refuses only where the session's
//! state would be lost: statements that look like refused ones (RESET ALL, DISCARD ALL, SQL
//! PREPARE) and SQL PREPARE under each `pin_session_state`.

use super::*;

#[tokio::test]
async fn allowed_lookalikes_reset_all_discard_all_and_sql_prepare() {
    let env = TestEnv::start().await;
    let c = env.proxy.connect("acme").await;
    let mut f = Failures::default();

    // Allowed statements, in both protocols.
    for sql in [
        "SET search_path = public",
        "SELECT set_config('search_path', 'public', false)",
        "SELECT current_setting('app.current_tenant')",
        "SHOW app.current_tenant",
        "UPDATE invoices SET status = 'paid' WHERE false",
        "SELECT 'app.current_tenant'",
        "SELECT current_setting('app.tenant_plan')",
        "SELECT name FROM pg_settings WHERE name = 'app.current_tenant'",
    ] {
        let r = c.simple_query(sql).await;
        f.check(r.is_ok(), || format!("simple {sql:?}: {}", describe(&r)));
        let r = c.query(sql, &[]).await;
        f.check(r.is_ok(), || format!("extended {sql:?}: {}", describe(&r)));
    }
    let r = c.simple_query("SHOW app.current_tenant").await;
    f.check(
        r.as_ref()
            .is_ok_and(|m| simple_values(m) == vec![Some(ACME.to_string())]),
        || {
            format!(
                "SHOW app.current_tenant: {:?}",
                r.as_ref()
                    .map(|m| simple_values(m))
                    .map_err(|e| e.to_string())
            )
        },
    );
    let r = c
        .query_one("SELECT current_setting('app.tenant_plan')", &[])
        .await;
    f.check(
        r.as_ref()
            .is_ok_and(|row| row.get::<_, String>(0) == "enterprise"),
        || "acme plan".into(),
    );
    check_own_context(&mut f, &c, ACME, "after allowed statements").await;

    // RESET ALL in autocommit: the next transaction has the context again.
    let r = c.batch_execute("RESET ALL").await;
    f.check(r.is_ok(), || format!("RESET ALL: {}", describe(&r)));
    check_own_context(&mut f, &c, ACME, "after autocommit RESET ALL").await;
    let r = c.execute("RESET ALL", &[]).await;
    f.check(r.is_ok(), || {
        format!("extended RESET ALL: {}", describe(&r))
    });
    check_own_context(&mut f, &c, ACME, "after extended RESET ALL").await;

    // RESET ALL inside a transaction: the context afterwards may be ours or none, never another's.
    let mut observed = Vec::new();
    let allowed =
        |v: &Option<String>| v.is_none() || v.as_deref() == Some("") || v.as_deref() == Some(ACME);
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("RESET ALL").await.unwrap();
    let v = simple_values(
        &c.simple_query("SELECT current_setting('app.current_tenant', true)")
            .await
            .unwrap(),
    );
    observed.push((
        "BEGIN / RESET ALL / SELECT as separate simple queries",
        v.clone(),
    ));
    f.check(v.len() == 1 && allowed(&v[0]), || {
        format!("separate statements after RESET ALL: {v:?}")
    });
    c.batch_execute("COMMIT").await.unwrap();

    // In one simple query string nothing can be injected between RESET ALL and the SELECT,
    // which would run without the context: the string is refused instead.
    let r = c
        .simple_query(
            "BEGIN; RESET ALL; SELECT current_setting('app.current_tenant', true); COMMIT",
        )
        .await;
    observed.push((
        "one simple query string",
        vec![r.as_ref().err().and_then(sqlstate)],
    ));
    f.check(
        r.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("one-string RESET ALL: {}", describe(&r)),
    );

    let mut c = c;
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("RESET ALL", &[]).await.unwrap();
        let row = tx
            .query_one("SELECT current_setting('app.current_tenant', true)", &[])
            .await
            .unwrap();
        let v: Option<String> = row.get(0);
        observed.push(("transaction() with extended RESET ALL", vec![v.clone()]));
        f.check(allowed(&v), || {
            format!("extended RESET ALL in transaction: {v:?}")
        });
        // Whatever the context is, RLS never shows another tenant's rows.
        if let Ok(rows) = tx.query("SELECT tenant_id::text FROM invoices", &[]).await {
            for r in rows {
                f.check(r.get::<_, String>(0) == ACME, || {
                    "foreign row after RESET ALL in transaction".into()
                });
            }
        }
        let _ = tx.rollback().await;
    }
    println!("context within a transaction after RESET ALL: {observed:?}");
    check_own_context(&mut f, &c, ACME, "after RESET ALL in transactions").await;

    // DISCARD ALL: compare with what PostgreSQL itself does to a prepared statement.
    let direct = env.app_user_direct().await;
    let dstmt = direct.prepare("SELECT 1::int4").await.unwrap();
    let direct_discard = direct.batch_execute("DISCARD ALL").await;
    let direct_after = direct.query(&dstmt, &[]).await;
    let direct_extended_discard = direct.execute("DISCARD ALL", &[]).await;
    println!(
        "direct PostgreSQL: DISCARD ALL {}, statement afterwards: {}, extended DISCARD ALL: {}",
        describe(&direct_discard),
        describe(&direct_after),
        describe(&direct_extended_discard)
    );

    let stmt = c.prepare(CTX).await.unwrap();
    let r = c.batch_execute("DISCARD ALL").await;
    f.check(r.is_ok(), || format!("DISCARD ALL: {}", describe(&r)));
    check_own_context(&mut f, &c, ACME, "after DISCARD ALL").await;
    let after = c.query(&stmt, &[]).await;
    match (&after, &direct_after) {
        (Ok(rows), _) => f.check(
            rows.len() == 1 && rows[0].get::<_, String>(0) == ACME,
            || "statement prepared before DISCARD ALL returned a foreign context".into(),
        ),
        (Err(e), Err(d)) => f.check(sqlstate(e) == sqlstate(d), || {
            format!(
                "statement after DISCARD ALL: proxy {}, PostgreSQL {}",
                describe(&after),
                describe(&direct_after)
            )
        }),
        (Err(_), Ok(_)) => f.check(false, || {
            format!("statement after DISCARD ALL failed: {}", describe(&after))
        }),
    }
    check_own_context(
        &mut f,
        &c,
        ACME,
        "after reusing a statement across DISCARD ALL",
    )
    .await;
    let r = c.execute("DISCARD ALL", &[]).await;
    if direct_extended_discard.is_ok() {
        f.check(r.is_ok(), || {
            format!(
                "extended DISCARD ALL: {} (PostgreSQL accepts it)",
                describe(&r)
            )
        });
    }
    check_own_context(&mut f, &c, ACME, "after extended DISCARD ALL").await;
    let fresh = c.prepare(CTX).await;
    f.check(fresh.is_ok(), || {
        format!("prepare after DISCARD ALL: {}", describe(&fresh))
    });
    if let Ok(s) = fresh {
        let r = c.query_one(&s, &[]).await;
        f.check(
            r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == ACME),
            || format!("fresh statement after DISCARD ALL: {}", describe(&r)),
        );
    }

    // SQL-level prepared statements pin the client to its backend (pin_session_state =
    // "pin", the default; tests/pinning.rs), so they work as on PostgreSQL, with the context.
    for sql in [
        "PREPARE p AS SELECT current_setting('app.current_tenant')",
        "EXECUTE p",
        "DEALLOCATE p",
        "select 1; prepare q as select 2",
        "EXECUTE q",
    ] {
        let r = c.simple_query(sql).await;
        f.check(r.is_ok(), || format!("simple {sql:?}: {}", describe(&r)));
    }
    for sql in ["DEALLOCATE ALL", "DEALLOCATE PREPARE ALL"] {
        let r = c.simple_query(sql).await;
        f.check(r.is_ok(), || format!("{sql}: {}", describe(&r)));
    }
    check_own_context(&mut f, &c, ACME, "after SQL-level PREPARE").await;
    f.finish();
}

#[tokio::test]
async fn sql_prepare_is_refused_where_session_state_is_not_kept() {
    use pgtenant::config::PinMode;
    for mode in [PinMode::Refuse, PinMode::Clean] {
        let env = TestEnv::start_with(|c| {
            for db in c.databases.values_mut() {
                db.pin_session_state = mode;
            }
        })
        .await;
        let c = env.proxy.connect("acme").await;
        let mut f = Failures::default();
        for sql in [
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "DEALLOCATE p",
            "select 1; prepare q as select 2",
        ] {
            let r = c.simple_query(sql).await;
            expect_err(&mut f, r, "0A000", "", &format!("{mode:?} simple {sql:?}"));
            let r = c.query(sql, &[]).await;
            expect_err(
                &mut f,
                r,
                "0A000",
                "",
                &format!("{mode:?} extended {sql:?}"),
            );
        }
        for sql in ["DEALLOCATE ALL", "DEALLOCATE PREPARE ALL"] {
            let r = c.simple_query(sql).await;
            f.check(r.is_ok(), || format!("{sql}: {}", describe(&r)));
        }
        check_own_context(&mut f, &c, ACME, "after SQL-level PREPARE attempts").await;
        f.finish();
    }
}
