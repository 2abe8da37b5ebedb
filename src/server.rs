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
    /// Protected setting names (lowercase): the injected ones plus role and session_authorization.
    pub protected: Vec<String>,
    clients: AtomicUsize,
}

impl Server {
    /// Builds the shared state from a validated config.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Server> {
        let plan = InjectionPlan::new(config.context.settings());
        let tenants = TenantDirectory::from_config(&config, &plan);
        let mut pools = HashMap::new();
        for (name, db) in &config.databases {
            let target = BackendTarget {
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
        Arc::new(Server {
            config,
            tenants,
            plan,
            pools,
            metrics,
            cancels: Arc::new(CancelRegistry::default()),
            readiness: Arc::new(Readiness::default()),
            protected,
            clients: AtomicUsize::new(0),
        })
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
                        Err(e) => tracing::warn!(pool = %pool.name, error = %e, "could not inspect the backend role"),
                    }
                }
                Err(e) => tracing::warn!(pool = %pool.name, backend = ?pool.target(), error = %e, "backend not reachable (clients will get errors until it is)"),
            }
        }
        self.readiness.backend_reachable.store(reachable, Ordering::Relaxed);
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
    reaper.abort();
    for pool in server.pools.values() {
        pool.close_idle();
    }
}

/// Periodic housekeeping: idle-connection reaping and readiness.
async fn maintain(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
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
pub async fn start(config: Config, metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let server = Server::new(config, metrics.clone());
    let mut metrics_addr = None;
    if let Some(l) = metrics_listener {
        metrics_addr = Some(l.local_addr()?);
        tracing::info!(listen = ?metrics_addr, "metrics listener ready");
        tokio::spawn(crate::http::serve(l, metrics, server.readiness.clone()));
    }
    let task = tokio::spawn(run(server.clone(), listener, shutdown));
    Ok(Running { addr, metrics_addr, server, task })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
