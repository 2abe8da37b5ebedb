//! An extended-protocol error that reaches the proxy before the client's Sync: PostgreSQL
//! then ignores every message up to the Sync, and the proxy must expect no replies for them
//! and must not hand the backend to anyone else in the meantime. (A client whose Bind,
//! Execute and Sync arrived in separate reads once hung here.)

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::raw::{self, Msg, RawConn};
use common::*;
use pgtenant::protocol::messages;

/// Sends Parse+Bind of a statement that fails at Bind (1/0 is folded while planning) and a
/// Flush, and waits for the error: the backend is now discarding until Sync.
async fn fail_before_sync(c: &mut RawConn) -> Result<(), String> {
    let mut out = BytesMut::new();
    messages::parse(&mut out, "", "SELECT 1/0");
    messages::bind(&mut out, "", std::iter::empty());
    raw::flush(&mut out);
    c.send(&out).await;
    let mut seen = Vec::new();
    while let Some(m) = c.recv().await {
        let tag = m.0;
        seen.push(m);
        if tag == b'E' {
            let errs = raw::errors(&seen);
            return match errs.first() {
                Some(e) if e.code == "22012" => Ok(()),
                other => Err(format!("expected 22012, got {other:?}")),
            };
        }
    }
    Err(format!("no error before close; got {}", raw::tags(&seen)))
}

/// Sends `frames` and then Sync, and returns what came back up to ReadyForQuery.
async fn then_sync(c: &mut RawConn, frames: impl FnOnce(&mut BytesMut)) -> Vec<Msg> {
    let mut out = BytesMut::new();
    frames(&mut out);
    messages::sync(&mut out);
    c.send(&out).await;
    c.until_ready().await
}

fn status(msgs: &[Msg]) -> Option<u8> {
    msgs.last()
        .filter(|m| m.0 == b'Z')
        .and_then(|m| m.1.first().copied())
}

