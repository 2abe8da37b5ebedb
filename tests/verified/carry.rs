//! The carried verified context (`context.carry`, see `pgtenant::backend::carry`): a backend
//! keeps a tenant's verified context between that tenant's transactions, and nothing of one
//! tenant's ever serves another's statement, whatever the statement does to its transaction.
//! With the SQL guard off and one backend, so every tenant meets the others' sessions and
//! PostgreSQL alone has to hold the line.

use super::common::raw::RawConn;
use super::common::{ACME, Failures, GLOBEX, TestEnv, metric, sqlstate};
use pgtenant::verified::{self, ContextKey};

/// One backend, guard off.
async fn one_backend() -> TestEnv {
    TestEnv::start_with(|c| {
        c.server.sql_guard = false;
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await
}

/// A procedure that ends its transaction (COMMIT or ROLLBACK), then reports in a NOTICE
/// which tenants' invoices its next statement sees. SECURITY INVOKER: RLS applies to the
/// calling app role.
const PEEK: &str = "CREATE PROCEDURE public.peek_after(commit_first boolean) LANGUAGE plpgsql AS $$
BEGIN
    IF commit_first THEN COMMIT; ELSE ROLLBACK; END IF;
    RAISE NOTICE 'seen:%', (SELECT string_agg(DISTINCT tenant_id::text, ',') FROM invoices);
END $$";

/// The tenant ids in `text` other than `own`.
fn foreign(text: &str, own: &str) -> bool {
    [ACME, GLOBEX, super::common::INITECH]
        .iter()
        .any(|id| *id != own && text.contains(id))
}

/// Every message of `msgs` as text, for looking for tenant ids.
fn texts(msgs: &[super::common::raw::Msg]) -> String {
    msgs.iter()
        .map(|(t, b)| format!("{}:{} ", *t as char, String::from_utf8_lossy(b)))
        .collect()
}

/// The tenants whose invoices `c` sees (a query calling no function, so the transaction
/// leaves nothing the release rule must clean).
async fn seen(c: &tokio_postgres::Client) -> Vec<String> {
    let rows = c
        .query("SELECT DISTINCT tenant_id::text FROM invoices", &[])
        .await
        .expect("query");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_carried_context_serves_its_tenant_and_is_cleaned_before_another() {
    let env = one_backend().await;
    let mut f = Failures::default();
    let a = env.proxy.connect("acme").await;
    let g = env.proxy.connect("globex").await;
    for round in 0..3 {
        for (c, id) in [(&a, ACME), (&a, ACME), (&g, GLOBEX), (&g, GLOBEX)] {
            let rows = seen(c).await;
            f.check(rows == [id], || format!("round {round}: {id} saw {rows:?}"));
        }
    }
    let verified: Option<String> = g
        .query_one("SELECT pgtenant.tenant_id()", &[])
        .await
        .unwrap()
        .get(0);
    f.check(verified.as_deref() == Some(GLOBEX), || {
        format!("tenant_id() on a carried context: {verified:?}")
    });
    let m = env.proxy.metrics().await;
    let carried = metric(&m, "pgtenant_context_carried_total").unwrap_or(0.0);
    let switches = metric(&m, "pgtenant_context_switches_total").unwrap_or(0.0);
    f.check(carried >= 6.0, || {
        format!(
            "the second transaction of each tenant in a row needs no enter(): {carried} carried"
        )
    });
    f.check(switches >= 5.0, || {
        format!("every change of tenant on the backend cleans it first: {switches} switches")
    });
    f.finish();
}

/// A procedure's own COMMIT or ROLLBACK in the first transaction of a tenant on a backend
/// that carried another tenant: what runs after it sees no other tenant's rows.
#[tokio::test]
async fn a_procedure_that_ends_its_transaction_never_runs_as_the_previous_tenant() {
    let env = one_backend().await;
    env.superuser().await.batch_execute(PEEK).await.unwrap();
    let mut f = Failures::default();
    for commit_first in [false, true] {
        let a = env.proxy.connect("acme").await;
        let own: i64 = a
            .query_one("SELECT count(*) FROM invoices", &[])
            .await
            .unwrap()
            .get(0);
        f.check(own == 3, || format!("acme counts {own}"));
        drop(a);
        let mut g = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .expect("globex connects");
        let msgs = g
            .simple(&format!("CALL public.peek_after({commit_first})"))
            .await;
        let text = texts(&msgs);
        f.check(!foreign(&text, GLOBEX), || {
            format!("commit_first = {commit_first}: globex's procedure saw another tenant: {text}")
        });
        f.check(text.contains("seen:"), || {
            format!("commit_first = {commit_first}: the procedure ran: {text}")
        });
    }
    f.finish();
}

/// The probe above can fail, and what stops it is the emptied session: straight to
/// PostgreSQL, with `enter()` weakened to let a session switch tenants, a session that
/// carries acme's context and enters globex's in the transaction that calls the procedure
/// is back to acme's after the procedure's ROLLBACK.
#[tokio::test]
async fn the_procedure_probe_catches_a_session_left_with_another_tenant() {
    let env = TestEnv::start().await;
    let su = env.superuser().await;
    let weakened = env
        .config()
        .verified_objects()
        .install_sql()
        .replace("NOT IN ('', p1)", "NOT IN ('', p1) AND false");
    su.batch_execute(&weakened).await.unwrap();
    su.batch_execute(PEEK).await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], env.cluster.port()));
    let mut c = RawConn::connect(addr, "app_user", "app_password")
        .await
        .expect("app_user connects");
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    let pid = c.pid;
    let enter = |out: &mut bytes::BytesMut, id: &str, plan: &str| {
        let proof = verified::proof(&key, pid, &[id.as_bytes(), plan.as_bytes()]);
        let key_id = key.id().to_string();
        super::common::raw::extended(
            out,
            "SELECT pgtenant.enter($1::int, $2, true, $3, $4)",
            &[&key_id, &proof, id, plan],
        );
    };
    let mut out = bytes::BytesMut::new();
    enter(&mut out, ACME, "enterprise");
    super::common::raw::sync(&mut out);
    enter(&mut out, GLOBEX, "free");
    pgtenant::protocol::messages::query(&mut out, "CALL public.peek_after(false)");
    c.send(&out).await;
    let mut msgs = c.until_ready().await;
    msgs.extend(c.until_ready().await);
    let text = texts(&msgs);
    assert!(
        text.contains(ACME),
        "the weakened session should have shown acme's rows: {text}"
    );
}

