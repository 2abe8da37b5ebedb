//! Per-tenant limits, client timeouts and per-tenant metrics, each with the client error
//! PostgreSQL would give and a metric, against a real PostgreSQL.

mod common;
#[path = "limits/one_tenant.rs"]
mod one_tenant;

use std::time::Duration;

use bytes::BytesMut;
use common::raw::{self, RawConn};
use common::*;
use pgtenant::protocol::messages;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_connection_and_backend_caps() {
    let env = TestEnv::start_with(|cfg| {
        cfg.server.max_connections_per_tenant = 2;
        cfg.tenants.get_mut("globex").unwrap().max_connections = Some(3);
        cfg.server.max_backend_connections_per_tenant = 1;
        for db in cfg.databases.values_mut() {
            db.checkout_timeout = Duration::from_millis(700);
        }
    })
    .await;
    let mut f = Failures::default();
    let a1 = env.proxy.connect("acme").await;
    let a2 = env.proxy.connect("acme").await;
    let third = connect(&env.proxy.conn_str("acme")).await;
    f.check(
        third.as_ref().err().and_then(sqlstate).as_deref() == Some("53300"),
        || format!("third acme client: {:?}", third.err()),
    );
    let mut globex = Vec::new();
    for i in 0..3 {
        match connect(&env.proxy.conn_str("globex")).await {
            Ok(c) => globex.push(c),
            Err(e) => f.check(false, || {
                format!("globex client {i} (its own limit is 3): {e}")
            }),
        }
    }

    // acme holds its one backend inside a transaction: its second client waits and then
    // gets 53300, while globex still gets a backend from the same pool.
    a1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let e = a2.simple_query("SELECT 1").await.err();
    f.check(
        e.as_ref().and_then(sqlstate).as_deref() == Some("53300"),
        || format!("acme's second backend: {e:?}"),
    );
    f.check(globex[0].simple_query("SELECT 1").await.is_ok(), || {
        "globex blocked by acme's cap".into()
    });
    // Once acme's transaction ends its other client proceeds.
    let waiter = tokio::spawn(async move { a2.simple_query("SELECT 2").await.map(|_| a2) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a1.batch_execute("COMMIT").await.unwrap();
    let r = waiter.await.unwrap();
    f.check(r.is_ok(), || {
        format!("acme after the transaction: {:?}", r.as_ref().err())
    });

    let m = env.proxy.metrics().await;
    for (series, min) in [
        (
            "pgtenant_client_connections_rejected_total{reason=\"tenant_max_connections\"}",
            1.0,
        ),
        (
            "pgtenant_client_connections_rejected_total{reason=\"tenant_max_backend_connections\"}",
            1.0,
        ),
        ("pgtenant_tenant_client_connections{tenant=\"globex\"}", 3.0),
        ("pgtenant_tenant_client_connections{tenant=\"acme\"}", 2.0),
        ("pgtenant_client_connections{state=\"idle\"}", 5.0),
    ] {
        let v = metric(&m, series);
        f.check(v.is_some_and(|v| v >= min), || format!("{series} = {v:?}"));
    }
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeouts_close_silent_clients_and_roll_back() {
    let env = TestEnv::start_with(|cfg| {
        cfg.server.idle_in_transaction_timeout = Duration::from_millis(400);
        cfg.server.client_idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut f = Failures::default();
    let addr = env.proxy.addr;

    // Inside a transaction: FATAL 25P03 after 400 ms of silence, and the backend's
    // transaction is rolled back (the row is not there).
    let mut c = RawConn::connect(addr, "acme", "acme-secret").await.unwrap();
    c.simple("BEGIN").await;
    c.simple("INSERT INTO invoices (tenant_id, amount_cents) VALUES ('11111111-1111-4111-8111-111111111111', 4242)")
        .await;
    let got = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
    let errs = match got {
        Ok(Some(m)) => raw::errors(&[m]),
        other => {
            f.check(false, || {
                format!("no FATAL in a silent transaction: {other:?}")
            });
            vec![]
        }
    };
    f.check(
        errs.first()
            .is_some_and(|e| e.code == "25P03" && e.severity == "FATAL"),
        || format!("idle in transaction: {errs:?}"),
    );
    f.check(c.is_closed().await, || "connection stayed open".into());
    let su = env.superuser().await;
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM invoices WHERE amount_cents = 4242",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    f.check(n == 0, || "the timed-out transaction was committed".into());
    f.check(idle_in_transaction(&su).await == 0, || {
        "backend left in a transaction".into()
    });

    // Busy clients are not idle: a client that keeps talking outlives the client idle
    // timeout; a silent one gets FATAL 57P05.
    let mut busy = RawConn::connect(addr, "globex", "globex-secret")
        .await
        .unwrap();
    let mut silent = RawConn::connect(addr, "acme", "acme-secret").await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let m = busy.simple("SELECT 1").await;
        f.check(raw::errors(&m).is_empty(), || {
            "busy client got an error".into()
        });
    }
    let got = tokio::time::timeout(Duration::from_secs(5), silent.recv()).await;
    let errs = match got {
        Ok(Some(m)) => raw::errors(&[m]),
        _ => vec![],
    };
    f.check(errs.first().is_some_and(|e| e.code == "57P05"), || {
        format!("idle client: {errs:?}")
    });
    let m = env.proxy.metrics().await;
    for kind in ["idle_in_transaction", "client_idle"] {
        let series = format!("pgtenant_client_timeouts_total{{kind=\"{kind}\"}}");
        f.check(metric(&m, &series).is_some_and(|v| v >= 1.0), || {
            format!("{series} missing")
        });
    }
    let mut out = BytesMut::new();
    messages::terminate(&mut out);
    busy.send(&out).await;
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_series_are_capped_with_other() {
    let env = TestEnv::start_with(|cfg| cfg.server.metrics_top_tenants = 1).await;
    let mut f = Failures::default();
    let acme = env.proxy.connect("acme").await;
    for _ in 0..20 {
        acme.simple_query("SELECT 1").await.unwrap();
    }
    let globex = env.proxy.connect("globex").await;
    globex.simple_query("SELECT 1").await.unwrap();
    let initech = env.proxy.connect("initech").await;
    let e = initech.simple_query("SELECT 1/0").await;
    f.check(e.is_err(), || "1/0 succeeded".into());
    let m = env.proxy.metrics().await;
    let tenants: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("pgtenant_tenant_transactions_total{"))
        .collect();
    f.check(tenants.len() == 2, || format!("series: {tenants:?}"));
    f.check(
        metric(&m, "pgtenant_tenant_transactions_total{tenant=\"acme\"}")
            .is_some_and(|v| v >= 20.0),
        || format!("acme series: {tenants:?}"),
    );
    f.check(
        metric(&m, "pgtenant_tenant_errors_total{tenant=\"other\"}") == Some(1.0),
        || "initech's error is not in other".into(),
    );
    f.check(
        metric(&m, "pgtenant_server_errors_total{class=\"22\"}") == Some(1.0),
        || "division by zero is not counted in class 22".into(),
    );
    for name in [
        "pgtenant_transaction_duration_seconds_count",
        "pgtenant_client_received_bytes_total",
        "pgtenant_client_sent_bytes_total",
        "pgtenant_pool_size{pool=\"app\"}",
        "pgtenant_backend_up{pool=\"app\"}",
    ] {
        f.check(metric(&m, name).is_some_and(|v| v > 0.0), || {
            format!("{name} missing or 0")
        });
    }
    f.finish();
}

/// Connections that never finish logging in (slow-loris) cannot lock clients out: at
/// `max_client_connections` a new connection takes the place of the one that has been in
/// start-up longest, once that one is `startup_evict_after` old; a young start-up or an
/// authenticated client never gives way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_startups_give_way_to_new_clients() {
    use tokio::io::AsyncReadExt;
    const EVICT_AFTER: Duration = Duration::from_secs(3);
    let env = TestEnv::start_with(|cfg| {
        cfg.server.max_client_connections = 3;
        cfg.server.startup_evict_after = EVICT_AFTER;
        cfg.server.auth_timeout = Duration::from_secs(60);
    })
    .await;
    let mut f = Failures::default();
    // Three connections that send nothing, opened a moment apart (oldest first).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            tokio::net::TcpStream::connect(env.proxy.addr)
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Too young to give way: the new client is refused, as without eviction.
    let early = connect(&env.proxy.conn_str("acme")).await;
    if opened.elapsed() < EVICT_AFTER {
        f.check(
            early.as_ref().err().and_then(sqlstate).as_deref() == Some("53300"),
            || format!("a client while the start-ups are young: {:?}", early.err()),
        );
    }
    tokio::time::sleep(EVICT_AFTER.saturating_sub(opened.elapsed()) + Duration::from_millis(300))
        .await;

    // Old enough: each new client takes the place of the oldest silent connection.
    let mut clients = Vec::new();
    for i in 0..3 {
        match connect(&env.proxy.conn_str("acme")).await {
            Ok(c) => clients.push(c),
            Err(e) => f.check(false, || {
                format!("client {i} after the start-ups aged: {e}")
            }),
        }
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent[i].read(&mut byte)).await;
        f.check(matches!(read, Ok(Ok(0)) | Ok(Err(_))), || {
            format!("silent connection {i} (the oldest left) still open: {read:?}")
        });
        if i + 1 < 3 {
            let mut next = [0u8; 1];
            let still =
                tokio::time::timeout(Duration::from_millis(200), silent[i + 1].read(&mut next))
                    .await;
            f.check(still.is_err(), || {
                format!("silent connection {} closed too early: {still:?}", i + 1)
            });
        }
    }
    for c in &clients {
        f.check(c.simple_query("SELECT 1").await.is_ok(), || {
            "an admitted client cannot query".into()
        });
    }
    // Every place is held by an authenticated client now: the next one is refused.
    let late = connect(&env.proxy.conn_str("acme")).await;
    f.check(
        late.as_ref().err().and_then(sqlstate).as_deref() == Some("53300"),
        || format!("a client with every place authenticated: {:?}", late.err()),
    );
    let m = env.proxy.metrics().await;
    let series = "pgtenant_client_connections_rejected_total{reason=\"startup_evicted\"}";
    let evicted = metric(&m, series);
    f.check(evicted == Some(3.0), || format!("{series} = {evicted:?}"));
    f.finish();
}

/// The guard's verdict cache shows in /metrics: texts and bytes remembered (bounded), which
/// is what makes pgtenant's memory grow after its warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_cache_is_reported() {
    let env = TestEnv::start().await;
    let c = env.proxy.connect("acme").await;
    let text = "SELECT 'verdict cache probe'";
    // Remembered on its second sight.
    for _ in 0..3 {
        c.simple_query(text).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = env.proxy.metrics().await;
        let entries = metric(&m, "pgtenant_sql_verdict_cache_entries").unwrap_or(0.0);
        let bytes = metric(&m, "pgtenant_sql_verdict_cache_bytes").unwrap_or(0.0);
        if entries >= 1.0 && bytes >= text.len() as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cache gauges: {entries} entries, {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A statement text of about 4 KB.
fn text_4k(i: usize) -> String {
    format!("SELECT {i} /* {} */", "x".repeat(4000))
}

/// Prepares named statements of about 4 KB (`s0`, `s1`, ...) until one is refused: how
/// many were accepted, and the refusal (None after 40).
async fn fill(c: &mut RawConn) -> (usize, Option<messages::ErrorFields>) {
    for i in 0..40 {
        let mut out = BytesMut::new();
        messages::parse(&mut out, &format!("s{i}"), &text_4k(i));
        raw::sync(&mut out);
        c.send(&out).await;
        let got = c.until_ready().await;
        if let Some(e) = raw::errors(&got).into_iter().next() {
            return (i, Some(e));
        }
    }
    (40, None)
}

/// The proxy keeps every client's named statements (to prepare them on any backend) in
/// memory all tenants share, so one client's are bounded in bytes
/// (`prepared_statement_bytes`): a Parse beyond it gets ERROR 54000, whether or not a
/// backend is attached, the client can go on (after closing some it may prepare again), and
/// other tenants are served.
#[tokio::test]
async fn a_clients_prepared_statements_are_bounded_in_bytes() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.prepared_statement_bytes = 64 * 1024;
        }
    })
    .await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut f = Failures::default();
    for in_transaction in [false, true] {
        if in_transaction {
            c.simple("BEGIN; SELECT 1").await;
        }
        let (accepted, refusal) = fill(&mut c).await;
        // 15 statements of about 4 KB (and 256 bytes each for the entry) fit in 64 KiB,
        // the 16th does not.
        f.check(
            accepted == 15
                && refusal.as_ref().is_some_and(|e| {
                    e.code == "54000" && e.message.contains("prepared_statement_bytes")
                }),
            || format!("in a transaction {in_transaction}: {accepted} accepted, then {refusal:?}"),
        );
        if in_transaction {
            c.simple("ROLLBACK").await;
        }
        // Closing one makes room again.
        let mut out = BytesMut::new();
        raw::close_statement(&mut out, "s0");
        messages::parse(&mut out, "again", &text_4k(99));
        raw::sync(&mut out);
        c.send(&out).await;
        let got = c.until_ready().await;
        f.check(raw::errors(&got).is_empty(), || {
            format!("after a Close: {}", raw::tags(&got))
        });
        for i in 1..16 {
            let mut out = BytesMut::new();
            raw::close_statement(&mut out, &format!("s{i}"));
            raw::sync(&mut out);
            c.send(&out).await;
            c.until_ready().await;
        }
        let mut out = BytesMut::new();
        raw::close_statement(&mut out, "again");
        raw::sync(&mut out);
        c.send(&out).await;
        c.until_ready().await;
    }
    let globex = env.proxy.connect("globex").await;
    assert_eq!(one(&globex, "SELECT 1::text").await, "1");
    f.finish();
}

