//! The basics end to end: each tenant sees its own rows with its own context, through a
//! real PostgreSQL, with tokio-postgres and psql.

mod common;

use common::*;

#[tokio::test]
async fn each_tenant_sees_only_its_rows_and_context() {
    let env = TestEnv::start().await;
    for (tenant, _, id) in TENANTS {
        let c = env.proxy.connect(tenant).await;
        let rows = c
            .query("SELECT tenant_id::text FROM invoices", &[])
            .await
            .unwrap();
        assert!(!rows.is_empty(), "{tenant} sees its invoices");
        for r in rows {
            assert_eq!(r.get::<_, String>(0), id);
        }
        let row = c
            .query_one("SELECT current_setting('app.current_tenant')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), id);
    }
}

#[tokio::test]
async fn psql_works_through_the_proxy() {
    let env = TestEnv::start().await;
    let out = tokio::process::Command::new("psql")
        .args([
            &env.proxy.url("globex"),
            "-XAtc",
            "SELECT sum(amount_cents) FROM invoices",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "180000");
}

#[tokio::test]
async fn pipelined_transactions_with_several_syncs_in_one_write() {
    use common::raw::*;
    let env = TestEnv::start().await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    for _ in 0..3 {
        extended(
            &mut out,
            "SELECT current_setting('app.current_tenant')",
            &[],
        );
        sync(&mut out);
    }
    c.send(&out).await;
    for _ in 0..3 {
        let msgs = c.until_ready().await;
        assert_eq!(tags(&msgs), "12DCZ");
        assert_eq!(data_rows(&msgs), vec![vec![Some(ACME.to_string())]]);
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_transactions_finish_then_says_57p01() {
    let env = TestEnv::start().await;
    let busy = env.proxy.connect("acme").await;
    let idle = env.proxy.connect("globex").await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let server = env.proxy.server.clone();
    let addr = env.proxy.addr;
    let stopping = tokio::spawn(env.proxy.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The open transaction can still finish ...
    let row = busy
        .query_one("SELECT current_setting('app.current_tenant')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ACME);
    busy.batch_execute("COMMIT").await.unwrap();
    // ... after which both clients are told the server is shutting down.
    for c in [&busy, &idle] {
        let err = c.simple_query("SELECT 1").await.unwrap_err();
        if let Some(db) = err.as_db_error() {
            assert_eq!(db.code().code(), "57P01");
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.client_count(), 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new clients after shutdown"
    );
}
