//! The process lifecycle: binds the listeners, accepts clients and hands each to the
//! frontend, runs the periodic housekeeping (idle reaping, readiness, TLS file changes,
//! SIGHUP), and drains on shutdown. The state it runs around is [`crate::shared::Server`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::BackendConn;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::shared::Server;

/// Runs the proxy on `listener` until `shutdown` turns true.
pub async fn run(server: Arc<Server>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    check_backends(&server).await;
    let reaper = tokio::spawn(maintain(server.clone()));
    let sweeper = tokio::spawn(crate::session::lot::sweep(server.registry.clone()));
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tenants = server.tenants().len(), "pgtenant ready");
    let mut admin_shutdown = server.shutdown_requested();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, peer)) = accepted else { continue };
                let server = server.clone();
                tokio::spawn(crate::frontend::serve(server, socket, peer));
            }
            _ = shutdown.changed() => break,
            _ = admin_shutdown.wait_for(|s| *s) => {
                tracing::info!("SHUTDOWN from the admin console");
                break;
            }
        }
    }
    drop(listener);
    server.request_shutdown();
    drain(&server).await;
    reaper.abort();
    sweeper.abort();
    for pool in server.pools() {
        pool.close_idle();
    }
}

/// Graceful shutdown: no new clients; sessions finish their transaction and then get FATAL
/// 57P01; waits up to `server.shutdown_grace_period` for all of them.
async fn drain(server: &Server) {
    let grace = server.config().server.shutdown_grace_period;
    let deadline = tokio::time::Instant::now() + grace;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while server.client_count() > 0 && tokio::time::Instant::now() < deadline {
        tick.tick().await;
    }
    let left = server.client_count();
    if left > 0 {
        tracing::warn!(
            clients = left,
            ?grace,
            "grace period over; closing remaining clients"
        );
    }
}

/// Checks each pool's backend once: logs the RLS doctor's findings (warnings; with
/// `doctor.strict` [`start`] has already refused them) and records readiness.
async fn check_backends(server: &Arc<Server>) {
    let mut reachable = false;
    for pool in server.pools() {
        match pool.open().await {
            Ok(mut conn) => {
                reachable = true;
                log_doctor_findings(server, &pool, &mut conn).await;
            }
            Err(e) => {
                tracing::warn!(pool = %pool.name, backend = ?pool.target(), error = %e, "backend not reachable (clients will get errors until it is)")
            }
        }
    }
    server
        .readiness
        .backend_reachable
        .store(reachable, Ordering::Relaxed);
}

/// Runs the RLS doctor over one pool's backend and logs what it finds, as warnings.
async fn log_doctor_findings(server: &Server, pool: &Pool, conn: &mut BackendConn) {
    let Some(params) = crate::doctor::Params::for_database(&server.config(), &pool.name) else {
        return;
    };
    match crate::doctor::inspect(conn, &params).await {
        Ok(report) => log_report(&pool.name, report),
        Err(e) => {
            tracing::warn!(pool = %pool.name, error = %e, "RLS doctor: could not inspect the backend")
        }
    }
}

/// Logs each finding (with its fix on one line) and each check that could not run.
fn log_report(pool: &str, report: crate::doctor::Report) {
    for f in report.findings {
        tracing::warn!(pool, check = f.check, severity = f.severity.label(), object = %f.object, fix = %f.fix.replace('\n', " "), "RLS doctor: {}", f.message);
    }
    for f in report.failures {
        tracing::warn!(pool, check = %f.check, error = %f.error, "RLS doctor: check could not run");
    }
}

/// Periodic housekeeping: idle-connection reaping, readiness, TLS file changes, SIGHUP.
async fn maintain(server: Arc<Server>) {
    let poll = server
        .tls
        .as_ref()
        .map(|t| t.config().reload_interval)
        .filter(|d| !d.is_zero());
    let mut tick = tokio::time::interval(
        poll.unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5)),
    );
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = server.reload();
                    continue;
                }
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        if poll.is_some() && server.tls.as_ref().is_some_and(|t| t.changed()) {
            let _ = server.reload_tls();
        }
        for pool in server.pools() {
            pool.reap_idle();
        }
        server.registry.trim_startups();
        let m = &server.metrics;
        m.sql_cache_entries.set(server.sql_guard.len() as i64);
        m.sql_cache_bytes.set(server.sql_guard.footprint() as i64);
        if !server.readiness.backend_reachable.load(Ordering::Relaxed) {
            check_backends(&server).await;
        }
    }
}

/// A started proxy: where it listens, and the task that ends after shutdown.
pub struct Running {
    /// The client listener's address (the port picked when 0 was asked for).
    pub addr: std::net::SocketAddr,
    /// The metrics listener's address, when one is configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The shared state, for reloads and inspection by the caller.
    pub server: Arc<Server>,
    /// Ends once the proxy has drained after shutdown.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr`; an error names the address and the key it came from (two proxies on one
/// host otherwise fail with a bare "Address already in use").
async fn bind(addr: std::net::SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("{key} = \"{addr}\": cannot listen: {e}"))
    })
}

/// Binds the listeners (port 0 picks a free port) and starts the proxy.
pub async fn start(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Running> {
    if let Some(problem) = crate::config::context::startup_check(&config) {
        return Err(std::io::Error::other(problem));
    }
    let listener = bind(config.server.listen, "server.listen").await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(bind(addr, "server.metrics_listen").await?),
        None => None,
    };
    if config.doctor.strict {
        crate::doctor::command::strict_gate(&config)
            .await
            .map_err(std::io::Error::other)?;
    }
    let server = Server::new(config, metrics.clone()).map_err(std::io::Error::other)?;
    let mut metrics_addr = None;
    if let Some(l) = metrics_listener {
        metrics_addr = Some(l.local_addr()?);
        tracing::info!(listen = ?metrics_addr, "metrics listener ready");
        tokio::spawn(crate::http::serve(l, metrics, server.readiness.clone()));
    }
    let task = tokio::spawn(run(server.clone(), listener, shutdown));
    Ok(Running {
        addr,
        metrics_addr,
        server,
        task,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
