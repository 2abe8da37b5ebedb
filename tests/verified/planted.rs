//! State one tenant plants in a backend's session for the next tenant of that backend, by
//! paths no statement text shows (a view over a function that PREPAREs under the proxy's
//! own statement names), with the SQL guard off and one backend (found by a red-team pass
//! on the carried context). A backend another tenant used last is emptied as DISCARD ALL would
//! before the next tenant gets it, so nothing planted runs in that tenant's transactions.

use super::common::raw::RawConn;
use super::common::{ACME, GLOBEX, TestEnv};

/// The tenant ids `text` names other than `own`'s.
fn foreign(text: &str, own: &str) -> bool {
    [ACME, GLOBEX, super::common::INITECH]
        .iter()
        .any(|id| *id != own && text.contains(id))
}

/// A new connection of `tenant` (password `<tenant>-secret`).
async fn connect(env: &TestEnv, tenant: &str) -> RawConn {
    RawConn::connect(env.proxy.addr, tenant, &format!("{tenant}-secret"))
        .await
        .expect("connects")
}

/// Every message `sql` brings back to `tenant`'s new connection, as text.
async fn run(env: &TestEnv, tenant: &str, sql: &str) -> String {
    connect(env, tenant)
        .await
        .simple(sql)
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

/// globex leaves session state through a function its SQL only calls from a view (settings,
/// an advisory lock, a prepared statement; LISTEN in a function body is refused even with
/// the guard off); acme, next on the backend, finds
/// none of it: the switch empties everything DISCARD ALL would, not only the context.
#[tokio::test]
async fn session_state_planted_by_a_function_never_reaches_the_next_tenant() {
    let env = env(true).await;
    let made = run(
        &env,
        "globex",
        "CREATE FUNCTION public.plant3() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_catalog.set_config('search_path', 'pg_temp, public', false);
  PERFORM pg_catalog.set_config('app.note', 'globex', false);
  PERFORM pg_catalog.set_config('work_mem', '7MB', false);
  PERFORM pg_catalog.pg_advisory_lock(4242);
  EXECUTE 'PREPARE globex_stmt AS SELECT 1';
  RETURN 1;
END $f$;
CREATE VIEW public.trap3 AS SELECT public.plant3() AS x;
CREATE VIEW public.state AS SELECT 'state:' || concat_ws('|', current_setting('search_path'),
    coalesce(current_setting('app.note', true), ''), current_setting('work_mem'),
    (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),
    (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE name = 'globex_stmt')) AS s;",
    )
    .await;
    assert!(!made.contains("E:"), "creating the plant failed: {made}");
    let g = run(&env, "globex", "SELECT x FROM public.trap3").await;
    assert!(!g.contains("E:"), "the plant itself failed: {g}");
    // Read through a view, so the release rule sees no reason to clean up after the probe.
    let probe = "SELECT s FROM public.state";
    // The plant worked: globex's own next transaction (same backend, no switch) sees it.
    let g = run(&env, "globex", probe).await;
    assert!(
        g.contains("state:pg_temp, public|globex|7MB|1|1"),
        "the probe must see a planted session: {g}"
    );
    let a = run(&env, "acme", probe).await;
    assert!(
        a.contains("state:") && !a.contains("E:") && a.contains("|0|0"),
        "acme's probe: {a}"
    );
    for planted in ["pg_temp, public", "|globex|", "7MB"] {
        assert!(!a.contains(planted), "acme found globex's {planted:?}: {a}");
    }
}

/// After a switch the proxy prepares only the statements the new tenant's transactions
/// use (here the context alone), not all of its own at once.
#[tokio::test]
async fn a_switched_backend_prepares_only_what_it_uses() {
    let env = env(true).await;
    let own = "SELECT 'own:' || string_agg(name, ',' ORDER BY name) FROM pg_catalog.pg_prepared_statements \
        WHERE name LIKE 'pgtenant%' AND name NOT LIKE 'pgtenant\\_s\\_%'";
    let first = run(&env, "globex", own).await;
    assert!(
        first.contains("own:pgtenant_begin,pgtenant_ctx,"),
        "a new backend has all of them: {first}"
    );
    let a = run(&env, "acme", own).await;
    assert!(a.contains("own:pgtenant_ctx "), "after the switch: {a}");
}

/// The first column of every row `sql` returns to `tenant`'s new connection.
async fn column(env: &TestEnv, tenant: &str, sql: &str) -> Vec<String> {
    super::common::raw::data_rows(&connect(env, tenant).await.simple(sql).await)
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

/// Found by a red-team pass on a switch that left out DISCARD PLANS: a PL/pgSQL function's
/// saved plan keeps a timestamptz literal as parsed under the TimeZone of whoever called it first,
/// and PostgreSQL does not re-check TimeZone when it reuses the plan. globex calls the
/// application's function under a TimeZone of its choosing (through a view over a function
/// of its own, so only the switch, or, with a plain SET, the release cleanup, can empty
/// the session); acme's call must compute under acme's own settings.
#[tokio::test]
async fn a_plan_cached_under_another_tenants_settings_never_serves_the_next() {
    for via_view in [true, false] {
        let env = env(true).await;
        env.superuser()
            .await
            .batch_execute(
                "CREATE FUNCTION public.epoch_2000() RETURNS numeric LANGUAGE plpgsql STABLE AS $f$
BEGIN
    RETURN extract(epoch FROM '2000-01-01 00:00:00'::timestamptz);
END $f$;
GRANT EXECUTE ON FUNCTION public.epoch_2000() TO app_user;",
            )
            .await
            .unwrap();
        let plant = if via_view {
            let made = run(
                &env,
                "globex",
                "CREATE FUNCTION public.plant_tz() RETURNS numeric LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_catalog.set_config('TimeZone', 'Pacific/Kiritimati', true);
  RETURN public.epoch_2000();
END $f$;
CREATE VIEW public.trap_tz AS SELECT public.plant_tz() AS x;",
            )
            .await;
            assert!(!made.contains("E:"), "plant: {made}");
            "SELECT x FROM public.trap_tz"
        } else {
            "SELECT set_config('TimeZone', 'Pacific/Kiritimati', false), public.epoch_2000()"
        };
        let g = run(&env, "globex", plant).await;
        assert!(!g.contains("E:"), "globex's call: {g}");
        let a = column(
            &env,
            "acme",
            "SELECT extract(epoch FROM '2000-01-01 00:00:00'::timestamptz) || '=' || public.epoch_2000()",
        )
        .await;
        let line = a.first().cloned().unwrap_or_default();
        let (fresh, from_function) = line.split_once('=').unwrap_or(("", "?"));
        assert_eq!(
            fresh, from_function,
            "view {via_view}: acme's function returned a value fixed under globex's TimeZone"
        );
    }
}

/// Found by the same pass (and older than the switch: DISCARD ALL keeps it too): the seed
/// `setseed()` gives `random()` outlives the session's reset, so globex could predict acme's
/// values and count how many acme drew. The reset draws a new seed.
#[tokio::test]
async fn a_seed_planted_for_random_never_reaches_the_next_tenant() {
    for via_view in [true, false] {
        let env = env(true).await;
        let su = env.superuser().await;
        su.batch_execute("SELECT setseed(0.42)").await.unwrap();
        let seeded: Vec<String> = su
            .query("SELECT random()::text FROM generate_series(1, 10)", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plant = if via_view {
            let made = run(
                &env,
                "globex",
                "CREATE VIEW public.trap_seed AS SELECT pg_catalog.setseed(0.42)::text AS x;",
            )
            .await;
            assert!(!made.contains("E:"), "plant: {made}");
            "SELECT x FROM public.trap_seed"
        } else {
            "SELECT setseed(0.42)"
        };
        run(&env, "globex", plant).await;
        if via_view {
            // The plant works: globex's own next transaction (no cleanup after a view)
            // draws from the seeded sequence. A plain call is cleaned at its release.
            let own = column(&env, "globex", "SELECT random()::text").await;
            assert!(
                own.first().is_some_and(|v| seeded.contains(v)),
                "the probe must see the seed: {own:?} not in {seeded:?}"
            );
        }
        let drawn = column(
            &env,
            "acme",
            "SELECT random()::text FROM generate_series(1, 3)",
        )
        .await;
        assert_eq!(drawn.len(), 3);
        assert!(
            drawn.iter().all(|v| !seeded.contains(v)),
            "view {via_view}: acme drew from globex's seeded sequence: {drawn:?}"
        );
    }
}
