//! Isolation at the wire level: pipelined transactions with several Syncs keep each one in
//! its tenant's context, and abrupt disconnects or a killed backend leave the pool usable.

use super::*;

fn body_status(m: &Msg) -> char {
    m.1[0] as char
}

/// Asserts one reply: its tags exactly, its ReadyForQuery status and its values.
fn assert_reply(msgs: &[Msg], tags: &str, status: char, values: &[&str], what: &str) {
    assert_eq!(
        raw::tags(msgs),
        tags,
        "{what}: tags ({:?})",
        raw::errors(msgs)
    );
    assert_eq!(
        body_status(msgs.last().unwrap()),
        status,
        "{what}: transaction status"
    );
    let got: Vec<String> = raw::data_rows(msgs)
        .into_iter()
        .flatten()
        .map(|v| v.unwrap_or_default())
        .collect();
    assert_eq!(got, values, "{what}: values");
}

#[tokio::test]
async fn pipelines_and_several_syncs_keep_each_transaction_in_context() {
    let env = TestEnv::start().await;
    let long = async {
        let mut c = RawConn::connect(env.proxy.addr, "initech", "initech-secret")
            .await
            .unwrap();

        // Five implicit transactions and the start of an explicit one, in a single write.
        let mut out = BytesMut::new();
        for _ in 0..5 {
            raw::extended(&mut out, CTX, &[]);
            raw::sync(&mut out);
        }
        messages::query(&mut out, &format!("BEGIN; {CTX}"));
        c.send(&out).await;
        for i in 0..5 {
            assert_reply(
                &c.until_ready().await,
                "12DCZ",
                'I',
                &[INITECH],
                &format!("pipelined sync {i}"),
            );
        }
        assert_reply(
            &c.until_ready().await,
            "CTDCZ",
            'T',
            &[INITECH],
            "BEGIN; SELECT",
        );
        assert_reply(
            &c.simple(CTX).await,
            "TDCZ",
            'T',
            &[INITECH],
            "later message in the transaction",
        );
        assert_reply(&c.simple("COMMIT").await, "CZ", 'I', &[], "COMMIT");

        // An explicit transaction in the extended protocol, over three Syncs.
        let mut out = BytesMut::new();
        raw::extended(&mut out, "BEGIN", &[]);
        raw::extended(&mut out, CTX, &[]);
        raw::sync(&mut out);
        c.send(&out).await;
        assert_reply(
            &c.until_ready().await,
            "12C12DCZ",
            'T',
            &[INITECH],
            "extended BEGIN + SELECT",
        );
        let mut out = BytesMut::new();
        raw::extended(
            &mut out,
            "SELECT current_setting('app.current_tenant'), $1::text",
            &["p"],
        );
        raw::sync(&mut out);
        c.send(&out).await;
        assert_reply(
            &c.until_ready().await,
            "12DCZ",
            'T',
            &[INITECH, "p"],
            "extended SELECT in transaction",
        );
        let mut out = BytesMut::new();
        raw::extended(&mut out, "COMMIT", &[]);
        raw::sync(&mut out);
        c.send(&out).await;
        assert_reply(&c.until_ready().await, "12CZ", 'I', &[], "extended COMMIT");

        // A failing transaction in the middle of a pipeline: the ones around it keep their
        // context, and nothing of the proxy's requests shows.
        let mut out = BytesMut::new();
        raw::extended(&mut out, CTX, &[]);
        raw::sync(&mut out);
        raw::extended(
            &mut out,
            "SELECT 1 / (SELECT count(*)::int FROM invoices WHERE false)",
            &[],
        );
        raw::sync(&mut out);
        raw::extended(&mut out, CTX, &[]);
        raw::sync(&mut out);
        c.send(&out).await;
        assert_reply(
            &c.until_ready().await,
            "12DCZ",
            'I',
            &[INITECH],
            "before the error",
        );
        let failed = c.until_ready().await;
        assert_eq!(raw::tags(&failed), "12EZ");
        assert_eq!(raw::errors(&failed)[0].code, "22012");
        assert_reply(
            &c.until_ready().await,
            "12DCZ",
            'I',
            &[INITECH],
            "after the error",
        );

        // Hostile: binding the proxy's own context statements with another tenant's id.
        for stmt in ["pgtenant_ctx", "pgtenant_ctx_session", "pgtenant_param"] {
            let mut out = BytesMut::new();
            messages::bind(
                &mut out,
                stmt,
                [GLOBEX.as_bytes(), b"free".as_slice()].into_iter(),
            );
            messages::execute(&mut out);
            raw::sync(&mut out);
            raw::extended(&mut out, CTX, &[]);
            raw::sync(&mut out);
            c.send(&out).await;
            let refused = c.until_ready().await;
            assert_eq!(raw::tags(&refused), "EZ", "bind of {stmt}");
            assert_eq!(raw::errors(&refused)[0].code, "42501", "bind of {stmt}");
            assert_reply(
                &c.until_ready().await,
                "12DCZ",
                'I',
                &[INITECH],
                &format!("after bind of {stmt}"),
            );
        }
        // ... also in the middle of an open transaction, where it must fail the transaction.
        assert_reply(
            &c.simple(&format!("BEGIN; {CTX}")).await,
            "CTDCZ",
            'T',
            &[INITECH],
            "BEGIN",
        );
        let mut out = BytesMut::new();
        messages::bind(
            &mut out,
            "pgtenant_ctx",
            [GLOBEX.as_bytes(), b"free".as_slice()].into_iter(),
        );
        messages::execute(&mut out);
        raw::sync(&mut out);
        c.send(&out).await;
        let refused = c.until_ready().await;
        assert_eq!(
            raw::errors(&refused).first().map(|e| e.code.as_str()),
            Some("42501"),
            "{}",
            raw::tags(&refused)
        );
        assert_eq!(body_status(refused.last().unwrap()), 'E');
        assert_reply(&c.simple("ROLLBACK").await, "CZ", 'I', &[], "ROLLBACK");
        assert_reply(
            &c.simple(CTX).await,
            "TDCZ",
            'I',
            &[INITECH],
            "after the refused transaction",
        );
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn abrupt_disconnects_and_backend_kill_leave_pool_usable() {
    let env = TestEnv::start_with(|c| pool_of(c, 2)).await;
    let su = env.superuser().await;
    let long = async {
        // (a) Clients vanish while their transaction is open.
        for i in 0..20 {
            let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
                .await
                .unwrap();
            let msgs = c.simple("BEGIN; SELECT 1").await;
            assert_eq!(raw::tags(&msgs), "CTDCZ", "round {i}");
            assert_eq!(body_status(msgs.last().unwrap()), 'T');
            drop(c);
        }
        let c = tokio::time::timeout(Duration::from_secs(10), env.proxy.connect("globex"))
            .await
            .expect("a new client is served after the disconnects");
        let ctx = tokio::time::timeout(Duration::from_secs(10), one(&c, CTX))
            .await
            .expect("query after disconnects");
        assert_eq!(ctx, GLOBEX);
        assert_eq!(
            idle_in_transaction(&su).await,
            0,
            "a dropped client's transaction stayed open on a backend"
        );

        // (b) A backend is killed under a running query.
        let victim = env.proxy.connect("acme").await;
        let sleeper =
            tokio::spawn(async move { victim.query("SELECT pg_sleep(30)", &[]).await.map(|_| ()) });
        let mut killed = false;
        for _ in 0..100 {
            let row = su
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE usename = 'app_user' AND state = 'active' AND query LIKE '%pg_sleep%'",
                    &[],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(killed, "the sleeping backend showed up in pg_stat_activity");
        let result = tokio::time::timeout(Duration::from_secs(20), sleeper)
            .await
            .expect("the client of a killed backend gets an answer, not a hang")
            .unwrap();
        let err = result.expect_err("the client of a killed backend gets an error");
        eprintln!(
            "client of the killed backend saw: {err} ({:?})",
            sqlstate(&err)
        );
        if let Some(code) = sqlstate(&err) {
            assert!(
                ["57P01", "08006"].contains(&code.as_str()),
                "unexpected SQLSTATE {code}: {err}"
            );
        }
        let c = tokio::time::timeout(Duration::from_secs(10), env.proxy.connect("initech"))
            .await
            .expect("new client after kill");
        assert_eq!(one(&c, CTX).await, INITECH);
        assert_eq!(one(&c, "SELECT count(*)::text FROM invoices").await, "2");
        assert_eq!(idle_in_transaction(&su).await, 0);
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn statements_after_commit_rollback_or_reset_all_get_the_context_again() {
    let env = TestEnv::start().await;
    let long = async {
        let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
            .await
            .unwrap();
        let ctx = |m: &[Msg]| raw::data_rows(m);
        let acme = vec![Some(ACME.to_string())];
        // COMMIT AND CHAIN opens a new transaction at once, with no context of its own.
        for chain in ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN"] {
            c.simple("BEGIN").await;
            assert!(raw::errors(&c.simple(chain).await).is_empty());
            assert_eq!(
                ctx(&c.simple(CTX).await),
                vec![acme.clone()],
                "after {chain}"
            );
            c.simple("COMMIT").await;
        }
        // A pipeline that commits part-way: what follows runs in a new transaction.
        for begin in [true, false] {
            let mut out = BytesMut::new();
            if begin {
                raw::extended(&mut out, "BEGIN", &[]);
            }
            raw::extended(&mut out, CTX, &[]);
            raw::extended(&mut out, "COMMIT", &[]);
            raw::extended(&mut out, CTX, &[]);
            raw::extended(&mut out, "ROLLBACK", &[]);
            raw::extended(&mut out, CTX, &[]);
            raw::sync(&mut out);
            c.send(&out).await;
            let m = c.until_ready().await;
            assert!(raw::errors(&m).is_empty(), "{m:?}");
            assert_eq!(
                ctx(&m),
                vec![acme.clone(); 3],
                "pipeline (BEGIN first: {begin})"
            );
        }
        // RESET ALL clears the transaction-local context as well.
        let mut out = BytesMut::new();
        raw::extended(&mut out, "BEGIN", &[]);
        raw::extended(&mut out, "RESET ALL", &[]);
        raw::extended(&mut out, CTX, &[]);
        raw::extended(&mut out, "COMMIT", &[]);
        raw::sync(&mut out);
        c.send(&out).await;
        let m = c.until_ready().await;
        assert_eq!(
            ctx(&m),
            vec![acme.clone()],
            "after RESET ALL in a pipeline: {m:?}"
        );
        // One simple query cannot be split: statements after COMMIT in it are refused.
        for sql in [
            format!("RESET ALL; {CTX}"),
            format!("BEGIN; SELECT 1; COMMIT; {CTX}"),
            format!("ROLLBACK; {CTX}"),
            format!("COMMIT AND CHAIN; {CTX}"),
        ] {
            let m = c.simple(&sql).await;
            assert!(
                ctx(&m).iter().all(|r| r != &vec![Some(String::new())]),
                "{sql}: {m:?}"
            );
            assert_eq!(
                raw::errors(&m).first().map(|e| e.code.as_str()),
                Some("42501"),
                "{sql}"
            );
        }
        let m = c.simple(&format!("BEGIN; {CTX}; COMMIT")).await;
        assert_eq!(ctx(&m), vec![acme.clone()], "{m:?}");
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}
