//! `pgtenant demo`: a throwaway PostgreSQL with the example multi-tenant RLS schema, the
//! proxy in front of it (configured by the repository's `config.toml`), and ready-to-paste
//! psql commands for two tenants. Ctrl-C stops everything and deletes the cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pgcluster::{ClusterOptions, TempCluster};
use crate::verified::ContextKey;
use crate::verified::install::KeyStep;

/// The example schema: tenants, projects, invoices, RLS forced, app_user without bypass.
pub const SCHEMA: &str = include_str!("demo_schema.sql");
/// The example configuration the demo runs with (backend address filled in at run time).
pub const EXAMPLE_CONFIG: &str = include_str!("../config.toml");
/// Demo tenants and their passwords (the verifiers in config.toml match these).
pub const DEMO_TENANTS: [(&str, &str); 2] = [("acme", "acme-secret"), ("globex", "globex-secret")];

/// The demo's verified-context key. Public on purpose, like the demo passwords: the demo
/// cluster is throwaway. A real deployment reads its key from `context.key_file`/`key_env`.
pub const DEMO_CONTEXT_KEY: &[u8] = b"pgtenant-demo-context-key-not-secret-0123456789";

/// Starts a cluster with the verified-context objects (`pgtenant db install`, with
/// [`DEMO_CONTEXT_KEY`]) and the example schema loaded in database `app`.
pub async fn start_cluster() -> anyhow::Result<TempCluster> {
    let cluster = TempCluster::start(ClusterOptions::default())
        .await
        .context("starting PostgreSQL")?;
    load_example(&cluster).await?;
    Ok(cluster)
}

/// Creates database `app` on a running cluster with the verified-context objects and the
/// example schema (for clusters started with options of their own, such as TLS).
pub async fn load_example(cluster: &TempCluster) -> anyhow::Result<()> {
    cluster
        .psql("postgres", "CREATE DATABASE app")
        .await
        .context("creating database app")?;
    // The install grants to app_user, which must exist first; the schema script then sets
    // its attributes.
    cluster
        .psql(
            "app",
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_user') \
             THEN CREATE ROLE app_user; END IF; END $$",
        )
        .await
        .context("creating app_user")?;
    let cfg = config_for(cluster)?;
    install_verified(cluster, &cfg, KeyStep::Install).await?;
    cluster
        .psql("app", SCHEMA)
        .await
        .context("loading the example schema")?;
    Ok(())
}

/// Runs `pgtenant db install` for `cfg` (its key) on the cluster's database `app` as the
/// superuser.
pub async fn install_verified(
    cluster: &TempCluster,
    cfg: &Config,
    step: KeyStep,
) -> anyhow::Result<String> {
    let key = cfg.context.key.clone().context("context.key: no key")?;
    let url = format!(
        "host={} port={} user=postgres password={} dbname=app",
        cluster.host(),
        cluster.port(),
        cluster.superuser_password()
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("connecting as the superuser")?;
    tokio::spawn(connection);
    let summary = crate::verified::install::run(&client, &cfg.verified_objects(), &key, step)
        .await
        .context("pgtenant db install")?;
    Ok(summary)
}

/// The example config pointed at `cluster`, with [`DEMO_CONTEXT_KEY`].
pub fn config_for(cluster: &TempCluster) -> anyhow::Result<Config> {
    let mut cfg = Config::parse(EXAMPLE_CONFIG).context("parsing the example config.toml")?;
    cfg.context.key = Some(Arc::new(ContextKey::new(DEMO_CONTEXT_KEY)));
    for db in cfg.databases.values_mut() {
        db.host = cluster.host().to_string();
        db.port = cluster.port();
    }
    Ok(cfg)
}

/// Runs the demo until Ctrl-C.
pub async fn run(
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    println!("Starting a throwaway PostgreSQL cluster ...");
    let cluster = start_cluster().await?;
    let mut cfg = config_for(&cluster)?;
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(m) = metrics_listen {
        cfg.server.metrics_listen = Some(m);
    }
    let wanted = cfg.server.listen;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = crate::server::start(cfg, Arc::new(Metrics::new()), shutdown)
        .await
        .with_context(|| format!("listening on {wanted}"))?;
    let (addr, metrics_addr) = (running.addr, running.metrics_addr);
    println!();
    println!(
        "PostgreSQL {}:{} (data in {}), pgtenant on {addr}",
        cluster.host(),
        cluster.port(),
        cluster.data_dir().display()
    );
    if let Some(m) = metrics_addr {
        println!("Metrics: curl http://{m}/metrics");
    }
    println!();
    for (tenant, password) in DEMO_TENANTS {
        println!("  Tenant {tenant}:");
        println!(
            "    psql \"postgresql://{tenant}:{password}@{}:{}/app\" -c 'SELECT * FROM invoices'",
            addr.ip(),
            addr.port()
        );
    }
    println!("  Admin console (SHOW POOLS, SHOW CLIENTS, SHOW TENANTS, ...):");
    println!(
        "    psql \"postgresql://admin:admin-secret@{}:{}/pgtenant\" -c 'SHOW POOLS'",
        addr.ip(),
        addr.port()
    );
    println!();
    println!(
        "Each tenant sees only its own invoices. Inserting a row for the other tenant fails with"
    );
    println!(
        "'new row violates row-level security policy'; SET app.current_tenant is refused (42501)."
    );
    println!("Press Ctrl-C to stop and delete the cluster.");
    crate::server::wait_for_signal().await;
    println!("Stopping ...");
    let _ = stop.send(true);
    let _ = running.task.await;
    cluster.stop().await.context("stopping PostgreSQL")?;
    Ok(())
}
