//! Pool behaviour: many clients over few backends, checkout timeouts, an unreachable
//! backend, session pooling, metrics, and client parameters that follow their client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pgtenant::config::PoolMode;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const CTX: &str = "SELECT current_setting('app.current_tenant')";

async fn app_user_backends(su: &Client) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn pool_size(n: usize) -> impl FnOnce(&mut pgtenant::config::Config) {
    move |c| {
        for db in c.databases.values_mut() {
            db.pool_size = n;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_over_five_backends() {
    let env = TestEnv::start().await;
    let su = env.superuser().await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Samples how many app_user backends PostgreSQL sees while the load runs.
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        let su = env.superuser().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = app_user_backends(&su).await;
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The clients run on their own runtime, as they would in their own processes: their
    // SCRAM key derivation (slow in a debug build) must not starve the proxy's tasks.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (tenant, _, id) = TENANTS[i % 3];
        let conn_str = env.proxy.conn_str(tenant);
        let (ok, failures) = (ok.clone(), failures.clone());
        tasks.push(clients.spawn(async move {
            let c = match connect(&conn_str).await {
                Ok(c) => c,
                Err(e) => {
                    return failures
                        .lock()
                        .unwrap()
                        .push(format!("client {i} connect: {e:?}"));
                }
            };
            for k in 0..5 {
                match c
                    .query_one(
                        "SELECT current_setting('app.current_tenant'), $1::int4",
                        &[&k],
                    )
                    .await
                {
                    Ok(r) if r.get::<_, String>(0) == id && r.get::<_, i32>(1) == k => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("client {i}: wrong row {r:?}")),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("client {i} query: {e:?}")),
                }
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("200 clients finish within 60 s");
    clients.shutdown_background();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ok.load(Ordering::Relaxed), 1000);
    let after = app_user_backends(&su).await;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("app_user backends: {after} after the load, at most {peak} during it");
    // The pool holds at most 5 (observed: 4-5 after, 5 at peak). The proxy's start-up doctor
    // connection is closed right after its check, before any client; one extra is tolerated
    // for a connection PostgreSQL still lists while it exits.
    assert!(after <= 6, "{after} app_user backends after the load");
    assert!(peak <= 6, "{peak} app_user backends during the load");
}

#[tokio::test]
async fn checkout_timeout_gives_a_clear_error() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
            db.checkout_timeout = Duration::from_millis(500);
        }
    })
    .await;
    let long = async {
        // Both connect first: a new client needs a backend briefly to learn its parameters.
        let mut a = env.proxy.connect("acme").await;
        let b = env.proxy.connect("globex").await;
        let tx = a.transaction().await.unwrap();
        assert_eq!(one_tx(&tx, "SELECT 1::text").await, "1");
        let err = tokio::time::timeout(Duration::from_secs(5), b.query_one(CTX, &[]))
            .await
            .expect("B gets an answer within a few seconds")
            .expect_err("no backend for B while A holds the only one");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {err:?}"));
        assert_eq!(db.code().code(), "53300", "{db:?}");
        assert!(
            db.message().contains("no server connection"),
            "{}",
            db.message()
        );
        // A is unaffected; once it commits, B's connection works again.
        assert_eq!(one_tx(&tx, CTX).await, ACME);
        tx.commit().await.unwrap();
        assert_eq!(one(&b, CTX).await, GLOBEX);
        assert_eq!(one(&a, CTX).await, ACME);
        // The same for the simple protocol. A's BEGIN is deferred: its first statement takes
        // the backend.
        let tx = a.transaction().await.unwrap();
        assert_eq!(one_tx(&tx, CTX).await, ACME);
        let err = b.simple_query(CTX).await.expect_err("no backend for B");
        assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
        tx.rollback().await.unwrap();
        assert_eq!(one(&b, CTX).await, GLOBEX);
        let m = env.proxy.metrics().await;
        assert!(
            m.contains("pgtenant_pool_checkout_timeouts_total{pool=\"app\"} 2"),
            "{m}"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

async fn one_tx(tx: &tokio_postgres::Transaction<'_>, sql: &str) -> String {
    tx.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test]
async fn backend_down_at_start_then_clear_errors() {
    let cluster = start_cluster().await;
    let mut cfg = test_config(&cluster);
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for db in cfg.databases.values_mut() {
        db.host = "127.0.0.1".into();
        db.port = closed_port;
    }
    let proxy = Proxy::start(cfg).await;
    let long = async {
        for tenant in ["acme", "globex"] {
            let err =
                tokio::time::timeout(Duration::from_secs(20), connect(&proxy.conn_str(tenant)))
                    .await
                    .expect("an answer, not a hang")
                    .expect_err("no backend to serve the client");
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("not a server error: {err:?}"));
            assert!(["08006", "57P03"].contains(&db.code().code()), "{db:?}");
            assert!(
                db.message().contains("could not connect"),
                "{}",
                db.message()
            );
            assert!(
                !db.message().contains(&closed_port.to_string()),
                "the client is not told the backend address"
            );
        }
        // A wrong password is still refused as such.
        let err = connect(&proxy.conn_str_with("acme", "wrong"))
            .await
            .expect_err("bad password");
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
        let metrics_addr = proxy.metrics_addr.unwrap();
        let health = http_get(metrics_addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let ready = http_get(metrics_addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        let m = proxy.metrics().await;
        assert!(
            m.contains("pgtenant_backend_connect_errors_total{pool=\"app\"}"),
            "{m}"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
    proxy.shutdown().await;
}

#[tokio::test]
async fn session_pooling_mode_keeps_a_backend() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 2;
            db.pool_mode = PoolMode::Session;
        }
    })
    .await;
    let long = async {
        let (mut a, mut conn) = tokio_postgres::connect(&env.proxy.conn_str("acme"), NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection error: {e}"),
                }
            }
        });
        a.batch_execute("LISTEN ch").await.unwrap();
        // Channels are scoped per tenant: another tenant's NOTIFY on the same name is not
        // heard; the tenant's own (here its own session's) is, and comes first.
        let b = env.proxy.connect("globex").await;
        b.batch_execute("NOTIFY ch, 'not for acme'").await.unwrap();
        a.batch_execute("NOTIFY ch, 'x'").await.unwrap();
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification delivered through the proxy")
            .unwrap();
        assert_eq!((channel.as_str(), payload.as_str()), ("ch", "x"));

        // Session state persists across the client's transactions; the context stays its own.
        a.batch_execute("SET statement_timeout = '7s'")
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(one(&a, "SHOW statement_timeout").await, "7s");
            assert_eq!(one(&a, CTX).await, ACME);
            let tx = a.transaction().await.unwrap();
            assert_eq!(one_tx(&tx, "SHOW statement_timeout").await, "7s");
            assert_eq!(one_tx(&tx, CTX).await, ACME);
            tx.commit().await.unwrap();
        }
        // SQL-level prepared statements are allowed in session mode.
        a.batch_execute("PREPARE q AS SELECT current_setting('app.current_tenant')")
            .await
            .unwrap();
        assert_eq!(one(&a, "EXECUTE q").await, ACME);
        // Other clients have their own backend and settings.
        assert_eq!(one(&b, "SHOW statement_timeout").await, "0");
        assert_eq!(one(&b, CTX).await, GLOBEX);
        drop(a);
        let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
        // The backend the LISTENing client left (the only free one of the two) is cleaned
        // before anyone else gets it.
        let c = env.proxy.connect("initech").await;
        assert_eq!(one(&c, "SHOW statement_timeout").await, "0");
        assert_eq!(
            one(&c, "SELECT count(*)::text FROM pg_listening_channels()").await,
            "0"
        );
        assert_eq!(one(&c, CTX).await, INITECH);
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn metrics_endpoint_reports_pool_and_auth() {
    let env = TestEnv::start().await;
    for (tenant, _, id) in TENANTS {
        let mut c = env.proxy.connect(tenant).await;
        assert_eq!(one(&c, CTX).await, id);
        let tx = c.transaction().await;
        tx.unwrap().commit().await.unwrap();
    }
    let err = connect(&env.proxy.conn_str_with("acme", "not-the-password"))
        .await
        .expect_err("bad password");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    let m = env.proxy.metrics().await;
    for needle in [
        "pgtenant_transactions_total",
        "pgtenant_auth_attempts_total{method=\"scram-sha-256\",reason=\"bad_password\",result=\"failure\"} 1",
        "pgtenant_auth_attempts_total{method=\"scram-sha-256\",reason=\"ok\",result=\"success\"} 3",
        "pgtenant_context_injections_total",
        "pgtenant_pool_checkout_wait_seconds_bucket",
        "pgtenant_backend_connections{pool=\"app\",state=\"idle\"}",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle}:\n{m}");
    }
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(value("pgtenant_transactions_total{pool=\"app\"}") >= 6.0);
    // A transaction either gets the context or (verified mode) finds it carried.
    let given =
        value("pgtenant_context_injections_total") + value("pgtenant_context_carried_total");
    assert!(given >= 6.0, "{given} transactions with their context");
}

