//! Cost of the verified context against plain injection, per transaction.
//!
//!   cargo bench --bench verified_cost
//!
//! Starts a throwaway PostgreSQL with the demo schema and verified objects (as the
//! integration tests do), then times, interleaved on one connection, one autocommit
//! statement each: plain `set_config` of both demo settings vs `pgtenant.enter(...)` with a
//! proof (what each transaction gets), and `current_setting` vs the verified reader
//! `pgtenant.tenant_id()` (what each policy-checked statement pays once). Each round trip
//! includes the same localhost latency, so the difference is the database-side cost. The
//! proof computation (pgtenant's side, once per tenant and backend) is timed alone.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pgtenant::verified::{self, ContextKey};

const ACME: &str = "11111111-1111-4111-8111-111111111111";

fn proof(c: &mut Criterion) {
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    c.bench_function("verified/proof (proxy, once per tenant and backend)", |b| {
        b.iter(|| verified::proof(&key, black_box(12345), &[ACME.as_bytes(), b"enterprise"]))
    });
}

fn database(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(pgtenant::demo::start_cluster())
        .expect("cluster");
    let client = rt.block_on(async {
        let url = format!(
            "host={} port={} user=app_user password=app_password dbname=app",
            cluster.host(),
            cluster.port()
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    });
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    let (plain, enter, current, reader, pid) = rt.block_on(async {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        (
            client
                .prepare("SELECT set_config('app.current_tenant', $1, true), set_config('app.tenant_plan', $2, true)")
                .await
                .unwrap(),
            client
                .prepare("SELECT pgtenant.enter($1, $2, true, $3, $4)")
                .await
                .unwrap(),
            client
                .prepare("SELECT current_setting('app.current_tenant', true)")
                .await
                .unwrap(),
            client
                .prepare("SELECT pgtenant.enter($1, $2, true, $3, $4), (SELECT pgtenant.tenant_id())")
                .await
                .unwrap(),
            pid,
        )
    });
    let proof = verified::proof(&key, pid, &[ACME.as_bytes(), b"enterprise"]);
    let id = key.id();
    let mut g = c.benchmark_group("verified/database round trip");
    g.bench_function("plain set_config x2", |b| {
        b.iter(|| {
            rt.block_on(client.execute(&plain, &[&ACME, &"enterprise"]))
                .unwrap()
        })
    });
    g.bench_function("verified enter()", |b| {
        b.iter(|| {
            rt.block_on(client.execute(&enter, &[&id, &proof, &ACME, &"enterprise"]))
                .unwrap()
        })
    });
    g.bench_function("plain current_setting", |b| {
        b.iter(|| rt.block_on(client.execute(&current, &[])).unwrap())
    });
    g.bench_function("verified enter() + tenant_id()", |b| {
        b.iter(|| {
            rt.block_on(client.execute(&reader, &[&id, &proof, &ACME, &"enterprise"]))
                .unwrap()
        })
    });
    g.finish();
    // Server-side cost per call, without the round trip: 1000 calls in one statement.
    let mut g = c.benchmark_group("verified/1000 calls in one statement");
    let loops = rt.block_on(async {
        let mut v = Vec::new();
        for sql in [
            "SELECT count(set_config('app.current_tenant', $3, true) || set_config('app.tenant_plan', $4, true)) \
             FROM generate_series(1, 1000), (SELECT $1::int, $2::text) p",
            "SELECT count(pgtenant.enter($1, $2, true, $3, $4)) FROM generate_series(1, 1000)",
            "SELECT count(pgtenant.tenant_id()) FROM (SELECT pgtenant.enter($1, $2, true, $3, $4)) e, \
             generate_series(1, 1000)",
        ] {
            v.push(client.prepare(sql).await.unwrap());
        }
        v
    });
    for (name, st) in [
        "plain set_config x2",
        "verified enter()",
        "verified tenant_id()",
    ]
    .iter()
    .zip(&loops)
    {
        g.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(client.query_one(st, &[&id, &proof, &ACME, &"enterprise"]))
                    .unwrap()
            })
        });
    }
    g.finish();
    drop(client);
    let _ = rt.block_on(cluster.stop());
}

criterion_group!(benches, proof, database);
criterion_main!(benches);
