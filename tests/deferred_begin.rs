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
    let mut v = vec![
        query("BEGIN"),
        query("SELECT 1"),
        query("SELECT 1/0"),
        query("ROLLBACK"),
    ];
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
        m.lines().any(|l| l == "pgtenant_deferred_begins_total 4"),
        "{m}"
    );
}
