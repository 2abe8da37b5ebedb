//! Backend connection pool for one logical database: at most `pool_size` connections, a
//! fair FIFO of waiting clients, health checks at checkout, and a cleanup step on release
//! that must succeed before a connection can serve anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, BackendError, BackendTarget, Owed};
use crate::config::{DatabaseConfig, PinMode, PoolMode};
use crate::metrics::PoolMetrics;

mod limits;
use limits::{Limits, backend_identity};

/// Why a client could not get a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no backend connection became available within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] BackendError),
    #[error("the pool is closed")]
    Closed,
}

/// What a released connection needs before it may serve another client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// The transaction left nothing a later client could see (the release rule,
    /// `policy::sql::Leftover`): no cleanup at all.
    None,
    /// It may have left sequence values or temp objects: the sweep, pipelined ahead of the
    /// next user.
    Sweep,
    /// RESET the context settings, and the sweep.
    ResetContext,
    /// The client may have left session state: the session is emptied
    /// ([`BackendConn::empty_session`]: DISCARD ALL, a new `random()` seed).
    Full,
    /// The client left mid-transaction: ROLLBACK, then emptied as for `Full`.
    Rollback,
}

/// The pool for one `[databases.<name>]` entry.
pub struct Pool {
    pub name: String,
    pub mode: PoolMode,
    target: BackendTarget,
    source: DatabaseConfig,
    limits: arc_swap::ArcSwap<Limits>,
    /// Replaced or removed by a reload: no new clients; connections close on release.
    retired: std::sync::atomic::AtomicBool,
    /// Idle connections, most recently used last. A std Mutex: every critical section is a
    /// push or pop, never held across an await. Boxed: a connection moves between the pool
    /// and sessions by pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<BackendConn>>>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    reset_sql: String,
    /// Connections pinned to one client right now (see [`Pool::try_pin`]).
    pinned: std::sync::atomic::AtomicUsize,
    pub metrics: PoolMetrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} -> {:?})", self.name, self.target)
    }
}

/// A checked-out connection. Dropping it without [`PooledConn::release`] closes the
/// connection, so a session that dies never returns a connection in an unknown state.
pub struct PooledConn {
    /// Boxed: it moves between the pool and sessions by pointer, and an idle session's
    /// `Option<PooledConn>` stays small.
    conn: Option<Box<BackendConn>>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
    /// The tenant's backend-cap slot, given back with the connection.
    tenant_slot: Option<crate::registry::BackendSlot>,
}

impl Pool {
    /// Statement kinds the guard's allow-list gains for this database (`guard_allow`).
    pub fn guard_allow(&self) -> &[String] {
        &self.source.guard_allow
    }

