//! Process wiring: builds pools and the tenant directory from a config, accepts clients,
//! and shuts down on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::BackendTarget;
use crate::cancel::CancelRegistry;
use crate::config::{Config, ConfigError, ContextMode};
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::policy::sql::AnalysisCache;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::tenant::{InjectionPlan, TenantDirectory};

/// Where a reload reads the new configuration from (the file plus CLI overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Everything a client connection needs, shared by all of them. The parts a reload may
/// change sit behind [`ArcSwap`]s; sessions re-check them at transaction boundaries.
pub struct Server {
    config: ArcSwap<Config>,
    tenants: ArcSwap<TenantDirectory>,
    pools: ArcSwap<HashMap<String, Arc<Pool>>>,
    pub plan: InjectionPlan,
    pub metrics: Arc<Metrics>,
    pub cancels: Arc<CancelRegistry>,
    pub readiness: Arc<Readiness>,
    /// Every connected client and per-tenant counters.
    pub registry: Arc<Registry>,
    /// Client-facing TLS, when enabled.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Checks client SQL against the protected setting names (lowercase: the injected ones
    /// plus role and session_authorization), remembering verdicts on texts seen before.
    pub sql_guard: AnalysisCache,
    /// `server.sql_guard` at start-up (false: tenant SQL goes through unread).
    pub guard_enabled: bool,
    clients: AtomicUsize,
    /// PAUSE: new transactions wait until RESUME.
    paused: watch::Sender<bool>,
    /// SHUTDOWN from the admin console.
    shutdown_requested: watch::Sender<bool>,
    source: OnceLock<ConfigSource>,
    tenant_top: Arc<AtomicUsize>,
    reload_lock: Mutex<()>,
    pub started_at: SystemTime,
    /// The runtime the server was built on, where sessions parked outside it resume.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Server {
    /// Builds the shared state from a validated config; fails when TLS files cannot be loaded.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Server>, crate::tls::TlsError> {
        let tls = match config.tls.mode {
            crate::tls::TlsMode::Disable => None,
            _ => Some(Arc::new(crate::tls::ServerTls::load(&config.tls)?)),
        };
        let verified = (config.context.mode == ContextMode::Verified)
            .then_some(config.context.schema.as_str());
        let plan = InjectionPlan::new(config.context.settings(), verified);
        let guard_enabled = config.server.sql_guard;
        let tenants = TenantDirectory::from_config(&config, &plan);
        let mut pools = HashMap::new();
        for name in config.databases.keys() {
            pools.insert(name.clone(), build_pool(name, &config, &plan, &metrics)?);
        }
        let mut protected = plan.settings.clone();
        protected.extend(["role".to_string(), "session_authorization".to_string()]);
        let registry = Arc::new(Registry::new(metrics.client_state_gauges()));
        let tenant_top = Arc::new(AtomicUsize::new(config.server.metrics_top_tenants));
        // A second server on the same metrics registry (tests) keeps the first collector.
        let _ = metrics
            .registry
            .register(Box::new(registry.tenant_collector(tenant_top.clone())));
        let server = Arc::new(Server {
            tls,
            config: ArcSwap::from_pointee(config),
            tenants: ArcSwap::from_pointee(tenants),
            pools: ArcSwap::from_pointee(pools),
            plan,
            metrics,
            cancels: Arc::new(CancelRegistry::default()),
            readiness: Arc::new(Readiness::default()),
            registry,
            sql_guard: AnalysisCache::new(protected),
            guard_enabled,
            clients: AtomicUsize::new(0),
            paused: watch::channel(false).0,
            shutdown_requested: watch::channel(false).0,
            source: OnceLock::new(),
            tenant_top,
            reload_lock: Mutex::new(()),
            started_at: SystemTime::now(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        server.publish_cert_expiry();
        Ok(server)
    }

    /// The configuration in force.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The tenant directory in force.
    pub fn tenants(&self) -> Guard<Arc<TenantDirectory>> {
        self.tenants.load()
    }

    /// The pool serving database `name`, if configured.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.load().get(name).cloned()
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut all: Vec<_> = self.pools.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Where [`Server::reload`] reads the configuration from; set once at start-up.
    pub fn set_config_source(&self, source: ConfigSource) {
        let _ = self.source.set(source);
    }

    fn publish_cert_expiry(&self) {
        if let Some(t) = self.tls.as_ref().and_then(|t| t.current().not_after) {
            self.metrics
                .tls_cert_expiry
                .with_label_values(&["client"])
                .set(t);
        }
    }

    fn count_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// Re-reads TLS files (a change on disk); the old ones stay on error.
    pub fn reload_tls(&self) -> Result<(), String> {
        let Some(tls) = &self.tls else { return Ok(()) };
        match tls.reload() {
            Ok(()) => {
                tracing::info!("TLS certificates reloaded");
                self.count_reload(true);
                self.publish_cert_expiry();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
                self.count_reload(false);
                Err(format!("tls: {e}"))
            }
        }
    }

    /// SIGHUP and RELOAD: reads the configuration again and applies it as a whole, or
    /// keeps the old one and says why.
    pub fn reload(&self) -> Result<String, String> {
        let loaded = match self.source.get() {
            Some(source) => source().map_err(|e| e.to_string()),
            None => Err("this server was started without a configuration file".into()),
        };
        if loaded.is_err() {
            self.count_reload(false);
        }
        let result = loaded.and_then(|cfg| self.apply(cfg));
        match &result {
            Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the previous configuration stays in force")
            }
        }
        result
    }

    /// Applies a validated configuration: tenants, pools, limits and TLS files. Settings
    /// that need a restart are refused (context) or kept with a warning (listeners).
    pub fn apply(&self, cfg: Config) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.apply_locked(cfg);
        if result.is_err() {
            self.count_reload(false);
        }
        result
    }

