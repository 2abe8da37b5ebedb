//! Tenant affinity among waiting clients (verified mode). A backend released by one of a
//! tenant's clients goes straight to a waiting client of the same tenant when one waits: the
//! backend may carry that tenant's verified context, and it needs no tenant switch (DISCARD
//! ALL, `enter()` planned again). Bounded: the longest-waiting client is overtaken at most
//! `overtakes` times, then the next released backend goes to it in arrival order.
//!
//! Isolation does not rest on this choice: whoever gets a backend, `PooledConn::serve_tenant`
//! empties it when its last tenant differs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::{Grant, Pool};

/// The clients of one pool waiting for a backend, in arrival order, with their tenants.
/// `G` is what a waiter is handed: the pool's backend and slot (generic for the tests).
pub(super) struct Waiters<G> {
    queue: Mutex<VecDeque<Waiter<G>>>,
    next_id: AtomicU64,
}

/// One waiting client.
struct Waiter<G> {
    id: u64,
    tenant: u64,
    /// How many released backends went to later arrivals while this one waited.
    overtaken: usize,
    grant: oneshot::Sender<G>,
}

impl<G> Default for Waiters<G> {
    fn default() -> Self {
        Waiters {
            queue: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<G> Waiters<G> {
    /// Enters a client of `tenant` in the queue; its grant arrives on the receiver.
    pub(super) fn join(&self, tenant: u64) -> (u64, oneshot::Receiver<G>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(Waiter {
                id,
                tenant,
                overtaken: 0,
                grant: tx,
            });
        }
        (id, rx)
    }

    /// Takes waiter `id` out of the queue (it got a backend another way, timed out, or left).
    /// Sends happen under the same lock, so once this returns no grant is still on its way:
    /// the receiver holds it or never will.
    pub(super) fn leave(&self, id: u64) {
        if let Ok(mut q) = self.queue.lock()
            && let Some(at) = q.iter().position(|w| w.id == id)
        {
            q.remove(at);
        }
    }

    /// Offers a released backend that carries `tenant` to the earliest waiter of that
    /// tenant, unless that would overtake a waiter already overtaken `overtakes` times.
    /// The grant comes back when no waiter took it.
    pub(super) fn offer(&self, tenant: u64, grant: G, overtakes: usize) -> Result<(), G> {
        let Ok(mut q) = self.queue.lock() else {
            return Err(grant);
        };
        let mut grant = grant;
        loop {
            let Some(at) = q.iter().position(|w| w.tenant == tenant) else {
                return Err(grant);
            };
            if q.iter().take(at).any(|w| w.overtaken >= overtakes) {
                return Err(grant);
            }
            let waiter = q.remove(at).expect("position is in the queue");
            match waiter.grant.send(grant) {
                Ok(()) => {
                    for w in q.iter_mut().take(at) {
                        w.overtaken += 1;
                    }
                    return Ok(());
                }
                // That waiter is gone (its task was dropped): try the next one.
                Err(back) => grant = back,
            }
        }
    }

    /// Lets a client of `tenant` keep the backend it used for its next transaction, ahead of
    /// every waiting client, when clients wait, none of them is of `tenant` (a released
    /// backend would go to that one), and none was overtaken `overtakes` times already.
    /// Counts the overtake for each of them; false when the backend should go back instead.
    pub(super) fn overtake_all(&self, tenant: u64, overtakes: usize) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.is_empty()
            || q.iter()
                .any(|w| w.tenant == tenant || w.overtaken >= overtakes)
        {
            return false;
        }
        for w in q.iter_mut() {
            w.overtaken += 1;
        }
        true
    }

    /// Clients waiting now (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }
}

/// A waiting client's place in [`Pool::wait_slot`]'s queue. However the wait ends (a
/// slot, a timeout, the client gone), the place is left, and a backend handed over too late
/// goes back through [`Pool::recycle`].
pub(super) struct Place<'p> {
    pool: &'p Pool,
    id: u64,
    pub(super) grant: oneshot::Receiver<Grant>,
    pub(super) left: bool,
}

impl<'p> Place<'p> {
    pub(super) fn join(pool: &'p Pool, tenant: u64) -> Place<'p> {
        let (id, grant) = pool.waiters.join(tenant);
        Place {
            pool,
            id,
            grant,
            left: false,
        }
    }

    /// Leaves the queue; the backend handed over before that, if any.
    pub(super) fn leave(&mut self) -> Option<Grant> {
        self.left = true;
        self.pool.waiters.leave(self.id);
        self.grant.try_recv().ok()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.left
            && let Some((conn, permit)) = self.leave()
        {
            self.pool.recycle(conn, permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Joins waiters of `tenants` in order.
    fn queue(tenants: &[u64]) -> (Waiters<u32>, Vec<(u64, oneshot::Receiver<u32>)>) {
        let w = Waiters::default();
        let places = tenants.iter().map(|t| w.join(*t)).collect();
        (w, places)
    }

    #[test]
    fn a_grant_goes_to_the_earliest_waiter_of_its_tenant() {
        let (w, mut places) = queue(&[1, 2, 2]);
        assert_eq!(w.offer(2, 7, 5), Ok(()));
        assert_eq!(places[1].1.try_recv(), Ok(7));
        assert!(places[2].1.try_recv().is_err(), "only one waiter gets it");
        assert_eq!(w.len(), 2);
        assert_eq!(w.offer(3, 8, 5), Err(8), "no waiter of tenant 3");
    }

    #[test]
    fn no_waiter_is_overtaken_more_than_the_bound() {
        let (w, mut places) = queue(&[1, 2, 2, 2]);
        assert_eq!(w.offer(2, 10, 2), Ok(()));
        assert_eq!(w.offer(2, 11, 2), Ok(()));
        // Waiter 0 (tenant 1) was overtaken twice: the third grant is declined.
        assert_eq!(w.offer(2, 12, 2), Err(12));
        assert_eq!(places[1].1.try_recv(), Ok(10));
        assert_eq!(places[2].1.try_recv(), Ok(11));
        // The first waiter's own tenant is never held back by the bound.
        assert_eq!(w.offer(1, 13, 2), Ok(()));
        assert_eq!(places[0].1.try_recv(), Ok(13));
        assert_eq!(w.offer(2, 14, 2), Ok(()));
        assert_eq!(places[3].1.try_recv(), Ok(14));
    }

    #[test]
    fn zero_overtakes_hands_over_only_to_the_first_waiter() {
        let (w, mut places) = queue(&[1, 2]);
        assert_eq!(w.offer(2, 1, 0), Err(1));
        assert_eq!(w.offer(1, 2, 0), Ok(()));
        assert_eq!(places[0].1.try_recv(), Ok(2));
    }

    #[test]
    fn a_waiter_that_left_gets_nothing() {
        let (w, mut places) = queue(&[1, 1]);
        w.leave(places[0].0);
        assert_eq!(w.offer(1, 5, 5), Ok(()));
        assert_eq!(places[1].1.try_recv(), Ok(5));
        assert!(places[0].1.try_recv().is_err());
    }

    #[test]
    fn a_dropped_waiter_is_skipped() {
        let (w, mut places) = queue(&[1, 1]);
        let (_, gone) = places.remove(0);
        drop(gone);
        assert_eq!(w.offer(1, 5, 5), Ok(()));
        assert_eq!(places[0].1.try_recv(), Ok(5));
        assert_eq!(w.len(), 0);
    }
}