    /// Creates an empty pool; connections are opened on demand.
    pub fn new(
        name: &str,
        cfg: &DatabaseConfig,
        target: BackendTarget,
        reset_sql: String,
        metrics: PoolMetrics,
    ) -> Arc<Pool> {
        metrics.size.set(cfg.pool_size as i64);
        Arc::new(Pool {
            name: name.to_string(),
            mode: cfg.pool_mode,
            target,
            source: cfg.clone(),
            limits: arc_swap::ArcSwap::from_pointee(Limits::of(cfg)),
            retired: Default::default(),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(cfg.pool_size)),
            next_id: AtomicU64::new(1),
            reset_sql,
            pinned: Default::default(),
            metrics,
        })
    }

    /// The backend this pool connects to.
    pub fn target(&self) -> &BackendTarget {
        &self.target
    }

    /// True when a reload would keep this pool for `cfg` (same server, same way in).
    pub fn same_backend(&self, cfg: &DatabaseConfig) -> bool {
        backend_identity(&self.source) == backend_identity(cfg)
    }

    /// Applies new limits from a reload: the pool grows at once and shrinks as
    /// connections come back; timeouts apply to the next checkout.
    pub fn reconfigure(&self, cfg: &DatabaseConfig) {
        let old = self.limits.swap(Arc::new(Limits::of(cfg)));
        let new = cfg.pool_size;
        if new > old.size {
            self.slots.add_permits(new - old.size);
        } else if new < old.size {
            let slots = self.slots.clone();
            let excess = (old.size - new) as u32;
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(excess).await {
                    p.forget();
                }
            });
        }
        self.metrics.size.set(new as i64);
        self.reap_idle();
    }

    /// Takes the pool out of service after a reload replaced or removed it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.close_idle();
    }

    /// True once a reload replaced or removed this pool.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The checkout timeout in force.
    pub fn checkout_timeout(&self) -> Duration {
        self.limits.load().checkout_timeout
    }

    /// Whether a plain BEGIN waits for the transaction's first statement (`defer_begin`).
    pub fn defers_begin(&self) -> bool {
        self.limits.load().defer_begin
    }

    /// What this database does with session state that outlives a transaction.
    pub fn pin_mode(&self) -> PinMode {
        self.limits.load().pin_mode
    }

    /// Connections pinned to one client right now.
    pub fn pinned(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }

    /// True when another connection could be pinned now (a hint: [`Pool::try_pin`] decides).
    pub fn may_pin(&self) -> bool {
        self.pinned() < self.limits.load().max_pinned
    }

    /// Counts one more pinned connection unless `max_pinned_connections` are pinned.
    pub fn try_pin(&self) -> bool {
        let max = self.limits.load().max_pinned;
        let ok = self
            .pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if ok {
            self.metrics.pinned.inc();
            self.metrics.pins.inc();
        } else {
            self.metrics.pins_refused.inc();
        }
        ok
    }

    /// Gives back a pin taken with [`Pool::try_pin`].
    pub fn unpin(&self) {
        self.pinned.fetch_sub(1, Ordering::AcqRel);
        self.metrics.pinned.dec();
    }

    /// Idle connections: (id, age, time since last use).
    pub fn idle_snapshot(&self) -> Vec<(u64, Duration, Duration)> {
        self.idle
            .lock()
            .map(|idle| {
                idle.iter()
                    .map(|c| (c.id, c.created.elapsed(), c.last_used.elapsed()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The common case without waiting: a free slot and a healthy idle connection. None
    /// when the caller must wait or a connection must be opened ([`Pool::checkout`]).
    /// `tenant`: verified mode's serial of the caller's tenant, whose last backends it
    /// would rather get (see [`Pool::take_idle`]).
    pub fn try_checkout(self: &Arc<Self>, tenant: Option<u64>) -> Option<PooledConn> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let conn = self.take_idle(tenant)?;
        Some(self.lend(conn, permit, Duration::ZERO))
    }

    /// Hands `conn` out under `permit`, counting the wait.
    fn lend(
        self: &Arc<Self>,
        conn: Box<BackendConn>,
        permit: OwnedSemaphorePermit,
        waited: Duration,
    ) -> PooledConn {
        self.metrics.wait_seconds.observe(waited.as_secs_f64());
        self.metrics.active.inc();
        PooledConn {
            conn: Some(conn),
            permit: Some(permit),
            pool: self.clone(),
            tenant_slot: None,
        }
    }

    /// Waits (fairly, up to the checkout timeout) for a slot, then reuses a healthy idle
    /// connection or opens a new one.
    pub async fn checkout(self: &Arc<Self>, tenant: Option<u64>) -> Result<PooledConn, PoolError> {
        let started = Instant::now();
        let timeout = self.checkout_timeout();
        self.metrics.waiting.inc();
        let permit = tokio::time::timeout(timeout, self.slots.clone().acquire_owned()).await;
        self.metrics.waiting.dec();
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                self.metrics.checkout_timeouts.inc();
                return Err(PoolError::Timeout(timeout));
            }
        };
        let conn = match self.take_idle(tenant) {
            Some(c) => c,
            // Boxed: connecting (TLS, SCRAM) is rare and large; sessions await checkout.
            None => Box::new(Box::pin(self.open()).await?),
        };
        Ok(self.lend(conn, permit, started.elapsed()))
    }

    /// Opens a connection outside the slot accounting (for start-up checks).
    pub async fn open(&self) -> Result<BackendConn, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.target.connect(id).await {
            Ok(c) => {
                self.metrics.opened.inc();
                self.metrics.up.set(1);
                Ok(c)
            }
            Err(e) => {
                self.metrics.connect_errors.inc();
                self.metrics.up.set(0);
                Err(e)
            }
        }
    }

    /// The most recently used idle connection that tenant `tenant` used last (verified mode:
    /// it may hold that tenant's context, and needs no DISCARD ALL), else the most recent
    /// one no tenant used yet, else the most recent.
    fn take_idle(&self, tenant: Option<u64>) -> Option<Box<BackendConn>> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().ok()?;
                let at = tenant
                    .and_then(|serial| idle.iter().rposition(|c| c.tenant == Some(serial)))
                    .or_else(|| tenant.and_then(|_| idle.iter().rposition(|c| c.tenant.is_none())))
                    .unwrap_or(idle.len().checked_sub(1)?);
                idle.remove(at)
            };
            self.metrics.idle.dec();
            if conn.created.elapsed() < self.limits.load().max_lifetime && conn.is_healthy_idle() {
                return Some(conn);
            }
            self.metrics.closed.inc();
        }
    }

    fn put_idle(&self, mut conn: Box<BackendConn>) {
        conn.last_used = Instant::now();
        if !conn.settle_async() {
            tracing::debug!(pool = %self.name, "a released backend had unread messages; closing it");
            self.metrics.closed.inc();
            return;
        }
        if conn.created.elapsed() >= self.limits.load().max_lifetime || self.is_retired() {
            self.metrics.closed.inc();
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
            self.metrics.idle.inc();
        }
    }

    /// Closes idle connections unused for longer than the idle timeout.
    pub fn reap_idle(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let before = idle.len();
        let limits = self.limits.load();
        idle.retain(|c| {
            c.last_used.elapsed() < limits.idle_timeout && c.created.elapsed() < limits.max_lifetime
        });
        // After a shrink, idle connections beyond the new size go first.
        let keep = limits.size.min(idle.len());
        let excess = idle.len() - keep;
        idle.drain(..excess);
        let closed = before - idle.len();
        self.metrics.idle.sub(closed as i64);
        self.metrics.closed.inc_by(closed as u64);
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            self.metrics.idle.sub(idle.len() as i64);
            idle.clear();
        }
    }

    /// Counts a prepared statement evicted from a backend's cache.
    pub fn metrics_statement_evictions(&self) {
        self.metrics.statement_evictions.inc();
    }

    /// Configured maximum number of backend connections.
    pub fn size(&self) -> usize {
        self.limits.load().size
    }

    /// The queries a cleanup takes, each sent as its own Query message, and whether the
    /// session is emptied after them ([`BackendConn::empty_session`]).
    fn cleanup_steps(&self, cleanup: Cleanup, conn: &BackendConn) -> (Vec<&str>, bool) {
        match cleanup {
            Cleanup::None | Cleanup::Sweep | Cleanup::ResetContext if !conn.session_context => {
                (vec![], false)
            }
            Cleanup::None | Cleanup::Sweep | Cleanup::ResetContext => {
                (vec![self.reset_sql.as_str()], false)
            }
            Cleanup::Full => (vec![], true),
            Cleanup::Rollback => (vec!["ROLLBACK"], true),
        }
    }
}

