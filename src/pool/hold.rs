//! Holding a released backend for its tenant's next checkout (verified mode,
//! `affinity_hold`). Tenant affinity hands a released backend to a waiting client of the
//! tenant it served; with one connection per tenant there never is one, and the backend
//! would go to another tenant's waiting client and be emptied for it. So, while clients of
//! other tenants wait, the backend stays reserved for its tenant, with its slot, for a short
//! time: a checkout of that tenant in that time takes it (no tenant switch); else it goes
//! back to the idle list and its slot to the next waiting client.
//!
//! The backend is released first, as after any transaction (cleaned as its transaction
//! requires), so nothing about the client's session changes; and it only ever goes to its
//! own tenant from here. Each hold counts as overtaking every waiting client, within
//! `affinity_overtakes`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::OwnedSemaphorePermit;

use super::limits::Limits;
use super::{Grant, Pool};
use crate::backend::BackendConn;

/// The backends held now.
#[derive(Default)]
pub(super) struct Held {
    list: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    tenant: u64,
    conn: Box<BackendConn>,
    permit: OwnedSemaphorePermit,
}

impl Pool {
    /// Holds `conn` (which served `tenant`) with its slot when clients wait, none of them is
    /// of `tenant`, none was overtaken `overtakes` times already, and a timer can be set;
    /// else gives both back.
    pub(super) fn try_hold(
        &self,
        tenant: u64,
        conn: Box<BackendConn>,
        permit: OwnedSemaphorePermit,
        limits: &Limits,
    ) -> Result<(), Grant> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err((conn, permit));
        };
        if limits.hold.is_zero()
            || self.is_retired()
            || !self.waiters.overtake_all(tenant, limits.overtakes)
        {
            return Err((conn, permit));
        }
        let id = self.held.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(mut list) = self.held.list.lock() else {
            return Err((conn, permit));
        };
        list.push(Entry {
            id,
            tenant,
            conn,
            permit,
        });
        drop(list);
        self.metrics.holds.inc();
        let pool = self.me.clone();
        let time = limits.hold;
        runtime.spawn(async move {
            tokio::time::sleep(time).await;
            if let Some(pool) = pool.upgrade() {
                pool.end_hold(id);
            }
        });
        Ok(())
    }

    /// A backend held for `tenant`, if any, with its slot.
    pub(super) fn take_held(&self, tenant: u64) -> Option<Grant> {
        let mut list = self.held.list.lock().ok()?;
        let at = list.iter().position(|e| e.tenant == tenant)?;
        let e = list.swap_remove(at);
        // A hand-over to its tenant, as tenant affinity's.
        self.metrics.handoffs.inc();
        Some((e.conn, e.permit))
    }

    /// Time is up for hold `id`: the backend goes idle (or closes, past its lifetime or
    /// with the pool retired) and its slot to the next waiting client.
    fn end_hold(&self, id: u64) {
        let entry = {
            let Ok(mut list) = self.held.list.lock() else {
                return;
            };
            let Some(at) = list.iter().position(|e| e.id == id) else {
                return;
            };
            list.swap_remove(at)
        };
        if self.may_serve_again(&entry.conn, &self.limits.load()) {
            self.shelve(entry.conn, entry.permit);
        }
    }
}
