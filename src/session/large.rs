//! Memory for large client messages. A message is held whole before it is judged (the guard
//! reads its text, a Parse is kept to be re-created), so a client sending a message of up
//! to `max_message_size` holds that much while it arrives, and one that never sends the
//! last byte holds it for as long as it stays connected. Messages over [`LARGE`] therefore
//! take their size from one budget shared by every client
//! (`server.large_message_bytes_total`), and from their tenant's share of it
//! (`server.large_message_bytes_per_tenant`), before they are read: past either, the
//! client's session ends with FATAL 53200 instead of the proxy's memory growing without
//! bound, and one tenant cannot take the whole budget from the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{End, Session};
use crate::registry::TenantStats;

/// Messages up to this size are read without asking the budget.
pub const LARGE: usize = 1024 * 1024;

/// Bytes of the shared budget, and of its tenant's share, held by one client for the large
/// message it is reading.
#[derive(Debug)]
pub struct Reservation {
    held: Arc<AtomicUsize>,
    tenant: Arc<TenantStats>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.tenant
            .large_message_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Adds `n` to `counter` unless that passes `limit`.
fn take(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held + n <= limit).then_some(held + n)
        })
        .is_ok()
}

impl Session {
    /// Before reading more of the client's bytes: when the buffer starts with a message over
    /// [`LARGE`] that has not fully arrived, its size is taken from the shared budget (or
    /// the session ends); once no such message is being read, what was taken is given back.
    /// Checked before every read, so the common case is two comparisons, inline.
    #[inline]
    pub(super) fn budget_large_message(&mut self) -> Result<(), End> {
        let head_large = self.cbuf.len() >= 5
            && u32::from_be_bytes([self.cbuf[1], self.cbuf[2], self.cbuf[3], self.cbuf[4]])
                as usize
                >= LARGE;
        if !head_large && self.large.is_none() {
            return Ok(());
        }
        self.budget_large_message_slow()
    }

    #[cold]
    #[inline(never)]
    fn budget_large_message_slow(&mut self) -> Result<(), End> {
        let arriving = match self.cbuf.get(..5) {
            Some(head) => {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let total = len.saturating_add(1);
                // Past max_message_size the codec refuses it (08P01) before it is read.
                let allowed = total <= self.server.max_message().saturating_add(1);
                (total > LARGE && total > self.cbuf.len() && allowed).then_some(total)
            }
            None => None,
        };
        let Some(total) = arriving else {
            self.large = None;
            return Ok(());
        };
        if self.large.as_ref().is_some_and(|r| r.bytes >= total) {
            return Ok(());
        }
        self.large = None;
        let (limit, per_tenant) = {
            let cfg = self.server.config();
            (
                cfg.server.large_message_bytes_total,
                cfg.server.large_message_bytes_per_tenant,
            )
        };
        // The tenant's share first: one tenant's clients cannot take the whole budget from
        // every other tenant.
        let tenant = self.stats().clone();
        if !take(&tenant.large_message_bytes, total, per_tenant) {
            return Err(End::OutOfMemory(format!(
                "out of memory: a message of {total} bytes would take the bytes this tenant's clients' large messages may hold together past server.large_message_bytes_per_tenant ({per_tenant})"
            )));
        }
        let held = self.server.large_message_bytes.clone();
        if !take(&held, total, limit) {
            tenant
                .large_message_bytes
                .fetch_sub(total, Ordering::AcqRel);
            return Err(End::OutOfMemory(format!(
                "out of memory: a message of {total} bytes would take the bytes all clients' large messages may hold together past server.large_message_bytes_total ({limit})"
            )));
        }
        self.large = Some(Box::new(Reservation {
            held,
            tenant,
            bytes: total,
        }));
        Ok(())
    }
}
