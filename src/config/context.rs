//! The `[context]` section: which settings carry the tenant context, how (plain or
//! verified), the verified-context key, and what tenant isolation rests on as configured
//! (said in the log at start-up).

use std::sync::Arc;

use serde::Deserialize;

use super::{Config, ConfigError, ResetMode};
use crate::verified::ContextKey;
use crate::verified::sql::Objects;

/// Most context settings (the tenant id and the extra settings): each has a `RESET`
/// statement of the proxy's, and a backend tracks those in one 64-bit set.
pub const MAX_SETTINGS: usize = 57;

/// Which settings carry the tenant context into every transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// The setting that receives the tenant id.
    pub tenant_id_setting: String,
    /// Further settings every transaction gets (a tenant without a value gets '').
    pub extra_settings: Vec<String>,
    /// How a backend connection is cleaned when a client releases it.
    pub reset_on_release: ResetMode,
    /// `plain` (set_config; isolation rests on the SQL guard) or `verified` (PostgreSQL
    /// checks a proof and keeps a verified copy, see [`crate::verified`]).
    pub mode: ContextMode,
    /// Schema of the verified-context objects (`pgtenant db install`).
    pub schema: String,
    /// Verified mode: keep a tenant's verified context on the backend after its transaction,
    /// so the tenant's next transaction there needs no `enter()` (default true; see
    /// [`crate::backend::carry`]). Plain mode's context is always transaction-local.
    pub carry: Option<bool>,
    /// File holding the verified-context key (a secret; never in config.toml).
    pub key_file: Option<std::path::PathBuf>,
    /// Environment variable holding the verified-context key (instead of `key_file`).
    pub key_env: Option<String>,
    /// The key read from `key_file`/`key_env` by [`Config::load`] (every load and reload).
    #[serde(skip)]
    pub key: Option<Arc<ContextKey>>,
}

/// How the tenant context reaches PostgreSQL.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContextMode {
    /// `set_config(...)`: any SQL on the shared role can change it; only the guard stops it.
    #[default]
    Plain,
    /// `<schema>.enter(...)` with a per-backend proof; readers return its verified copy.
    Verified,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            tenant_id_setting: "app.current_tenant".into(),
            extra_settings: Vec::new(),
            reset_on_release: ResetMode::Always,
            mode: ContextMode::Plain,
            schema: "pgtenant".into(),
            carry: None,
            key_file: None,
            key_env: None,
            key: None,
        }
    }
}

impl ContextConfig {
    /// Schema of the verified context readers (`<schema>.tenant_id()`, `<schema>.setting(name)`).
    /// The single place that knows the default until `context.schema` is configurable.
    pub fn verified_schema(&self) -> String {
        self.schema.clone()
    }

    /// Whether backends carry a tenant's verified context between its transactions.
    pub fn carries(&self) -> bool {
        self.mode == ContextMode::Verified && self.carry != Some(false)
    }

    /// All injected settings, tenant id first: the order of the injection statement's parameters.
    pub fn settings(&self) -> Vec<String> {
        let mut all = vec![self.tenant_id_setting.clone()];
        all.extend(self.extra_settings.iter().cloned());
        all
    }
}

impl Config {
    /// Reads the verified-context key named by `context.key_file`/`context.key_env`
    /// (verified mode only); every load and reload reads it again, so a rotated key is
    /// picked up without a restart.
    pub fn load_key(&mut self) -> Result<(), ConfigError> {
        let c = &mut self.context;
        if c.mode == ContextMode::Verified {
            let key = ContextKey::load(
                c.key_file.as_ref(),
                c.key_env.as_deref(),
                crate::verified::CONTEXT_KEY_NAMES,
            )?;
            c.key = Some(Arc::new(key));
        }
        Ok(())
    }

    /// The objects `pgtenant db install` creates for this configuration: the schema, the
    /// app roles (every database's user) and the context settings.
    pub fn verified_objects(&self) -> Objects {
        let mut app_roles: Vec<String> = self.databases.values().map(|d| d.user.clone()).collect();
        app_roles.sort();
        app_roles.dedup();
        Objects {
            schema: self.context.schema.clone(),
            app_roles,
            settings: self.context.settings(),
        }
    }
}

/// Checks the context mode at start-up and says in the log what isolation rests on;
/// returns a problem that must stop the start.
pub fn startup_check(config: &Config) -> Option<String> {
    match config.context.mode {
        ContextMode::Verified if config.context.key.is_none() => {
            return Some(
                "context.key_file: verified mode needs a key (context.key_file or context.key_env)"
                    .into(),
            );
        }
        ContextMode::Verified => tracing::info!(
            schema = %config.context.schema,
            key_id = config.context.key.as_ref().map(|k| k.id()),
            "verified tenant context: PostgreSQL checks every context value"
        ),
        ContextMode::Plain => tracing::warn!(
            "context.mode = \"plain\": tenant isolation rests on pgtenant's SQL guard alone; \
             any SQL it misses can change the context. Use context.mode = \"verified\" (pgtenant db install)"
        ),
    }
    if !config.server.sql_guard {
        tracing::warn!(
            "server.sql_guard = false: THE SQL GUARD IS OFF; tenant SQL reaches PostgreSQL unread. \
             For tests and audits of the verified context only, never in production"
        );
    }
    None
}
