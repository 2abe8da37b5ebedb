//! Deferred BEGIN: a plain BEGIN is answered by the proxy and reaches PostgreSQL with the
//! transaction's first statement. The client must see exactly what PostgreSQL would send,
//! hold no backend in between, and run every statement of the transaction in one
//! transaction with its own tenant context.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::raw::{self, Msg, RawConn};
use common::*;
use pgtenant::protocol::messages;

const CTX: &str = "SELECT current_setting('app.current_tenant')";

fn one_backend(defer: bool) -> impl FnOnce(&mut pgtenant::config::Config) {
    move |c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
            db.checkout_timeout = Duration::from_millis(500);
            db.defer_begin = defer;
        }
    }
}

/// A proxy with one backend (deferral on or off) and a client of acme and of globex.
async fn two_clients(defer: bool) -> (TestEnv, tokio_postgres::Client, tokio_postgres::Client) {
    let env = TestEnv::start_with(one_backend(defer)).await;
    let a = env.proxy.connect("acme").await;
    let b = env.proxy.connect("globex").await;
    (env, a, b)
}

/// `sql` fails on `c` with SQLSTATE `code`.
async fn fails_with(c: &tokio_postgres::Client, sql: &str, code: &str) {
    let e = c.simple_query(sql).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some(code), "{sql}: {e:?}");
}

#[tokio::test]
async fn a_deferred_transaction_holds_no_backend_and_keeps_its_context() {
    let (env, a, b) = two_clients(true).await;
    a.batch_execute("BEGIN").await.unwrap();
    // The only backend is free: BEGIN alone did not take it.
    assert_eq!(one(&b, CTX).await, GLOBEX);
    let xid = one(&a, "SELECT pg_current_xact_id()::text").await;
    assert_eq!(one(&a, CTX).await, ACME);
    assert_eq!(
        one(&a, "SELECT pg_current_xact_id()::text").await,
        xid,
        "both statements ran in one transaction"
    );
    // Now it is held until COMMIT.
    fails_with(&b, CTX, "53300").await;
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&b, CTX).await, GLOBEX);
    let m = env.proxy.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("pgtenant_deferred_begins_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test]
async fn turned_off_begin_takes_the_backend_at_once() {
    let (_env, a, b) = two_clients(false).await;
    a.batch_execute("BEGIN").await.unwrap();
    fails_with(&b, CTX, "53300").await;
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&b, CTX).await, GLOBEX);
}

#[tokio::test]
async fn rollback_errors_and_guard_behave_as_in_postgres() {
    let env = TestEnv::start_with(one_backend(true)).await;
    let su = env.superuser().await;
    let a = env.proxy.connect("acme").await;
    // Work done after a deferred BEGIN is rolled back with it.
    a.batch_execute("BEGIN; INSERT INTO invoices (tenant_id, amount_cents) VALUES (current_setting('app.current_tenant')::uuid, 4242)")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap(); // a BEGIN inside one is a warning, not an error
    a.batch_execute("ROLLBACK").await.unwrap();
    let n = one(
        &su,
        "SELECT count(*)::text FROM invoices WHERE amount_cents = 4242",
    )
    .await;
    assert_eq!(n, "0");
    // A refused change fails the transaction, as PostgreSQL would.
    a.batch_execute("BEGIN").await.unwrap();
    fails_with(
        &a,
        "SET app.current_tenant = '22222222-2222-4222-8222-222222222222'",
        "42501",
    )
    .await;
    fails_with(&a, "SELECT 1", "25P02").await;
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(one(&a, CTX).await, ACME);
}

#[tokio::test]
async fn no_backend_for_the_first_statement_ends_the_transaction() {
    let (_env, a, b) = two_clients(true).await;
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&b, CTX).await, GLOBEX); // b holds the backend now
    fails_with(&a, CTX, "53300").await;
    b.batch_execute("COMMIT").await.unwrap();
    // a's transaction is over (its client saw ReadyForQuery Idle): a new one works.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&a, CTX).await, ACME);
    a.batch_execute("COMMIT").await.unwrap();
}

