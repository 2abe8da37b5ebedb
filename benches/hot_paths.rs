//! Criterion micro-benchmarks of the proxy's per-message and per-transaction hot paths.
//!
//!   cargo bench --bench hot_paths                       # full run
//!   cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 2 framing
//!
//! `cargo test --release --all-targets` runs each benchmark once (criterion's test mode).
//! The pool group starts a throwaway PostgreSQL (like the integration tests; as root it runs
//! as the `postgres` OS user) only when that group is selected, and stops it afterwards.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pgtenant::backend::injection::InjectionPlan;
use pgtenant::backend::statements::BackendStatements;
use pgtenant::config::Config;
use pgtenant::metrics::Metrics;
use pgtenant::policy::Reading;
use pgtenant::policy::sql;
use pgtenant::pool::{Cleanup, Pool};
use pgtenant::protocol::codec::split_frame;
use pgtenant::protocol::messages::{self, write_msg};
use pgtenant::protocol::{TxStatus, backend_tag as bt, frontend_tag as ft};
use pgtenant::session::flow::{Disposition, Flow, Owner};
use pgtenant::session::statements::{ClientStatements, Defined};
use pgtenant::shared::Server;
use pgtenant::tenant::TenantDirectory;

const MAX_MESSAGE: usize = 64 << 20;
const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// The example config, its injection plan and tenant directory (no sockets are opened).
fn tenants() -> (InjectionPlan, TenantDirectory) {
    let cfg = Config::parse(pgtenant::demo::EXAMPLE_CONFIG).expect("example config");
    let plan = InjectionPlan::new(cfg.context.settings(), None);
    let dir = TenantDirectory::from_config(&cfg, &plan);
    (plan, dir)
}

/// Parse(named) + Bind + Describe(portal) + Execute + Sync, as `pgbench -M prepared` or any
/// driver with a statement cache sends them (Parse only the first time, but framed anyway).
fn extended_request(out: &mut BytesMut, statement: &str, aid: &str) {
    messages::parse(out, statement, SELECT);
    messages::bind(out, statement, [aid.as_bytes()].into_iter());
    write_msg(out, ft::DESCRIBE, |b| b.put_slice(b"P\0"));
    messages::execute(out);
    messages::sync(out);
}

/// The backend's answer to one single-row SELECT: RowDescription, DataRow, CommandComplete,
/// ReadyForQuery.
fn select_reply(out: &mut BytesMut, value: &str) {
    write_msg(out, bt::ROW_DESCRIPTION, |b| {
        b.put_u16(1);
        b.put_slice(b"abalance\0");
        b.put_u32(16397);
        b.put_u16(3);
        b.put_u32(23);
        b.put_i16(4);
        b.put_i32(-1);
        b.put_u16(0);
    });
    data_row(out, &[value.as_bytes()]);
    write_msg(out, bt::COMMAND_COMPLETE, |b| b.put_slice(b"SELECT 1\0"));
    messages::ready_for_query(out, TxStatus::Idle);
}

fn data_row(out: &mut BytesMut, cols: &[&[u8]]) {
    write_msg(out, bt::DATA_ROW, |b| {
        b.put_u16(cols.len() as u16);
        for c in cols {
            b.put_i32(c.len() as i32);
            b.put_slice(c);
        }
    });
}

/// A read buffer holding many typical frames in both directions, and its frame count.
fn mixed_buffer() -> (BytesMut, u64) {
    let mut buf = BytesMut::new();
    for i in 0..64 {
        let aid = (i * 7919 % 1_000_000).to_string();
        messages::query(
            &mut buf,
            &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"),
        );
        extended_request(&mut buf, "s1", &aid);
        select_reply(&mut buf, "-4711");
        // A 20-row result of a typical three-column row.
        for r in 0..20 {
            let id = format!("{r:08}-1111-4111-8111-111111111111");
            data_row(&mut buf, &[id.as_bytes(), b"12345", b"some invoice text"]);
        }
    }
    let mut count = 0;
    let mut probe = buf.clone();
    while split_frame(&mut probe, MAX_MESSAGE).unwrap().is_some() {
        count += 1;
    }
    (buf, count)
}

