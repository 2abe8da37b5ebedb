//! Tenants: who a client is once authenticated, and the exact bytes that put that tenant's
//! context into a transaction (precomputed, so the hot path only copies them).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::auth::scram::ScramVerifier;
use crate::backend::{BackendConn, Owed};
use crate::config::{AuthMethod, Config, ContextMode, TenantConfig, UserConvention};
use crate::protocol::messages;
use crate::verified::ContextKey;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Serial numbers of [`Tenant`] definitions, so a backend's cached injection names the
/// definition it was computed for.
static TENANT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Prepared statement that sets every context setting transaction-locally.
pub const CTX_STATEMENT: &str = "pgtenant_ctx";
/// Prepared statement that sets every context setting for the session (for statements that
/// cannot run inside a transaction block); always followed by a reset on release.
pub const CTX_SESSION_STATEMENT: &str = "pgtenant_ctx_session";
/// Prepared statement that applies one client session parameter.
pub const PARAM_STATEMENT: &str = "pgtenant_param";
/// Prepared statement that puts one setting back to its default.
pub const PARAM_RESET_STATEMENT: &str = "pgtenant_param_reset";
/// The proxy's prepared `BEGIN`, which opens a client's deferred transaction.
pub const BEGIN_STATEMENT: &str = "pgtenant_begin";
/// Statement names with this prefix belong to the proxy; clients may not use them.
pub const RESERVED_PREFIX: &str = "pgtenant_";

/// An authenticated tenant.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub id: String,
    /// None for certificate-only tenants.
    pub verifier: Option<ScramVerifier>,
    pub auth_method: AuthMethod,
    /// Bind + Execute of [`CTX_STATEMENT`] with this tenant's values (plain mode; in
    /// verified mode the bytes depend on the backend, see [`Tenant::injection`]).
    pub inject_local: Bytes,
    /// Bind + Execute of [`CTX_SESSION_STATEMENT`] with this tenant's values (plain mode).
    pub inject_session: Bytes,
    /// Verified mode: the key the proofs are made with, and the context values.
    verified: Option<(Arc<ContextKey>, Vec<String>)>,
    /// Unique per definition (see [`TENANT_SERIAL`]).
    serial: u64,
    /// Clients connected at once (0: no limit).
    pub connection_limit: usize,
    /// Backend connections held at once (0: no limit).
    pub backend_limit: usize,
    /// Server connections pinned at once (0: no limit beyond the pools').
    pub pinned_limit: usize,
    /// Prefix of this tenant's LISTEN/NOTIFY channels (see `session::channels`).
    pub channel_prefix: String,
    /// The configuration this tenant was built from (and the context key's id), to tell
    /// whether a reload changed it.
    source: (TenantConfig, AuthMethod, Option<i32>),
    /// Set when a reload changed or removed the tenant: sessions pick up the new
    /// definition (or end) at their next transaction.
    retired: AtomicBool,
}

impl Tenant {
    /// True once a reload replaced or removed this definition.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// The Bind + Execute that puts this tenant's context on `conn` (transaction-local, or
    /// for the session when `session`). Verified mode binds a proof made for the backend's
    /// pid: computed once per (tenant definition, backend) and cached on the connection.
    pub fn injection<'a>(&'a self, conn: &'a mut BackendConn, session: bool) -> &'a [u8] {
        let Some((key, values)) = &self.verified else {
            return if session {
                &self.inject_session
            } else {
                &self.inject_local
            };
        };
        if conn.context_cache.as_ref().map(|c| c.serial) != Some(self.serial) {
            let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            let proof = crate::verified::proof(key, conn.key.pid, &values);
            let id = key.id().to_string();
            let mut params: Vec<&[u8]> = vec![id.as_bytes(), proof.as_bytes()];
            params.extend(values);
            conn.context_cache = Some(ContextCache {
                serial: self.serial,
                local: InjectionPlan::bind_execute(CTX_STATEMENT, &params),
                session: InjectionPlan::bind_execute(CTX_SESSION_STATEMENT, &params),
            });
        }
        let cache = conn.context_cache.as_ref().expect("filled above");
        if session {
            &cache.session
        } else {
            &cache.local
        }
    }
}

/// A backend connection's verified-context injection for the last tenant that used it (the
/// proof is bound to the backend's pid, so it cannot be precomputed per tenant).
#[derive(Clone)]
pub struct ContextCache {
    serial: u64,
    local: Bytes,
    session: Bytes,
}

impl std::fmt::Debug for ContextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes hold the proof: a secret for this backend.
        write!(f, "ContextCache {{ serial: {}, .. }}", self.serial)
    }
}

