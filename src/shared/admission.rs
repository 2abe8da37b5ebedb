//! A place under `server.max_client_connections` for each connection. At the limit, the
//! connection that has been in start-up longest gives way to a new one once it has been
//! there `server.startup_evict_after`, so connections that never finish logging in
//! (slow-loris) cannot keep clients out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Server;

/// A reserved client place, released on drop.
pub struct ClientSlot(Arc<Server>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// Reserves a place for connection `me`; None when refused: at the limit, with no
    /// other connection in start-up for `startup_evict_after` to give way. The place of
    /// one that gives way is taken at once, so the count runs over the limit (by at most
    /// the connections told to end) until each ends at its next poll. A new client is not
    /// made to wait for a start-up to age: it would wait beside an attacker's reconnects,
    /// which come faster, and gain only latency (measured, benches/RESULTS.md).
    pub fn admit_client(self: &Arc<Self>, me: u64) -> Option<ClientSlot> {
        let cfg = self.config();
        let prev = self.clients.fetch_add(1, Ordering::AcqRel);
        if prev < cfg.server.max_client_connections {
            return Some(ClientSlot(self.clone()));
        }
        let evict_after = cfg.server.startup_evict_after;
        if evict_after.is_zero() || !self.registry.evict_oldest_startup(evict_after, me) {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics
            .client_rejections
            .with_label_values(&["startup_evicted"])
            .inc();
        tracing::info!("a connection in start-up gave way to a new one");
        Some(ClientSlot(self.clone()))
    }
}
