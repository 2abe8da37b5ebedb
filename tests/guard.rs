//! The context guard end to end: every way a client could change a protected setting
//! (app.current_tenant, app.tenant_plan, role, session_authorization, and the settings that
//! govern the server connection such as idle_session_timeout) is refused with 42501
//! naming the setting, in the simple and the extended protocol, inside and outside explicit
//! transactions, at startup and through reserved statement names; the connection stays
//! usable and keeps its own tenant context. Allowed look-alikes keep working.

mod common;
#[path = "guard/lookalikes.rs"]
mod lookalikes;
#[path = "guard/parser_classes.rs"]
mod parser_classes;
#[path = "guard/protocol_paths.rs"]
mod protocol_paths;
#[path = "guard/readings.rs"]
mod readings;

use bytes::BytesMut;
use common::raw::{self, RawConn};
use common::*;
use pgtenant::protocol::messages;
use tokio_postgres::{Client, SimpleQueryMessage};

const CTX: &str = "SELECT current_setting('app.current_tenant')";

/// "code: message" of an error, or "ok" when the call succeeded.
fn describe<T>(r: &Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(_) => "success".into(),
        Err(e) => match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => format!("non-server error: {e}"),
        },
    }
}

/// Checks that `r` failed with SQLSTATE `code` and a message containing `needle`.
fn expect_err<T>(
    f: &mut Failures,
    r: Result<T, tokio_postgres::Error>,
    code: &str,
    needle: &str,
    what: &str,
) {
    let ok = match &r {
        Err(e) => e
            .as_db_error()
            .is_some_and(|db| db.code().code() == code && db.message().contains(needle)),
        Ok(_) => false,
    };
    f.check(ok, || {
        format!(
            "{what}: expected {code} mentioning {needle:?}, got {}",
            describe(&r)
        )
    });
}

/// The first column of every row a simple query returned.
fn simple_values(msgs: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

/// Checks the connection still works and carries `id` in both protocols, and that the
/// tenant sees exactly its own invoices.
async fn check_own_context(f: &mut Failures, c: &Client, id: &str, what: &str) {
    match c.simple_query(CTX).await {
        Ok(m) => {
            let v = simple_values(&m);
            f.check(v == vec![Some(id.to_string())], || {
                format!("{what}: simple context {v:?}, expected {id}")
            });
        }
        Err(e) => f.check(false, || {
            format!(
                "{what}: simple context query failed: {}",
                describe::<()>(&Err(e))
            )
        }),
    }
    match c
        .query(
            "SELECT current_setting('app.current_tenant'), tenant_id::text FROM invoices",
            &[],
        )
        .await
    {
        Ok(rows) => {
            f.check(rows.len() == 3, || {
                format!("{what}: {} invoice rows, expected 3", rows.len())
            });
            for r in rows {
                let (ctx, tid): (String, String) = (r.get(0), r.get(1));
                f.check(ctx == id && tid == id, || {
                    format!("{what}: context {ctx}, row of tenant {tid}")
                });
            }
        }
        Err(e) => f.check(false, || {
            format!(
                "{what}: extended invoices query failed: {}",
                describe::<()>(&Err(e))
            )
        }),
    }
}

/// Statements that must be refused with 42501, and the setting the message must name.
fn refused_statements() -> Vec<(String, &'static str)> {
    vec![
        (
            format!("SET app.current_tenant = '{GLOBEX}'"),
            "app.current_tenant",
        ),
        (
            format!("SET LOCAL app.current_tenant TO '{GLOBEX}'"),
            "app.current_tenant",
        ),
        (
            format!("set session app.current_tenant = '{GLOBEX}'"),
            "app.current_tenant",
        ),
        ("RESET app.current_tenant".into(), "app.current_tenant"),
        (
            format!("SELECT set_config('app.current_tenant', '{GLOBEX}', false)"),
            "app.current_tenant",
        ),
        ("SET app.tenant_plan = 'x'".into(), "app.tenant_plan"),
        ("SET ROLE postgres".into(), "role"),
        (
            "SET SESSION AUTHORIZATION postgres".into(),
            "session_authorization",
        ),
        (
            "select 1; set app.current_tenant = 'x'".into(),
            "app.current_tenant",
        ),
        (
            "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'x', false); END $$".into(),
            "app.current_tenant",
        ),
        (
            "ALTER ROLE app_user SET app.current_tenant = 'x'".into(),
            "app.current_tenant",
        ),
    ]
}

#[tokio::test]
async fn protected_settings_are_refused_outside_transactions() {
    let env = TestEnv::start().await;
    let c = env.proxy.connect("acme").await;
    let mut f = Failures::default();
    check_own_context(&mut f, &c, ACME, "before anything").await;

    for (sql, setting) in refused_statements() {
        let r = c.simple_query(&sql).await;
        expect_err(
            &mut f,
            r,
            "42501",
            setting,
            &format!("simple_query {sql:?}"),
        );
        check_own_context(&mut f, &c, ACME, &format!("after simple_query {sql:?}")).await;

        let r = c.batch_execute(&sql).await;
        expect_err(
            &mut f,
            r,
            "42501",
            setting,
            &format!("batch_execute {sql:?}"),
        );

        let r = c.query(sql.as_str(), &[]).await;
        expect_err(&mut f, r, "42501", setting, &format!("extended {sql:?}"));
        check_own_context(&mut f, &c, ACME, &format!("after extended {sql:?}")).await;
    }

    // Parameters: the value (or the name) is not known when the statement is parsed.
    let r = c
        .query(
            "SELECT pg_catalog.set_config('app.current_tenant', $1, true)",
            &[&GLOBEX],
        )
        .await;
    expect_err(
        &mut f,
        r,
        "42501",
        "app.current_tenant",
        "set_config with a parameter value",
    );
    let r = c
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"app.current_tenant", &GLOBEX],
        )
        .await;
    expect_err(
        &mut f,
        r,
        "42501",
        "set_config",
        "set_config with a parameter name",
    );
    check_own_context(&mut f, &c, ACME, "after parameterised set_config").await;

    // A prepared statement that would be harmless cannot be swapped for a refused one.
    let stmt = c.prepare(CTX).await.expect("prepare");
    let r = c
        .prepare(&format!(
            "SELECT set_config('app.current_tenant', '{GLOBEX}', true), 1"
        ))
        .await;
    expect_err(
        &mut f,
        r,
        "42501",
        "app.current_tenant",
        "prepare of a set_config",
    );
    match c.query_one(&stmt, &[]).await {
        Ok(row) => f.check(row.get::<_, String>(0) == ACME, || {
            format!("prepared ctx after refusal: {}", row.get::<_, String>(0))
        }),
        Err(e) => f.check(false, || {
            format!(
                "prepared statement after refusal failed: {}",
                describe::<()>(&Err(e))
            )
        }),
    }

    // The superuser's view: no role or database setting was stored by the refused ALTER ROLE.
    let su = env.superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM pg_db_role_setting", &[])
        .await
        .unwrap()
        .get(0);
    f.check(n == 0, || {
        format!("pg_db_role_setting has {n} rows after refused ALTER ROLE")
    });

    // Another tenant is unaffected by all of this.
    let g = env.proxy.connect("globex").await;
    let row = g.query_one(CTX, &[]).await.unwrap();
    f.check(row.get::<_, String>(0) == GLOBEX, || {
        "globex context changed".into()
    });
    f.finish();
}

