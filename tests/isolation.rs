//! Proof of tenant isolation under load, faults and hostile input: hundreds of clients of
//! three tenants share a pool of five backends; contexts never cross, session state never
//! leaks to the next tenant of a backend, pipelines keep every transaction in context, and
//! abrupt disconnects or killed backends leave the pool usable.

mod common;
#[path = "isolation/hygiene.rs"]
mod hygiene;
#[path = "isolation/leftovers.rs"]
mod leftovers;
#[path = "isolation/levels.rs"]
mod levels;
#[path = "isolation/pipelines.rs"]
mod pipelines;
#[path = "isolation/split.rs"]
mod split;
#[path = "isolation/unsynced.rs"]
mod unsynced;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::raw::{self, Msg, RawConn};
use common::*;
use pgtenant::protocol::messages;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const CTX: &str = "SELECT current_setting('app.current_tenant')";
const CTX_AND_PLAN: &str =
    "SELECT current_setting('app.current_tenant'), current_setting('app.tenant_plan')";
const INVOICES: &str =
    "SELECT current_setting('app.current_tenant'), tenant_id::text FROM invoices";

/// Gives every database `n` backend connections (1: each client takes over the backend the
/// previous one left).
fn pool_of(c: &mut pgtenant::config::Config, n: usize) {
    for db in c.databases.values_mut() {
        db.pool_size = n;
    }
}

/// A pool of `n` whose backends are cleaned, not pinned, when a transaction leaves session
/// state: so the next tenant gets the very backend the state was left on.
fn cleaned_pool_of(c: &mut pgtenant::config::Config, n: usize) {
    pool_of(c, n);
    for db in c.databases.values_mut() {
        db.pin_session_state = pgtenant::config::PinMode::Clean;
    }
}

/// A tiny deterministic RNG (xorshift64*), so the load is reproducible without new crates.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one tenant should observe.
#[derive(Clone, Copy)]
struct Expect {
    name: &'static str,
    id: &'static str,
    plan: &'static str,
    invoices: usize,
}

fn expect(name: &str) -> Expect {
    let (name, _, id) = *TENANTS.iter().find(|t| t.0 == name).expect("known tenant");
    let (plan, invoices) = match name {
        "acme" => ("enterprise", 3),
        "globex" => ("free", 3),
        _ => ("", 2),
    };
    Expect {
        name,
        id,
        plan,
        invoices,
    }
}

/// Shared counters of the load test.
#[derive(Default)]
struct Stats {
    checks: AtomicUsize,
    mismatches: AtomicUsize,
    failures: AtomicUsize,
    samples: Mutex<Vec<String>>,
}

impl Stats {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            self.note(what());
        }
    }

    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.note(what);
    }

    fn note(&self, what: String) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 20 {
            s.push(what);
        }
    }
}

/// Connects with tokio-postgres, returning the task driving the connection so a test can
/// abort it (an abrupt disconnect: the socket closes without a Terminate).
async fn connect_abortable(
    conn_str: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conn_str, NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

type R<T> = Result<T, String>;

/// An error with its SQLSTATE and server message, for failure reports.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {} {}", d.severity(), d.code().code(), d.message()),
        None => e.to_string(),
    }
}

fn e2s(step: &str) -> impl FnOnce(tokio_postgres::Error) -> String + '_ {
    move |e| format!("{step}: {}", describe(&e))
}

/// Checks rows of `INVOICES`: the tenant's own rows, all of them, with its context.
fn check_invoices(stats: &Stats, ex: Expect, rows: &[tokio_postgres::Row], step: &str) {
    stats.check(rows.len() == ex.invoices, || {
        format!(
            "{} {step}: {} invoice rows, expected {}",
            ex.name,
            rows.len(),
            ex.invoices
        )
    });
    for r in rows {
        let (ctx, tid): (String, String) = (r.get(0), r.get(1));
        stats.check(ctx == ex.id && tid == ex.id, || {
            format!("{} {step}: context {ctx}, row of tenant {tid}", ex.name)
        });
    }
}

