//! Pinning: a client whose session keeps state that PostgreSQL holds per connection (a temp
//! table, LISTEN, an SQL-level prepared statement, a WITH HOLD cursor, a session advisory
//! lock) keeps its server connection until that state is gone, then the connection is
//! cleaned and goes back to the pool. PostgreSQL itself says what is kept (one query after a
//! transaction that may have changed the session), so state made in any spelling or inside
//! a function is seen the same way.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Session;
use crate::config::PinMode;
use crate::pool::Pool;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::registry::{ClientEntry, TenantStats};

/// Name of the extra row the session-settings query returns: the kinds of state kept
/// (never a setting name: those have no spaces).
pub(super) const KEPT_ROW: &str = "pgtenant kept";

/// One text column listing what the session keeps, comma-separated ('' when nothing): temp
/// objects (relations, and every other kind through its dependency on the temp schema:
/// functions, types, domains, collations, operators, text search objects), channels
/// listened to, WITH HOLD cursors, SQL-level prepared statements, and session advisory
/// locks. Run only between transactions, where transaction-level cursors
/// and locks are already gone.
pub(super) const KEPT_SQL: &str = "SELECT 'pgtenant kept', pg_catalog.concat_ws(',', \
    CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
        AND refobjid = pg_catalog.pg_my_temp_schema()) \
      THEN 'temp' END, \
    CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN 'listen' END, \
    CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'cursor' END, \
    CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'prepare' END, \
    CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
      AND pid = pg_catalog.pg_backend_pid()) THEN 'advisory_lock' END)";

/// A server connection pinned to one client, counted against the pool's
/// `max_pinned_connections` and the tenant's `max_pinned`; given back on drop.
pub(super) struct Pin {
    pool: Arc<Pool>,
    stats: Arc<TenantStats>,
    entry: Arc<ClientEntry>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.pool.unpin();
        self.stats.unpin();
        self.entry.pinned.store(false, Ordering::Relaxed);
    }
}

/// Why a pin could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CapReached {
    Tenant,
    Pool,
}

impl CapReached {
    /// The text a client sees; names the setting that would allow more.
    pub(super) fn message(self, what: &str) -> String {
        let key = match self {
            CapReached::Tenant => "max_pinned_per_tenant",
            CapReached::Pool => "max_pinned_connections",
        };
        format!(
            "pgtenant: {what}: too many server connections are pinned to clients that keep session state ({key})"
        )
    }
}

impl Session {
    /// Takes a pin for this client, within the tenant's and the pool's caps.
    fn take_pin(&mut self) -> Result<(), CapReached> {
        if self.pin.is_some() {
            return Ok(());
        }
        if !self.stats().try_pin(self.tenant.pinned_limit) {
            self.pool.metrics.pins_refused.inc();
            return Err(CapReached::Tenant);
        }
        if !self.pool.try_pin() {
            self.stats().unpin();
            return Err(CapReached::Pool);
        }
        self.me.entry.pinned.store(true, Ordering::Relaxed);
        tracing::info!(parent: &self.span(), "client pinned to its server connection");
        self.pin = Some(Box::new(Pin {
            pool: self.pool.clone(),
            stats: self.stats().clone(),
            entry: self.me.entry.clone(),
        }));
        Ok(())
    }

    /// Before a statement that keeps session state is sent: None when it may run, else the
    /// SQLSTATE and message that refuse it (no pin left; `pin_session_state = "refuse"` is
    /// [`Session::pin_refusal`]'s, asked first). Under `"pin"` the pin is taken now, not when the transaction ends: two clients
    /// racing for the last pin then learn which one won before their state exists, instead
    /// of the loser's state being discarded at its COMMIT. A pin taken for state that does
    /// not outlive the transaction is given back at release (the session is marked as
    /// changed, so PostgreSQL is asked what it keeps).
    pub(super) fn reserve_pin(&mut self, what: &str) -> Option<(&'static str, String)> {
        if self.pin.is_some()
            || self.pool.mode != crate::config::PoolMode::Transaction
            || self.pool.pin_mode() != PinMode::Pin
        {
            return None;
        }
        match self.take_pin() {
            Ok(()) => {
                self.dirty = true;
                None
            }
            Err(cap) => Some((sqlstate::CONFIGURATION_LIMIT_EXCEEDED, cap.message(what))),
        }
    }

    /// The refusal `pin_session_state = "refuse"` gives a statement that keeps session
    /// state in transaction pooling; None otherwise (caps are checked by
    /// [`Session::reserve_pin`], which takes the pin).
    pub(super) fn pin_refusal(&self, what: &str) -> Option<(&'static str, String)> {
        if self.pin.is_some()
            || self.pool.mode != crate::config::PoolMode::Transaction
            || self.pool.pin_mode() != PinMode::Refuse
        {
            return None;
        }
        Some((
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "pgtenant: {what} keeps session state, which this database refuses in transaction pooling (pin_session_state = \"refuse\"); use a session-mode database"
            ),
        ))
    }

    /// After a transaction that may have changed the session, with PostgreSQL's list of
    /// the state it keeps (`kept`, comma-separated, empty when none): true when the client
    /// keeps its server connection. A client that cannot be pinned is told its state was
    /// discarded (the connection is then cleaned with DISCARD ALL).
    pub(super) fn keep_pinned(&mut self, kept: &str) -> bool {
        if kept.is_empty() || self.pool.mode != crate::config::PoolMode::Transaction {
            return false;
        }
        match self.pool.pin_mode() {
            PinMode::Pin => {}
            PinMode::Clean => return false,
            PinMode::Refuse => {
                self.warn_discarded(kept, "pin_session_state = \"refuse\"");
                return false;
            }
        }
        match self.take_pin() {
            Ok(()) => {
                tracing::debug!(parent: &self.span(), kept, "the client keeps its server connection");
                true
            }
            Err(cap) => {
                let why = cap.message("cannot keep it");
                self.warn_discarded(kept, &why);
                false
            }
        }
    }

    /// Tells the client (an asynchronous WARNING) that the session state it left was
    /// discarded at the end of its transaction.
    fn warn_discarded(&mut self, kept: &str, why: &str) {
        tracing::warn!(parent: &self.span(), kept, "session state discarded: {why}");
        messages::error_response(
            &mut self.cout,
            Severity::Warning,
            sqlstate::WARNING,
            &format!("pgtenant discarded the session state this transaction left ({kept}): {why}"),
        );
    }
}
