//! The state every stage shares, below the pipeline: the configuration in force and where a
//! reload reads it, the tenant directory, the pools (built here from the config), client
//! slots, PAUSE and shutdown flags. The stages read it; [`crate::server`] runs the process
//! around it.

mod admission;
mod reload;

pub use admission::ClientSlot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::backend::BackendTarget;
use crate::backend::injection::InjectionPlan;
use crate::config::{Config, ConfigError, ContextMode};
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::policy::AnalysisCache;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::tenant::TenantDirectory;

pub use reload::{ReloadError, Reloaded};

/// Where a reload reads the new configuration from (the file plus CLI overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Everything a client connection needs, shared by all of them. The parts a reload may
/// change sit behind [`ArcSwap`]s; sessions re-check them at transaction boundaries.
pub struct Server {
    config: ArcSwap<Config>,
    tenants: ArcSwap<TenantDirectory>,
    pools: ArcSwap<HashMap<String, Arc<Pool>>>,
    /// The proxy's own statements, derived once from the context settings.
    pub plan: InjectionPlan,
    /// Every metric family (registered into the caller's registry).
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports.
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
    /// Threads that may run PostgreSQL's parser for the guard at once (as many as the
    /// runtime's workers, at least two): a parse runs off the runtime's threads, so a long
    /// one never stalls other clients, and this bounds the CPU and memory such parses take
    /// together.
    pub parser_slots: Arc<tokio::sync::Semaphore>,
    /// Bytes all clients hold for large messages they are sending (see
    /// `server.large_message_bytes_total`).
    pub large_message_bytes: Arc<AtomicUsize>,
    /// `server.max_message_size`, read for every client message (kept current by reloads).
    max_message: AtomicUsize,
    clients: AtomicUsize,
    /// PAUSE: new transactions wait until RESUME.
    paused: watch::Sender<bool>,
    /// SHUTDOWN from the admin console.
    shutdown_requested: watch::Sender<bool>,
    /// Where a reload reads the configuration (set once at start-up).
    source: OnceLock<ConfigSource>,
    /// `server.metrics_top_tenants` in force (the tenant collector reads it).
    tenant_top: Arc<AtomicUsize>,
    /// One reload at a time: SIGHUP, RELOAD and a TLS file change may race, and each
    /// compares against the configuration the previous one stored.
    reload_lock: Mutex<()>,
    /// When the server started.
    pub started_at: SystemTime,
    /// The runtime the server was built on, where sessions parked outside it resume.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Server {
    /// `server.max_message_size` now: the largest message a client may send.
    pub fn max_message(&self) -> usize {
        self.max_message.load(Ordering::Relaxed)
    }

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
        let config_workers = config.server.worker_threads;
        let config_max_message = config.server.max_message_size;
        if !crate::tenant::use_channel_key(config.server.channel_key.as_deref()) {
            tracing::warn!(
                key = "server.channel_key_file",
                "this process already uses another channel key; the configured one is ignored"
            );
        } else if config.server.channel_key.is_none() {
            tracing::info!(
                "LISTEN/NOTIFY channel prefixes use a key of this process only: set \
                 server.channel_key_file (or _env) on every pgtenant of a database for NOTIFY \
                 to cross between them"
            );
        }
        let tenants = TenantDirectory::from_config(&config, &plan);
        let mut pools = HashMap::new();
        for name in config.databases.keys() {
            pools.insert(name.clone(), build_pool(name, &config, &plan, &metrics)?);
        }
        let mut protected = plan.settings.clone();
        protected.extend(["role".to_string(), "session_authorization".to_string()]);
        protected.extend(
            crate::policy::knowledge::CONNECTION_SETTINGS
                .iter()
                .map(|s| s.to_string()),
        );
        let registry = Arc::new(Registry::new());
        metrics.client_states.add(&registry);
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
            readiness: Arc::new(Readiness::default()),
            registry,
            // With the guard off nothing is refused: the parser path is not run at all.
            sql_guard: AnalysisCache::new(if guard_enabled { protected } else { Vec::new() }),
            guard_enabled,
            // At least two: each tenant parses one text at a time, so while one tenant keeps
            // a slot busy the others still have one.
            parser_slots: Arc::new(tokio::sync::Semaphore::new(
                crate::config::worker_threads(config_workers).max(2),
            )),
            large_message_bytes: Arc::new(AtomicUsize::new(0)),
            max_message: AtomicUsize::new(config_max_message),
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

    /// True once shutdown has begun (new sessions end at their first transaction boundary).
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_requested.borrow()
    }

    /// Starts a graceful shutdown, as SIGTERM would.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.send_replace(true);
        // Sessions learn it before the caller (the admin console) answers.
        self.registry.shutdown_all();
    }

    /// Turns true when shutdown is requested (the accept loop stops on it).
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown_requested.subscribe()
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
    let target = BackendTarget::for_database(name, cfg, plan.own.clone())?;
    Ok(Pool::new(
        name,
        db,
        target,
        plan.reset_sql.clone(),
        metrics.pool(name),
    ))
}

impl Server {
    /// Connected clients (including those still authenticating).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }
}