/// Many clients each under their own budget are bounded together too
/// (`prepared_statement_bytes_total`): a Parse beyond it gets ERROR 53200, and the bytes
/// of a client that leaves are free again.
#[tokio::test]
async fn all_clients_prepared_statements_are_bounded_together() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.prepared_statement_bytes = 64 * 1024;
            db.prepared_statement_bytes_total = 96 * 1024;
        }
    })
    .await;
    let code =
        |r: (usize, Option<messages::ErrorFields>)| (r.0, r.1.map(|e| e.code).unwrap_or_default());
    let mut first = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    assert_eq!(code(fill(&mut first).await), (15, "54000".into()));
    let mut second = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    // 96 KiB less the first client's 15 statements leaves room for 7.
    assert_eq!(code(fill(&mut second).await), (7, "53200".into()));
    drop(first);
    // The proxy sees the client leave when it reads the closed socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut freed = (0, String::new());
    for _ in 0..50 {
        freed = code(fill(&mut third).await);
        if freed.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        freed,
        (15, "54000".into()),
        "the first client's bytes are free again"
    );
}

/// One tenant's clients keep at most `prepared_statement_bytes_per_tenant` together, so one
/// tenant cannot fill the database's total and lock every other tenant out of preparing
/// statements (red-team: 68 connections of one tenant took the whole 1 GiB).
#[tokio::test]
async fn one_tenants_prepared_statements_are_bounded_together() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.prepared_statement_bytes = 64 * 1024;
            db.prepared_statement_bytes_total = 512 * 1024;
            db.prepared_statement_bytes_per_tenant = Some(96 * 1024);
        }
    })
    .await;
    let outcome = |r: (usize, Option<messages::ErrorFields>)| {
        let e = r.1.unwrap_or_default();
        (
            r.0,
            e.code,
            e.message.contains("prepared_statement_bytes_per_tenant"),
        )
    };
    let mut first = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    assert_eq!(outcome(fill(&mut first).await), (15, "54000".into(), false));
    let mut second = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    // 96 KiB less the first client's 15 statements leaves room for 7.
    assert_eq!(outcome(fill(&mut second).await), (7, "53200".into(), true));
    // Another tenant is not locked out.
    let mut globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    assert_eq!(
        outcome(fill(&mut globex).await),
        (15, "54000".into(), false)
    );
}

