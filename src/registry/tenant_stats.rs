//! Per-tenant counters shared by every client of the tenant: connections, backends held,
//! pins, transactions, waits and errors (limits read them; metrics report them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Activity of one tenant since start-up (all clients, all pools).
#[derive(Debug, Default)]
pub struct TenantStats {
    pub connections: AtomicUsize,
    /// Backend connections the tenant holds right now.
    pub backends: AtomicUsize,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    /// Microseconds spent waiting for a backend connection.
    pub wait_us: AtomicU64,
    /// ErrorResponses the tenant's clients received.
    pub errors: AtomicU64,
    /// Wakes clients waiting for the tenant's backend cap.
    pub backend_freed: Notify,
    /// Server connections the tenant keeps pinned right now.
    pub pinned: AtomicUsize,
    /// The tenant's turn at PostgreSQL's parser: its clients parse one text at a time, so
    /// one tenant cannot hold every parser slot (`Server::parser_slots`) while others wait.
    pub parse_turn: ParseTurn,
    /// Bytes the tenant's clients hold for large messages arriving (see
    /// `server.large_message_bytes_per_tenant`).
    pub large_message_bytes: AtomicUsize,
    /// Bytes of prepared statements the tenant's clients keep defined (see
    /// `databases.<name>.prepared_statement_bytes_per_tenant`).
    pub statement_bytes: Arc<AtomicUsize>,
}

/// One permit: whose turn it is to run the guard's parser among a tenant's clients.
#[derive(Debug)]
pub struct ParseTurn(pub Arc<tokio::sync::Semaphore>);

impl Default for ParseTurn {
    fn default() -> ParseTurn {
        ParseTurn(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl TenantStats {
    /// Takes one of the tenant's backend slots, waiting up to `timeout` while it holds
    /// `limit` (0: no limit; the slot still counts for metrics). None on timeout.
    pub async fn acquire_backend(
        self: &Arc<Self>,
        limit: usize,
        timeout: std::time::Duration,
    ) -> Option<BackendSlot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let freed = self.backend_freed.notified();
            if let Some(slot) = self.try_acquire_backend(limit) {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Takes a backend slot if one is free now (always, when `limit` is 0).
    pub fn try_acquire_backend(self: &Arc<Self>, limit: usize) -> Option<BackendSlot> {
        let mut held = self.backends.load(Ordering::Acquire);
        loop {
            if limit > 0 && held >= limit {
                return None;
            }
            match self.backends.compare_exchange_weak(
                held,
                held + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(BackendSlot(self.clone())),
                Err(now) => held = now,
            }
        }
    }

    /// Counts one more pinned connection unless the tenant holds `limit` (0: no limit).
    pub fn try_pin(&self, limit: usize) -> bool {
        self.pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a pin taken with [`TenantStats::try_pin`].
    pub fn unpin(&self) {
        self.pinned.fetch_sub(1, Ordering::AcqRel);
    }

    /// Activity used to rank tenants for their own metric label.
    pub(super) fn activity(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed) + self.connections.load(Ordering::Relaxed) as u64
    }
}

/// One backend connection counted against a tenant; given back on drop.
#[derive(Debug)]
pub struct BackendSlot(Arc<TenantStats>);

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.0.backends.fetch_sub(1, Ordering::AcqRel);
        self.0.backend_freed.notify_one();
    }
}