fn check_ctx(stats: &Stats, ex: Expect, row: &tokio_postgres::Row, step: &str) {
    let ctx: String = row.get(0);
    stats.check(ctx == ex.id, || {
        format!("{} {step}: context {ctx}", ex.name)
    });
}

fn check_ctx_plan(stats: &Stats, ex: Expect, row: &tokio_postgres::Row, step: &str) {
    let (ctx, plan): (String, String) = (row.get(0), row.get(1));
    stats.check(ctx == ex.id && plan == ex.plan, || {
        format!("{} {step}: context {ctx}, plan {plan:?}", ex.name)
    });
}

/// One client of the load test: `iterations` random operations; a `dropper` sometimes
/// vanishes in the middle of a transaction and comes back on a new connection.
async fn load_client(
    conn_str: String,
    ex: Expect,
    seed: u64,
    dropper: bool,
    iterations: usize,
    stats: Arc<Stats>,
) -> R<()> {
    let mut rng = Rng::new(seed);
    let (mut c, mut task) = connect_abortable(&conn_str).await.map_err(e2s("connect"))?;
    let mut stmt = c.prepare(INVOICES).await.map_err(e2s("prepare"))?;
    let mut stmt_param = c
        .prepare("SELECT current_setting('app.current_tenant'), $1::int4")
        .await
        .map_err(e2s("prepare"))?;
    let ops = if dropper { 9 } else { 8 };
    for i in 0..iterations {
        match rng.below(ops) {
            // (a) autocommit query over an RLS table.
            0 => {
                let rows = c.query(INVOICES, &[]).await.map_err(e2s("autocommit"))?;
                check_invoices(&stats, ex, &rows, "autocommit");
            }
            // (b) explicit transaction over several messages.
            1 => {
                let tx = c.transaction().await.map_err(e2s("begin"))?;
                for _ in 0..3 {
                    let row = tx
                        .query_one(CTX_AND_PLAN, &[])
                        .await
                        .map_err(e2s("in transaction"))?;
                    check_ctx_plan(&stats, ex, &row, "in transaction");
                }
                let rows = tx
                    .query(INVOICES, &[])
                    .await
                    .map_err(e2s("in transaction"))?;
                check_invoices(&stats, ex, &rows, "in transaction");
                tx.commit().await.map_err(e2s("commit"))?;
            }
            // (c) a pipeline of several queries in flight at once.
            2 => {
                let (r1, r2, r3, r4) = tokio::join!(
                    c.query(CTX, &[]),
                    c.query(&stmt, &[]),
                    c.query(&stmt, &[]),
                    c.query(CTX_AND_PLAN, &[])
                );
                let r1 = r1.map_err(e2s("pipeline"))?;
                check_ctx(&stats, ex, &r1[0], "pipeline");
                check_invoices(&stats, ex, &r2.map_err(e2s("pipeline"))?, "pipeline");
                check_invoices(&stats, ex, &r3.map_err(e2s("pipeline"))?, "pipeline");
                check_ctx_plan(&stats, ex, &r4.map_err(e2s("pipeline"))?[0], "pipeline");
            }
            // (d) prepared statements reused across many transactions.
            3 => {
                for k in 0..3 {
                    let rows = c.query(&stmt, &[]).await.map_err(e2s("prepared"))?;
                    check_invoices(&stats, ex, &rows, "prepared");
                    let n = (i * 10 + k) as i32;
                    let row = c
                        .query_one(&stmt_param, &[&n])
                        .await
                        .map_err(e2s("prepared with parameter"))?;
                    check_ctx(&stats, ex, &row, "prepared with parameter");
                    stats.check(row.get::<_, i32>(1) == n, || {
                        format!("{}: parameter {n} came back wrong", ex.name)
                    });
                }
            }
            // (e) an error in the middle of a transaction.
            4 => {
                let tx = c.transaction().await.map_err(e2s("begin"))?;
                let row = tx.query_one(CTX, &[]).await.map_err(e2s("before error"))?;
                check_ctx(&stats, ex, &row, "before error");
                let err = tx.query("SELECT 1/0", &[]).await.err();
                let code = err.as_ref().and_then(sqlstate);
                stats.check(code.as_deref() == Some("22012"), || {
                    format!("{}: 1/0 gave {code:?}", ex.name)
                });
                let err = tx.query_one(CTX, &[]).await.err();
                let code = err.as_ref().and_then(sqlstate);
                stats.check(code.as_deref() == Some("25P02"), || {
                    format!("{}: statement after error gave {code:?}", ex.name)
                });
                tx.rollback().await.map_err(e2s("rollback"))?;
                let row = c
                    .query_one(CTX_AND_PLAN, &[])
                    .await
                    .map_err(e2s("after rollback"))?;
                check_ctx_plan(&stats, ex, &row, "after rollback");
            }
            // (f) a multi-statement simple query.
            5 => {
                let msgs = c
                    .simple_query(
                        "SELECT current_setting('app.current_tenant'); SELECT current_setting('app.current_tenant')",
                    )
                    .await
                    .map_err(e2s("simple multi-statement"))?;
                let vals: Vec<String> = msgs
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or("<null>").to_string())
                        }
                        _ => None,
                    })
                    .collect();
                stats.check(vals.len() == 2, || {
                    format!("{}: multi-statement gave {} rows", ex.name, vals.len())
                });
                for v in vals {
                    stats.check(v == ex.id, || {
                        format!("{} multi-statement: context {v}", ex.name)
                    });
                }
            }
            // Hostile input: changing the context, or writing another tenant's rows.
            6 => {
                let other = TENANTS.iter().map(|t| t.2).find(|id| *id != ex.id).unwrap();
                for sql in [
                    format!("SET app.current_tenant = '{other}'"),
                    format!("SELECT set_config('app.current_tenant', '{other}', false)"),
                    "RESET app.current_tenant".to_string(),
                ] {
                    let code = c
                        .batch_execute(&sql)
                        .await
                        .err()
                        .as_ref()
                        .and_then(sqlstate);
                    stats.check(code.as_deref() == Some("42501"), || {
                        format!("{}: {sql:?} gave {code:?}", ex.name)
                    });
                }
                let insert =
                    format!("INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{other}', 1)");
                let code = c
                    .execute(insert.as_str(), &[])
                    .await
                    .err()
                    .as_ref()
                    .and_then(sqlstate);
                stats.check(code.as_deref() == Some("42501"), || {
                    format!("{}: foreign insert gave {code:?}", ex.name)
                });
                let row = c
                    .query_one(CTX_AND_PLAN, &[])
                    .await
                    .map_err(e2s("after hostile input"))?;
                check_ctx_plan(&stats, ex, &row, "after hostile input");
            }
            // A transaction started and ended by simple queries, spanning several messages.
            7 => {
                c.batch_execute("BEGIN").await.map_err(e2s("BEGIN"))?;
                let rows = c
                    .query(&stmt, &[])
                    .await
                    .map_err(e2s("simple-begun transaction"))?;
                check_invoices(&stats, ex, &rows, "simple-begun transaction");
                let row = c
                    .query_one(CTX_AND_PLAN, &[])
                    .await
                    .map_err(e2s("simple-begun transaction"))?;
                check_ctx_plan(&stats, ex, &row, "simple-begun transaction");
                c.batch_execute("COMMIT").await.map_err(e2s("COMMIT"))?;
            }
            // (g) abrupt disconnect in the middle of a transaction, then reconnect.
            _ => {
                c.batch_execute("BEGIN")
                    .await
                    .map_err(e2s("BEGIN before drop"))?;
                let row = c.query_one(CTX, &[]).await.map_err(e2s("before drop"))?;
                check_ctx(&stats, ex, &row, "before drop");
                if rng.below(2) == 0 {
                    // A request still in flight when the socket goes away.
                    let c2 = c;
                    let inflight = tokio::spawn(async move {
                        let _ = c2
                            .query(
                                "SELECT pg_sleep(0.02), current_setting('app.current_tenant')",
                                &[],
                            )
                            .await;
                    });
                    tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
                    task.abort();
                    let _ = inflight.await;
                } else {
                    task.abort();
                    drop(c);
                }
                (c, task) = connect_abortable(&conn_str)
                    .await
                    .map_err(e2s("reconnect"))?;
                stmt = c
                    .prepare(INVOICES)
                    .await
                    .map_err(e2s("prepare after reconnect"))?;
                stmt_param = c
                    .prepare("SELECT current_setting('app.current_tenant'), $1::int4")
                    .await
                    .map_err(e2s("prepare after reconnect"))?;
                let rows = c.query(&stmt, &[]).await.map_err(e2s("after reconnect"))?;
                check_invoices(&stats, ex, &rows, "after reconnect");
            }
        }
    }
    drop(c);
    let _ = task.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tenants_never_see_each_other() {
    let env = TestEnv::start().await;
    let stats = Arc::new(Stats::default());
    // The clients run on their own runtime, as they would in their own processes: their
    // SCRAM key derivation (slow in a debug build) must not starve the proxy's tasks.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let (tenant, _, _) = TENANTS[i as usize % 3];
        let ex = expect(tenant);
        let conn_str = env.proxy.conn_str(tenant);
        let stats = stats.clone();
        let dropper = i % 5 == 0;
        tasks.push(clients.spawn(async move {
            if let Err(e) =
                load_client(conn_str, ex, 0xC0FFEE + i, dropper, 15, stats.clone()).await
            {
                stats.fail(format!("client {i} ({tenant}): {e}"));
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("client task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("load finished within 60 s");
    clients.shutdown_background();
    let samples = stats.samples.lock().unwrap().clone();
    let (checks, mismatches, failures) = (
        stats.checks.load(Ordering::Relaxed),
        stats.mismatches.load(Ordering::Relaxed),
        stats.failures.load(Ordering::Relaxed),
    );
    eprintln!("{checks} checks, {mismatches} mismatches, {failures} failed clients");
    assert_eq!(
        mismatches, 0,
        "tenant context or rows crossed tenants: {samples:#?}"
    );
    assert_eq!(failures, 0, "clients failed: {samples:#?}");
    assert!(checks > 2000, "only {checks} checks ran");

    let su = env.superuser().await;
    assert_eq!(
        idle_in_transaction(&su).await,
        0,
        "an app_user backend was left inside a transaction"
    );
    // The pool still serves every tenant afterwards.
    for (tenant, _, id) in TENANTS {
        let c = env.proxy.connect(tenant).await;
        assert_eq!(c.query_one(CTX, &[]).await.unwrap().get::<_, String>(0), id);
    }
}

#[tokio::test]
async fn no_context_leaks_to_the_next_tenant_on_a_single_connection() {
    let env = TestEnv::start_with(|c| pool_of(c, 1)).await;
    let long = async {
        let acme = env.proxy.connect("acme").await;
        let globex = env.proxy.connect("globex").await;
        let ctx_missing_ok = "SELECT current_setting('app.current_tenant', true)";

        // Statements that cannot run in a transaction block get a session-level context;
        // the next tenant of the (only) backend must not inherit it.
        acme.batch_execute("VACUUM invoices")
            .await
            .expect("VACUUM (simple protocol) works through the proxy");
        assert_eq!(one(&globex, ctx_missing_ok).await, GLOBEX);
        assert_eq!(
            one(&globex, "SELECT current_setting('app.tenant_plan', true)").await,
            "free"
        );

        // app_user does not own invoices: PostgreSQL refuses CREATE INDEX with 42501
        // ("must be owner of table invoices"); it must come back cleanly, not hang.
        let err = acme
            .batch_execute(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS inv_amount ON invoices (amount_cents)",
            )
            .await
            .expect_err("app_user cannot index a table it does not own");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
        assert_eq!(one(&globex, ctx_missing_ok).await, GLOBEX);
        assert_eq!(one(&acme, ctx_missing_ok).await, ACME);

        // Session settings of one tenant never reach the next one.
        let default_search_path = one(&globex, "SELECT current_setting('search_path')").await;
        assert_eq!(default_search_path, "\"$user\", public");
        let globex_tz = one(&globex, "SHOW TimeZone").await;
        acme.batch_execute("SET search_path = pg_catalog, public")
            .await
            .unwrap();
        acme.batch_execute("SET statement_timeout = '123s'")
            .await
            .unwrap();
        assert_eq!(one(&globex, "SHOW statement_timeout").await, "0");
        assert_eq!(
            one(&globex, "SELECT current_setting('search_path')").await,
            default_search_path
        );
        assert_eq!(one(&globex, ctx_missing_ok).await, GLOBEX);

        // Reported parameters follow their client from transaction to transaction.
        let tokyo = if globex_tz == "Asia/Tokyo" {
            "Europe/Lisbon"
        } else {
            "Asia/Tokyo"
        };
        acme.batch_execute(&format!("SET TimeZone = '{tokyo}'"))
            .await
            .unwrap();
        assert_eq!(one(&acme, "SHOW TimeZone").await, tokyo);
        assert_eq!(one(&globex, "SHOW TimeZone").await, globex_tz);
        assert_eq!(
            one(&acme, "SHOW TimeZone").await,
            tokyo,
            "acme's TimeZone follows it to the shared backend"
        );
        assert_eq!(one(&globex, "SHOW TimeZone").await, globex_tz);
        assert_eq!(one(&acme, ctx_missing_ok).await, ACME);
        assert_eq!(one(&globex, ctx_missing_ok).await, GLOBEX);

        // The checks below are collected so that one failure does not hide the next.
        let mut problems = Vec::new();

        // acme was the last to use the backend. A new client of another tenant starts
        // from PostgreSQL's defaults, not from acme's session.
        let acme_search_path = one(&acme, "SELECT current_setting('search_path')").await;
        let globex_new = env.proxy.connect("globex").await;
        for (what, sql, want) in [
            ("TimeZone", "SHOW TimeZone", globex_tz.as_str()),
            ("statement_timeout", "SHOW statement_timeout", "0"),
            (
                "search_path",
                "SELECT current_setting('search_path')",
                default_search_path.as_str(),
            ),
            ("context", ctx_missing_ok, GLOBEX),
        ] {
            let got = one(&globex_new, sql).await;
            if got != want {
                problems.push(format!(
                    "a new globex client after acme sees {what} = {got:?}, expected {want:?}"
                ));
            }
        }
        assert_eq!(one(&acme, "SHOW TimeZone").await, tokyo);
        eprintln!("acme's search_path after SET and other tenants' turns: {acme_search_path}");

        // VACUUM through the extended protocol (what tokio-postgres' execute and most
        // drivers send: Parse/Describe/Sync, then Bind/Execute/Sync). PostgreSQL runs it
        // for app_user when connected directly ...
        let direct = env.app_user_direct().await;
        direct
            .execute("VACUUM invoices", &[])
            .await
            .expect("VACUUM (extended protocol) works directly against PostgreSQL");
        // ... so it must work through the proxy too, and leave no context behind.
        if let Err(e) = acme.execute("VACUUM invoices", &[]).await {
            problems.push(format!(
                "VACUUM (extended protocol) through the proxy failed: {e:?}"
            ));
        }
        assert_eq!(one(&globex, ctx_missing_ok).await, GLOBEX);
        assert_eq!(one(&acme, ctx_missing_ok).await, ACME);
        assert!(problems.is_empty(), "{problems:#?}");
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}