#[tokio::test]
async fn client_parameters_follow_the_client() {
    let env = TestEnv::start_with(pool_size(1)).await;
    let long = async {
        let settings =
            "SELECT current_setting('application_name'), current_setting('statement_timeout')";
        // globex connects before acme ever touches the shared backend ...
        let globex_early = env.proxy.connect("globex").await;
        let before: (String, String) = pair(&globex_early, settings).await;
        eprintln!("globex's defaults: {before:?}");
        let acme_str = format!(
            "{} application_name=myapp options='-c statement_timeout=5s'",
            env.proxy.conn_str("acme")
        );
        let acme = connect(&acme_str).await.unwrap();
        // ... and another after.
        let globex_late = env.proxy.connect("globex").await;
        // Every transaction of every client, interleaved on the one backend, sees its own
        // client's parameters; collected first so a failure shows the whole picture.
        let mut wrong = Vec::new();
        for round in 0..3 {
            let acme_seen = pair(&acme, settings).await;
            acme.batch_execute("BEGIN").await.unwrap();
            let acme_in_tx = pair(&acme, settings).await;
            acme.batch_execute("COMMIT").await.unwrap();
            for (what, seen) in [("acme", acme_seen), ("acme in a transaction", acme_in_tx)] {
                if seen != ("myapp".to_string(), "5s".to_string()) {
                    wrong.push(format!("round {round}: {what} sees {seen:?}"));
                }
            }
            assert_eq!(one(&acme, CTX).await, ACME);
            for (who, g) in [
                ("globex (early)", &globex_early),
                ("globex (late)", &globex_late),
            ] {
                let seen = pair(g, settings).await;
                if seen != before {
                    wrong.push(format!(
                        "round {round}: {who} sees {seen:?}, expected {before:?}"
                    ));
                }
                assert_eq!(one(g, CTX).await, GLOBEX);
            }
        }
        assert!(
            wrong.is_empty(),
            "client parameters crossed clients: {wrong:#?}"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

async fn pair(c: &Client, sql: &str) -> (String, String) {
    let r = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (r.get(0), r.get(1))
}

/// The proxy's own release RESET (pipelined ahead of the next user) must not make the
/// connection look dirty: a dirty connection is released with DISCARD ALL, which costs a
/// round trip and drops every prepared statement on it. Found by profiling: every other
/// transaction paid that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_transactions_keep_statements_on_the_backend() {
    let env = TestEnv::start_with(pool_size(1)).await;
    let c = env.proxy.connect("acme").await;
    let stmt = c.prepare(CTX).await.unwrap();
    for i in 0..10 {
        let row = c.query_one(&stmt, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), ACME, "transaction {i}");
    }
    let m = env.proxy.metrics().await;
    let value = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{pool=\"app\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
            .to_string()
    };
    // Prepared once on the only backend (prepare's Parse goes there with its Describe,
    // which finds it), then found there by all ten executions.
    assert_eq!(
        value("pgtenant_prepared_statement_cache_misses_total"),
        "1",
        "{m}"
    );
    assert_eq!(
        value("pgtenant_prepared_statement_cache_hits_total"),
        "11",
        "{m}"
    );
}

/// A client that leaves while a request of its waits behind an unanswered Query (pipelined
/// Queries go on one at a time) gives its backend up at once: it is closed, and the next
/// client gets a fresh one, not a wait for the long statement. The proxy once stopped
/// reading the client as soon as a request had to wait, so it saw the client leave only
/// after the wait ended (for ever, had the wait been the proxy's own mistake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_behind_a_waiting_request_frees_its_backend() {
    use bytes::BytesMut;
    use common::raw::RawConn;
    use pgtenant::protocol::messages;
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
            db.checkout_timeout = Duration::from_secs(8);
        }
    })
    .await;
    let mut a = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut out = BytesMut::new();
    messages::query(&mut out, "SELECT pg_sleep(30)");
    messages::query(&mut out, "SELECT 1");
    a.send(&out).await;
    // The sleep is running on the one backend.
    let su = env.superuser().await;
    let running = async {
        loop {
            let n: i64 = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' \
                     AND state = 'active'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the sleep starts");
    drop(a);
    let started = std::time::Instant::now();
    assert_eq!(
        env.globex_served().await.as_deref(),
        Ok(GLOBEX),
        "after acme left"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "globex waited {:?}",
        started.elapsed()
    );
}