/// Whatever may have cleared or rolled back the carried context makes the next transaction
/// enter it again: the tenant keeps seeing its rows (not a fail-closed empty result).
#[tokio::test]
async fn the_next_transaction_enters_again_when_the_carried_context_may_be_gone() {
    let env = one_backend().await;
    env.superuser().await.batch_execute(PEEK).await.unwrap();
    let mut f = Failures::default();
    let a = env.proxy.connect("acme").await;
    let steps: [(&str, &[&str]); 6] = [
        (
            "an error in the first transaction",
            &["BEGIN; SELECT 1/0", "ROLLBACK"],
        ),
        ("RESET ALL", &["RESET ALL"]),
        ("DISCARD ALL", &["DISCARD ALL"]),
        // RESET ALL first, so the procedure runs in a transaction that enters the context.
        (
            "a procedure's ROLLBACK",
            &["RESET ALL", "CALL public.peek_after(false)"],
        ),
        (
            "a procedure's COMMIT",
            &["RESET ALL", "CALL public.peek_after(true)"],
        ),
        ("an explicit ROLLBACK", &["BEGIN; SELECT 1; ROLLBACK"]),
    ];
    for (what, sqls) in steps {
        for sql in sqls {
            let _ = a.simple_query(sql).await;
        }
        let n = a.query_one("SELECT count(*) FROM invoices", &[]).await;
        let n: Option<i64> = n.ok().map(|r| r.get(0));
        f.check(n == Some(3), || format!("after {what}: acme counts {n:?}"));
    }
    f.finish();
}

/// Straight to PostgreSQL: enter() sets the context for the session; a session that holds
/// one tenant refuses another tenant's valid proof until it is emptied; a rolled-back
/// enter() returns the session to what it held before.
#[tokio::test]
async fn postgresql_keeps_one_tenant_per_session_until_it_is_emptied() {
    let env = TestEnv::start().await;
    let (su, slot, pid) = super::app_role_knowing_the_slot(&env).await;
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    let enter = |id: &'static str, plan: &'static str| {
        let proof = verified::proof(&key, pid, &[id.as_bytes(), plan.as_bytes()]);
        let su = &su;
        let key_id = key.id();
        async move {
            su.execute(
                "SELECT pgtenant.enter($1, $2, true, $3, $4)",
                &[&key_id, &proof, &id, &plan],
            )
            .await
        }
    };
    let copy = format!("SELECT coalesce(current_setting('pgtenant.s{slot}_1', true), '')");
    let held = || async { su.query_one(&copy, &[]).await.unwrap().get::<_, String>(0) };
    let mut f = Failures::default();

    enter(ACME, "enterprise").await.expect("acme enters");
    f.check(held().await == ACME, || {
        "acme's context held after its transaction".into()
    });
    let switch = enter(GLOBEX, "free").await;
    f.check(
        switch.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("another tenant's valid proof on a session holding acme: {switch:?}"),
    );
    f.check(held().await == ACME, || "still acme".into());
    su.batch_execute("DISCARD ALL").await.unwrap();
    su.batch_execute("SET ROLE app_user").await.unwrap();
    f.check(held().await.is_empty(), || {
        "DISCARD ALL empties the session".into()
    });

    su.batch_execute("BEGIN").await.unwrap();
    enter(GLOBEX, "free")
        .await
        .expect("globex enters an empty session");
    su.batch_execute("ROLLBACK").await.unwrap();
    f.check(held().await.is_empty(), || {
        "a rolled-back enter() leaves the session as it was (empty)".into()
    });
    let rows: i64 = su
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    f.check(rows == 0, || format!("no context, {rows} rows"));
    f.finish();
}

/// A backend emptied at release (after code the proxy could not read) belongs to no tenant:
/// the next tenant takes it without a second reset.
#[tokio::test]
async fn a_backend_emptied_at_release_needs_no_switch() {
    let env = one_backend().await;
    let switches = async || {
        let m = env.proxy.metrics().await;
        metric(&m, "pgtenant_context_switches_total").unwrap_or(0.0)
    };
    let a = env.proxy.connect("acme").await;
    a.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    let g = env.proxy.connect("globex").await;
    assert_eq!(seen(&g).await, [GLOBEX]);
    assert_eq!(
        switches().await,
        0.0,
        "the DO block's cleanup emptied the backend already"
    );
    assert_eq!(seen(&a).await, [ACME]);
    assert_eq!(
        switches().await,
        1.0,
        "globex's carried context is emptied for acme"
    );
}
