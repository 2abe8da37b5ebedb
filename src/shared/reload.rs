//! Reload (SIGHUP, the console's RELOAD, a change of TLS files): a new configuration is
//! applied as a whole or not at all, and a refusal says which key and why.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Server, build_pool};
use crate::config::{Config, ConfigError, ConfigProblem, ContextMode};
use crate::pool::Pool;
use crate::tenant::TenantDirectory;
use crate::tls::TlsError;

/// Pools by database name.
type Pools = HashMap<String, Arc<Pool>>;

/// Why a reload was refused; the previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Nothing to read: the server was started from a config value, not a file.
    #[error("this server was started without a configuration file")]
    NoSource,
    /// The file could not be read or parsed (or its key loaded).
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// The new configuration fails validation; every problem names its key.
    #[error("{}", join(.0))]
    Invalid(Vec<ConfigProblem>),
    /// The injected settings, the mode or the schema changed: sessions hold the old ones.
    #[error("context: the injected settings cannot change while running; restart pgtenant")]
    ContextChanged,
    /// Verified mode without a key.
    #[error("context.key_file: no verified-context key was loaded")]
    KeyMissing,
    /// TLS turned on or off: the listener was built for the old mode.
    #[error("tls.mode: needs a restart")]
    TlsModeChanged,
    /// Certificate or key files that do not load.
    #[error("tls: {0}")]
    Tls(#[source] TlsError),
    /// A database's backend TLS settings that do not load.
    #[error("databases.{database}: {source}")]
    Pool {
        /// The `[databases.<name>]` section.
        database: String,
        /// What failed to load.
        #[source]
        source: TlsError,
    },
}

fn join(problems: &[ConfigProblem]) -> String {
    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    list.join("; ")
}

/// What a successful reload changed, as the log and the console report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// Pools whose backend did not change (their clients keep their connections).
    pub pools_kept: usize,
    /// Pools built anew (new databases, or a changed backend address or login).
    pub pools_new: usize,
    /// Tenants that were not configured before.
    pub tenants_added: usize,
    /// Tenants whose definition changed or that were removed (their sessions end or pick up
    /// the new one at their next transaction).
    pub tenants_changed: usize,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pools: {} kept, {} new or rebuilt; tenants: {} added, {} changed or removed",
            self.pools_kept, self.pools_new, self.tenants_added, self.tenants_changed
        )
    }
}

impl Server {
    fn count_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// Re-reads TLS files (a change on disk); the old ones stay on error.
    pub fn reload_tls(&self) -> Result<(), ReloadError> {
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
                Err(ReloadError::Tls(e))
            }
        }
    }

    /// SIGHUP and RELOAD: reads the configuration again and applies it as a whole, or
    /// keeps the old one and says why.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let loaded = match self.source.get() {
            Some(source) => source().map_err(ReloadError::Load),
            None => Err(ReloadError::NoSource),
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
    pub fn apply(&self, cfg: Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.apply_locked(cfg);
        if result.is_err() {
            self.count_reload(false);
        }
        result
    }

    fn apply_locked(&self, mut cfg: Config) -> Result<Reloaded, ReloadError> {
        let old = self.config.load_full();
        refuse_restart_only(&cfg, &old)?;
        if self.tls.is_some() {
            self.reload_tls()?;
        }
        cfg.server.listen = old.server.listen;
        cfg.server.metrics_listen = old.server.metrics_listen;
        cfg.server.worker_threads = old.server.worker_threads;

        if !crate::tenant::use_channel_key(cfg.server.channel_key.as_deref()) {
            tracing::warn!(
                key = "server.channel_key_file",
                "the channel key changed: it takes effect at the next restart (LISTENs made \
                 under the key in use must keep hearing NOTIFYs)"
            );
        }
        let (pools, pools_kept, pools_new) = self.next_pools(&cfg)?;
        let mut tenants = TenantDirectory::from_config(&cfg, &self.plan);
        let old_tenants = self.tenants.load_full();
        let tenants_changed = tenants.carry_over(&old_tenants);
        let tenants_added = tenants
            .names()
            .filter(|t| old_tenants.by_name(t).is_none())
            .count();
        self.tenant_top
            .store(cfg.server.metrics_top_tenants, Ordering::Relaxed);
        self.max_message
            .store(cfg.server.max_message_size, Ordering::Relaxed);
        self.pools.store(Arc::new(pools));
        self.tenants.store(Arc::new(tenants));
        self.config.store(Arc::new(cfg));
        self.count_reload(true);
        Ok(Reloaded {
            pools_kept,
            pools_new,
            tenants_added,
            tenants_changed,
        })
    }

    /// The pools for `cfg`: a pool whose backend is unchanged is kept (and reconfigured),
    /// any other is built anew; the old ones no longer served are retired. Returns the
    /// pools and how many were kept and built.
    fn next_pools(&self, cfg: &Config) -> Result<(Pools, usize, usize), ReloadError> {
        let old_pools = self.pools.load_full();
        let mut pools = HashMap::new();
        let (mut kept, mut built) = (0, 0);
        for (name, db) in &cfg.databases {
            match old_pools.get(name) {
                Some(p) if p.same_backend(db) => {
                    p.reconfigure(db);
                    pools.insert(name.clone(), p.clone());
                    kept += 1;
                }
                _ => {
                    let p = build_pool(name, cfg, &self.plan, &self.metrics).map_err(|source| {
                        ReloadError::Pool {
                            database: name.clone(),
                            source,
                        }
                    })?;
                    pools.insert(name.clone(), p);
                    built += 1;
                }
            }
        }
        for (name, p) in old_pools.iter() {
            if !pools.get(name).is_some_and(|n| Arc::ptr_eq(n, p)) {
                p.retire();
            }
        }
        Ok((pools, kept, built))
    }
}

/// Refuses what cannot change while running (the context, TLS on or off) and warns about
/// what changes only at the next start (listeners, threads).
fn refuse_restart_only(cfg: &Config, old: &Config) -> Result<(), ReloadError> {
    let problems = cfg.validate();
    if !problems.is_empty() {
        return Err(ReloadError::Invalid(problems));
    }
    if cfg.context.settings() != old.context.settings()
        || cfg.context.mode != old.context.mode
        || cfg.context.schema != old.context.schema
    {
        return Err(ReloadError::ContextChanged);
    }
    if cfg.context.mode == ContextMode::Verified && cfg.context.key.is_none() {
        return Err(ReloadError::KeyMissing);
    }
    if cfg.tls.mode != old.tls.mode {
        return Err(ReloadError::TlsModeChanged);
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
    Ok(())
}
