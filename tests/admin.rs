//! The admin console (virtual database `pgtenant`): SHOW tables with PgBouncer-like
//! columns, access rules, KILL, PAUSE/RESUME and SHUTDOWN, against a real PostgreSQL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use pgtenant::auth::scram::ScramVerifier;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn admin_env() -> TestEnv {
    TestEnv::start_with(|cfg| {
        cfg.admin
            .users
            .insert("admin".into(), ScramVerifier::hash_password("admin-secret"));
        cfg.admin.stats_users.insert(
            "watcher".into(),
            ScramVerifier::hash_password("watch-secret"),
        );
    })
    .await
}

fn admin_str(env: &TestEnv, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=pgtenant",
        env.proxy.addr.port()
    )
}

/// A SHOW result as (columns, rows of name -> value).
async fn show(c: &Client, what: &str) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let msgs = c
        .simple_query(&format!("SHOW {what}"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let row = r
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect();
                rows.push(row);
            }
            _ => {}
        }
    }
    (columns, rows)
}

fn code(e: &tokio_postgres::Error) -> String {
    sqlstate(e).unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_describe_pools_clients_servers_and_tenants() {
    let env = admin_env().await;
    let mut f = Failures::default();
    let admin = connect(&admin_str(&env, "admin", "admin-secret"))
        .await
        .expect("admin logs in");
    let acme = env.proxy.connect("acme").await;
    acme.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let globex = env.proxy.connect("globex").await;
    globex.simple_query("SELECT 1").await.unwrap();

    let (cols, pools) = show(&admin, "POOLS").await;
    for c in [
        "database",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "maxwait",
        "pool_mode",
    ] {
        f.check(cols.iter().any(|x| x == c), || {
            format!("SHOW POOLS lacks {c}: {cols:?}")
        });
    }
    let app = pools.iter().find(|r| r["database"] == "app");
    f.check(
        app.is_some_and(|r| {
            r["sv_active"] == "1" && r["cl_idle_in_transaction"] == "1" && r["pool_size"] == "5"
        }),
        || format!("SHOW POOLS: {pools:?}"),
    );

    let (_, clients) = show(&admin, "CLIENTS").await;
    let acme_row = clients.iter().find(|r| r["tenant"] == "acme");
    f.check(
        acme_row.is_some_and(|r| r["state"] == "idle_in_transaction" && !r["link"].is_empty()),
        || format!("SHOW CLIENTS acme: {clients:?}"),
    );
    f.check(
        clients
            .iter()
            .any(|r| r["tenant"] == "globex" && r["state"] == "idle" && r["link"].is_empty()),
        || format!("SHOW CLIENTS globex: {clients:?}"),
    );
    f.check(!clients.iter().any(|r| r["user"] == "admin"), || {
        "the admin connection is listed as a client".into()
    });

    // Released connections are cleaned (RESET) in the background before they are idle.
    let mut servers = Vec::new();
    for _ in 0..50 {
        servers = show(&admin, "SERVERS").await.1;
        if servers.iter().any(|r| r["state"] == "idle") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let link = acme_row.map(|r| r["link"].clone()).unwrap_or_default();
    f.check(
        servers
            .iter()
            .any(|r| r["state"] == "active" && r["tenant"] == "acme" && r["id"] == link),
        || format!("SHOW SERVERS has no active acme server {link}: {servers:?}"),
    );
    f.check(servers.iter().any(|r| r["state"] == "idle"), || {
        format!("SHOW SERVERS has no idle server: {servers:?}")
    });

    let (_, tenants) = show(&admin, "TENANTS").await;
    f.check(tenants.len() == 3, || format!("SHOW TENANTS: {tenants:?}"));
    f.check(
        tenants.iter().any(|r| {
            r["tenant"] == "globex" && r["total_xact_count"] != "0" && r["cl_connected"] == "1"
        }),
        || format!("SHOW TENANTS globex: {tenants:?}"),
    );

    let (_, stats) = show(&admin, "STATS").await;
    f.check(
        stats.iter().any(|r| {
            r["database"] == "app" && r["total_xact_count"].parse::<u64>().unwrap_or(0) > 0
        }),
        || format!("SHOW STATS: {stats:?}"),
    );
    let (_, config) = show(&admin, "CONFIG").await;
    f.check(
        config
            .iter()
            .any(|r| r["key"] == "databases.app.pool_size" && r["value"] == "5"),
        || "SHOW CONFIG lacks the pool size".into(),
    );
    let everything = format!("{config:?}");
    for secret in [
        "app_password",
        "SCRAM-SHA-256$",
        "admin-secret",
        "demo-context-key",
    ] {
        f.check(!everything.contains(secret), || {
            format!("SHOW CONFIG shows {secret}")
        });
    }
    let (_, version) = show(&admin, "VERSION").await;
    f.check(
        version
            .first()
            .is_some_and(|r| r["version"].starts_with("pgtenant ")),
        || format!("SHOW VERSION: {version:?}"),
    );
    let (_, help) = show(&admin, "HELP").await;
    f.check(help.len() > 3, || "SHOW HELP is empty".into());

    // Errors keep the console usable.
    let e = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    f.check(code(&e) == "42704", || format!("unknown SHOW: {e}"));
    let e = admin.simple_query("DROP TABLE invoices").await.unwrap_err();
    f.check(code(&e) == "42601", || format!("unknown command: {e}"));
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    f.check(code(&e) == "0A000", || format!("extended protocol: {e}"));
    f.check(admin.simple_query("SHOW VERSION").await.is_ok(), || {
        "console unusable after errors".into()
    });
    acme.batch_execute("COMMIT").await.unwrap();
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_credentials_are_separate_from_tenants() {
    let env = admin_env().await;
    let mut f = Failures::default();
    for (user, pw) in [("acme", "acme-secret"), ("admin", "wrong"), ("nobody", "x")] {
        let r = connect(&admin_str(&env, user, pw)).await;
        f.check(
            r.as_ref().err().map(code).as_deref() == Some("28P01"),
            || format!("{user} on the console: {:?}", r.err()),
        );
    }
    // The admin's credentials do not reach a pool either.
    let r = connect(&env.proxy.conn_str_with("admin", "admin-secret")).await;
    f.check(
        r.as_ref().err().map(code).as_deref() == Some("28P01"),
        || format!("admin on the app database: {:?}", r.err()),
    );
    let watcher = connect(&admin_str(&env, "watcher", "watch-secret"))
        .await
        .expect("stats user logs in");
    f.check(watcher.simple_query("SHOW POOLS").await.is_ok(), || {
        "stats user cannot SHOW".into()
    });
    for cmd in ["RELOAD", "PAUSE", "RESUME", "KILL acme", "SHUTDOWN"] {
        let e = watcher.simple_query(cmd).await.err();
        f.check(e.as_ref().map(code).as_deref() == Some("42501"), || {
            format!("stats user ran {cmd}: {e:?}")
        });
    }
    f.check(!env.proxy.server.is_paused(), || {
        "stats user paused the proxy".into()
    });
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_pause_resume_and_shutdown() {
    let env = admin_env().await;
    let mut f = Failures::default();
    let admin = connect(&admin_str(&env, "admin", "admin-secret"))
        .await
        .unwrap();

    // KILL closes one tenant's clients, in or out of a transaction, and nobody else's.
    let acme1 = env.proxy.connect("acme").await;
    let acme2 = env.proxy.connect("acme").await;
    acme2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let globex = env.proxy.connect("globex").await;
    admin.simple_query("KILL acme").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (name, c) in [("acme1", &acme1), ("acme2", &acme2)] {
        f.check(c.simple_query("SELECT 1").await.is_err(), || {
            format!("{name} survived KILL")
        });
    }
    f.check(globex.simple_query("SELECT 1").await.is_ok(), || {
        "KILL hit globex".into()
    });
    let su = env.superuser().await;
    f.check(idle_in_transaction(&su).await == 0, || {
        "KILL left a transaction open".into()
    });
    let acme = env.proxy.connect("acme").await;

    // PAUSE waits for the open transaction; new transactions wait until RESUME.
    acme.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pause = tokio::spawn(async move {
        let r = admin.simple_query("PAUSE").await.map(|_| ());
        (admin, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.check(!pause.is_finished(), || {
        "PAUSE returned while a transaction ran".into()
    });
    acme.batch_execute("COMMIT").await.unwrap();
    let (admin, r) = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once transactions end")
        .unwrap();
    f.check(r.is_ok(), || format!("PAUSE: {r:?}"));
    let waiting = tokio::spawn(async move { globex.simple_query("SELECT 2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.check(!waiting.is_finished(), || {
        "a transaction ran while paused".into()
    });
    admin.simple_query("RESUME").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    f.check(matches!(r, Ok(Ok(Ok(())))), || {
        format!("after RESUME: {r:?}")
    });

    // SHUTDOWN: the same graceful path as SIGTERM.
    admin.simple_query("SHUTDOWN").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), acme.simple_query("SELECT 1")).await;
    f.check(matches!(r, Ok(Err(_))), || {
        format!("client after SHUTDOWN: {r:?}")
    });
    let ended = tokio::time::timeout(Duration::from_secs(10), env.proxy.task).await;
    f.check(ended.is_ok(), || {
        "the proxy did not stop after SHUTDOWN".into()
    });
    f.finish();
}
