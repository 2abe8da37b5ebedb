//! Protocol abuse under load and cancel routing: a flood of garbage clients beside normal
//! ones, and CancelRequests that must reach only the query they name.

use super::*;

/// A deterministic xorshift generator for garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One hostile connection: kind `i % 6` decides what it sends.
async fn garbage_client(addr: SocketAddr, i: u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let len = 1 + (rng.next() % 4096) as usize;
    let garbage = rng.bytes(len);
    let mut c = match i % 6 {
        // Random bytes from the first byte.
        0 => {
            let mut c = RawConn::tcp(addr).await;
            let _ = c.stream.write_all(&garbage).await;
            c
        }
        // A plausible startup length followed by junk.
        1 => {
            let mut c = RawConn::tcp(addr).await;
            let mut b = ((len + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(&PROTOCOL_3.to_be_bytes());
            b.extend_from_slice(&garbage);
            let _ = c.stream.write_all(&b).await;
            c
        }
        // A valid startup, then junk instead of the SASL response.
        2 => {
            let mut c = RawConn::tcp(addr).await;
            let mut out = BytesMut::new();
            frontend::startup_message([("user", "acme"), ("database", "app")], &mut out).unwrap();
            out.extend_from_slice(&garbage);
            let _ = c.stream.write_all(&out).await;
            c
        }
        // A correct SASLInitialResponse framing with a junk payload.
        3 => {
            let mut c = RawConn::tcp(addr).await;
            let mut out = BytesMut::new();
            frontend::startup_message([("user", "globex"), ("database", "app")], &mut out).unwrap();
            frontend::sasl_initial_response(SCRAM_SHA_256, &garbage, &mut out).unwrap();
            let _ = c.stream.write_all(&out).await;
            c
        }
        // SSLRequest, then junk.
        4 => {
            let mut c = RawConn::tcp(addr).await;
            let mut out = startup_packet(SSL_REQUEST, b"").to_vec();
            out.extend_from_slice(&garbage);
            let _ = c.stream.write_all(&out).await;
            c
        }
        // Authenticated, then junk (sometimes after starting a transaction).
        _ => {
            let Ok(mut c) = RawConn::connect(addr, "initech", "initech-secret").await else {
                return;
            };
            let mut out = BytesMut::new();
            if (i / 6).is_multiple_of(2) {
                messages::query(&mut out, "BEGIN");
            }
            out.extend_from_slice(&garbage);
            let _ = c.stream.write_all(&out).await;
            c
        }
    };
    // Read whatever comes back until the proxy closes (or give up and drop).
    let mut sink = vec![0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_flood_does_not_disturb_normal_clients() {
    let env = start_env().await;
    let addr = env.proxy.addr;
    let bystander = env.proxy.connect("acme").await;
    let mut f = Failures::default();

    let mut normal = Vec::new();
    for k in 0..10usize {
        let (tenant, _, id) = TENANTS[k % 3];
        let conn_str = env.proxy.conn_str(tenant);
        normal.push(tokio::spawn(async move {
            let c = connect(&conn_str).await.map_err(|e| format!("{tenant} connect: {e}"))?;
            for i in 0..20 {
                let rows = c
                    .query("SELECT current_setting('app.current_tenant'), tenant_id::text FROM invoices", &[])
                    .await
                    .map_err(|e| format!("{tenant} query {i}: {e}"))?;
                if rows.is_empty() {
                    return Err(format!("{tenant} query {i}: no rows"));
                }
                for r in rows {
                    let (ctx, tid): (String, String) = (r.get(0), r.get(1));
                    if ctx != id || tid != id {
                        return Err(format!("{tenant} query {i}: context {ctx}, row of {tid}"));
                    }
                }
                if i % 5 == 0 {
                    let tx_rows = c
                        .simple_query("BEGIN; SELECT count(*) FROM invoices; COMMIT")
                        .await
                        .map_err(|e| format!("{tenant} transaction {i}: {e}"))?;
                    if tx_rows.is_empty() {
                        return Err(format!("{tenant} transaction {i}: no reply"));
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    let hostile: Vec<_> = (0..50u64)
        .map(|i| tokio::spawn(garbage_client(addr, i)))
        .collect();
    for h in hostile {
        let r = tokio::time::timeout(Duration::from_secs(60), h).await;
        f.check(matches!(r, Ok(Ok(()))), || {
            format!("garbage client task: {r:?}")
        });
    }
    for (k, h) in normal.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(120), h).await;
        f.check(matches!(r, Ok(Ok(Ok(())))), || {
            format!("normal client {k}: {r:?}")
        });
    }
    bystander_ok(&mut f, &bystander, "the garbage flood").await;
    f.finish();
}

/// Waits until PostgreSQL runs `query` actively (up to 20 s).
async fn wait_active(su: &Client, query: &str) -> bool {
    for _ in 0..200 {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn send_cancel(addr: SocketAddr, pid: i32, secret: i32) {
    let mut c = RawConn::tcp(addr).await;
    let mut out = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut out);
    c.send(&out).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.stream.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn cancel_requests_reach_only_the_right_query() {
    let env = start_env().await;
    let addr = env.proxy.addr;
    let su = env.superuser().await;
    let bystander = env.proxy.connect("acme").await;
    let mut f = Failures::default();

    // tokio-postgres cancels a running query through the proxy.
    let c = env.proxy.connect("acme").await;
    let token = c.cancel_token();
    // A cancel while the client is idle is ignored, and does not hit its next query.
    let r = token.cancel_query(NoTls).await;
    f.check(r.is_ok(), || format!("idle cancel: {r:?}"));
    let r = c
        .query_one(
            "SELECT pg_sleep(0.3), current_setting('app.current_tenant')",
            &[],
        )
        .await;
    f.check(
        r.as_ref().is_ok_and(|row| row.get::<_, String>(1) == ACME),
        || format!("query after idle cancel: {r:?}"),
    );

    let sleeper = tokio::spawn(async move {
        let r = c.query("SELECT pg_sleep(30)", &[]).await;
        (c, r)
    });
    f.check(wait_active(&su, "SELECT pg_sleep(30)").await, || {
        "pg_sleep(30) never became active".into()
    });
    let r = token.cancel_query(NoTls).await;
    f.check(r.is_ok(), || format!("cancel_query: {r:?}"));
    match tokio::time::timeout(Duration::from_secs(20), sleeper).await {
        Ok(Ok((c, r))) => {
            let code = r.as_ref().err().and_then(sqlstate);
            f.check(code.as_deref() == Some("57014"), || {
                format!("cancelled query: {:?}", r.map(|v| v.len()))
            });
            let r = c.query_one(CTX, &[]).await;
            f.check(
                r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == ACME),
                || format!("query after cancel: {r:?}"),
            );
        }
        other => f.check(false, || {
            format!(
                "query not cancelled within 20 s: {:?}",
                other.map(|r| r.is_ok())
            )
        }),
    }
    bystander_ok(&mut f, &bystander, "cancel").await;

    // A raw client learns its key from BackendKeyData; a forged key does nothing.
    let mut rc = RawConn::tcp(addr).await;
    let msgs = handshake(
        &mut rc,
        PROTOCOL_3,
        &[("user", "globex"), ("database", "app")],
        "globex-secret",
    )
    .await
    .expect("raw handshake");
    let Some((pid, secret)) = backend_key(&msgs) else {
        panic!("no BackendKeyData in {}", raw::tags(&msgs));
    };
    let mut out = BytesMut::new();
    messages::query(&mut out, "SELECT pg_sleep(2)");
    rc.send(&out).await;
    f.check(wait_active(&su, "SELECT pg_sleep(2)").await, || {
        "pg_sleep(2) never became active".into()
    });
    send_cancel(addr, pid, secret.wrapping_add(1)).await;
    send_cancel(addr, pid ^ 1, secret).await;
    send_cancel(addr, pid, !secret).await;
    let m = rc.until_ready().await;
    f.check(
        raw::errors(&m).is_empty() && raw::tags(&m).contains('C'),
        || {
            format!(
                "pg_sleep(2) with forged cancels: tags {} errors {:?}",
                raw::tags(&m),
                raw::errors(&m)
            )
        },
    );
    // The bystander's key is not the raw client's: cancelling it does not touch the raw query.
    let mut out = BytesMut::new();
    messages::query(&mut out, "SELECT pg_sleep(1.5)");
    rc.send(&out).await;
    f.check(wait_active(&su, "SELECT pg_sleep(1.5)").await, || {
        "pg_sleep(1.5) never became active".into()
    });
    let r = bystander.cancel_token().cancel_query(NoTls).await;
    f.check(r.is_ok(), || format!("bystander cancel: {r:?}"));
    let m = rc.until_ready().await;
    f.check(raw::errors(&m).is_empty(), || {
        format!(
            "another client's cancel hit this query: {:?}",
            raw::errors(&m)
        )
    });

    // The right key, sent raw, does cancel.
    let mut out = BytesMut::new();
    messages::query(&mut out, "SELECT pg_sleep(30)");
    rc.send(&out).await;
    f.check(wait_active(&su, "SELECT pg_sleep(30)").await, || {
        "raw pg_sleep(30) never became active".into()
    });
    send_cancel(addr, pid, secret).await;
    let m = rc.until_ready().await;
    let errs = raw::errors(&m);
    f.check(errs.len() == 1 && errs[0].code == "57014", || {
        format!("raw cancel with the right key: {errs:?}")
    });
    let r = raw_ctx(&mut rc).await;
    f.check(r.as_deref() == Ok(GLOBEX), || {
        format!("raw client after cancel: {r:?}")
    });
    bystander_ok(&mut f, &bystander, "raw cancels").await;
    f.finish();
}
