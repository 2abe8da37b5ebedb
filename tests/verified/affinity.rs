//! Tenant affinity among waiting clients (`affinity_overtakes`): a backend released by a
//! tenant's client goes to a waiting client of the same tenant ahead of its turn, no waiting
//! client is overtaken more than the bound allows, and 0 keeps arrival order. One backend,
//! so the order in which waiting clients run is the order in which they got it.

use std::time::Duration;

use super::common::{ACME, GLOBEX, TestEnv, metric};

/// One backend; `overtakes` as `affinity_overtakes` (None: the default); a sequence that
/// numbers the waiting clients' statements in the order they ran.
async fn one_backend(overtakes: Option<usize>) -> TestEnv {
    one_backend_holding(overtakes, None).await
}

/// [`one_backend`] with `affinity_hold` = `hold` (None: the default).
async fn one_backend_holding(overtakes: Option<usize>, hold: Option<Duration>) -> TestEnv {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
            db.affinity_overtakes = overtakes;
            if let Some(hold) = hold {
                db.affinity_hold = hold;
            }
        }
    })
    .await;
    env.superuser()
        .await
        .batch_execute(
            "CREATE SEQUENCE public.ran_order; GRANT USAGE ON SEQUENCE public.ran_order TO app_user",
        )
        .await
        .unwrap();
    env
}

/// Waits until `n` clients wait for a backend.
async fn until_waiting(env: &TestEnv, n: f64) {
    for _ in 0..500 {
        let m = env.proxy.metrics().await;
        if metric(&m, "pgtenant_pool_waiting_clients").unwrap_or(0.0) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} clients never waited for the backend");
}

/// Sends `c`'s next statement, which waits for the one backend, and returns once the pool
/// counts `waiting` waiters. When it runs, it reports its place in the order and the tenant
/// whose rows it saw. (A statement with a function call of unknown effect would empty the
/// backend at release, and an emptied backend serves no tenant in particular: `nextval`
/// leaves only the sweep.)
async fn queue(
    env: &TestEnv,
    c: tokio_postgres::Client,
    waiting: f64,
) -> tokio::task::JoinHandle<(i64, String)> {
    let handle = tokio::spawn(async move { take_turn(&c).await });
    until_waiting(env, waiting).await;
    handle
}

/// Runs one numbered statement on `c` (the simple protocol: one statement, one checkout):
/// its place in the order the clients ran, and the tenant whose rows it saw.
async fn take_turn(c: &tokio_postgres::Client) -> (i64, String) {
    let rows = c
        .simple_query("SELECT nextval('public.ran_order'), tenant_id::text FROM invoices LIMIT 1")
        .await
        .expect("numbered statement");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    (
        row.get(0).unwrap().parse().unwrap(),
        row.get(1).unwrap().to_string(),
    )
}

