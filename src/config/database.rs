//! One `[databases.<name>]` entry: the backend it names and the pool that serves it.

use std::time::Duration;

use serde::Deserialize;

use super::tls;

/// One logical database clients can ask for, and the backend pool that serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Backend database name; defaults to the logical name.
    pub dbname: Option<String>,
    /// Backend role (should be NOSUPERUSER NOBYPASSRLS).
    pub user: String,
    /// Backend password; prefer `password_env`.
    pub password: Option<String>,
    /// Environment variable holding the backend password.
    pub password_env: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// How long a client waits for a backend connection before getting an error.
    #[serde(default = "default_checkout_timeout", with = "humantime_serde")]
    pub checkout_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle backend connections older than this are closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Backend connections are replaced after this long.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Client prepared statements each backend connection keeps (least recently used
    /// closed first).
    #[serde(default = "default_statement_cache")]
    pub prepared_statement_cache_size: usize,
    /// Bytes of prepared-statement text (names and queries) one client may keep defined,
    /// and one backend connection's cache may hold: the proxy keeps every client's
    /// statements to prepare them on any backend, in the memory all tenants share. Beyond
    /// it a client's Parse gets ERROR 54000.
    #[serde(default = "default_statement_bytes")]
    pub prepared_statement_bytes: usize,
    /// Bytes of prepared-statement text all clients of this database may keep defined
    /// together (many clients each under `prepared_statement_bytes` could otherwise
    /// exhaust the proxy's memory). Beyond it a client's Parse gets ERROR 53200.
    #[serde(default = "default_statement_bytes_total")]
    pub prepared_statement_bytes_total: usize,
    /// The part of `prepared_statement_bytes_total` one tenant's clients may keep together,
    /// so one tenant cannot take it all (default: a quarter, at least
    /// `prepared_statement_bytes`). Beyond it a client's Parse gets ERROR 53200.
    #[serde(default)]
    pub prepared_statement_bytes_per_tenant: Option<usize>,
    /// Transaction pooling: a plain BEGIN is answered by the proxy and sent with the
    /// transaction's first statement (no backend held in between, one round trip fewer).
    #[serde(default = "default_true")]
    pub defer_begin: bool,
    /// Transaction pooling: what happens when a client keeps session state (a temp
    /// table, LISTEN, SQL PREPARE, a WITH HOLD cursor, a session advisory lock).
    #[serde(default)]
    pub pin_session_state: PinMode,
    /// Server connections that may be pinned at once (default: half the pool, at least 1).
    pub max_pinned_connections: Option<usize>,
    /// Verified mode: a released backend goes first to a waiting client of the tenant it
    /// served (no tenant switch); a waiting client is overtaken that way at most this many
    /// times (default: 5 × pool_size; 0: arrival order only).
    pub affinity_overtakes: Option<usize>,
    /// Verified mode, while clients of other tenants wait: how long a released backend is
    /// kept for its tenant's next checkout (no tenant switch) before it goes to them. Each
    /// time counts as overtaking every waiting client ("0s": never).
    #[serde(default = "default_affinity_hold", with = "humantime_serde")]
    pub affinity_hold: Duration,
    /// TLS to the backend, libpq semantics.
    #[serde(default)]
    pub sslmode: tls::SslMode,
    /// CA bundle the backend's certificate must chain to.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// Client certificate for backends that require certificate authentication.
    pub sslcert: Option<std::path::PathBuf>,
    pub sslkey: Option<std::path::PathBuf>,
    /// Host name to send as SNI and verify (default: `host`).
    pub server_name: Option<String>,
    /// Statement kinds (PostgreSQL parse-node names such as `AlterRoleStmt`) the guard's
    /// allow-list refuses but this database allows: a migrations database may need more.
    #[serde(default)]
    pub guard_allow: Vec<String>,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_pool_size() -> usize {
    20
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_affinity_hold() -> Duration {
    Duration::from_micros(500)
}
fn default_true() -> bool {
    true
}
fn default_statement_bytes_total() -> usize {
    1024 * 1024 * 1024
}
fn default_statement_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_statement_cache() -> usize {
    256
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}

impl DatabaseConfig {
    /// The backend database name.
    pub fn backend_dbname<'a>(&'a self, logical: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(logical)
    }

    /// Resolves the backend password from the config or the environment.
    pub fn resolve_password(&self) -> Option<String> {
        match (&self.password_env, &self.password) {
            (Some(var), _) => std::env::var(var).ok(),
            (None, pw) => pw.clone(),
        }
    }
}

impl DatabaseConfig {
    /// The cap on pinned server connections in force.
    pub fn pinned_limit(&self) -> usize {
        self.max_pinned_connections
            .unwrap_or((self.pool_size / 2).max(1))
    }

    /// The bytes of prepared statements one tenant's clients may keep in force.
    pub fn statement_bytes_per_tenant(&self) -> usize {
        self.prepared_statement_bytes_per_tenant
            .unwrap_or((self.prepared_statement_bytes_total / 4).max(self.prepared_statement_bytes))
    }
}

/// What transaction pooling does with session state that outlives a transaction.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// Keep the client on its server connection until the state is gone (in effect
    /// session pooling for that client), then clean the connection and return it.
    #[default]
    Pin,
    /// Refuse the statements that create such state, with a clear error.
    Refuse,
    /// Let them run, and clean the connection (DISCARD ALL) when the transaction ends.
    Clean,
}

/// Transaction pooling shares backends between clients; session pooling pins one per client.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}
