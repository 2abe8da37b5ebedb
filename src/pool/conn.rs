//! A connection checked out of the pool: fitted to a tenant, and given back with the
//! cleanup the transaction needs before anyone else may use it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::{Cleanup, Pool};
use crate::backend::{BackendConn, BackendError, Owed};

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

impl PooledConn {
    /// `conn` lent out under `permit`.
    pub(super) fn lent(
        conn: Box<BackendConn>,
        permit: OwnedSemaphorePermit,
        pool: Arc<Pool>,
    ) -> Self {
        PooledConn {
            conn: Some(conn),
            permit: Some(permit),
            pool,
            tenant_slot: None,
        }
    }

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
            pool.recycle(conn, permit);
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
                    pool.recycle(conn, permit);
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "backend cleanup failed; closing the connection");
                    pool.metrics.closed.inc();
                    drop(permit);
                }
            }
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
