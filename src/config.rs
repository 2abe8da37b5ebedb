//! Typed configuration: `config.toml` parsed with serde, then validated once so that
//! every problem is reported together, each naming the key it concerns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Everything pgtenant needs to run, as loaded from `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub context: ContextConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: tls::TlsConfig,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub doctor: DoctorConfig,
}

/// The RLS posture doctor (`pgtenant doctor`, and the same checks at start-up): what it
/// looks for and whether a finding stops the proxy from starting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoctorConfig {
    /// Refuse to start when the doctor has any finding (default: log them as warnings).
    pub strict: bool,
    /// The column that marks a table as tenant-scoped (such tables need forced RLS).
    pub tenant_column: String,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            strict: false,
            tenant_column: "tenant_id".into(),
        }
    }
}

/// The admin console: a virtual database reached through the normal port with its own
/// credentials, never a tenant's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Database name that reaches the console instead of a pool.
    pub database: String,
    /// Admin users (every command) and their SCRAM-SHA-256 verifiers.
    pub users: BTreeMap<String, String>,
    /// Read-only users: SHOW commands only.
    pub stats_users: BTreeMap<String, String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            database: "pgtenant".into(),
            users: BTreeMap::new(),
            stats_users: BTreeMap::new(),
        }
    }
}

/// Listener, limits and logging: the proxy process itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Address of the HTTP listener for `/metrics`, `/healthz`, `/readyz`; `""` disables it
    /// (absent: the default address, so a sidecar is scrapeable without configuration).
    #[serde(deserialize_with = "address_or_empty")]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest message a client may send before authenticating (PostgreSQL uses 10,000).
    pub max_startup_message_size: usize,
    /// Largest single protocol message accepted from a client after authentication.
    pub max_message_size: usize,
    /// Bytes all clients together may hold for messages over 1 MiB while they arrive (a
    /// message is held whole before it is judged); past it, FATAL 53200.
    pub large_message_bytes_total: usize,
    /// The part of `large_message_bytes_total` one tenant's clients may hold together.
    pub large_message_bytes_per_tenant: usize,
    /// A client that has not authenticated by then is disconnected.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Upper bound on concurrently connected clients.
    pub max_client_connections: usize,
    /// At `max_client_connections`, a new connection takes the place of the connection that
    /// has been in start-up longest, if for at least this long (0: never; the new one is
    /// refused), so connections that never finish logging in cannot lock clients out.
    #[serde(with = "humantime_serde")]
    pub startup_evict_after: Duration,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Tokio worker threads; 0 means half the cores (at least one), see [`worker_threads`].
    pub worker_threads: usize,
    /// On SIGTERM/SIGINT, how long in-flight transactions may finish before clients are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Clients connected at once per tenant (0: no limit beyond `max_client_connections`).
    pub max_connections_per_tenant: usize,
    /// Backend connections one tenant may hold at once, over all pools (0: no limit), so
    /// one tenant cannot take a whole pool.
    pub max_backend_connections_per_tenant: usize,
    /// A client with no transaction open that sends nothing for this long is disconnected
    /// (0: never).
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client that holds a transaction open without sending anything for this long is
    /// disconnected and its transaction rolled back (0: never).
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    /// A pinned client (see `pin_session_state`) with no transaction open that sends
    /// nothing for this long is disconnected and its server connection cleaned (0: never).
    #[serde(with = "humantime_serde")]
    pub pinned_idle_timeout: Duration,
    /// Server connections one tenant may keep pinned at once, over all pools (0: only the
    /// pools' `max_pinned_connections`).
    pub max_pinned_per_tenant: usize,
    /// TCP keepalive on client and backend sockets: idle time before the first probe
    /// (0: keepalives off).
    #[serde(with = "humantime_serde")]
    pub tcp_keepalives_idle: Duration,
    /// Time between keepalive probes.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalives_interval: Duration,
    /// Unanswered probes before the connection is considered dead.
    pub tcp_keepalives_count: u32,
    /// Tenants with their own label value in per-tenant metrics; the rest are summed under
    /// `tenant="other"`, so many tenants cannot blow up Prometheus.
    pub metrics_top_tenants: usize,
    /// The SQL guard (false: tenant SQL goes through unread). For tests and audits of the
    /// verified context only; needs a restart.
    pub sql_guard: bool,
    /// File holding the key of the tenants' LISTEN/NOTIFY channel prefixes (a secret, at
    /// least 32 bytes; never in config.toml). Every pgtenant in front of one database must
    /// share it for NOTIFY to reach listeners behind another; without one each process
    /// draws its own. Read at start-up only.
    pub channel_key_file: Option<std::path::PathBuf>,
    /// Environment variable holding the channel key (instead of `channel_key_file`).
    pub channel_key_env: Option<String>,
    /// The key read from `channel_key_file`/`channel_key_env` by [`Config::load`].
    #[serde(skip)]
    pub channel_key: Option<std::sync::Arc<crate::verified::ContextKey>>,
}

