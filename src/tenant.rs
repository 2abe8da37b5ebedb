//! Tenants: who a client is once authenticated, and the exact bytes that put that tenant's
//! context into a transaction (precomputed, so the hot path only copies them).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::scram::ScramVerifier;
use crate::backend::BackendConn;
use crate::backend::injection::{
    CTX_SESSION_STATEMENT, CTX_STATEMENT, ContextCache, InjectionPlan,
};
use crate::config::{AuthMethod, Config, ContextMode, TenantConfig, UserConvention};
use crate::verified::ContextKey;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Serial numbers of [`Tenant`] definitions, so a backend's cached injection names the
/// definition it was computed for.
static TENANT_SERIAL: AtomicU64 = AtomicU64::new(1);

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
    /// Prefix of this tenant's LISTEN/NOTIFY channels (see [`channel_prefix`]).
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

    /// Verified mode: the serial backends know this tenant by (the context a backend
    /// carries, the tenant that used it last); None in plain mode.
    pub fn verified_serial(&self) -> Option<u64> {
        self.verified.as_ref().map(|_| self.serial)
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
        if conn.context_cache.as_ref().map(ContextCache::serial) != Some(self.serial) {
            let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            let proof = crate::verified::proof(key, conn.key().pid, &values);
            let id = key.id().to_string();
            let mut params: Vec<&[u8]> = vec![id.as_bytes(), proof.as_bytes()];
            params.extend(values);
            conn.context_cache = Some(ContextCache::new(
                self.serial,
                InjectionPlan::bind_execute(CTX_STATEMENT, &params),
                InjectionPlan::bind_execute(CTX_SESSION_STATEMENT, &params),
            ));
        }
        let cache = conn.context_cache.as_ref().expect("filled above");
        cache.injection(session)
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
                channel_prefix: channel_prefix(&t.id),
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

/// The key behind every channel prefix, fixed for the process's life: a LISTEN made under
/// one prefix must keep hearing NOTIFYs made later.
static CHANNEL_KEY: std::sync::OnceLock<crate::verified::ContextKey> = std::sync::OnceLock::new();

/// Makes `key` (from `server.channel_key_file`/`_env`) the channel key, or draws a random
/// one when there is none; call before the first tenant is built. False when a different
/// key is already in use (a reload: the key changes only at a restart).
pub fn use_channel_key(key: Option<&crate::verified::ContextKey>) -> bool {
    let in_use = CHANNEL_KEY.get_or_init(|| {
        key.cloned()
            .unwrap_or_else(crate::verified::ContextKey::generate)
    });
    key.is_none_or(|k| k == in_use)
}

/// The LISTEN/NOTIFY channel prefix of the tenant with id `tenant_id`: fixed length (so
/// stripping it is unambiguous), free of characters SQL would quote, and keyed, so that no
/// tenant can compute another's: then even SQL the proxy never reads (a rule, an operator
/// or a function already in the database calling `pg_notify`) cannot name another
/// tenant's channel. The same in every pgtenant process that shares the channel key.
pub fn channel_prefix(tenant_id: &str) -> String {
    let key = CHANNEL_KEY.get_or_init(crate::verified::ContextKey::generate);
    let digest = key.hmac(format!("pgtenant channel\0{tenant_id}").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("pgt_{hex}.")
}