async fn ctx(c: &mut RawConn) -> Vec<Vec<Option<String>>> {
    raw::data_rows(
        &c.simple("SELECT current_setting('app.current_tenant')")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_an_error_and_sync_get_no_reply_and_keep_the_backend() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let mut f = Failures::default();
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .expect("acme connects");

    // Inside an explicit transaction: Execute, a named Parse, a Close and a Query sent after
    // the error are all ignored; the Sync answers with ReadyForQuery(E).
    let begin = c.simple("BEGIN").await;
    f.check(status(&begin) == Some(b'T'), || {
        format!("BEGIN: {}", raw::tags(&begin))
    });
    if let Err(e) = fail_before_sync(&mut c).await {
        f.check(false, || format!("in transaction: {e}"));
    }
    let after = tokio::time::timeout(
        Duration::from_secs(10),
        then_sync(&mut c, |out| {
            messages::execute(out);
            messages::parse(out, "later", "SELECT 2");
            raw::close_statement(out, "later");
            messages::query(out, "SELECT 3");
        }),
    )
    .await;
    match after {
        Err(_) => f.check(false, || "in transaction: hung after the Sync".into()),
        Ok(m) => f.check(raw::tags(&m) == "Z" && status(&m) == Some(b'E'), || {
            format!("in transaction: expected only Z(E), got {}", raw::tags(&m))
        }),
    }
    let rollback = c.simple("ROLLBACK").await;
    f.check(status(&rollback) == Some(b'I'), || {
        format!("ROLLBACK: {}", raw::tags(&rollback))
    });
    // The ignored Parse created nothing.
    let m = then_sync(&mut c, |out| {
        messages::bind(out, "later", std::iter::empty());
        messages::execute(out);
    })
    .await;
    let errs = raw::errors(&m);
    f.check(errs.first().is_some_and(|e| e.code == "26000"), || {
        format!("statement from an ignored Parse: {errs:?}")
    });
    f.check(
        ctx(&mut c).await == vec![vec![Some(ACME.to_string())]],
        || "context after the transaction".into(),
    );

    // Outside a transaction: until the Sync, the only backend must stay with acme. Globex
    // asks for it meanwhile and must get it only afterwards, clean and in its own context.
    if let Err(e) = fail_before_sync(&mut c).await {
        f.check(false, || format!("autocommit: {e}"));
    }
    let addr = env.proxy.addr;
    let globex = tokio::spawn(async move {
        let mut g = RawConn::connect(addr, "globex", "globex-secret")
            .await
            .map_err(|e| format!("globex connect: {}", e.message))?;
        let rows = tokio::time::timeout(Duration::from_secs(15), ctx(&mut g))
            .await
            .map_err(|_| "globex hung".to_string())?;
        Ok::<_, String>(rows)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = then_sync(&mut c, messages::execute).await;
    f.check(raw::tags(&m) == "Z" && status(&m) == Some(b'I'), || {
        format!("autocommit: expected only Z(I), got {}", raw::tags(&m))
    });
    match globex.await.expect("globex task") {
        Ok(rows) => f.check(rows == vec![vec![Some(GLOBEX.to_string())]], || {
            format!("globex saw {rows:?}")
        }),
        Err(e) => f.check(false, || e),
    }
    f.check(
        ctx(&mut c).await == vec![vec![Some(ACME.to_string())]],
        || "acme after globex".into(),
    );
    f.finish();
}

/// Parse + Sync between transactions is answered without a backend: a client that
/// prepares while its other connections hold every backend (pgbench -M prepared with
/// fewer threads than clients) is not stuck behind them. A statement PostgreSQL's grammar
/// rejects is refused at its Parse by the guard's parser, as PostgreSQL would (42601), so
/// a later Bind finds no such statement (26000), as it would directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_between_transactions_needs_no_backend() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let mut f = Failures::default();
    let addr = env.proxy.addr;
    // Connecting takes a backend briefly (the client's startup parameters), so both
    // connect before globex holds the only backend.
    let mut c = RawConn::connect(addr, "acme", "acme-secret").await.unwrap();
    let mut holder = RawConn::connect(addr, "globex", "globex-secret")
        .await
        .unwrap();
    holder.simple("BEGIN").await;
    let prepared = tokio::time::timeout(
        Duration::from_secs(3),
        then_sync(&mut c, |out| {
            messages::parse(out, "ctx", "SELECT current_setting('app.current_tenant')");
            messages::parse(out, "bad", "SELEC 1");
        }),
    )
    .await;
    match prepared {
        Ok(m) => {
            f.check(raw::tags(&m) == "1EZ", || {
                format!("prepare while the pool is busy: {}", raw::tags(&m))
            });
            let errs = raw::errors(&m);
            f.check(errs.first().is_some_and(|e| e.code == "42601"), || {
                format!("a bad statement at its Parse: {errs:?}")
            });
        }
        Err(_) => f.check(false, || "Parse waited for a backend".into()),
    }
    holder.simple("COMMIT").await;
    let m = then_sync(&mut c, |out| {
        messages::bind(out, "ctx", std::iter::empty());
        messages::execute(out);
    })
    .await;
    f.check(
        raw::data_rows(&m) == vec![vec![Some(ACME.to_string())]],
        || format!("executing the prepared statement: {}", raw::tags(&m)),
    );
    let m = then_sync(&mut c, |out| {
        messages::bind(out, "bad", std::iter::empty());
        messages::execute(out);
    })
    .await;
    let errs = raw::errors(&m);
    f.check(errs.first().is_some_and(|e| e.code == "26000"), || {
        format!("the refused statement at first use: {errs:?}")
    });
    f.check(status(&m) == Some(b'I'), || "status after the error".into());
    f.check(
        ctx(&mut c).await == vec![vec![Some(ACME.to_string())]],
        || "usable after the error".into(),
    );
    f.finish();
}

/// When the proxy's own request fails (here the context injection: EXECUTE on set_config is
/// revoked), the client gets an ERROR and keeps its session: outside a transaction it can
/// go on at once, inside one it finds the transaction aborted (25P02) until it ends it, as
/// PostgreSQL would answer. Before, the client was closed with FATAL.
#[tokio::test]
async fn a_failed_injection_ends_the_transaction_not_the_session() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 2;
        }
        // Every transaction sends the proxy's enter(), so every one meets the revoked
        // set_config.
        c.context.carry = Some(false);
    })
    .await;
    let su = env.superuser().await;
    let ctx = "SELECT current_setting('app.current_tenant')";
    let long = async {
        let client = env.proxy.connect("acme").await;
        assert_eq!(one(&client, ctx).await, ACME);
        su.batch_execute(
            "REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC",
        )
        .await
        .unwrap();

        let err = client
            .simple_query(ctx)
            .await
            .expect_err("no context, no query");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
        assert!(!client.is_closed(), "the client keeps its session");

        client.batch_execute("BEGIN").await.unwrap();
        let err = client
            .simple_query("SELECT 1")
            .await
            .expect_err("no context");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
        let err = client
            .simple_query("SELECT 2")
            .await
            .expect_err("the transaction is aborted");
        assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
        client.batch_execute("ROLLBACK").await.unwrap();

        // The extended protocol: the error comes where the pipeline's reply would.
        let mut raw = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .unwrap();
        let mut out = BytesMut::new();
        raw::extended(&mut out, ctx, &[]);
        raw::sync(&mut out);
        raw.send(&out).await;
        let r = raw.until_ready().await;
        assert_eq!(
            raw::errors(&r).first().map(|e| e.code.as_str()),
            Some("42501")
        );
        assert_eq!(r.last().unwrap().1[0], b'I');

        su.batch_execute(
            "GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO PUBLIC",
        )
        .await
        .unwrap();
        assert_eq!(one(&client, ctx).await, ACME, "the same session goes on");
        assert_eq!(
            raw::data_rows(&raw.simple(ctx).await)[0][0].as_deref(),
            Some(GLOBEX)
        );
        assert_eq!(idle_in_transaction(&su).await, 0);
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

/// A client whose transaction a failed injection aborted holds no backend, and is in an
/// aborted transaction as far as it knows: a Sync on its own is answered as PostgreSQL
/// would answer it there (ReadyForQuery 'E'), until the client ends the transaction.
#[tokio::test]
async fn a_sync_after_a_failed_injection_reports_the_aborted_transaction() {
    let env = TestEnv::start().await;
    let su = env.superuser().await;
    let ctx = "SELECT current_setting('app.current_tenant')";
    let mut raw = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    su.batch_execute(
        "REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC",
    )
    .await
    .unwrap();
    let status = |r: &[Msg]| r.last().map(|m| m.1[0] as char);
    assert_eq!(status(&raw.simple("BEGIN").await), Some('T'));
    let r = raw.simple(ctx).await;
    assert_eq!(raw::errors(&r)[0].code, "42501");
    assert_eq!(status(&r), Some('E'));
    let mut sync = BytesMut::new();
    raw::sync(&mut sync);
    raw.send(&sync).await;
    assert_eq!(status(&raw.until_ready().await), Some('E'));
    su.batch_execute(
        "GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO PUBLIC",
    )
    .await
    .unwrap();
    assert_eq!(status(&raw.simple("ROLLBACK").await), Some('I'));
    raw.send(&sync).await;
    assert_eq!(status(&raw.until_ready().await), Some('I'));
}

/// A simple Query or a FunctionCall pipelined in the same write between an
/// extended-protocol error and the Sync: PostgreSQL ignores it (no reply, no
/// ReadyForQuery) and answers the Sync. The proxy once waited for that Query's
/// ReadyForQuery and held the client's Sync back until it came, so client and backend
/// waited for each other; and since it stopped reading the client meanwhile, the client's
/// disconnect went unseen and the backend was never given back (with a pool of one, every
/// other tenant was locked out). Found by a red-team pass, guard on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_pipelined_after_an_extended_error_is_skipped_as_postgresql_skips_it() {
    let mut f = Failures::default();
    for (label, guard, middle) in [
        ("Query, guard on", true, b'Q'),
        ("Query, guard off", false, b'Q'),
        ("FunctionCall, guard off", false, b'F'),
    ] {
        let env = TestEnv::start_with(|c| {
            c.server.sql_guard = guard;
            for db in c.databases.values_mut() {
                db.pool_size = 1;
            }
        })
        .await;
        let mut bytes = BytesMut::new();
        raw::extended(&mut bytes, "SELECT 1/0", &[]);
        if middle == b'Q' {
            messages::query(&mut bytes, "SELECT 1");
        } else {
            raw::function_call(&mut bytes, 2880, &["1"]); // pg_advisory_lock(bigint)
        }
        raw::sync(&mut bytes);
        // PostgreSQL itself: ParseComplete, the error (1/0 is folded at Bind), the Sync's
        // ReadyForQuery; nothing for the Query or FunctionCall in between.
        let mut d = env.raw_acme_or_direct(false).await;
        d.send(&bytes).await;
        let direct = tokio::time::timeout(Duration::from_secs(5), d.until_ready())
            .await
            .ok()
            .map(|m| raw::tags(&m));
        f.check(direct.as_deref() == Some("1EZ"), || {
            format!("{label}: PostgreSQL answered {direct:?}")
        });
        drop(d);
        let mut a = env.raw_acme_or_direct(true).await;
        a.send(&bytes).await;
        let through = tokio::time::timeout(Duration::from_secs(5), a.until_ready())
            .await
            .ok()
            .map(|m| raw::tags(&m));
        f.check(through == direct, || {
            format!("{label}: through pgtenant {through:?}, PostgreSQL {direct:?}")
        });
        // The session goes on; the client then leaves and another tenant needs the one
        // backend.
        let rows = ctx(&mut a).await;
        f.check(rows == vec![vec![Some(ACME.to_string())]], || {
            format!("{label}: acme's next transaction saw {rows:?}")
        });
        drop(a);
        let g = env.globex_served().await;
        f.check(g.as_deref() == Ok(GLOBEX), || {
            format!("{label}: globex after acme left: {g:?}")
        });
    }
    f.finish();
}

