//! Configuration reload: in-process (tenants added, re-keyed and removed, pools resized,
//! invalid files refused as a whole) and end to end through the binary with SIGHUP and
//! SIGTERM, against a real PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pgtenant::auth::scram::ScramVerifier;
use pgtenant::config::TenantConfig;

const HOOLI: &str = "44444444-4444-4444-8444-444444444444";
const GLOBEX_REKEYED: &str = "55555555-5555-4555-8555-555555555555";
const CTX: &str = "SELECT current_setting('app.current_tenant')";

async fn ctx(c: &tokio_postgres::Client) -> Result<String, String> {
    c.query_one(CTX, &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()))
}

fn hooli() -> TenantConfig {
    TenantConfig {
        id: HOOLI.into(),
        password: ScramVerifier::hash_password("hooli-secret"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_tenants_and_pools_without_dropping_clients() {
    let env = TestEnv::start().await;
    let server = env.proxy.server.clone();
    let next = Arc::new(Mutex::new(env.config()));
    let source = next.clone();
    server.set_config_source(Box::new(move || Ok(source.lock().unwrap().clone())));
    let mut f = Failures::default();

    let acme = env.proxy.connect("acme").await;
    let globex = env.proxy.connect("globex").await;
    let initech = env.proxy.connect("initech").await;
    let app_pool = server.pool("app").unwrap();

    {
        let mut cfg = next.lock().unwrap();
        cfg.tenants.insert("hooli".into(), hooli());
        cfg.tenants.get_mut("globex").unwrap().id = GLOBEX_REKEYED.into();
        cfg.tenants.remove("initech");
        let db = cfg.databases.get_mut("app").unwrap();
        db.pool_size = 2;
        db.idle_timeout = Duration::from_secs(30);
    }
    let summary = server.reload();
    f.check(summary.is_ok(), || format!("reload: {summary:?}"));

    let hooli_client = connect(&env.proxy.conn_str_with("hooli", "hooli-secret")).await;
    match hooli_client {
        Ok(c) => f.check(ctx(&c).await.as_deref() == Ok(HOOLI), || {
            "hooli's context".into()
        }),
        Err(e) => f.check(false, || format!("new tenant cannot log in: {e}")),
    }
    f.check(ctx(&acme).await.as_deref() == Ok(ACME), || {
        "acme after reload".into()
    });
    let g = ctx(&globex).await;
    f.check(g.as_deref() == Ok(GLOBEX_REKEYED), || {
        format!("re-keyed globex's open connection got {g:?}")
    });
    let i = ctx(&initech).await;
    f.check(i.is_err(), || {
        format!("removed tenant's connection still works: {i:?}")
    });
    let again = connect(&env.proxy.conn_str("initech")).await;
    f.check(
        again.as_ref().err().and_then(sqlstate).as_deref() == Some("28P01"),
        || "a removed tenant can still log in".into(),
    );
    let same_pool = server.pool("app").unwrap();
    f.check(Arc::ptr_eq(&app_pool, &same_pool), || {
        "a size change rebuilt the pool".into()
    });
    f.check(same_pool.size() == 2, || {
        format!("pool size {}", same_pool.size())
    });
    // The smaller pool still serves more clients than it has connections.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let cs = env.proxy.conn_str("acme");
            tokio::spawn(async move {
                let c = connect(&cs).await.map_err(|e| e.to_string())?;
                c.simple_query("SELECT pg_sleep(0.05)")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        f.check(r.is_ok(), || format!("resized pool failed a client: {r:?}"));
    }
    let m = env.proxy.metrics().await;
    f.check(m.contains("pgtenant_pool_size{pool=\"app\"} 2"), || {
        "pool size metric".into()
    });

    // Invalid: refused as a whole, naming the key; the previous configuration stays.
    next.lock()
        .unwrap()
        .databases
        .get_mut("app")
        .unwrap()
        .pool_size = 0;
    next.lock().unwrap().tenants.insert("late".into(), hooli());
    let e = server.reload();
    f.check(
        e.as_ref()
            .is_err_and(|e| e.to_string().contains("databases.app.pool_size")),
        || format!("invalid reload: {e:?}"),
    );
    f.check(server.tenants().by_name("late").is_none(), || {
        "part of an invalid config was applied".into()
    });
    f.check(ctx(&acme).await.as_deref() == Ok(ACME), || {
        "acme after refusal".into()
    });
    // The injected settings cannot change under running clients.
    {
        let mut cfg = next.lock().unwrap();
        cfg.databases.get_mut("app").unwrap().pool_size = 2;
        cfg.context.extra_settings.push("app.region".into());
    }
    let e = server.reload();
    f.check(
        e.as_ref().is_err_and(|e| e.to_string().contains("context")),
        || format!("context change: {e:?}"),
    );
    let m = env.proxy.metrics().await;
    f.check(
        m.contains("pgtenant_config_reloads_total{result=\"failure\"} 2"),
        || "failed reloads not counted".into(),
    );
    f.check(
        m.contains("pgtenant_config_reloads_total{result=\"success\"} 1"),
        || "successful reload not counted".into(),
    );
    f.finish();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[allow(
    unsafe_code,
    reason = "kill(2) has no safe wrapper in the dependencies"
)]
fn signal(child: &tokio::process::Child, sig: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_sigterm_exits_cleanly() {
    let cluster = start_cluster().await;
    let dir = tempdir();
    let path = dir.join("pgtenant.toml");
    let base = include_str!("../config.toml")
        .replace("port = 5432", &format!("port = {}", cluster.port()));
    std::fs::write(&path, &base).unwrap();
    let (port, mport) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--config", path.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
        .env("PGTENANT_LOG", "warn")
        .env(
            "PGTENANT_CONTEXT_KEY",
            std::str::from_utf8(pgtenant::demo::DEMO_CONTEXT_KEY).unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("pgtenant starts");
    let conn = |user: &str, pw: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={pw} dbname=app")
    };
    let mut acme = None;
    for _ in 0..100 {
        if let Ok(c) = connect(&conn("acme", "acme-secret")).await {
            acme = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acme = acme.expect("the binary serves clients");
    let mut f = Failures::default();

    let added = format!(
        "{base}\n[tenants.hooli]\nid = \"{HOOLI}\"\npassword = \"{}\"\n",
        ScramVerifier::hash_password("hooli-secret")
    );
    std::fs::write(&path, &added).unwrap();
    signal(&child, libc::SIGHUP);
    let mut hooli = None;
    for _ in 0..50 {
        if let Ok(c) = connect(&conn("hooli", "hooli-secret")).await {
            hooli = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match &hooli {
        Some(c) => f.check(ctx(c).await.as_deref() == Ok(HOOLI), || {
            "hooli's context".into()
        }),
        None => f.check(false, || "SIGHUP did not add the tenant".into()),
    }

    // A broken file: the running configuration stays.
    std::fs::write(&path, "[server]\nmax_client_connections = 0\n").unwrap();
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.check(
        connect(&conn("hooli", "hooli-secret")).await.is_ok(),
        || "a broken file replaced the configuration".into(),
    );
    f.check(ctx(&acme).await.as_deref() == Ok(ACME), || {
        "acme after the broken reload".into()
    });
    let metrics = http_get(format!("127.0.0.1:{mport}").parse().unwrap(), "/metrics").await;
    f.check(
        metrics.contains("pgtenant_config_reloads_total{result=\"failure\"} 1"),
        || "the failed reload is not counted".into(),
    );

    drop(acme);
    drop(hooli);
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    f.check(status.success(), || format!("exit status {status}"));
    f.finish();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pgtenant-reload-{}", rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