/// The SQL of the proxy's own statements, derived from the configured setting names.
#[derive(Debug, Clone)]
pub struct InjectionPlan {
    pub settings: Vec<String>,
    /// What a release RESETs: the settings, plus the stamp in verified mode.
    pub reset_settings: Vec<String>,
    /// Parse messages for the proxy's statements, sent once per backend connection.
    pub prepare: Bytes,
    /// `RESET` of every context setting plus the sweep, as one Query, for a release after
    /// session-level context.
    pub reset_sql: String,
    /// Lists the session-level settings of a backend's session (`SET`, `set_config(...,
    /// false)`) that may follow its client to another backend: not the context settings,
    /// the proxy's own namespace, the identity settings or what changes how SQL is read.
    pub session_settings_sql: String,
    /// Bind + Execute of the prepared RESET of every context setting, then of the sweep:
    /// pipelined ahead of a connection's next user instead of a round trip at release.
    pub reset_local: Bytes,
    /// Bind + Execute of the sweep alone (`DISCARD SEQUENCES`, `DISCARD TEMP`).
    pub sweep_local: Bytes,
    /// Parse messages in `prepare`.
    pub prepare_count: usize,
    /// Bind + Execute of the prepared BEGIN: a deferred BEGIN needs no Sync of its own,
    /// so the client's first statement follows it in the same write.
    pub begin: Bytes,
}