#[tokio::test]
async fn refusals_inside_transactions_abort_them_like_postgres_errors() {
    let env = TestEnv::start().await;
    let mut c = env.proxy.connect("acme").await;
    let mut f = Failures::default();
    let cases = [
        (
            format!("SET app.current_tenant = '{GLOBEX}'"),
            "app.current_tenant",
        ),
        (
            format!("SET LOCAL app.current_tenant TO '{GLOBEX}'"),
            "app.current_tenant",
        ),
        (
            format!("SELECT set_config('app.current_tenant', '{GLOBEX}', true)"),
            "app.current_tenant",
        ),
        ("RESET app.current_tenant".to_string(), "app.current_tenant"),
        ("SET ROLE postgres".to_string(), "role"),
        (
            "SET SESSION AUTHORIZATION postgres".to_string(),
            "session_authorization",
        ),
        ("SET app.tenant_plan = 'x'".to_string(), "app.tenant_plan"),
    ];

    // Simple protocol: BEGIN, then the refused statement, then anything fails with 25P02.
    for (sql, setting) in &cases {
        let what = format!("simple BEGIN; {sql:?}");
        c.batch_execute("BEGIN").await.expect("BEGIN");
        let r = c.simple_query(CTX).await;
        f.check(
            r.as_ref()
                .is_ok_and(|m| simple_values(m) == vec![Some(ACME.to_string())]),
            || format!("{what}: context before the refusal: {}", describe(&r)),
        );
        let r = c.simple_query(sql).await;
        expect_err(&mut f, r, "42501", setting, &what);
        let r = c.simple_query(CTX).await;
        expect_err(&mut f, r, "25P02", "", &format!("{what}: next statement"));
        let r = c.query(CTX, &[]).await;
        expect_err(
            &mut f,
            r,
            "25P02",
            "",
            &format!("{what}: next extended statement"),
        );
        let r = c.batch_execute("ROLLBACK").await;
        f.check(r.is_ok(), || format!("{what}: ROLLBACK: {}", describe(&r)));
        check_own_context(&mut f, &c, ACME, &format!("{what}: after ROLLBACK")).await;
    }

    // The whole transaction in one simple query string.
    let r = c
        .simple_query(&format!(
            "BEGIN; SET app.current_tenant = '{GLOBEX}'; COMMIT"
        ))
        .await;
    expect_err(
        &mut f,
        r,
        "42501",
        "app.current_tenant",
        "one-string transaction",
    );
    check_own_context(&mut f, &c, ACME, "after one-string transaction").await;

    // Extended protocol through client.transaction().
    for (sql, setting) in &cases {
        let what = format!("transaction() {sql:?}");
        let tx = c.transaction().await.expect("begin");
        let r = tx.query_one(CTX, &[]).await;
        f.check(
            r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == ACME),
            || format!("{what}: context before the refusal: {}", describe(&r)),
        );
        let r = tx.query(sql.as_str(), &[]).await;
        expect_err(&mut f, r, "42501", setting, &what);
        let r = tx.query(CTX, &[]).await;
        expect_err(&mut f, r, "25P02", "", &format!("{what}: next statement"));
        let r = tx.rollback().await;
        f.check(r.is_ok(), || format!("{what}: rollback: {}", describe(&r)));
        check_own_context(&mut f, &c, ACME, &format!("{what}: after rollback")).await;
    }

    // A parameterised set_config inside a transaction.
    let tx = c.transaction().await.expect("begin");
    let r = tx
        .query(
            "SELECT pg_catalog.set_config('app.current_tenant', $1, true)",
            &[&GLOBEX],
        )
        .await;
    expect_err(
        &mut f,
        r,
        "42501",
        "app.current_tenant",
        "parameterised set_config in transaction",
    );
    let r = tx.query(CTX, &[]).await;
    expect_err(
        &mut f,
        r,
        "25P02",
        "",
        "after parameterised set_config in transaction",
    );
    tx.rollback().await.expect("rollback");
    check_own_context(
        &mut f,
        &c,
        ACME,
        "after parameterised set_config in transaction",
    )
    .await;

    // Committing a failed transaction rolls it back, as in PostgreSQL.
    c.batch_execute("BEGIN").await.unwrap();
    let _ = c.simple_query("SET ROLE postgres").await;
    let r = c.simple_query("COMMIT").await;
    f.check(r.is_ok(), || {
        format!("COMMIT of a failed transaction: {}", describe(&r))
    });
    check_own_context(&mut f, &c, ACME, "after COMMIT of a failed transaction").await;
    let row = c
        .query_one("SELECT current_user::text, session_user::text", &[])
        .await
        .unwrap();
    f.check(row.get::<_, String>(0) == "app_user", || {
        format!("current_user is {}", row.get::<_, String>(0))
    });
    f.finish();
}

