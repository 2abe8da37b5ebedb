//! Attaching a backend at the start of a transaction (checkout, parameter sync, context
//! injection) and releasing it when the transaction is over.

use super::flow::Owner;
use super::{End, Session};
use crate::config::{PoolMode, ResetMode};
use crate::pool::{Cleanup, PoolError, PooledConn};
use crate::protocol::codec::Frame;
use crate::protocol::{TxStatus, frontend_tag as ft, messages, sqlstate};
use crate::registry::ClientState;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The text a client sees when it cannot get a backend; never a host name or a secret.
pub(super) fn client_message(e: &PoolError) -> String {
    match e {
        PoolError::Timeout(d) => {
            format!("pgtenant: no server connection became available within {d:?}")
        }
        PoolError::Connect(_) => "pgtenant: could not connect to the database server".into(),
        PoolError::Closed => "pgtenant: the connection pool is closed".into(),
    }
}

impl Session {
    /// Makes sure a backend is attached for `frame`. Returns false when none could be had;
    /// the client has then been sent an error and the request consumed.
    pub(super) async fn attach(&mut self, frame: &Frame) -> Result<bool, End> {
        if self.backend.is_some() {
            return Ok(true);
        }
        self.follow_reload()?;
        self.me.set_state(ClientState::Waiting);
        let started = Instant::now();
        let checkout = self.checkout().await;
        self.stats
            .wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut pooled = match checkout {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no backend connection for the client");
                let code = match e {
                    PoolError::Timeout(_) => sqlstate::TOO_MANY_CONNECTIONS,
                    _ => sqlstate::CANNOT_CONNECT_NOW,
                };
                self.client_error(code, &client_message(&e));
                match frame.tag {
                    ft::QUERY | ft::FUNCTION_CALL | ft::SYNC => {
                        messages::ready_for_query(&mut self.cout, TxStatus::Idle)
                    }
                    _ => self.skip_until_sync = true,
                }
                return Ok(false);
            }
        };
        let conn = pooled.conn();
        self.cancel.slot.set(Some(conn.key));
        self.me.entry.backend.store(conn.id, Ordering::Relaxed);
        self.status = TxStatus::Idle;
        self.injected = false;
        self.reinject = false;
        self.unnamed_on_backend = false;
        self.backend = Some(pooled);
        self.ensure_prepared();
        self.pay_pending_reset();
        if let Some(b) = self.backend.as_mut() {
            self.params
                .sync_backend(b.conn(), &mut self.bout, &mut self.flow);
        }
        Ok(true)
    }

    /// A backend for the next transaction: without any await when a slot and an idle
    /// connection are free (the hot path), else by waiting in [`Session::checkout_slow`],
    /// boxed so that an idle client's task does not carry the waiting machinery.
    async fn checkout(&mut self) -> Result<PooledConn, PoolError> {
        if !self.server.is_paused()
            && let Some(slot) = self.stats.try_acquire_backend(self.tenant.backend_limit)
            && let Some(mut pooled) = self.pool.try_checkout()
        {
            pooled.hold(slot);
            return Ok(pooled);
        }
        Box::pin(self.checkout_slow()).await
    }

    /// Waits out PAUSE, the tenant's backend cap and the pool, in that order, all within
    /// the pool's checkout timeout.
    async fn checkout_slow(&mut self) -> Result<PooledConn, PoolError> {
        let timeout = self.pool.checkout_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        if tokio::time::timeout_at(deadline, self.server.wait_unpaused())
            .await
            .is_err()
        {
            return Err(PoolError::Timeout(timeout));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(slot) = self
            .stats
            .acquire_backend(self.tenant.backend_limit, left)
            .await
        else {
            self.server
                .metrics
                .client_rejections
                .with_label_values(&["tenant_max_backend_connections"])
                .inc();
            return Err(PoolError::Timeout(timeout));
        };
        let mut pooled = self.pool.checkout().await?;
        pooled.hold(slot);
        Ok(pooled)
    }

    /// At a transaction boundary, picks up what a reload changed: the tenant's new
    /// definition and the database's new pool, or ends the session if either is gone.
    fn follow_reload(&mut self) -> Result<(), End> {
        if self.tenant.is_retired() {
            match self.server.tenants().by_name(&self.tenant.name) {
                Some(t) => {
                    tracing::info!("tenant definition reloaded");
                    self.tenant = t;
                }
                None => return Err(End::Removed("tenant")),
            }
        }
        if self.pool.is_retired() {
            match self.server.pool(&self.pool.name) {
                Some(p) => self.pool = p,
                None => return Err(End::Removed("database")),
            }
        }
        Ok(())
    }

    /// Re-creates the proxy's statements on the attached backend if the client (or a
    /// cleanup) discarded them; pipelined ahead of whatever uses them.
    fn ensure_prepared(&mut self) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let conn = b.conn();
        if conn.prepared {
            return;
        }
        self.bout.extend_from_slice(&self.server.plan.prepare);
        for _ in 0..self.server.plan.prepare_count {
            self.flow.sent(ft::PARSE, Owner::Proxy);
        }
        conn.prepared = true;
    }

    /// Sends the context RESET the previous user's release left owed, ahead of anything
    /// this client sends (see [`crate::pool::PooledConn::release`]).
    fn pay_pending_reset(&mut self) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let conn = b.conn();
        let (messages, pairs) = self.server.plan.owed(std::mem::take(&mut conn.owed));
        self.bout.extend_from_slice(messages);
        for _ in 0..pairs {
            self.flow.sent(ft::BIND, Owner::Proxy);
            self.flow.sent(ft::EXECUTE, Owner::Proxy);
        }
    }

    /// Puts the tenant context in front of the next client request when a transaction is
    /// starting (or the client cleared it mid-transaction). Statements that cannot run in a
    /// transaction block get the context at session level, reset on release.
    pub(super) fn inject(&mut self, no_txn_block: bool) {
        let needed = match self.status {
            TxStatus::Idle => !self.injected,
            TxStatus::InTransaction => self.reinject,
            TxStatus::Failed => false,
        };
        if !needed {
            return;
        }
        self.ensure_prepared();
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let conn = b.conn();
        if self.status == TxStatus::Idle {
            self.txn_started = Some(Instant::now());
        }
        if no_txn_block && self.status == TxStatus::Idle {
            self.bout
                .extend_from_slice(self.tenant.injection(conn, true));
            messages::sync(&mut self.bout);
            for tag in [ft::BIND, ft::EXECUTE, ft::SYNC] {
                self.flow.sent(tag, Owner::Proxy);
            }
            conn.session_context = true;
        } else {
            self.bout
                .extend_from_slice(self.tenant.injection(conn, false));
            self.flow.sent(ft::BIND, Owner::Proxy);
            self.flow.sent(ft::EXECUTE, Owner::Proxy);
        }
        self.injected = true;
        self.reinject = false;
        self.server.metrics.context_injections.inc();
    }

    /// Puts the context in front of a request that follows a COMMIT, ROLLBACK or RESET ALL
    /// sent since the last ReadyForQuery (later in a pipeline).
    pub(super) fn inject_after_end(&mut self) {
        self.ended = false;
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        self.bout
            .extend_from_slice(self.tenant.injection(b.conn(), false));
        self.flow.sent(ft::BIND, Owner::Proxy);
        self.flow.sent(ft::EXECUTE, Owner::Proxy);
        self.server.metrics.context_injections.inc();
    }

    fn release_cleanup(&self) -> Cleanup {
        if self.dirty {
            Cleanup::Full
        } else if self.server.config().context.reset_on_release == ResetMode::Always {
            Cleanup::ResetContext
        } else {
            Cleanup::None
        }
    }

    /// Returns the backend to the pool once the transaction is over (transaction pooling).
    pub(super) fn maybe_release(&mut self) {
        if self.pool.mode == PoolMode::Session
            || self.backend.is_none()
            || !self.flow.is_idle()
            || self.status != TxStatus::Idle
            || self.copy_in
        {
            return;
        }
        self.release_now(self.release_cleanup());
    }

    fn release_now(&mut self, cleanup: Cleanup) {
        self.cancel.slot.set(None);
        self.me.entry.backend.store(0, Ordering::Relaxed);
        self.dirty = false;
        self.injected = false;
        if let Some(b) = self.backend.take() {
            b.release(cleanup);
        }
    }

    /// At the end of the session: a backend in a known, quiet state is cleaned and returned;
    /// anything else (replies outstanding, COPY, a broken connection) is closed.
    pub(super) fn detach_on_end(&mut self, end: &End) {
        self.cancel.slot.set(None);
        self.me.entry.backend.store(0, Ordering::Relaxed);
        let quiet = self.flow.is_idle() && !self.copy_in;
        let broken = matches!(end, End::BackendLost(_) | End::InjectionFailed(_));
        if !quiet || broken {
            self.backend = None;
            return;
        }
        let cleanup = match self.status {
            _ if self.pool.mode == PoolMode::Session && self.status == TxStatus::Idle => {
                Cleanup::Full
            }
            TxStatus::Idle => self.release_cleanup(),
            _ => Cleanup::Rollback,
        };
        self.release_now(cleanup);
    }
}
