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