/// The proxy's own statements (the context injection's, the prepared BEGIN's) are prepared
/// again after a client's DISCARD ALL; when that Parse goes out behind an error in the same
/// pipeline, PostgreSQL skips it, and the backend must not be taken to have it. (psycopg's
/// suite found the next transaction on the backend failing with 40001: a refused statement
/// with parameters, inside a transaction, made the injection go out after the refusal.)
/// PostgreSQL runs the same requests first.
#[tokio::test]
async fn own_statements_skipped_after_an_error_are_prepared_again() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    for through in [false, true] {
        let at = if through { "pgtenant" } else { "PostgreSQL" };
        let mut c = env.raw_acme_or_direct(through).await;
        assert!(
            raw::errors(&c.simple("DISCARD ALL").await).is_empty(),
            "{at}"
        );
        assert!(raw::errors(&c.simple("BEGIN").await).is_empty(), "{at}");
        let m = then_sync(&mut c, |out| {
            raw::extended(out, "SELECT pg_terminate_backend($1)", &["1"]);
        })
        .await;
        // Refused by the guard through pgtenant; the test cluster revokes it from PUBLIC.
        let codes: Vec<String> = raw::errors(&m).into_iter().map(|e| e.code).collect();
        assert_eq!(codes, ["42501"], "{at}: {}", raw::tags(&m));
        assert!(raw::errors(&c.simple("ROLLBACK").await).is_empty(), "{at}");
        // The next transactions on the (only) backend, this client's and another's.
        for _ in 0..2 {
            let m = c.simple("BEGIN; SELECT 1; COMMIT").await;
            assert!(raw::errors(&m).is_empty(), "{at}: {:?}", raw::errors(&m));
            assert_eq!(
                raw::data_rows(&m),
                vec![vec![Some("1".to_string())]],
                "{at}"
            );
        }
        if through {
            assert_eq!(
                env.globex_served().await.as_deref(),
                Ok("22222222-2222-4222-8222-222222222222"),
                "another tenant is served by that backend"
            );
        }
    }
}

