//! A backend stays with its client until PostgreSQL has answered a Sync: requests answered
//! after a Flush (libpq pipeline mode, asyncpg's prepare, pg-cursor) leave the client's
//! implicit or explicit transaction open, so the backend must not serve anyone else, and a
//! client that vanishes with unsynced requests gets its backend closed, never synced.

use super::*;

/// Parse/Bind/Execute of `sql` and a Flush, no Sync.
fn flushed(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    raw::extended(&mut out, sql, &[]);
    raw::flush(&mut out);
    out
}

/// Reads exactly `n` messages.
async fn recv_n(c: &mut RawConn, n: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.recv().await.expect("a reply"));
    }
    out
}

const MARK: i64 = 987_654;

#[tokio::test]
async fn a_backend_is_not_handed_on_between_a_flush_and_its_sync() {
    let env = TestEnv::start_with(|c| pool_of(c, 1)).await;
    let su = env.superuser().await;
    let long = async {
        // Both connect first: a client's start-up needs a backend too.
        let mut a = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
            .await
            .unwrap();
        let mut b = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .unwrap();
        a.send(&flushed(&format!(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{ACME}', {MARK})"
        )))
        .await;
        assert_eq!(raw::tags(&recv_n(&mut a, 3).await), "12C", "flushed INSERT");

        // Another tenant asks for the only backend: it must wait for acme's Sync.
        let mut q = BytesMut::new();
        messages::query(&mut q, &format!("SELECT {CTX_SQL}, txid_current()::text"));
        b.send(&q).await;
        let early = tokio::time::timeout(Duration::from_millis(1500), b.recv()).await;
        assert!(
            early.is_err(),
            "globex ran on acme's backend before acme's Sync: {early:?}"
        );

        let mut sync = BytesMut::new();
        raw::sync(&mut sync);
        a.send(&sync).await;
        let done = a.until_ready().await;
        assert_eq!(raw::tags(&done), "Z");
        assert_eq!(done.last().unwrap().1[0], b'I');
        let committed: i64 = su
            .query_one(
                "SELECT count(*) FROM invoices WHERE amount_cents = $1",
                &[&MARK],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(committed, 1, "acme's Sync commits its pipelined INSERT");

        let reply = b.until_ready().await;
        assert_eq!(raw::tags(&reply), "TDCZ", "{:?}", raw::errors(&reply));
        assert_eq!(
            raw::data_rows(&reply)[0][0].as_deref(),
            Some(GLOBEX),
            "globex's own context"
        );

        // A pg-cursor style portal read in pieces across Flushes survives in between.
        let mut out = BytesMut::new();
        messages::parse(&mut out, "", "SELECT g FROM generate_series(1, 5) g");
        messages::bind(&mut out, "", std::iter::empty::<&[u8]>());
        raw::execute_max(&mut out, "", 2);
        raw::flush(&mut out);
        a.send(&out).await;
        assert_eq!(raw::tags(&recv_n(&mut a, 5).await), "12DDs");
        b.send(&q).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), b.recv())
                .await
                .is_err(),
            "globex ran between acme's portal reads"
        );
        let mut out = BytesMut::new();
        raw::execute_max(&mut out, "", 0);
        raw::sync(&mut out);
        a.send(&out).await;
        let rest = a.until_ready().await;
        assert_eq!(raw::tags(&rest), "DDDCZ", "{:?}", raw::errors(&rest));
        assert_eq!(raw::tags(&b.until_ready().await), "TDCZ");
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn a_client_that_vanishes_before_its_sync_leaves_nothing_to_commit() {
    let env = TestEnv::start_with(|c| pool_of(c, 1)).await;
    let su = env.superuser().await;
    let long = async {
        for explicit in [false, true] {
            let mut a = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
                .await
                .unwrap();
            let mut out = BytesMut::new();
            if explicit {
                raw::extended(&mut out, "BEGIN", &[]);
            }
            out.extend_from_slice(&flushed(&format!(
                "INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{ACME}', {MARK} + 1)"
            )));
            a.send(&out).await;
            let n = if explicit { 6 } else { 3 };
            let got = recv_n(&mut a, n).await;
            assert!(raw::tags(&got).ends_with("12C"), "{:?}", raw::tags(&got));
            drop(a);

            // The next tenant of the only backend commits whatever is open on it.
            let b = tokio::time::timeout(Duration::from_secs(10), env.proxy.connect("globex"))
                .await
                .expect("globex connects");
            b.batch_execute("COMMIT").await.unwrap();
            assert_eq!(one(&b, CTX).await, GLOBEX);
            let leaked: i64 = su
                .query_one(
                    &format!("SELECT count(*) FROM invoices WHERE amount_cents = {MARK} + 1"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                leaked, 0,
                "explicit={explicit}: a vanished client's unsynced INSERT was committed by the next tenant"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

const CTX_SQL: &str = "current_setting('app.current_tenant')";
