//! State one tenant plants in a backend's session for the next tenant of that backend, by
//! paths no statement text shows (a view over a function that PREPAREs under the proxy's
//! own statement names), with the SQL guard off and one backend (found by a red-team pass
//! on the carried context). A backend another tenant used last is cleaned with DISCARD ALL
//! before the next tenant gets it, so nothing planted runs in that tenant's transactions.

use super::common::raw::RawConn;
use super::common::{ACME, GLOBEX, TestEnv};

/// The tenant ids `text` names other than `own`'s.
fn foreign(text: &str, own: &str) -> bool {
    [ACME, GLOBEX, super::common::INITECH]
        .iter()
        .any(|id| *id != own && text.contains(id))
}

/// Every message `sql` brings back to `tenant`'s new connection, as text.
async fn run(env: &TestEnv, tenant: &str, sql: &str) -> String {
    let mut c = RawConn::connect(env.proxy.addr, tenant, &format!("{tenant}-secret"))
        .await
        .expect("connects");
    c.simple(sql)
        .await
        .iter()
        .map(|(t, b)| format!("{}:{} ", *t as char, String::from_utf8_lossy(b)))
        .collect()
}

const SEEN: &str =
    "SELECT 'seen:' || coalesce(string_agg(DISTINCT tenant_id::text, ','), '-') FROM invoices";

async fn env(carry: bool) -> TestEnv {
    let env = TestEnv::start_with(|c| {
        c.server.sql_guard = false;
        c.context.carry = Some(carry);
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    env.superuser()
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO app_user")
        .await
        .unwrap();
    env
}

/// globex replaces the proxy's context statement by one that skips globex's own context;
/// acme's context is then carried on the backend, and globex comes back to it.
#[tokio::test]
async fn a_replaced_context_statement_never_runs_for_the_next_tenant() {
    for carry in [true, false] {
        let env = env(carry).await;
        let plant = format!(
            "CREATE FUNCTION public.plant() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN
  EXECUTE 'DEALLOCATE pgtenant_ctx';
  EXECUTE 'PREPARE pgtenant_ctx(integer, text, text, text) AS SELECT CASE WHEN $3 = ''{GLOBEX}'' THEN NULL ELSE pgtenant.enter($1, $2, true, $3, $4) END';
  RETURN 1;
END $f$;
CREATE VIEW public.trap AS SELECT public.plant() AS x;"
        );
        run(&env, "globex", &plant).await;
        run(&env, "globex", "SELECT x FROM public.trap").await;
        let a = run(&env, "acme", SEEN).await;
        assert!(
            a.contains(ACME) && !foreign(&a, ACME),
            "carry {carry}: acme: {a}"
        );
        let g = run(
            &env,
            "globex",
            &format!("{SEEN}; SELECT pgtenant.tenant_id()"),
        )
        .await;
        assert!(
            !foreign(&g, GLOBEX),
            "carry {carry}: globex under another context: {g}"
        );
    }
}

/// globex replaces the proxy's context statement by one that records its bound parameters
/// (acme's proof among them) in a table of its own, then replays what it caught.
#[tokio::test]
async fn a_replaced_context_statement_never_sees_the_next_tenants_proof() {
    for carry in [true, false] {
        let env = env(carry).await;
        run(
            &env,
            "globex",
            "CREATE TABLE public.loot (k int, proof text, t text, p text);
CREATE FUNCTION public.stash(int, text, text, text) RETURNS int LANGUAGE sql AS
  'INSERT INTO public.loot VALUES ($1, $2, $3, $4) RETURNING 1';
CREATE FUNCTION public.plant2() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN
  EXECUTE 'DEALLOCATE pgtenant_ctx';
  EXECUTE 'PREPARE pgtenant_ctx(integer, text, text, text) AS SELECT public.stash($1, $2, $3, $4), pgtenant.enter($1, $2, true, $3, $4)';
  RETURN 1;
END $f$;
CREATE VIEW public.trap2 AS SELECT public.plant2() AS x;",
        )
        .await;
        run(&env, "globex", "SELECT x FROM public.trap2").await;
        let a = run(&env, "acme", SEEN).await;
        assert!(a.contains(ACME), "carry {carry}: acme: {a}");
        let g = run(
            &env,
            "globex",
            &format!(
                "SELECT count(*) FILTER (WHERE t = '{ACME}') AS caught FROM public.loot; \
                 RESET ALL; \
                 SELECT pgtenant.enter(k, proof, true, t, p) FROM public.loot WHERE t = '{ACME}' LIMIT 1; \
                 {SEEN}"
            ),
        )
        .await;
        assert!(
            !foreign(&g, GLOBEX),
            "carry {carry}: globex replayed acme's proof: {g}"
        );
    }
}