impl PooledConn {
    /// The connection, while checked out.
    pub fn conn(&mut self) -> &mut BackendConn {
        self.conn.as_mut().expect("PooledConn used after release")
    }

    /// Verified mode: makes the connection fit for a client of tenant `serial`. One that
    /// another tenant used last is emptied first with [`BackendConn::empty_session`] (a round trip, only
    /// when the tenant changes): whatever that tenant's SQL left in the session, seen by
    /// the guard or not (prepared statements under the proxy's own names, which the proxy
    /// executes, settings, temp objects, its carried context), never reaches this tenant.
    /// Returns whether it was cleaned; an error leaves the connection to be dropped.
    pub async fn serve_tenant(&mut self, serial: u64) -> Result<bool, BackendError> {
        let conn = self.conn();
        let other = conn.tenant.is_some_and(|t| t != serial);
        if other {
            conn.empty_session().await?;
        }
        conn.tenant = Some(serial);
        Ok(other)
    }

    /// Keeps the tenant's backend-cap slot until the connection is given back.
    pub fn hold(&mut self, slot: crate::registry::BackendSlot) {
        self.tenant_slot = Some(slot);
    }

    /// Returns the connection to the pool after `cleanup`; the slot stays taken until the
    /// cleanup has succeeded, and a failed cleanup closes the connection instead.
    pub fn release(mut self, cleanup: Cleanup) {
        let (Some(mut conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return;
        };
        let pool = self.pool.clone();
        pool.metrics.active.dec();
        // A cleanup beyond the sweep may clear a carried verified context (DISCARD ALL,
        // ROLLBACK, the RESET): the next transaction enters it again.
        conn.carry.on_release();
        if !matches!(cleanup, Cleanup::None | Cleanup::Sweep) {
            conn.carry.unsure();
        }
        if !conn.session_context {
            // The context was transaction-local and is gone; the belt-and-braces RESET and
            // the sweep of unnamed session state ride ahead of the next user's first
            // message instead of costing a round trip now. PostgreSQL runs them before
            // anything that user sends.
            match cleanup {
                Cleanup::None => {}
                Cleanup::Sweep => conn.owed = conn.owed.max(Owed::Sweep),
                Cleanup::ResetContext => conn.owed = Owed::ResetAndSweep,
                Cleanup::Full | Cleanup::Rollback => {}
            }
        }
        if !conn.cancels.any()
            && !conn.cancels.sent()
            && pool.cleanup_steps(cleanup, &conn) == (vec![], false)
        {
            pool.put_idle(conn);
            drop(permit);
            return;
        }
        tokio::spawn(async move {
            // A backend a cancel was sent to is never handed on (nothing proves PostgreSQL
            // acted on it); one still being sent gets up to CANCEL_SETTLE to settle first.
            if !conn.cancels.settled(CANCEL_SETTLE).await || conn.cancels.sent() {
                tracing::debug!(pool = %pool.name, "a cancel was sent to this backend; closing the connection");
                pool.metrics.closed.inc();
                return;
            }
            let (queries, empty) = pool.cleanup_steps(cleanup, &conn);
            let ran = !queries.is_empty() || empty;
            let mut result = Ok(());
            for sql in queries {
                result = conn.simple_query(sql).await.map(|_| ());
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() && empty {
                result = conn.empty_session().await;
            }
            match result {
                Ok(()) => {
                    if ran {
                        conn.session_context = false;
                        conn.owed = Owed::Nothing;
                    }
                    pool.put_idle(conn);
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "backend cleanup failed; closing the connection");
                    pool.metrics.closed.inc();
                }
            }
            drop(permit);
        });
    }
}

/// How long a released backend waits for a cancel in flight to be confirmed before it is
/// closed instead of handed on.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.metrics.active.dec();
            self.pool.metrics.closed.inc();
        }
    }
}