/// Session settings that never follow a client: its identity, what changes how PostgreSQL
/// reads SQL text (the guard reads it with the defaults), and the settings of one
/// transaction (`SET TRANSACTION` lists them as session-level until the next transaction
/// starts, and PostgreSQL refuses them once a statement ran).
const NEVER_FOLLOWED: [&str; 8] = [
    "role",
    "session_authorization",
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Prefix of the prepared `RESET <setting>` statements (one per setting).
pub const RESET_STATEMENT_PREFIX: &str = "pgtenant_reset_";
/// Session state that no client statement has to name, so the guard cannot see it being
/// made: a sequence's `lastval()` (any INSERT into a serial column sets it) and temp
/// objects (`CREATE TABLE pg_temp.x`, or made inside a function). Swept at every release;
/// both run inside a transaction block and cost microseconds when there is nothing to drop.
const SWEEP: [(&str, &str); 2] = [
    ("pgtenant_sweep_seq", "DISCARD SEQUENCES"),
    ("pgtenant_sweep_temp", "DISCARD TEMP"),
];

impl InjectionPlan {
    /// Builds the statements for the configured settings. Setting names are validated at
    /// config load (lowercase identifiers and dots), so they are safe as SQL literals; tenant
    /// values only ever travel as bound parameters.
    /// `verified_schema`: in verified mode, the schema of `enter()`, called as
    /// `enter(key id, proof, local, values...)` instead of one set_config per setting.
    pub fn new(settings: Vec<String>, verified_schema: Option<&str>) -> InjectionPlan {
        let sql = |local: bool| {
            if let Some(schema) = verified_schema {
                let values: Vec<String> =
                    (3..settings.len() + 3).map(|i| format!("${i}")).collect();
                return format!(
                    "SELECT {schema}.enter($1, $2, {local}, {})",
                    values.join(", ")
                );
            }
            let calls: Vec<String> = settings
                .iter()
                .enumerate()
                .map(|(i, name)| format!("pg_catalog.set_config('{name}', ${}, {local})", i + 1))
                .collect();
            format!("SELECT {}", calls.join(", "))
        };
        let mut prepare = BytesMut::new();
        messages::parse(&mut prepare, CTX_STATEMENT, &sql(true));
        messages::parse(&mut prepare, CTX_SESSION_STATEMENT, &sql(false));
        messages::parse(
            &mut prepare,
            PARAM_STATEMENT,
            "SELECT pg_catalog.set_config($1, $2, false)",
        );
        messages::parse(
            &mut prepare,
            PARAM_RESET_STATEMENT,
            "SELECT pg_catalog.set_config($1, (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = $1), false)",
        );
        messages::parse(&mut prepare, BEGIN_STATEMENT, "BEGIN");
        let mut reset_settings = settings.clone();
        if let Some(schema) = verified_schema {
            reset_settings.push(crate::verified::sql::stamp_setting(schema));
        }
        let mut reset_local = BytesMut::new();
        for (i, name) in reset_settings.iter().enumerate() {
            let statement = format!("{RESET_STATEMENT_PREFIX}{i}");
            messages::parse(&mut prepare, &statement, &format!("RESET {name}"));
            messages::bind(&mut reset_local, &statement, std::iter::empty());
            messages::execute(&mut reset_local);
        }
        let mut sweep_local = BytesMut::new();
        for (statement, sql) in SWEEP {
            messages::parse(&mut prepare, statement, sql);
            messages::bind(&mut sweep_local, statement, std::iter::empty());
            messages::execute(&mut sweep_local);
        }
        reset_local.extend_from_slice(&sweep_local);
        let reset_sql = reset_settings
            .iter()
            .map(|s| format!("RESET {s}"))
            .chain(SWEEP.iter().map(|(_, sql)| sql.to_string()))
            .collect::<Vec<_>>()
            .join("; ");
        let excluded: Vec<String> = reset_settings
            .iter()
            .map(String::as_str)
            .chain(NEVER_FOLLOWED)
            .map(|s| format!("'{s}'"))
            .collect();
        let session_settings_sql = format!(
            "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
             AND name NOT IN ({}) AND name NOT LIKE '{RESERVED_PREFIX}%' AND name NOT LIKE 'pgtenant.%'",
            excluded.join(", ")
        );
        InjectionPlan {
            session_settings_sql,
            prepare_count: 5 + reset_settings.len() + SWEEP.len(),
            settings,
            reset_settings,
            prepare: prepare.freeze(),
            reset_sql,
            reset_local: reset_local.freeze(),
            sweep_local: sweep_local.freeze(),
            begin: Self::bind_execute(BEGIN_STATEMENT, &[]),
        }
    }

    /// The messages paying what a release left owed, and how many Bind/Execute pairs
    /// they hold (their replies are the proxy's to swallow).
    pub fn owed(&self, owed: Owed) -> (&[u8], usize) {
        match owed {
            Owed::Nothing => (&[], 0),
            Owed::Sweep => (&self.sweep_local, SWEEP.len()),
            Owed::ResetAndSweep => (&self.reset_local, self.reset_settings.len() + SWEEP.len()),
        }
    }

    fn injection(&self, statement: &str, values: &[&[u8]]) -> Bytes {
        Self::bind_execute(statement, values)
    }

    fn bind_execute(statement: &str, values: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        messages::bind(&mut out, statement, values.iter().copied());
        messages::execute(&mut out);
        out.freeze()
    }
}

/// Lookup of tenants by the startup `user` name.
#[derive(Debug, Default)]
pub struct TenantDirectory {
    by_name: HashMap<String, Arc<Tenant>>,
    convention: Option<UserConvention>,
}

impl TenantDirectory {
    /// Builds the directory and each tenant's injection bytes from a validated config.
    pub fn from_config(cfg: &Config, plan: &InjectionPlan) -> TenantDirectory {
        let mut by_name = HashMap::new();
        for (name, t) in &cfg.tenants {
            let values: Vec<&[u8]> = plan
                .settings
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i == 0 {
                        t.id.as_bytes()
                    } else {
                        t.settings.get(s).map(|v| v.as_bytes()).unwrap_or(b"")
                    }
                })
                .collect();
            let key = match cfg.context.mode {
                ContextMode::Verified => cfg.context.key.clone(),
                ContextMode::Plain => None,
            };
            let verified = key.clone().map(|k| {
                let owned = values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                (k, owned)
            });
            let tenant = Tenant {
                name: name.clone(),
                id: t.id.clone(),
                verifier: ScramVerifier::parse(&t.password).ok(),
                auth_method: t.auth_method.unwrap_or(cfg.auth.method),
                inject_local: plan.injection(CTX_STATEMENT, &values),
                inject_session: plan.injection(CTX_SESSION_STATEMENT, &values),
                connection_limit: t.connection_limit(&cfg.server),
                backend_limit: t.backend_limit(&cfg.server),
                pinned_limit: t.pinned_limit(&cfg.server),
                channel_prefix: crate::session::channels::channel_prefix(&t.id),
                source: (
                    t.clone(),
                    t.auth_method.unwrap_or(cfg.auth.method),
                    key.map(|k| k.id()),
                ),
                verified,
                serial: TENANT_SERIAL.fetch_add(1, Ordering::Relaxed),
                retired: AtomicBool::new(false),
            };
            by_name.insert(name.clone(), Arc::new(tenant));
        }
        TenantDirectory {
            by_name,
            convention: Some(cfg.auth.user_convention),
        }
    }

    /// The tenant name a startup `user` refers to under the configured convention.
    pub fn tenant_name<'a>(&self, user: &'a str) -> Option<&'a str> {
        match self.convention.unwrap_or(UserConvention::Tenant) {
            UserConvention::Tenant => Some(user),
            UserConvention::RoleDotTenant => user
                .rsplit_once('.')
                .map(|(_, t)| t)
                .filter(|t| !t.is_empty()),
        }
    }

    /// Finds a tenant by its own name.
    pub fn by_name(&self, name: &str) -> Option<Arc<Tenant>> {
        self.by_name.get(name).cloned()
    }

    /// Finds the tenant for a startup `user`.
    pub fn lookup(&self, user: &str) -> Option<Arc<Tenant>> {
        self.tenant_name(user)
            .and_then(|n| self.by_name.get(n))
            .cloned()
    }

    /// Keeps the previous definition of every tenant a reload did not change (sessions
    /// hold it) and retires the others; returns how many were changed or removed.
    pub fn carry_over(&mut self, old: &TenantDirectory) -> usize {
        let mut retired = 0;
        for (name, previous) in &old.by_name {
            match self.by_name.get_mut(name) {
                Some(new) if new.source == previous.source => *new = previous.clone(),
                _ => {
                    previous.retire();
                    retired += 1;
                }
            }
        }
        retired
    }

    /// Every tenant name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Number of configured tenants.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no tenant is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