/// Pipelines that drop what the proxy keeps in the session (DISCARD ALL, RESET ALL,
/// DEALLOCATE ALL, a DO block that ends its transaction) ahead of more statements: requests behind them go out before their
/// CommandComplete. PostgreSQL runs them all, and through pgtenant every later statement
/// still runs with the tenant's context and the pipeline ends as on PostgreSQL (the proxy's
/// own statements prepared again, the client's parsed anew, a carried context entered
/// again), in both context modes, with one backend.
#[tokio::test]
async fn statements_pipelined_behind_a_session_reset_keep_the_context() {
    const CTX: &str = "SELECT current_setting('app.current_tenant', true)";
    // Straight to PostgreSQL, a statement pipelined behind DISCARD ALL runs without a
    // context set before.
    let env = TestEnv::start().await;
    let mut direct = env.raw_acme_or_direct(false).await;
    then_sync(&mut direct, |o| {
        raw::extended(
            o,
            "SELECT set_config('app.current_tenant', 'x', false)",
            &[],
        );
    })
    .await;
    let got = then_sync(&mut direct, |o| {
        raw::extended(o, "DISCARD ALL", &[]);
        raw::extended(o, CTX, &[]);
    })
    .await;
    assert_eq!(
        raw::data_rows(&got).last(),
        Some(&vec![Some(String::new())])
    );
    env.proxy.shutdown().await;

    type Pipeline = fn(&mut BytesMut);
    let pipelines: [(&str, Pipeline); 7] = [
        ("a DO block that commits, SELECT", |o| {
            raw::extended(o, "DO $$ BEGIN PERFORM 1; COMMIT; END $$", &[]);
            raw::extended(o, CTX, &[]);
        }),
        ("a DO block that rolls back, SELECT", |o| {
            raw::extended(o, "DO $$ BEGIN ROLLBACK; END $$", &[]);
            raw::extended(o, CTX, &[]);
        }),
        ("DISCARD ALL, SELECT", |o| {
            raw::extended(o, "DISCARD ALL", &[]);
            raw::extended(o, CTX, &[]);
        }),
        ("BEGIN, SELECT, DEALLOCATE ALL, COMMIT, SELECT", |o| {
            for sql in ["BEGIN", "SELECT 1", "DEALLOCATE ALL", "COMMIT", CTX] {
                raw::extended(o, sql, &[]);
            }
        }),
        ("RESET ALL, SELECT", |o| {
            raw::extended(o, "RESET ALL", &[]);
            raw::extended(o, CTX, &[]);
        }),
        ("BEGIN, RESET ALL, SELECT, COMMIT", |o| {
            for sql in ["BEGIN", "RESET ALL", CTX, "COMMIT"] {
                raw::extended(o, sql, &[]);
            }
        }),
        ("DISCARD ALL, a statement prepared earlier", |o| {
            raw::extended(o, "DISCARD ALL", &[]);
            messages::bind(o, "ctx", std::iter::empty());
            messages::execute(o);
        }),
    ];
    let mut f = Failures::default();
    for mode in [
        pgtenant::config::ContextMode::Plain,
        pgtenant::config::ContextMode::Verified,
    ] {
        let env = TestEnv::start_with(|c| {
            c.context.mode = mode;
            for db in c.databases.values_mut() {
                db.pool_size = 1;
            }
        })
        .await;
        let mut c = env.raw_acme_or_direct(true).await;
        for (what, pipeline) in pipelines {
            // A transaction first, so the backend holds the proxy's statements and the
            // context, and the client's named statement is prepared there.
            let mut out = BytesMut::new();
            messages::parse(&mut out, "ctx", CTX);
            raw::extended(&mut out, CTX, &[]);
            messages::sync(&mut out);
            c.send(&out).await;
            c.until_ready().await;
            let got = then_sync(&mut c, pipeline).await;
            let rows = raw::data_rows(&got);
            f.check(
                raw::errors(&got).is_empty()
                    && rows.last() == Some(&vec![Some(ACME.to_string())])
                    && status(&got) == Some(b'I'),
                || format!("{mode:?}, {what}: {}", raw::tags(&got)),
            );
            // Deallocated on the backend; the client's own statement goes with DISCARD ALL.
            let mut out = BytesMut::new();
            raw::close_statement(&mut out, "ctx");
            messages::sync(&mut out);
            c.send(&out).await;
            c.until_ready().await;
        }
        env.proxy.shutdown().await;
    }
    f.finish();
}
