//! What a reload may change in a pool in place (its limits), and what identifies the
//! server it talks to (a change there builds a new pool).

use std::time::Duration;

use crate::config::{DatabaseConfig, PinMode};

/// The byte budgets a Parse is checked against: one client's named statements, all
/// clients' of the pool, and all clients' of one tenant.
#[derive(Debug, Clone, Copy)]
pub struct StatementBudgets {
    pub client: usize,
    pub total: usize,
    pub tenant: usize,
}

/// The limits of a pool that a reload may change in place.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub(super) size: usize,
    pub(super) checkout_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_lifetime: Duration,
    pub(super) defer_begin: bool,
    pub(super) pin_mode: PinMode,
    pub(super) max_pinned: usize,
    /// Verified mode: how often a waiting client may be overtaken by one of the tenant a
    /// released backend served (0: arrival order only).
    pub(super) overtakes: usize,
    /// Verified mode: how long a released backend is kept for its tenant's next checkout
    /// while other tenants' clients wait (zero: never).
    pub(super) hold: Duration,
    /// Bytes of named statements one client, and all clients, may keep defined.
    pub(super) statement_bytes: usize,
    pub(super) statement_bytes_total: usize,
    pub(super) statement_bytes_per_tenant: usize,
}

impl Limits {
    pub(super) fn of(cfg: &DatabaseConfig) -> Limits {
        Limits {
            size: cfg.pool_size,
            checkout_timeout: cfg.checkout_timeout,
            idle_timeout: cfg.idle_timeout,
            max_lifetime: cfg.max_lifetime,
            defer_begin: cfg.defer_begin,
            pin_mode: cfg.pin_session_state,
            max_pinned: cfg.pinned_limit(),
            overtakes: cfg
                .affinity_overtakes
                .unwrap_or(cfg.pool_size.saturating_mul(5)),
            hold: cfg.affinity_hold,
            statement_bytes: cfg.prepared_statement_bytes,
            statement_bytes_total: cfg.prepared_statement_bytes_total,
            statement_bytes_per_tenant: cfg.statement_bytes_per_tenant(),
        }
    }
}

/// The settings that decide which server a pool talks to, and how; a reload that changes
/// any of them builds a new pool.
pub(super) fn backend_identity(cfg: &DatabaseConfig) -> impl PartialEq + use<> {
    (
        (
            cfg.host.clone(),
            cfg.port,
            cfg.dbname.clone(),
            cfg.user.clone(),
        ),
        (cfg.resolve_password(), cfg.pool_mode, cfg.connect_timeout),
        (cfg.sslmode, cfg.sslrootcert.clone(), cfg.sslcert.clone()),
        (cfg.sslkey.clone(), cfg.server_name.clone()),
        (
            cfg.prepared_statement_cache_size,
            cfg.prepared_statement_bytes,
        ),
    )
}