    fn apply_locked(&self, cfg: Config) -> Result<String, String> {
        let old = self.config.load_full();
        let problems = cfg.validate();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(list.join("; "));
        }
        if cfg.context.settings() != old.context.settings()
            || cfg.context.mode != old.context.mode
            || cfg.context.schema != old.context.schema
        {
            return Err(
                "context: the injected settings cannot change while running; restart pgtenant"
                    .into(),
            );
        }
        if cfg.context.mode == ContextMode::Verified && cfg.context.key.is_none() {
            return Err("context.key_file: no verified-context key was loaded".into());
        }
        if cfg.tls.mode != old.tls.mode {
            return Err("tls.mode: needs a restart".into());
        }
        for (key, changed) in [
            ("server.listen", cfg.server.listen != old.server.listen),
            (
                "server.metrics_listen",
                cfg.server.metrics_listen != old.server.metrics_listen,
            ),
            (
                "server.worker_threads",
                cfg.server.worker_threads != old.server.worker_threads,
            ),
        ] {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the configuration file; takes effect after a restart"
                );
            }
        }
        if self.tls.is_some() {
            self.reload_tls()?;
        }
        let mut cfg = cfg;
        cfg.server.listen = old.server.listen;
        cfg.server.metrics_listen = old.server.metrics_listen;
        cfg.server.worker_threads = old.server.worker_threads;

        let old_pools = self.pools.load_full();
        let mut pools = HashMap::new();
        let (mut kept, mut replaced) = (0, 0);
        for (name, db) in &cfg.databases {
            match old_pools.get(name) {
                Some(p) if p.same_backend(db) => {
                    p.reconfigure(db);
                    pools.insert(name.clone(), p.clone());
                    kept += 1;
                }
                _ => {
                    let p = build_pool(name, &cfg, &self.plan, &self.metrics)
                        .map_err(|e| format!("databases.{name}: {e}"))?;
                    pools.insert(name.clone(), p);
                    replaced += 1;
                }
            }
        }
        for (name, p) in old_pools.iter() {
            if !pools.get(name).is_some_and(|n| Arc::ptr_eq(n, p)) {
                p.retire();
            }
        }
        let mut tenants = TenantDirectory::from_config(&cfg, &self.plan);
        let old_tenants = self.tenants.load_full();
        let changed_tenants = tenants.carry_over(&old_tenants);
        let added = tenants
            .names()
            .filter(|t| old_tenants.by_name(t).is_none())
            .count();
        self.tenant_top
            .store(cfg.server.metrics_top_tenants, Ordering::Relaxed);
        self.pools.store(Arc::new(pools));
        self.tenants.store(Arc::new(tenants));
        self.config.store(Arc::new(cfg));
        self.count_reload(true);
        Ok(format!(
            "pools: {kept} kept, {replaced} new or rebuilt; tenants: {added} added, {changed_tenants} changed or removed"
        ))
    }

    /// Reserves a client slot; None when `max_client_connections` is reached.
    pub fn admit_client(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.config().server.max_client_connections;
        let prev = self.clients.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot(self.clone()))
    }

    /// PAUSE (true) or RESUME (false) new transactions.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Resolves once new transactions may start (immediately unless paused).
    pub async fn wait_unpaused(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// True while PAUSE is in force.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Starts a graceful shutdown, as SIGTERM would.
    /// True once shutdown has begun (new sessions end at their first transaction boundary).
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_requested.borrow()
    }

    pub fn request_shutdown(&self) {
        self.shutdown_requested.send_replace(true);
        // Sessions learn it before the caller (the admin console) answers.
        self.registry.shutdown_all();
    }

    /// Checks each pool's backend once: logs the RLS doctor's findings (warnings; with
    /// `doctor.strict` [`start`] has already refused them) and records readiness.
    pub async fn check_backends(self: &Arc<Self>) {
        let mut reachable = false;
        for pool in self.pools() {
            match pool.open().await {
                Ok(mut conn) => {
                    reachable = true;
                    let Some(params) =
                        crate::doctor::Params::for_database(&self.config(), &pool.name)
                    else {
                        continue;
                    };
                    match crate::doctor::inspect(&mut conn, &params).await {
                        Ok(report) => {
                            for f in report.findings {
                                tracing::warn!(pool = %pool.name, check = f.check, severity = f.severity.label(), object = %f.object, fix = %f.fix.replace('\n', " "), "RLS doctor: {}", f.message);
                            }
                            for f in report.failures {
                                tracing::warn!(pool = %pool.name, check = %f.check, error = %f.error, "RLS doctor: check could not run");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(pool = %pool.name, error = %e, "RLS doctor: could not inspect the backend")
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

/// A pool for `[databases.<name>]`.
fn build_pool(
    name: &str,
    cfg: &Config,
    plan: &InjectionPlan,
    metrics: &Metrics,
) -> Result<Arc<Pool>, crate::tls::TlsError> {
    let db = &cfg.databases[name];
    let target = BackendTarget::for_database(name, cfg, plan.prepare.clone())?;
    Ok(Pool::new(
        name,
        db,
        target,
        plan.reset_sql.clone(),
        metrics.pool(name),
    ))
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
    let sweeper = tokio::spawn(crate::session::lot::sweep(server.registry.clone()));
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tenants = server.tenants().len(), "pgtenant ready");
    let mut admin_shutdown = server.shutdown_requested.subscribe();
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
    server.shutdown_requested.send_replace(true);
    server.registry.shutdown_all();
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
    if let Some(problem) = crate::verified::posture::startup_check(&config) {
        return Err(std::io::Error::other(problem));
    }
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
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
