//! Process wiring: builds pools and the tenant directory from a config, accepts clients,
//! and shuts down on request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::{BackendTarget, doctor};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::tenant::{InjectionPlan, TenantDirectory};

/// Everything a client connection needs, shared by all of them.
pub struct Server {
    pub config: Config,
    pub tenants: TenantDirectory,
    pub plan: InjectionPlan,
    pub pools: HashMap<String, Arc<Pool>>,
    pub metrics: Arc<Metrics>,
    pub cancels: Arc<CancelRegistry>,
    pub readiness: Arc<Readiness>,
    /// Client-facing TLS, when enabled.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Protected setting names (lowercase): the injected ones plus role and session_authorization.
    pub protected: Vec<String>,
    clients: AtomicUsize,
}

impl Server {
    /// Builds the shared state from a validated config; fails when TLS files cannot be loaded.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Server>, crate::tls::TlsError> {
        let tls = match config.tls.mode {
            crate::tls::TlsMode::Disable => None,
            _ => Some(Arc::new(crate::tls::ServerTls::load(&config.tls)?)),
        };
        let plan = InjectionPlan::new(config.context.settings());
        let tenants = TenantDirectory::from_config(&config, &plan);
        let mut pools = HashMap::new();
        for (name, db) in &config.databases {
            let tls_config = crate::tls::client::backend_config(
                db.sslmode,
                db.sslrootcert.as_deref(),
                db.sslcert.as_deref().zip(db.sslkey.as_deref()),
            )?;
            let target = BackendTarget {
                tls: tls_config,
                sslmode: db.sslmode,
                server_name: db.server_name.clone().unwrap_or_else(|| db.host.clone()),
                host: db.host.clone(),
                port: db.port,
                dbname: db.backend_dbname(name).to_string(),
                user: db.user.clone(),
                password: db.resolve_password(),
                connect_timeout: db.connect_timeout,
                prepare: plan.prepare.clone(),
                statement_cache_size: db.prepared_statement_cache_size,
            };
            let pool = Pool::new(name, db, target, plan.reset_sql.clone(), metrics.pool(name));
            pools.insert(name.clone(), pool);
        }
        let mut protected = plan.settings.clone();
        protected.extend(["role".to_string(), "session_authorization".to_string()]);
        let server = Arc::new(Server {
            tls,
            config,
            tenants,
            plan,
            pools,
            metrics,
            cancels: Arc::new(CancelRegistry::default()),
            readiness: Arc::new(Readiness::default()),
            protected,
            clients: AtomicUsize::new(0),
        });
        server.publish_cert_expiry();
        Ok(server)
    }

    fn publish_cert_expiry(&self) {
        if let Some(t) = self.tls.as_ref().and_then(|t| t.current().not_after) {
            self.metrics
                .tls_cert_expiry
                .with_label_values(&["client"])
                .set(t);
        }
    }

    /// Re-reads TLS files (SIGHUP, or a change on disk); the old ones stay on error.
    pub fn reload_tls(&self) {
        let Some(tls) = &self.tls else { return };
        match tls.reload() {
            Ok(()) => {
                tracing::info!("TLS certificates reloaded");
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.publish_cert_expiry();
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
            }
        }
    }

    /// Reserves a client slot; None when `max_client_connections` is reached.
    pub fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.config.server.max_client_connections;
        let prev = self.clients.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot(self.clone()))
    }

    /// Checks each pool's backend once: logs the RLS doctor's findings and records readiness.
    pub async fn check_backends(self: &Arc<Self>) {
        let mut reachable = false;
        for pool in self.pools.values() {
            match pool.open().await {
                Ok(mut conn) => {
                    reachable = true;
                    match doctor::check_role(&mut conn).await {
                        Ok(findings) => {
                            for f in findings {
                                tracing::warn!(pool = %pool.name, "UNSAFE BACKEND ROLE: {}", f.0);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(pool = %pool.name, error = %e, "could not inspect the backend role")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name, backend = ?pool.target(), error = %e, "backend not reachable (clients will get errors until it is)")
                }
            }
        }
        self.readiness
            .backend_reachable
            .store(reachable, Ordering::Relaxed);
    }
}

/// A reserved client slot, released on drop.
pub struct ClientSlot(Arc<Server>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the proxy on `listener` until `shutdown` turns true.
pub async fn run(server: Arc<Server>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    server.check_backends().await;
    let reaper = tokio::spawn(maintain(server.clone()));
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tenants = server.tenants.len(), "pgtenant ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, peer)) = accepted else { continue };
                let server = server.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    crate::frontend::serve(server, socket, peer, shutdown).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drain(&server).await;
    reaper.abort();
    for pool in server.pools.values() {
        pool.close_idle();
    }
}

/// Graceful shutdown: no new clients; sessions finish their transaction and then get FATAL
/// 57P01; waits up to `server.shutdown_grace_period` for all of them.
async fn drain(server: &Server) {
    let grace = server.config.server.shutdown_grace_period;
    let deadline = tokio::time::Instant::now() + grace;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while server.clients.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tick.tick().await;
    }
    let left = server.clients.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(
            clients = left,
            ?grace,
            "grace period over; closing remaining clients"
        );
    }
}

impl Server {
    /// Connected clients (including those still authenticating).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
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
                    tracing::info!("SIGHUP: reloading TLS files");
                    server.reload_tls();
                    continue;
                }
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        if poll.is_some() && server.tls.as_ref().is_some_and(|t| t.changed()) {
            server.reload_tls();
        }
        for pool in server.pools.values() {
            pool.reap_idle();
        }
        if !server.readiness.backend_reachable.load(Ordering::Relaxed) {
            server.check_backends().await;
        }
    }
}

/// A started proxy: where it listens, and the task that ends after shutdown.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub server: Arc<Server>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the listeners (port 0 picks a free port) and starts the proxy.
pub async fn start(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
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