fn framing(c: &mut Criterion) {
    let (buf, frames) = mixed_buffer();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(frames));
    g.bench_function("split_frame_mixed", |b| {
        b.iter_batched_ref(
            || buf.clone(),
            |buf| {
                while let Some(f) = split_frame(buf, MAX_MESSAGE).unwrap() {
                    black_box(f.tag);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// One extended-protocol transaction as the session handles it: the tenant's precomputed
/// Bind/Execute in front of the client's Parse/Bind/Describe/Execute/Sync in one write,
/// every request recorded in the flow, and every reply dispositioned.
fn injection(c: &mut Criterion) {
    let (_, dir) = tenants();
    let tenant = dir.lookup("acme").expect("tenant acme");
    let mut client = BytesMut::new();
    extended_request(&mut client, "", "4242");
    let client_frames: Vec<_> = {
        let mut b = client.clone();
        std::iter::from_fn(|| split_frame(&mut b, MAX_MESSAGE).unwrap()).collect()
    };
    // Injected replies (BindComplete, DataRow, CommandComplete) then the client's.
    let replies = [
        bt::BIND_COMPLETE,
        bt::DATA_ROW,
        bt::COMMAND_COMPLETE,
        bt::PARSE_COMPLETE,
        bt::BIND_COMPLETE,
        bt::ROW_DESCRIPTION,
        bt::DATA_ROW,
        bt::COMMAND_COMPLETE,
        bt::READY_FOR_QUERY,
    ];
    let mut g = c.benchmark_group("injection");
    g.throughput(Throughput::Elements(1));
    g.bench_function("inject_local_copy", |b| {
        let mut bout = BytesMut::with_capacity(8192);
        b.iter(|| {
            bout.clear();
            bout.extend_from_slice(&tenant.inject_local);
            black_box(bout.len());
        })
    });
    g.bench_function("extended_tx_inject_and_flow", |b| {
        let mut bout = BytesMut::with_capacity(8192);
        let mut flow = Flow::default();
        b.iter(|| {
            bout.clear();
            bout.extend_from_slice(&tenant.inject_local);
            flow.sent(ft::BIND, Owner::Proxy);
            flow.sent(ft::EXECUTE, Owner::Proxy);
            for f in &client_frames {
                bout.extend_from_slice(&f.raw);
                flow.sent(f.tag, Owner::Client);
            }
            let mut forwarded = 0;
            for &r in &replies {
                if flow.on_backend(r) == Disposition::Forward {
                    forwarded += 1;
                }
            }
            assert!(flow.is_idle());
            black_box((bout.len(), forwarded));
        })
    });
    g.finish();
}

/// Typical statements: pgbench select-only and TPC-B, an ORM-style insert with literals,
/// a commented multi-line report query, and transaction control.
const STATEMENTS: [(&str, &str); 6] = [
    ("select_param", SELECT),
    (
        "tpcb_update",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "insert_literals",
        "INSERT INTO invoices (tenant_id, project_id, amount_cents, note) VALUES \
         ('11111111-1111-4111-8111-111111111111', 42, 1999, 'it''s a $5 -- not a comment') RETURNING id",
    ),
    (
        "report_with_comments",
        "/* report */ SELECT p.name, sum(i.amount_cents) AS total -- per project\n\
         FROM projects p JOIN invoices i ON i.project_id = p.id\n\
         WHERE i.created_at > now() - interval '30 days' AND p.name <> 'set app.x'\n\
         GROUP BY p.name ORDER BY total DESC LIMIT 20",
    ),
    ("begin", "BEGIN"),
    (
        "set_config_refused",
        "SELECT set_config('app.current_tenant', 'x', false)",
    ),
];

fn sql_guard(c: &mut Criterion) {
    // What the server protects: the injected settings plus role and session_authorization.
    let mut protected = tenants().0.settings;
    protected.extend(["role".to_string(), "session_authorization".to_string()]);
    let mut g = c.benchmark_group("sql_guard");
    for (name, stmt) in STATEMENTS {
        g.throughput(Throughput::Bytes(stmt.len() as u64));
        // What the relay runs on every Query and Parse: one lexing pass, every answer.
        g.bench_function(format!("analyze/{name}"), |b| {
            b.iter(|| black_box(sql::analyze(black_box(stmt.as_bytes()), &protected)))
        });
        // The whole policy on a verdict-cache miss: the lexical guard, then the fast path
        // or PostgreSQL's parser (what `analyze` above cost before the parser came).
        g.bench_function(format!("policy/{name}"), |b| {
            b.iter(|| {
                black_box(pgtenant::policy::analyze(
                    black_box(stmt.as_bytes()),
                    &protected,
                ))
            })
        });
        // The three questions asked one at a time (three lexing passes).
        g.bench_function(format!("separately/{name}"), |b| {
            b.iter(|| {
                let s = black_box(stmt.as_bytes());
                black_box((
                    sql::find_protected_change(s, &protected).is_some(),
                    sql::may_change_session_state(s),
                    sql::is_no_transaction_block(s),
                ))
            })
        });
    }
    let report = STATEMENTS[3].1.as_bytes();
    g.throughput(Throughput::Bytes(report.len() as u64));
    g.bench_function("find_protected_change/report_with_comments", |b| {
        b.iter(|| black_box(sql::find_protected_change(black_box(report), &protected)))
    });
    g.bench_function("may_change_session_state/report_with_comments", |b| {
        b.iter(|| black_box(sql::may_change_session_state(black_box(report))))
    });
    g.bench_function("is_no_transaction_block/report_with_comments", |b| {
        b.iter(|| black_box(sql::is_no_transaction_block(black_box(report))))
    });
    g.finish();
}

fn parse_body(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b
}

fn statements(c: &mut Criterion) {
    let mut g = c.benchmark_group("statements");
    g.throughput(Throughput::Elements(1));
    // A driver's statement cache: 50 named statements.
    let bodies: Vec<Vec<u8>> = (0..50)
        .map(|i| parse_body(&format!("s{i}"), &format!("{SELECT} AND bid = {i}")))
        .collect();
    let mut client = ClientStatements::default();
    let usage = pgtenant::session::statements::Usage {
        pool: std::sync::Arc::default(),
        tenant: std::sync::Arc::default(),
    };
    let named = |client: &mut ClientStatements, body: &[u8]| match client.define(
        body,
        Reading::default(),
        || usage.clone(),
    ) {
        Some(Defined::Named(d)) => d,
        other => panic!("{other:?}"),
    };
    let defs: Vec<_> = bodies.iter().map(|b| named(&mut client, b)).collect();
    g.bench_function("client_define", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(client.define(&bodies[i], Reading::default(), || usage.clone()))
        })
    });
    // What drivers do for nearly every query: re-parse the unnamed statement.
    let unnamed = parse_body("", SELECT);
    g.bench_function("client_define_unnamed", |b| {
        b.iter(|| {
            black_box(
                client
                    .define(&unnamed, Reading::default(), || usage.clone())
                    .is_some(),
            )
        })
    });
    g.bench_function("client_get", |b| {
        let names: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % names.len();
            black_box(client.get(names[i].as_bytes()))
        })
    });
    g.bench_function("backend_touch_hit", |b| {
        let mut cache = BackendStatements::new(256, usize::MAX);
        for d in &defs {
            cache.insert(d, 0);
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % defs.len();
            black_box(cache.touch(&defs[i], 0))
        })
    });
    // A full cache (the default 256) that must evict on every insert: the worst case.
    let many: Vec<_> = (0..512)
        .map(|i| {
            named(
                &mut client,
                &parse_body("x", &format!("{SELECT} AND bid = {i}")),
            )
        })
        .collect();
    g.bench_function("backend_insert_evicting_256", |b| {
        let mut cache = BackendStatements::new(256, usize::MAX);
        for d in &many[..256] {
            cache.insert(d, 0);
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % many.len();
            if !cache.touch(&many[i], 0) {
                black_box(cache.insert(&many[i], 0));
            }
        })
    });
    g.finish();
}