/// Runs `requests` (each a pipeline ending in Sync or a Query) and returns, per request,
/// the reply tags with the ReadyForQuery status appended, e.g. "12nCZ:T".
async fn replies(c: &mut RawConn, requests: &[BytesMut]) -> Vec<String> {
    let mut out = Vec::new();
    for r in requests {
        c.send(r).await;
        let msgs: Vec<Msg> = c.until_ready().await;
        let status = msgs.last().map(|(_, b)| b[0] as char).unwrap_or('?');
        out.push(format!("{}:{status}", raw::tags(&msgs)));
    }
    out
}

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    messages::query(&mut b, sql);
    b
}

fn describe(out: &mut BytesMut, kind: u8, name: &str) {
    messages::write_msg(out, b'D', |b| {
        b.put_u8(kind);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}

/// The requests of every BEGIN form drivers send, each followed by a statement in the
/// transaction, an error, and the ROLLBACK that ends it.
fn begin_forms() -> Vec<BytesMut> {
    // Simple protocol (psql, psycopg, node-postgres, pgbench -M simple).
    let mut v = vec![query("BEGIN")];
    // Inside it, before any statement ran: prepare (libpq's PQprepare), run, close, sync.
    let mut prep = BytesMut::new();
    messages::parse(&mut prep, "p1", "SELECT 1");
    raw::sync(&mut prep);
    v.push(prep);
    let mut run = BytesMut::new();
    messages::bind(&mut run, "p1", std::iter::empty());
    messages::execute(&mut run);
    raw::sync(&mut run);
    v.push(run);
    let mut close = BytesMut::new();
    raw::close_statement(&mut close, "p1");
    raw::sync(&mut close);
    v.push(close);
    v.push(query("COMMIT"));
    v.push(query("BEGIN"));
    let mut lone = BytesMut::new();
    raw::sync(&mut lone);
    v.push(lone);
    v.extend([query("SELECT 1"), query("SELECT 1/0"), query("ROLLBACK")]);
    // Unnamed statement with Describe portal (pgbench -M extended).
    let mut p = BytesMut::new();
    messages::parse(&mut p, "", "begin;");
    messages::bind(&mut p, "", std::iter::empty());
    describe(&mut p, b'P', "");
    messages::execute(&mut p);
    raw::sync(&mut p);
    v.push(p);
    let mut s = BytesMut::new();
    raw::extended(&mut s, "SELECT $1::int", &["7"]);
    raw::sync(&mut s);
    v.push(s);
    v.push(query("ROLLBACK"));
    // Named statement prepared first, then bound (pgbench -M prepared, tokio-postgres).
    let mut prep = BytesMut::new();
    messages::parse(&mut prep, "b1", "START TRANSACTION");
    describe(&mut prep, b'S', "b1");
    raw::sync(&mut prep);
    v.push(prep);
    let mut run = BytesMut::new();
    messages::bind(&mut run, "b1", std::iter::empty());
    describe(&mut run, b'P', "");
    messages::execute(&mut run);
    raw::sync(&mut run);
    v.push(run.clone());
    v.push(query("SELECT 1"));
    v.push(query("COMMIT"));
    // Describe of the statement inside the BEGIN pipeline.
    let mut d = BytesMut::new();
    messages::parse(&mut d, "", "BEGIN WORK");
    describe(&mut d, b'S', "");
    messages::bind(&mut d, "", std::iter::empty());
    messages::execute(&mut d);
    raw::sync(&mut d);
    v.push(d);
    v.push(query("COMMIT"));
    v
}

async fn raw_direct(addr: SocketAddr) -> RawConn {
    RawConn::connect_with(
        addr,
        &[("user", "app_user"), ("database", "app")],
        "app_password",
    )
    .await
    .expect("direct raw connection")
}

#[tokio::test]
async fn every_begin_form_gets_the_replies_postgres_sends() {
    let env = TestEnv::start_with(one_backend(true)).await;
    let direct_addr: SocketAddr = format!("127.0.0.1:{}", env.cluster.port()).parse().unwrap();
    let mut direct = raw_direct(direct_addr).await;
    let mut proxied = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let forms = begin_forms();
    let want = replies(&mut direct, &forms).await;
    let got = replies(&mut proxied, &forms).await;
    assert_eq!(got, want);
    // The forms really were deferred (one per BEGIN above, the prepared one included).
    let m = env.proxy.metrics().await;
    assert!(
        m.lines().any(|l| l == "pgtenant_deferred_begins_total 5"),
        "{m}"
    );
}

/// A request that needs no backend, from a client holding none, never waits for one. The
/// pgbench -M prepared deadlock: a thread blocks in PQprepare (Parse + Sync) for a client
/// whose BEGIN was deferred, while the thread's other clients hold every backend inside
/// transactions they finish only once the thread runs again. Here A holds the only backend
/// and commits only after B's prepare returns; the checkout timeout is far longer than the
/// test's wait, so a prepare that waits for a backend fails the test.
#[tokio::test]
async fn a_prepare_in_a_deferred_transaction_waits_for_no_backend() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
            db.checkout_timeout = Duration::from_secs(60);
        }
    })
    .await;
    let mut a = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut b = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    let got = replies(&mut a, &[query("BEGIN"), query(CTX)]).await;
    assert_eq!(got, ["CZ:T", "TDCZ:T"], "A holds the only backend");
    // B, in a transaction its deferred BEGIN opened, prepares, closes and syncs.
    let mut prepare = BytesMut::new();
    messages::parse(&mut prepare, "s1", CTX);
    raw::sync(&mut prepare);
    let mut close = BytesMut::new();
    messages::parse(&mut close, "s2", "SELECT 2");
    raw::close_statement(&mut close, "s2");
    raw::flush(&mut close);
    raw::sync(&mut close);
    let requests = [query("BEGIN"), prepare, close];
    let got = tokio::time::timeout(Duration::from_secs(10), replies(&mut b, &requests))
        .await
        .expect("B's prepare is answered while A holds the only backend");
    assert_eq!(got, ["CZ:T", "1Z:T", "13Z:T"]);
    // Only now does A finish, and B's statement runs in its transaction with its context.
    assert_eq!(replies(&mut a, &[query("COMMIT")]).await, ["CZ:I"]);
    let mut run = BytesMut::new();
    messages::bind(&mut run, "s1", std::iter::empty());
    messages::execute(&mut run);
    raw::sync(&mut run);
    b.send(&run).await;
    let msgs = b.until_ready().await;
    assert_eq!(raw::tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(raw::data_rows(&msgs), [[Some(GLOBEX.to_string())]]);
    assert_eq!(replies(&mut b, &[query("COMMIT")]).await, ["CZ:I"]);
}

