//! Deterministic regression tests for what the chaos checker (tests/chaos.rs) found.

mod common;
#[allow(dead_code)]
#[path = "chaos/relay.rs"]
mod relay;

use std::time::Duration;

use bytes::BytesMut;
use common::raw::{self, RawConn};
use common::*;
use pgtenant::protocol::messages;

/// PostgreSQL, the chaos relay in front of it (it can hold CancelRequests on their way) and
/// pgtenant with a pool of `pool_size` through the relay.
async fn behind_relay(pool_size: usize) -> (pgtenant::pgcluster::TempCluster, relay::Relay, Proxy) {
    let cluster = start_cluster().await;
    let relay = relay::Relay::start(cluster.port()).await;
    let mut cfg = test_config(&cluster);
    for db in cfg.databases.values_mut() {
        db.port = relay.port;
        db.pool_size = pool_size;
    }
    let proxy = Proxy::start(cfg).await;
    (cluster, relay, proxy)
}

/// Runs `sql` until it succeeds (the pool replaces a terminated backend on first use).
async fn until_ok(c: &mut RawConn, sql: &str) {
    for _ in 0..20 {
        if raw::errors(&c.simple(sql).await).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql} never succeeded");
}

/// A Parse the proxy adds for a Bind (the statement is not on this backend yet) is skipped
/// by PostgreSQL when an earlier request of the same pipeline failed. The backend must then
/// not be taken to have the statement: the client's next Bind must prepare it again.
#[tokio::test]
async fn a_parse_skipped_after_an_error_is_not_taken_as_prepared() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let su = env.superuser().await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut out = BytesMut::new();
    messages::parse(
        &mut out,
        "s1",
        "SELECT 'one'::text, current_setting('app.current_tenant')",
    );
    raw::sync(&mut out);
    c.send(&out).await;
    assert_eq!(raw::tags(&c.until_ready().await), "1Z");

    // A fresh backend: s1 is not prepared there.
    su.simple_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app_user'",
    )
    .await
    .unwrap();
    until_ok(&mut c, "SELECT 1").await;

    // The Bind of s1 comes after an error: PostgreSQL skips the proxy's Parse and the Bind.
    let mut out = BytesMut::new();
    raw::extended(&mut out, "SELECT 1/0", &[]);
    messages::bind(&mut out, "s1", std::iter::empty());
    messages::execute(&mut out);
    raw::sync(&mut out);
    c.send(&out).await;
    let failed = c.until_ready().await;
    let errs = raw::errors(&failed);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, "22012");

    let mut out = BytesMut::new();
    messages::bind(&mut out, "s1", std::iter::empty());
    messages::execute(&mut out);
    raw::sync(&mut out);
    c.send(&out).await;
    let again = c.until_ready().await;
    assert!(
        raw::errors(&again).is_empty(),
        "Bind of s1: {:?}",
        raw::errors(&again)
    );
    let rows = raw::data_rows(&again);
    assert_eq!(rows[0][0].as_deref(), Some("one"));
    assert_eq!(rows[0][1].as_deref(), Some(ACME));
}

/// Found by the chaos checker's long run (5 stray 57014 in ~5,000 cancels). pgtenant looked
/// up the backend serving the client, then connected and sent the CancelRequest; nothing kept
/// that backend from going to another client meanwhile, and PostgreSQL signals whatever the
/// backend runs when the request arrives. Here the request is held 1.5 s on its way (the
/// relay), acme's query ends, and the only backend would go to globex: it must wait until
/// PostgreSQL has confirmed the cancel (or be closed), so globex's statement runs.
#[tokio::test]
async fn a_late_cancel_does_not_hit_the_next_client_of_the_backend() {
    let (_cluster, relay, proxy) = behind_relay(1).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let token = acme.cancel_token();
    let sleeper = tokio::spawn(async move { acme.batch_execute("SELECT pg_sleep(0.5)").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.hold_new(Duration::from_millis(1500));
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let _ = sleeper.await.unwrap();
    let started = std::time::Instant::now();
    let r = globex.batch_execute("SELECT pg_sleep(2.5)").await;
    assert!(
        r.is_ok(),
        "globex's statement was canceled by acme's cancel after {:?}: {:?}",
        started.elapsed(),
        r.err().map(|e| sqlstate(&e))
    );
}

/// Found by the chaos checker's long runs (9 stray 57014 in 95,484 transactions after the
/// fix above): a client whose backend is pinned to it (here by LISTEN) keeps that backend
/// after its transaction, so a cancel still on its way when the statement it was meant for
/// ended hit the client's next statement. pgtenant knows the cancel is in flight: the next
/// statement waits until PostgreSQL has confirmed it (then an idle backend has dropped it).
#[tokio::test]
async fn a_late_cancel_does_not_hit_the_next_statement_on_a_pinned_backend() {
    let (_cluster, relay, proxy) = behind_relay(2).await;
    let acme = std::sync::Arc::new(proxy.connect("acme").await);
    acme.batch_execute("LISTEN pinned_by_this").await.unwrap();
    let token = acme.cancel_token();
    let a = acme.clone();
    let sleeper = tokio::spawn(async move { a.batch_execute("SELECT pg_sleep(0.5)").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.hold_new(Duration::from_millis(1500));
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let first = sleeper.await.unwrap();
    assert!(first.is_ok(), "the held cancel arrived in time: {first:?}");
    let started = std::time::Instant::now();
    let r = acme.batch_execute("SELECT pg_sleep(2.5)").await;
    assert!(
        r.is_ok(),
        "the next statement was canceled by the late cancel after {:?}: {:?}",
        started.elapsed(),
        r.err().map(|e| sqlstate(&e))
    );
}
