//! Backend connection pool for one logical database: at most `pool_size` connections, a
//! FIFO of waiting clients (in verified mode a released backend may first go to a waiting
//! client of the tenant it served, within a bound: [`affinity`]), health checks at checkout,
//! and a cleanup step on release that must succeed before a connection can serve anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, BackendError, BackendTarget};
use crate::config::{DatabaseConfig, PinMode, PoolMode};
use crate::metrics::PoolMetrics;

mod affinity;
mod conn;
mod hold;
mod limits;
pub mod startup;
use affinity::Place;
pub use conn::PooledConn;
pub use limits::StatementBudgets;
use limits::{Limits, backend_identity};

/// A backend handed from a releasing client straight to a waiting one, with its slot.
type Grant = (Box<BackendConn>, OwnedSemaphorePermit);

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
    /// This pool, for the timers of held backends.
    me: std::sync::Weak<Pool>,
    /// Backends kept for their tenant's next checkout (verified mode, `affinity_hold`).
    held: hold::Held,
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
    /// Verified mode: waiting clients by tenant, for [`Pool::recycle`]'s hand-over.
    waiters: affinity::Waiters<Grant>,
    next_id: AtomicU64,
    reset_sql: String,
    /// Connections pinned to one client right now (see [`Pool::try_pin`]).
    pinned: std::sync::atomic::AtomicUsize,
    /// Slots a shrinking reload has yet to take back. While any are owed, released
    /// backends go back through the semaphore, where the shrink waits its turn, and not
    /// straight to waiting clients, which would keep every slot in circulation.
    shrinking: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: PoolMetrics,
    /// Start-up answers for clients that log in while every backend is busy.
    pub startup: startup::StartupMemo,
    /// Bytes of named prepared statements all clients of this pool keep defined now.
    pub statement_usage: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} -> {:?})", self.name, self.target)
    }
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
        Arc::new_cyclic(|me| Pool {
            me: me.clone(),
            held: Default::default(),
            name: name.to_string(),
            mode: cfg.pool_mode,
            target,
            source: cfg.clone(),
            limits: arc_swap::ArcSwap::from_pointee(Limits::of(cfg)),
            retired: Default::default(),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(cfg.pool_size)),
            waiters: affinity::Waiters::default(),
            next_id: AtomicU64::new(1),
            reset_sql,
            pinned: Default::default(),
            shrinking: Default::default(),
            metrics,
            startup: Default::default(),
            statement_usage: Default::default(),
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
            let excess = old.size - new;
            let shrinking = self.shrinking.clone();
            shrinking.fetch_add(excess, Ordering::AcqRel);
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(excess as u32).await {
                    p.forget();
                }
                shrinking.fetch_sub(excess, Ordering::AcqRel);
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

    /// Bytes of prepared statements one client, all clients of this pool together, and
    /// one tenant's clients together may keep defined.
    pub fn statement_bytes(&self) -> StatementBudgets {
        let limits = self.limits.load();
        StatementBudgets {
            client: limits.statement_bytes,
            total: limits.statement_bytes_total,
            tenant: limits.statement_bytes_per_tenant,
        }
    }

    /// Connections pinned to one client right now.
    pub fn pinned(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
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
        if let Some((conn, permit)) = tenant.and_then(|t| self.take_held(t)) {
            return Some(self.lend(conn, permit, Duration::ZERO));
        }
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
        PooledConn::lent(conn, permit, self.clone())
    }

    /// Waits (fairly, up to the checkout timeout) for a slot, then reuses a healthy idle
    /// connection or opens a new one. In verified mode a client of the tenant a released
    /// backend served may get that backend ahead of its turn (see [`Pool::recycle`]).
    pub async fn checkout(self: &Arc<Self>, tenant: Option<u64>) -> Result<PooledConn, PoolError> {
        let started = Instant::now();
        if let Some((conn, permit)) = tenant.and_then(|t| self.take_held(t)) {
            return Ok(self.lend(conn, permit, Duration::ZERO));
        }
        let timeout = self.checkout_timeout();
        self.metrics.waiting.inc();
        let got = tokio::time::timeout(timeout, self.wait_slot(tenant)).await;
        self.metrics.waiting.dec();
        let (permit, handed) = match got {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                self.metrics.checkout_timeouts.inc();
                return Err(PoolError::Timeout(timeout));
            }
        };
        let conn = match handed.or_else(|| self.take_idle(tenant)) {
            Some(c) => c,
            // Boxed: connecting (TLS, SCRAM) is rare and large; sessions await checkout.
            None => Box::new(Box::pin(self.open()).await?),
        };
        Ok(self.lend(conn, permit, started.elapsed()))
    }

    /// A slot in arrival order; in verified mode (`tenant` given) also a place among the
    /// waiters, where a released backend of the same tenant may come first, with its slot.
    /// The place is taken with affinity off too (`affinity_overtakes = 0`, nothing is handed
    /// over then), so a reload that turns it on finds every waiting client in the queue and
    /// bounds how often each is overtaken.
    async fn wait_slot(
        self: &Arc<Self>,
        tenant: Option<u64>,
    ) -> Result<(OwnedSemaphorePermit, Option<Box<BackendConn>>), tokio::sync::AcquireError> {
        let Some(tenant) = tenant else {
            return Ok((self.slots.clone().acquire_owned().await?, None));
        };
        let mut place = Place::join(self, tenant);
        tokio::select! {
            biased;
            grant = &mut place.grant => {
                place.left = true;
                match grant {
                    Ok((conn, permit)) => Ok((permit, Some(conn))),
                    // The queue could not take it (a poisoned lock): arrival order only.
                    Err(_) => Ok((self.slots.clone().acquire_owned().await?, None)),
                }
            }
            permit = self.slots.clone().acquire_owned() => {
                let permit = permit?;
                // A backend handed over meanwhile wins: it served this tenant last.
                match place.leave() {
                    Some((conn, handed)) => {
                        drop(permit);
                        Ok((handed, Some(conn)))
                    }
                    None => Ok((permit, None)),
                }
            }
        }
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

    /// Plain mode: the most recently used idle connection (the rest may time out). Verified
    /// mode (`tenant` given): the most recent one that tenant used last (it may hold its
    /// context, and needs no DISCARD ALL), else the most recent one no tenant used yet, else
    /// the least recently used one, whose tenant is the least likely to come back for it
    /// soon (taking the most recent would take a busy tenant's backend just as it left).
    fn take_idle(&self, tenant: Option<u64>) -> Option<Box<BackendConn>> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().ok()?;
                let last = idle.len().checked_sub(1)?;
                let at = match tenant {
                    None => last,
                    Some(serial) => idle
                        .iter()
                        .rposition(|c| c.tenant == Some(serial))
                        .or_else(|| idle.iter().rposition(|c| c.tenant.is_none()))
                        .unwrap_or(0),
                };
                idle.remove(at)
            };
            self.metrics.idle.dec();
            if conn.created.elapsed() < self.limits.load().max_lifetime && conn.is_healthy_idle() {
                return Some(conn);
            }
            self.metrics.closed.inc();
        }
    }

    /// Takes back a released connection and its slot: closed when it may not serve again,
    /// else (verified mode) handed to the earliest waiting client of the tenant it served,
    /// unless that would overtake a client already overtaken `affinity_overtakes` times,
    /// else idle, its slot free for the next client in arrival order.
    fn recycle(&self, mut conn: Box<BackendConn>, permit: OwnedSemaphorePermit) {
        conn.last_used = Instant::now();
        if !conn.settle_async() {
            tracing::debug!(pool = %self.name, "a released backend had unread messages; closing it");
            self.metrics.closed.inc();
            return;
        }
        let limits = self.limits.load();
        if !self.may_serve_again(&conn, &limits) {
            return;
        }
        let mut permit = permit;
        if let Some(tenant) = conn.tenant
            && limits.overtakes > 0
            && self.shrinking.load(Ordering::Acquire) == 0
        {
            match self.waiters.offer(tenant, (conn, permit), limits.overtakes) {
                Ok(()) => {
                    self.metrics.handoffs.inc();
                    return;
                }
                Err(back) => (conn, permit) = back,
            }
            match self.try_hold(tenant, conn, permit, &limits) {
                Ok(()) => return,
                Err(back) => (conn, permit) = back,
            }
        }
        self.shelve(conn, permit);
    }

    /// False, counting it closed, for a connection past its lifetime or of a retired pool.
    fn may_serve_again(&self, conn: &BackendConn, limits: &Limits) -> bool {
        let ok = conn.created.elapsed() < limits.max_lifetime && !self.is_retired();
        if !ok {
            self.metrics.closed.inc();
        }
        ok
    }

    /// Puts a connection on the idle list and frees its slot for the next client in
    /// arrival order.
    fn shelve(&self, conn: Box<BackendConn>, permit: OwnedSemaphorePermit) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
            self.metrics.idle.inc();
        }
        drop(permit);
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