/// Settings that govern the server connection, not the client's statements, are no client's
/// to set: the connection outlives its transaction. Straight against PostgreSQL as the app
/// role, `idle_session_timeout` makes the backend end itself once it sits idle; through
/// pgtenant a tenant's value followed it to the backends it used and stayed on them in the
/// pool, where PostgreSQL then closed them under other tenants' checkouts (57P03, 57P05;
/// found by a red-team pass). Now every path to these settings is refused with 42501, and
/// the tenants sharing the pool see no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_settings_are_refused_and_no_pooled_backend_times_out() {
    let mut f = Failures::default();
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 2;
        }
    })
    .await;
    // Effective straight against PostgreSQL: the idle backend ends itself.
    let direct = env.app_user_direct().await;
    direct
        .batch_execute("SET idle_session_timeout = '100ms'")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = direct.simple_query("SELECT 1").await;
    f.check(r.is_err(), || {
        format!(
            "directly, the idle session should have ended: {}",
            describe(&r)
        )
    });

    let a = env.proxy.connect("acme").await;
    for sql in [
        "SET idle_session_timeout = '1ms'",
        "SET SESSION idle_session_timeout TO 1",
        "SET Idle_Session_Timeout = 1",
        "SELECT set_config('idle_session_timeout', '1', false)",
        "SELECT pg_catalog.set_config('IDLE_SESSION_TIMEOUT', '1', false)",
        "DO $$ BEGIN PERFORM set_config('idle_session_timeout', '1', false); END $$",
        "SET tcp_user_timeout = 1",
        "SET tcp_keepalives_idle = 1",
        "SELECT set_config('client_connection_check_interval', '1', false)",
    ] {
        expect_err(
            &mut f,
            a.batch_execute(sql).await,
            "42501",
            "governs the server connection",
            sql,
        );
    }
    check_own_context(&mut f, &a, ACME, "acme after the refusals").await;
    // At startup, too.
    let r = common::connect(&format!(
        "{} options='-c idle_session_timeout=1'",
        env.proxy.conn_str("acme")
    ))
    .await;
    f.check(
        r.as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .is_some_and(|db| {
                db.code().code() == "42501" && db.message().contains("idle_session_timeout")
            }),
        || format!("startup option: {:?}", r.as_ref().err()),
    );
    // The red-team's race: acme keeps trying while three clients share the pool of two.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = a.batch_execute("SET idle_session_timeout = '1ms'").await;
                let _ = a.query_one("SELECT 1", &[]).await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let mut victims = Vec::new();
    for t in ["globex", "initech", "acme"] {
        let c = env.proxy.connect(t).await;
        victims.push(tokio::spawn(async move {
            for _ in 0..200 {
                if let Err(e) = c.query_one("SELECT count(*) FROM invoices", &[]).await {
                    return Err(format!("{t}: {}", describe::<()>(&Err(e))));
                }
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            Ok(())
        }));
    }
    for v in victims {
        let r = v.await.unwrap();
        f.check(r.is_ok(), || format!("{r:?}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attacker.await.unwrap();
    f.finish();
}
