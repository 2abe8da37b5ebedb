//! `pgtenant demo`: a throwaway PostgreSQL with the example multi-tenant RLS schema, the
//! proxy in front of it (configured by the repository's `config.toml`), and ready-to-paste
//! psql commands for two tenants. Ctrl-C stops everything and deletes the cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pgcluster::{ClusterOptions, TempCluster};

/// The example schema: tenants, projects, invoices, RLS forced, app_user without bypass.
pub const SCHEMA: &str = include_str!("demo_schema.sql");
/// The example configuration the demo runs with (backend address filled in at run time).
pub const EXAMPLE_CONFIG: &str = include_str!("../config.toml");
/// Demo tenants and their passwords (the verifiers in config.toml match these).
pub const DEMO_TENANTS: [(&str, &str); 2] = [("acme", "acme-secret"), ("globex", "globex-secret")];

/// Starts a cluster with the example schema loaded in database `app`.
pub async fn start_cluster() -> anyhow::Result<TempCluster> {
    let cluster = TempCluster::start(ClusterOptions::default())
        .await
        .context("starting PostgreSQL")?;
    cluster
        .psql("postgres", "CREATE DATABASE app")
        .await
        .context("creating database app")?;
    cluster
        .psql("app", SCHEMA)
        .await
        .context("loading the example schema")?;
    Ok(cluster)
}

/// The example config pointed at `cluster`.
pub fn config_for(cluster: &TempCluster) -> anyhow::Result<Config> {
    let mut cfg = Config::parse(EXAMPLE_CONFIG).context("parsing the example config.toml")?;
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
