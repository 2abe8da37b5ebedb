//! Session state that just works in transaction pooling: a client that keeps a temp table,
//! LISTEN, an SQL-level prepared statement, a WITH HOLD cursor or a session advisory lock
//! keeps its server connection until the state is gone (pin_session_state = "pin"), then
//! the connection is cleaned and goes back to the pool. Caps, refusal, the old cleaning,
//! LISTEN/NOTIFY scoped per tenant, KILL and the pinned idle timeout.

mod common;
#[path = "pinning/notify.rs"]
mod notify;

use std::time::Duration;

use common::*;
use pgtenant::auth::scram::ScramVerifier;
use pgtenant::config::{Config, PinMode};
use tokio_postgres::Client;

const CTX: &str = "SELECT current_setting('app.current_tenant')";

fn pool(c: &mut Config, size: usize, max_pinned: Option<usize>, mode: PinMode) {
    for db in c.databases.values_mut() {
        db.pool_size = size;
        db.max_pinned_connections = max_pinned;
        db.pin_session_state = mode;
        db.checkout_timeout = Duration::from_secs(3);
    }
}

/// The value of `pgtenant_pinned_backends` for the demo pool.
async fn pinned_now(env: &TestEnv) -> i64 {
    let text = env.proxy.metrics().await;
    text.lines()
        .find(|l| l.starts_with("pgtenant_pinned_backends{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The pinned-backends gauge once it reads `want` (pgtenant decides after the client got
/// its ReadyForQuery), or what it reads after 5 s.
async fn pinned_gauge_is(env: &TestEnv, want: i64) -> i64 {
    let mut got = pinned_now(env).await;
    for _ in 0..50 {
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = pinned_now(env).await;
    }
    got
}

/// The message of a server error.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Error "code" of `sql` on `c`, or "ok".
async fn outcome(c: &Client, sql: &str) -> String {
    match c.batch_execute(sql).await {
        Ok(()) => "ok".into(),
        Err(e) => sqlstate(&e).unwrap_or_else(|| e.to_string()),
    }
}

/// Waits until `n` app_user backends are inside a transaction (up to 10 s).
async fn in_transaction(su: &Client, n: i64) -> bool {
    for _ in 0..100 {
        let got: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user' AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if got == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Pinning the one pooled connection makes everyone else wait; unpinning gives it back.
/// Checked with the real pool of 1: another tenant's statement either gets a backend or
/// times out (53300).
async fn other_tenant_gets_a_backend(globex: &Client) -> bool {
    match globex.query_one(CTX, &[]).await {
        Ok(row) => {
            assert_eq!(row.get::<_, String>(0), GLOBEX);
            true
        }
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
            false
        }
    }
}

#[tokio::test]
async fn a_temp_table_lives_across_transactions_and_pins_until_dropped() {
    let env = TestEnv::start_with(|c| pool(c, 1, None, PinMode::Pin)).await;
    let long = async {
        // Connected first: start-up needs a backend too, and the only one will be pinned.
        let globex = env.proxy.connect("globex").await;
        let mut acme = env.proxy.connect("acme").await;
        acme.batch_execute("CREATE TEMP TABLE notes (n text); INSERT INTO notes VALUES ('a')")
            .await
            .unwrap();
        // Later statements and explicit transactions find it, each with acme's context.
        for i in 0..3 {
            acme.execute("INSERT INTO notes VALUES ($1)", &[&format!("x{i}")])
                .await
                .unwrap();
            let tx = acme.transaction().await.unwrap();
            let n: i64 = tx
                .query_one("SELECT count(*) FROM notes", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 2 + i);
            let ctx: String = tx.query_one(CTX, &[]).await.unwrap().get(0);
            assert_eq!(ctx, ACME);
            tx.commit().await.unwrap();
        }
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        // The only backend is acme's: another tenant waits and gets 53300.
        assert!(!other_tenant_gets_a_backend(&globex).await);
        // Once the table is gone the connection goes back, cleaned.
        acme.batch_execute("DROP TABLE notes").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        assert!(other_tenant_gets_a_backend(&globex).await);
        assert_eq!(
            one(
                &globex,
                "SELECT count(*)::text FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
            )
            .await,
            "0"
        );
        // ON COMMIT DROP tables never pin.
        acme.batch_execute(
            "BEGIN; CREATE TEMP TABLE t2 (a int) ON COMMIT DROP; INSERT INTO t2 VALUES (1); COMMIT",
        )
        .await
        .unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        assert!(other_tenant_gets_a_backend(&globex).await);
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn hold_cursors_prepared_statements_and_advisory_locks_pin() {
    let env = TestEnv::start_with(|c| pool(c, 3, Some(2), PinMode::Pin)).await;
    let long = async {
        let acme = env.proxy.connect("acme").await;
        // A WITH HOLD cursor outlives its transaction.
        acme.batch_execute(
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g; COMMIT",
        )
        .await
        .unwrap();
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        for want in [["1", "2"], ["3", "4"]] {
            let got: Vec<String> = acme
                .simple_query("FETCH 2 FROM c")
                .await
                .unwrap()
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect();
            assert_eq!(got, want);
        }
        acme.batch_execute("CLOSE c").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);

        // SQL-level PREPARE / EXECUTE / DEALLOCATE.
        acme.batch_execute("PREPARE q AS SELECT current_setting('app.current_tenant')")
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(one(&acme, "EXECUTE q").await, ACME);
        }
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        acme.batch_execute("DEALLOCATE q").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);

        // A session advisory lock is held across transactions, as on PostgreSQL: another
        // tenant's try fails until it is released.
        acme.batch_execute("SELECT pg_advisory_lock(4242)")
            .await
            .unwrap();
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        let globex = env.proxy.connect("globex").await;
        assert_eq!(
            one(&globex, "SELECT pg_try_advisory_lock(4242)::text").await,
            "false"
        );
        acme.batch_execute("SELECT pg_advisory_unlock(4242)")
            .await
            .unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        assert_eq!(
            one(&globex, "SELECT pg_try_advisory_xact_lock(4242)::text").await,
            "true"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn a_released_pinned_connection_is_cleaned() {
    let env = TestEnv::start_with(|c| pool(c, 1, None, PinMode::Pin)).await;
    let long = async {
        let acme = env.proxy.connect("acme").await;
        for sql in [
            "CREATE TEMP TABLE secret AS SELECT 'acme secret'::text AS s; LISTEN jobs; \
             PREPARE q AS SELECT 1; SELECT pg_advisory_lock(7)",
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "SET statement_timeout = '9s'",
        ] {
            acme.batch_execute(sql).await.unwrap();
        }
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        drop(acme);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        let globex = env.proxy.connect("globex").await;
        let state = "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) \
             || ',' || (SELECT count(*) FROM pg_listening_channels()) \
             || ',' || (SELECT count(*) FROM pg_cursors WHERE is_holdable) \
             || ',' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory') \
             || ',' || current_setting('statement_timeout')";
        let row = globex.query_one(state, &[]).await.map_err(|e| message(&e));
        assert_eq!(
            row.map(|r| r.get::<_, String>(0)),
            Ok("0,0,0,0,0".to_string())
        );
        let e = globex.batch_execute("EXECUTE q").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{}", message(&e));
        assert_eq!(one(&globex, CTX).await, GLOBEX);
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn caps_per_pool_and_per_tenant_refuse_with_a_clear_error() {
    let env = TestEnv::start_with(|c| {
        pool(c, 4, Some(2), PinMode::Pin);
        c.server.max_pinned_per_tenant = 1;
    })
    .await;
    let long = async {
        let acme = env.proxy.connect("acme").await;
        assert_eq!(outcome(&acme, "CREATE TEMP TABLE a (x int)").await, "ok");
        // The tenant's one pin is taken: a second acme client is refused, and still works.
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        let acme2 = env.proxy.connect("acme").await;
        let e = acme2.batch_execute("LISTEN jobs").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("53400"));
        assert!(message(&e).contains("max_pinned_per_tenant"), "{e}");
        assert_eq!(one(&acme2, CTX).await, ACME);
        // Another tenant takes the pool's second pin; a third tenant hits the pool's cap.
        let globex = env.proxy.connect("globex").await;
        assert_eq!(outcome(&globex, "LISTEN jobs").await, "ok");
        assert_eq!(pinned_gauge_is(&env, 2).await, 2);
        let initech = env.proxy.connect("initech").await;
        let e = initech
            .batch_execute("CREATE TEMP TABLE c (x int)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("53400"));
        assert!(message(&e).contains("max_pinned_connections"), "{e}");
        assert_eq!(one(&initech, CTX).await, INITECH);
        // A client already pinned may keep more state.
        assert_eq!(outcome(&acme, "CREATE TEMP TABLE a2 (x int)").await, "ok");
        assert_eq!(pinned_gauge_is(&env, 2).await, 2);
        drop(acme);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(outcome(&initech, "CREATE TEMP TABLE c (x int)").await, "ok");
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

/// The last pin goes to the client whose statement that keeps state is sent first, not to
/// the one whose transaction ends first: a client still inside its transaction must not
/// find its temp table discarded at COMMIT because another client took the pin meanwhile.
#[tokio::test]
async fn the_last_pin_goes_to_the_first_statement_that_keeps_state() {
    let env = TestEnv::start_with(|c| pool(c, 3, Some(1), PinMode::Pin)).await;
    let long = async {
        let acme = env.proxy.connect("acme").await;
        let globex = env.proxy.connect("globex").await;
        let initech = env.proxy.connect("initech").await;
        acme.batch_execute("BEGIN").await.unwrap();
        acme.batch_execute("CREATE TEMP TABLE a (x int)")
            .await
            .unwrap();
        // acme holds the only pin from its CREATE on: globex, committing first, is refused.
        let e = globex
            .batch_execute("CREATE TEMP TABLE b (x int)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("53400"), "{e}");
        assert!(message(&e).contains("max_pinned_connections"), "{e}");
        assert_eq!(one(&globex, CTX).await, GLOBEX);
        acme.batch_execute("INSERT INTO a VALUES (1); COMMIT")
            .await
            .unwrap();
        assert_eq!(one(&acme, "SELECT count(*)::text FROM a").await, "1");
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        // Dropped: the pin is given back and the next client may keep state.
        acme.batch_execute("DROP TABLE a").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        // A pin taken for state its transaction then rolls back is given back too.
        assert_eq!(
            outcome(&initech, "BEGIN; CREATE TEMP TABLE c (x int); ROLLBACK").await,
            "ok"
        );
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        assert_eq!(outcome(&globex, "CREATE TEMP TABLE b (x int)").await, "ok");
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        assert_eq!(one(&globex, "SELECT count(*)::text FROM b").await, "0");
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn refuse_and_clean_modes() {
    let env = TestEnv::start_with(|c| pool(c, 2, None, PinMode::Refuse)).await;
    let acme = env.proxy.connect("acme").await;
    for sql in [
        "CREATE TEMP TABLE a (x int)",
        "LISTEN jobs",
        "PREPARE q AS SELECT 1",
        "SELECT pg_advisory_lock(1)",
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    ] {
        assert_eq!(outcome(&acme, sql).await, "0A000", "{sql}");
        let _ = acme.batch_execute("ROLLBACK").await;
    }
    // What lives only as long as its transaction is fine.
    assert_eq!(
        outcome(
            &acme,
            "BEGIN; CREATE TEMP TABLE t (a int) ON COMMIT DROP; SELECT pg_advisory_xact_lock(1); COMMIT"
        )
        .await,
        "ok"
    );
    assert_eq!(one(&acme, CTX).await, ACME);
    drop(env);

    // "clean": today's transaction pooling; the state is gone after the transaction.
    let env = TestEnv::start_with(|c| pool(c, 2, None, PinMode::Clean)).await;
    let acme = env.proxy.connect("acme").await;
    assert_eq!(outcome(&acme, "CREATE TEMP TABLE a (x int)").await, "ok");
    let e = acme.batch_execute("SELECT * FROM a").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
    assert_eq!(pinned_gauge_is(&env, 0).await, 0);
}

#[tokio::test]
async fn a_pinned_client_ends_by_kill_and_by_its_idle_timeout() {
    let env = TestEnv::start_with(|c| {
        pool(c, 2, None, PinMode::Pin);
        c.server.pinned_idle_timeout = Duration::from_secs(1);
        c.admin
            .users
            .insert("admin".into(), ScramVerifier::hash_password("admin-secret"));
    })
    .await;
    let long = async {
        let su = env.superuser().await;
        // Idle timeout: only the pinned client is closed, with 57P05.
        let acme = env.proxy.connect("acme").await;
        let plain = env.proxy.connect("initech").await;
        acme.batch_execute("CREATE TEMP TABLE a (x int)")
            .await
            .unwrap();
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let e = acme.batch_execute("SELECT 1").await.unwrap_err();
        assert!(
            e.to_string().contains("idle-session timeout") || acme.is_closed(),
            "{e}"
        );
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        assert_eq!(one(&plain, CTX).await, INITECH);

        // KILL from the admin console.
        let globex = env.proxy.connect("globex").await;
        globex.batch_execute("LISTEN jobs").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        let admin = connect(&format!(
            "host=127.0.0.1 port={} user=admin password=admin-secret dbname=pgtenant",
            env.proxy.addr.port()
        ))
        .await
        .unwrap();
        let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
        let pinned: Vec<String> = clients
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                    "{}:{}",
                    r.get("tenant").unwrap_or(""),
                    r.get("pinned").unwrap_or("")
                )),
                _ => None,
            })
            .filter(|s| s.ends_with(":yes"))
            .collect();
        assert_eq!(pinned, vec!["globex:yes".to_string()]);
        admin.simple_query("KILL globex").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(globex.batch_execute("SELECT 1").await.is_err());
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
        // Both connections are back in the pool and clean.
        assert!(in_transaction(&su, 0).await);
        let a = env.proxy.connect("acme").await;
        let b = env.proxy.connect("initech").await;
        let ta = "SELECT count(*)::text FROM pg_listening_channels()";
        assert_eq!(one(&a, ta).await, "0");
        assert_eq!(one(&b, ta).await, "0");
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

/// A function (or any object) made in `pg_temp` lives as long as the session, like a temp
/// table: the client keeps its backend while it exists, and is released when it is dropped.
#[tokio::test]
async fn a_function_made_in_pg_temp_pins_the_client() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let acme = env.proxy.connect("acme").await;
    acme.batch_execute("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$")
        .await
        .unwrap();
    assert_eq!(one(&acme, "SELECT pg_temp.f()::text").await, "7");
    assert_eq!(one(&acme, "SELECT pg_temp.f()::text").await, "7");
    acme.batch_execute("DROP FUNCTION pg_temp.f()")
        .await
        .unwrap();
    // Released: the one backend serves another tenant.
    assert_eq!(
        env.globex_served().await,
        Ok(tenant_id("globex").to_string())
    );
}

/// Every kind of object made in `pg_temp` pins, not only relations and functions: a temp
/// enum, domain, collation, operator or text search configuration has neither a `pg_class`
/// nor a `pg_proc` row, and each was gone in the next transaction (found by
/// tokio-postgres's own tests, which make `pg_temp.mood`).
#[tokio::test]
async fn every_kind_of_object_in_pg_temp_pins_the_client() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let kinds = [
        (
            "CREATE TYPE pg_temp.mood AS ENUM ('sad', 'ok')",
            "SELECT 'ok'::pg_temp.mood::text",
            "ok",
            "DROP TYPE pg_temp.mood",
        ),
        (
            "CREATE DOMAIN pg_temp.positive AS int CHECK (VALUE > 0)",
            "SELECT 3::pg_temp.positive::text",
            "3",
            "DROP DOMAIN pg_temp.positive",
        ),
        (
            "CREATE COLLATION pg_temp.c2 FROM \"C\"",
            "SELECT ('b' COLLATE pg_temp.c2)::text",
            "b",
            "DROP COLLATION pg_temp.c2",
        ),
        (
            "CREATE OPERATOR pg_temp.### (LEFTARG = int, RIGHTARG = int, FUNCTION = int4pl)",
            "SELECT (1 OPERATOR(pg_temp.###) 2)::text",
            "3",
            "DROP OPERATOR pg_temp.### (int, int)",
        ),
        (
            "CREATE TEXT SEARCH CONFIGURATION pg_temp.simple2 (COPY = simple)",
            "SELECT to_tsvector('pg_temp.simple2', 'a')::text",
            "'a':1",
            "DROP TEXT SEARCH CONFIGURATION pg_temp.simple2",
        ),
    ];
    let acme = env.proxy.connect("acme").await;
    for (create, using, want, drop) in kinds {
        acme.batch_execute(create).await.expect(create);
        // Each in its own transaction: the object outlives the one that made it.
        assert_eq!(one(&acme, using).await, want, "{create}");
        assert_eq!(one(&acme, using).await, want, "{create}");
        acme.batch_execute(drop).await.expect(drop);
        assert_eq!(
            env.globex_served().await,
            Ok(tenant_id("globex").to_string()),
            "{drop}"
        );
    }
}