/// A refused Parse in a deferred transaction fails that transaction, as PostgreSQL would,
/// although a Parse no longer sends the deferred BEGIN by itself.
#[tokio::test]
async fn a_refused_prepare_in_a_deferred_transaction_aborts_it() {
    let env = TestEnv::start_with(one_backend(true)).await;
    let mut a = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut bad = BytesMut::new();
    messages::parse(
        &mut bad,
        "s1",
        &format!("SET app.current_tenant = '{GLOBEX}'"),
    );
    raw::sync(&mut bad);
    let got = replies(&mut a, &[query("BEGIN"), bad, query("SELECT 1")]).await;
    assert_eq!(got, ["CZ:T", "EZ:E", "EZ:E"]);
    assert_eq!(replies(&mut a, &[query("ROLLBACK")]).await, ["CZ:I"]);
    let msgs = a.simple(CTX).await;
    assert_eq!(raw::data_rows(&msgs), [[Some(ACME.to_string())]]);
}

/// A Parse the proxy cannot read (its statement name has no terminator) in a deferred
/// transaction goes to PostgreSQL behind the deferred BEGIN, so its error fails the
/// transaction as PostgreSQL's own would; the BEGIN is not left owed for a later request.
#[tokio::test]
async fn an_unreadable_parse_in_a_deferred_transaction_aborts_it() {
    let env = TestEnv::start_with(one_backend(true)).await;
    let direct_addr: SocketAddr = format!("127.0.0.1:{}", env.cluster.port()).parse().unwrap();
    let mut direct = raw_direct(direct_addr).await;
    let mut proxied = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut bad = BytesMut::new();
    messages::write_msg(&mut bad, b'P', |b| b.put_slice(b"s1"));
    raw::sync(&mut bad);
    let requests = [
        query("BEGIN"),
        bad,
        query("SELECT 1"),
        query("ROLLBACK"),
        query("SELECT 1"),
    ];
    let want = replies(&mut direct, &requests).await;
    assert_eq!(want, ["CZ:T", "EZ:E", "EZ:E", "CZ:I", "TDCZ:I"]);
    assert_eq!(replies(&mut proxied, &requests).await, want);
}