impl ServerConfig {
    /// The TCP keepalive settings for client and backend sockets (None: off).
    pub fn keepalive(&self) -> Option<socket2::TcpKeepalive> {
        if self.tcp_keepalives_idle.is_zero() {
            return None;
        }
        Some(
            socket2::TcpKeepalive::new()
                .with_time(self.tcp_keepalives_idle)
                .with_interval(self.tcp_keepalives_interval)
                .with_retries(self.tcp_keepalives_count),
        )
    }
}

/// An address, or `""` for none.
fn address_or_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e} (an address such as \"127.0.0.1:9187\", or \"\" for none)"
        ))
    })
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))),
            max_startup_message_size: 10_000,
            max_message_size: 64 * 1024 * 1024,
            large_message_bytes_total: 1024 * 1024 * 1024,
            large_message_bytes_per_tenant: 256 * 1024 * 1024,
            auth_timeout: Duration::from_secs(15),
            max_client_connections: 10_000,
            startup_evict_after: Duration::from_secs(2),
            log_format: LogFormat::Text,
            worker_threads: 0,
            shutdown_grace_period: Duration::from_secs(30),
            max_connections_per_tenant: 0,
            max_backend_connections_per_tenant: 0,
            client_idle_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
            pinned_idle_timeout: Duration::ZERO,
            max_pinned_per_tenant: 0,
            channel_key_file: None,
            channel_key_env: None,
            channel_key: None,
            tcp_keepalives_idle: Duration::from_secs(60),
            tcp_keepalives_interval: Duration::from_secs(10),
            tcp_keepalives_count: 6,
            metrics_top_tenants: 20,
            sql_guard: true,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Release-time cleanup policy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetMode {
    /// RESET the context settings after every transaction, plus a full cleanup when the
    /// client may have changed session state.
    Always,
    /// Only clean up when the client may have changed session state (the context itself is
    /// transaction-local and already gone). Both modes sweep sequence values and temp
    /// objects after every transaction.
    Tracked,
}

/// How clients name their tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub user_convention: UserConvention,
    /// Default authentication method (tenants may override it).
    pub method: AuthMethod,
    /// Refuse a client whose startup user names a different tenant than its certificate.
    pub check_user_matches_certificate: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            user_convention: UserConvention::Tenant,
            method: AuthMethod::Password,
            check_user_matches_certificate: true,
        }
    }
}

/// How a tenant proves who it is.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (or -PLUS over TLS) against the tenant's verifier.
    #[default]
    Password,
    /// A verified client certificate that maps to the tenant.
    Certificate,
    /// Either of the two.
    CertificateOrPassword,
    /// Both.
    CertificateAndPassword,
}

/// Mapping from the startup `user` to a tenant name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserConvention {
    /// `user=acme` names tenant `acme`.
    Tenant,
    /// `user=<role>.<tenant>`: the part after the last dot names the tenant.
    RoleDotTenant,
}

/// One tenant: its identity, its secret and its context values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Value of the tenant id setting (e.g. a UUID).
    pub id: String,
    /// SCRAM-SHA-256 verifier from `pgtenant hash-password`; never a plaintext password.
    /// May be empty for tenants that authenticate by certificate only.
    #[serde(default)]
    pub password: String,
    /// Values for `context.extra_settings`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Overrides `auth.method` for this tenant.
    pub auth_method: Option<AuthMethod>,
    /// Overrides `server.max_connections_per_tenant`.
    pub max_connections: Option<usize>,
    /// Overrides `server.max_backend_connections_per_tenant`.
    pub max_backend_connections: Option<usize>,
    /// Overrides `server.max_pinned_per_tenant`.
    pub max_pinned: Option<usize>,
}

impl TenantConfig {
    /// Client connection cap for this tenant (0: none).
    pub fn connection_limit(&self, server: &ServerConfig) -> usize {
        self.max_connections
            .unwrap_or(server.max_connections_per_tenant)
    }

    /// Pinned server connection cap for this tenant (0: none beyond the pools').
    pub fn pinned_limit(&self, server: &ServerConfig) -> usize {
        self.max_pinned.unwrap_or(server.max_pinned_per_tenant)
    }

    /// Backend connection cap for this tenant (0: none).
    pub fn backend_limit(&self, server: &ServerConfig) -> usize {
        self.max_backend_connections
            .unwrap_or(server.max_backend_connections_per_tenant)
    }
}
impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        let mut cfg = cfg;
        cfg.load_key()?;
        cfg.load_channel_key()?;
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<config>".into(),
            message: e.to_string(),
        })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

mod channel;
mod database;
mod error;
pub use error::{ConfigError, ConfigProblem};
pub mod context;
pub use database::{DatabaseConfig, PinMode, PoolMode};
pub mod tls;
mod validate;
pub use context::{ContextConfig, ContextMode, MAX_SETTINGS};
pub use validate::is_custom_setting_name;

#[cfg(test)]
mod tests;

/// The worker threads to run with for `server.worker_threads`. The automatic choice (0) is
/// half the cores, at least one: a proxy shares its machine with the database or the app,
/// and on two cores one worker spent 15-20 % less CPU per transaction than two for the same
/// throughput (the second only adds cross-thread wake-ups), see benches/RESULTS.md.
pub fn worker_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}