/// A long text the guard's fast path cannot clear would cost PostgreSQL's parser thousands
/// of times its size in the proxy's memory and seconds of its worker: over 128 KiB such a
/// text is refused (54000) at once, and other clients are served meanwhile. A long text
/// the fast path clears (one bulk INSERT) still runs.
#[tokio::test]
async fn a_long_text_the_parser_would_read_is_refused_at_once() {
    let env = TestEnv::start().await;
    let acme = env.proxy.connect("acme").await;
    let long = format!("SELECT 1; SELECT {}", vec!["1"; 100_000].join(","));
    let r = acme.batch_execute(&long).await;
    assert_eq!(
        r.as_ref().err().and_then(sqlstate).as_deref(),
        Some("54000"),
        "{r:?}"
    );
    let globex = env.proxy.connect("globex").await;
    assert_eq!(one(&globex, "SELECT 1::text").await, "1");
    let rows = vec!["('x')"; 40_000].join(",");
    let insert =
        format!("INSERT INTO invoices_scratch SELECT 1 WHERE false AND EXISTS (VALUES {rows})");
    let r = acme.batch_execute(&insert).await;
    // The fast path clears it; PostgreSQL answers (the table does not exist).
    assert_eq!(
        r.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42P01"),
        "{r:?}"
    );
}

/// The unnamed statement counts in the database's total too: a client's large unnamed
/// Parse beyond `prepared_statement_bytes_total` gets 53200, and the bytes go with the
/// client.
#[tokio::test]
async fn the_unnamed_statement_counts_in_the_total() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.prepared_statement_bytes = 64 * 1024;
            db.prepared_statement_bytes_total = 96 * 1024;
        }
    })
    .await;
    let text = format!("SELECT 1 /* {} */", "x".repeat(60 * 1024));
    let parse = |c: &mut BytesMut| {
        messages::parse(c, "", &text);
        raw::sync(c);
    };
    let mut first = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut out = BytesMut::new();
    parse(&mut out);
    first.send(&out).await;
    assert!(raw::errors(&first.until_ready().await).is_empty());
    // Replacing it does not count twice.
    first.send(&out).await;
    assert!(raw::errors(&first.until_ready().await).is_empty());
    let mut second = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    second.send(&out).await;
    let got = second.until_ready().await;
    assert_eq!(
        raw::errors(&got).first().map(|e| e.code.as_str()),
        Some("53200"),
        "{got:?}"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.send(&out).await;
    assert!(raw::errors(&second.until_ready().await).is_empty());
}