/// A throwaway cluster with the demo schema and the pool pgtenant would build for it.
struct PoolEnv {
    rt: tokio::runtime::Runtime,
    pool: Arc<Pool>,
    cluster: Option<pgtenant::pgcluster::TempCluster>,
}

impl PoolEnv {
    fn start() -> Option<PoolEnv> {
        if let Err(e) = pgtenant::pgcluster::find_bindir() {
            eprintln!("pool benchmarks skipped: {e}");
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let cluster = rt
            .block_on(pgtenant::demo::start_cluster())
            .expect("throwaway PostgreSQL with the demo schema");
        let mut cfg = pgtenant::demo::config_for(&cluster).expect("config");
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
        let server = Server::new(cfg, Arc::new(Metrics::new())).expect("server state");
        let pool = server.pool("app").expect("pool app");
        // Open the one connection up front, so every measured checkout reuses it.
        rt.block_on(async {
            pool.checkout(None)
                .await
                .expect("backend connection")
                .release(Cleanup::None)
        });
        Some(PoolEnv {
            rt,
            pool,
            cluster: Some(cluster),
        })
    }
}

impl Drop for PoolEnv {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.take() {
            let _ = self.rt.block_on(c.stop());
        }
    }
}

fn pool(c: &mut Criterion) {
    let mut env: Option<Option<PoolEnv>> = None;
    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements(1));
    // Checkout of the idle connection (permit, idle pop, socket health peek) and release
    // without cleanup (reset_on_release = "tracked" after a clean transaction), then the
    // default release (reset_on_release = "always"): the context RESET is only recorded as
    // owed and rides ahead of the next user's first message, so neither does a round trip.
    for (name, cleanup) in [
        ("checkout_release_idle", Cleanup::None),
        ("checkout_release_reset_context", Cleanup::ResetContext),
    ] {
        g.bench_function(name, |b| {
            let Some(env) = env.get_or_insert_with(PoolEnv::start) else {
                return b.iter(|| ());
            };
            let pool = env.pool.clone();
            b.iter_custom(|iters| {
                env.rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let c = pool.checkout(None).await.expect("checkout");
                        c.release(cleanup);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(env);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = framing, injection, sql_guard, statements, pool
}
criterion_main!(benches);