/// acme holds the backend in a transaction; the clients of `order` (tenant, label) then
/// queue for it in that order; acme commits. Returns the labels in the order they ran, after
/// checking each ran under its own tenant.
async fn run_order(env: &TestEnv, order: &[(&str, &'static str)]) -> Vec<&'static str> {
    run_order_reloading(env, order, None).await
}

/// [`run_order`], with a reload to `affinity_overtakes = overtakes` once the first `after`
/// clients wait.
async fn run_order_reloading(
    env: &TestEnv,
    order: &[(&str, &'static str)],
    reload: Option<(usize, usize)>,
) -> Vec<&'static str> {
    let holder = env.proxy.connect("acme").await;
    // Every client logs in before the backend is taken (a login borrows it too).
    let mut clients = Vec::new();
    for (tenant, _) in order {
        clients.push(env.proxy.connect(tenant).await);
    }
    holder.batch_execute("BEGIN").await.unwrap();
    holder.query_one("SELECT 1", &[]).await.unwrap();
    let mut handles = Vec::new();
    for (i, ((tenant, label), c)) in order.iter().zip(clients).enumerate() {
        if let Some((after, overtakes)) = reload
            && after == i
        {
            let mut cfg = env.config();
            for db in cfg.databases.values_mut() {
                db.pool_size = 1;
                db.affinity_overtakes = Some(overtakes);
            }
            env.proxy.server.apply(cfg).expect("reload");
        }
        handles.push((*tenant, *label, queue(env, c, (i + 1) as f64).await));
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let mut ran = Vec::new();
    for (tenant, label, h) in handles {
        let (at, seen) = h.await.unwrap();
        let want = if tenant == "acme" { ACME } else { GLOBEX };
        assert_eq!(seen, want, "{label} saw another tenant's rows");
        ran.push((at, label));
    }
    ran.sort();
    ran.into_iter().map(|(_, l)| l).collect()
}

#[tokio::test]
async fn a_released_backend_goes_first_to_a_waiting_client_of_its_tenant() {
    let env = one_backend(None).await;
    let ran = run_order(&env, &[("globex", "globex"), ("acme", "acme")]).await;
    assert_eq!(
        ran,
        ["acme", "globex"],
        "acme's waiting client should overtake"
    );
    let m = env.proxy.metrics().await;
    let handoffs = metric(&m, "pgtenant_pool_affinity_handoffs_total").unwrap_or(0.0);
    assert!(handoffs >= 1.0, "hand-overs counted: {handoffs}");
}

#[tokio::test]
async fn no_waiting_client_is_overtaken_more_than_the_bound() {
    let env = one_backend(Some(1)).await;
    let ran = run_order(
        &env,
        &[("globex", "globex"), ("acme", "acme 1"), ("acme", "acme 2")],
    )
    .await;
    // acme 1 overtakes globex once; then globex's turn comes before acme 2's.
    assert_eq!(ran, ["acme 1", "globex", "acme 2"]);
}

/// A client that began waiting while affinity was off (0) counts its overtakes once a reload
/// turns it on: it waits in the same queue either way.
#[tokio::test]
async fn a_reload_that_turns_affinity_on_bounds_overtaking_clients_already_waiting() {
    let env = one_backend(Some(0)).await;
    let ran = run_order_reloading(
        &env,
        &[("globex", "globex"), ("acme", "acme 1"), ("acme", "acme 2")],
        Some((1, 1)),
    )
    .await;
    assert_eq!(ran, ["acme 1", "globex", "acme 2"]);
}

#[tokio::test]
async fn zero_overtakes_keeps_arrival_order() {
    let env = one_backend(Some(0)).await;
    let ran = run_order(&env, &[("globex", "globex"), ("acme", "acme")]).await;
    assert_eq!(ran, ["globex", "acme"]);
    let m = env.proxy.metrics().await;
    assert_eq!(
        metric(&m, "pgtenant_pool_affinity_handoffs_total").unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn a_tenant_without_an_idle_backend_of_its_own_takes_the_least_recently_used() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 2;
        }
    })
    .await;
    let acme = env.proxy.connect("acme").await;
    let globex = env.proxy.connect("globex").await;
    let initech = env.proxy.connect("initech").await;
    // acme and globex each hold a backend; acme gives its back first.
    for c in [&acme, &globex] {
        c.batch_execute("BEGIN").await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    acme.batch_execute("COMMIT").await.unwrap();
    globex.batch_execute("COMMIT").await.unwrap();
    let switches = |m: &str| metric(m, "pgtenant_context_switches_total").unwrap_or(0.0);
    let before = switches(&env.proxy.metrics().await);
    // initech has no backend of its own: it takes acme's, used least recently, and
    // globex's stays with globex.
    initech.simple_query("SELECT 1").await.unwrap();
    globex.simple_query("SELECT 1").await.unwrap();
    let after = switches(&env.proxy.metrics().await);
    assert_eq!(
        after - before,
        1.0,
        "initech should switch acme's backend, and globex keep its own"
    );
}

/// acme holds the one backend while globex waits for it; acme's transaction ends and its
/// next `next` statements follow at once. Returns the order numbers acme's statements got,
/// globex's, and the tenant switches meanwhile.
async fn hold_while_waiting(env: &TestEnv, next: usize) -> (Vec<i64>, i64, f64) {
    let acme = env.proxy.connect("acme").await;
    let globex = env.proxy.connect("globex").await;
    let switches = |m: &str| metric(m, "pgtenant_context_switches_total").unwrap_or(0.0);
    acme.batch_execute("BEGIN").await.unwrap();
    acme.simple_query("SELECT 1").await.unwrap();
    let before = switches(&env.proxy.metrics().await);
    let waiting = queue(env, globex, 1.0).await;
    acme.batch_execute("COMMIT").await.unwrap();
    let mut ran = Vec::new();
    for _ in 0..next {
        let (at, seen) = take_turn(&acme).await;
        assert_eq!(seen, ACME, "acme saw another tenant's rows");
        ran.push(at);
    }
    let (globex_at, seen) = waiting.await.unwrap();
    assert_eq!(seen, GLOBEX, "globex saw another tenant's rows");
    let after = switches(&env.proxy.metrics().await);
    (ran, globex_at, after - before)
}

#[tokio::test]
async fn a_client_keeps_its_backend_for_its_next_transaction_while_others_wait() {
    let env = one_backend_holding(None, Some(Duration::from_secs(2))).await;
    let (acme, globex, switches) = hold_while_waiting(&env, 1).await;
    assert_eq!(
        (acme, globex),
        (vec![1], 2),
        "acme's next statement should come first"
    );
    // One switch: to globex, once acme's hold ran out; none for acme's next statement.
    assert_eq!(switches, 1.0);
    let m = env.proxy.metrics().await;
    assert!(metric(&m, "pgtenant_pool_affinity_holds_total").unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn no_hold_keeps_arrival_order() {
    let env = one_backend_holding(None, Some(Duration::ZERO)).await;
    let (acme, globex, _) = hold_while_waiting(&env, 1).await;
    assert_eq!((acme, globex), (vec![2], 1), "globex waited first");
}

/// Each hold overtakes every waiting client: with `affinity_overtakes = 1` acme keeps the
/// backend once, then globex's turn comes.
#[tokio::test]
async fn holds_count_against_the_overtaking_bound() {
    let env = one_backend_holding(Some(1), Some(Duration::from_secs(2))).await;
    let (acme, globex, _) = hold_while_waiting(&env, 2).await;
    assert_eq!((acme, globex), (vec![1, 3], 2));
}
