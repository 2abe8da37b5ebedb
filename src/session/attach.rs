//! Attaching a backend at the start of a transaction (checkout, parameter sync, context
//! injection) and releasing it when the transaction is over.

use super::flow::Owner;
use super::{End, Session};
use crate::backend::carry::Step;
use crate::backend::injection::Own;
use crate::config::{PoolMode, ResetMode};
use crate::policy::sql::Leftover;
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

/// Backends a checkout may discard because they failed the tenant switch, before the
/// client gets the error.
const SWITCH_RETRIES: usize = 2;

impl Session {
    /// Makes sure a backend is attached for `frame`, with a deferred BEGIN sent first on
    /// it. Returns false when none could be had; the client has then been sent an error
    /// and the request consumed (and a deferred transaction is over, as PostgreSQL would
    /// end it on a lost connection). `setup`: the
    /// transaction opens with BEGIN ... ISOLATION LEVEL or SET TRANSACTION, which PostgreSQL
    /// refuses once a statement took a snapshot; what the proxy sends ahead of it (its own
    /// statements' Parse, the owed sweep, parameter settings) then ends with a Sync of its
    /// own, so it runs in a transaction of its own.
    pub(super) async fn attach(&mut self, frame: &Frame, setup: bool) -> Result<bool, End> {
        if self.attachment.is_attached() {
            self.settle_cancels().await;
            return Ok(true);
        }
        self.follow_reload()?;
        self.me.set_state(ClientState::Waiting);
        let started = Instant::now();
        let mut attempts = 0;
        let mut pooled = loop {
            let checkout = self.checkout().await;
            let mut pooled = match checkout {
                Ok(p) => p,
                Err(e) => {
                    self.no_backend(frame, &e);
                    return Ok(false);
                }
            };
            match self.serve_tenant(&mut pooled).await {
                Ok(()) => break pooled,
                // A pooled backend that failed the proxy's own switch exchange (PostgreSQL
                // closed it while it waited, say) has seen nothing of the client's: it is
                // closed and another one is tried.
                Err(e) if attempts < SWITCH_RETRIES => {
                    attempts += 1;
                    tracing::debug!(parent: &self.span(), error = %e, "a pooled backend failed the tenant switch; trying another");
                    drop(pooled);
                }
                Err(e) => {
                    drop(pooled);
                    self.no_backend(frame, &PoolError::Connect(e));
                    return Ok(false);
                }
            }
        };
        self.stats()
            .wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let conn = pooled.conn();
        tracing::debug!(
            parent: &self.span(),
            client = self.me.entry.cancel_pid,
            backend = conn.key().pid,
            "backend attached"
        );
        self.me.entry.cancel.attach(&conn.cancels);
        self.me.entry.backend.store(conn.id, Ordering::Relaxed);
        self.status = TxStatus::Idle;
        self.context.reset();
        self.unnamed_on_backend = false;
        let begin_owed = self.attachment.attach(pooled);
        self.pay_pending_reset();
        if let Some(b) = self.attachment.conn_mut() {
            self.params
                .sync_backend(b.conn(), &mut self.bout, &mut self.flow);
        }
        // The parameters end with a Sync of their own when there are any; a Sync is owed
        // only for what went out after the last one.
        if setup && self.flow.is_unsynced() {
            messages::sync(&mut self.bout);
            self.flow.sent(ft::SYNC, Owner::Proxy);
        }
        self.recreate_aborted_transaction();
        if begin_owed {
            self.send_deferred_begin();
        }
        Ok(true)
    }

    /// The client's error for a failed checkout, in place of `frame`'s reply: a ReadyForQuery
    /// after a simple request, else its frames are dropped up to its Sync.
    fn no_backend(&mut self, frame: &Frame, e: &PoolError) {
        tracing::warn!(parent: &self.span(), error = %e, "no backend connection for the client");
        if self.attachment.checkout_failed() {
            self.status = TxStatus::Idle;
        }
        let code = match e {
            PoolError::Timeout(_) => sqlstate::TOO_MANY_CONNECTIONS,
            _ => sqlstate::CANNOT_CONNECT_NOW,
        };
        self.client_error(code, &client_message(e));
        match frame.tag {
            ft::QUERY | ft::FUNCTION_CALL | ft::SYNC => {
                messages::ready_for_query(&mut self.cout, TxStatus::Idle)
            }
            _ => self.input.error_before_sync(),
        }
    }

    /// A backend for the next transaction: without any await when a slot and an idle
    /// connection are free (the hot path), else by waiting in [`Session::checkout_slow`],
    /// boxed so that an idle client's task does not carry the waiting machinery.
    async fn checkout(&mut self) -> Result<PooledConn, PoolError> {
        if !self.server.is_paused()
            && let Some(slot) = self.stats().try_acquire_backend(self.tenant.backend_limit)
            && let Some(mut pooled) = self.pool.try_checkout(self.tenant.verified_serial())
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
            .stats()
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
        let mut pooled = self.pool.checkout(self.tenant.verified_serial()).await?;
        pooled.hold(slot);
        Ok(pooled)
    }

    /// At a transaction boundary, picks up what a reload changed: the tenant's new
    /// definition and the database's new pool, or ends the session if either is gone.
    fn follow_reload(&mut self) -> Result<(), End> {
        if self.tenant.is_retired() {
            match self.server.tenants().by_name(&self.tenant.name) {
                Some(t) => {
                    tracing::info!(parent: &self.span(), "tenant definition reloaded");
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

    /// Prepares the proxy's statements in `need` that the attached backend lacks (after a
    /// tenant switch's DISCARD ALL, or a client's DEALLOCATE), pipelined ahead of whatever
    /// uses them.
    pub(super) fn prepare_own(&mut self, need: Own) {
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        let n = b.conn().prepare_own(need, &mut self.bout);
        self.flow.sent_own(n);
    }

    /// Sends the context RESET the previous user's release left owed, ahead of anything
    /// this client sends (see [`crate::pool::PooledConn::release`]).
    fn pay_pending_reset(&mut self) {
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        let conn = b.conn();
        let (messages, pairs, need) = self.server.plan.owed(std::mem::take(&mut conn.owed));
        let n = conn.prepare_own(need, &mut self.bout);
        self.flow.sent_own(n);
        self.bout.extend_from_slice(messages);
        for _ in 0..pairs {
            self.flow.sent(ft::BIND, Owner::Proxy);
            self.flow.sent(ft::EXECUTE, Owner::Proxy);
        }
    }

    /// Verified mode: a backend another tenant used last is cleaned first (see
    /// [`PooledConn::serve_tenant`]).
    pub(super) async fn serve_tenant(
        &self,
        pooled: &mut PooledConn,
    ) -> Result<(), crate::backend::BackendError> {
        if let Some(serial) = self.tenant.verified_serial()
            && pooled.serve_tenant(serial).await?
        {
            self.server.metrics.context_switches.inc();
        }
        Ok(())
    }

    /// Puts the tenant context in front of a client request that runs SQL when the
    /// transaction does not carry it yet (see [`super::context`]). Statements that cannot
    /// run in a transaction block get the context at session level, reset on release.
    pub(super) fn inject(&mut self, no_txn_block: bool) {
        if !self.context.must_inject(self.status) {
            return;
        }
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        let conn = b.conn();
        if self.txn_started.is_none() {
            self.txn_started = Some(Instant::now());
        }
        let ended = self.context == super::context::Context::EndSent;
        let carry = self.tenant.verified_serial();
        if no_txn_block && self.status == TxStatus::Idle && !ended {
            let n = conn.prepare_own(Own::CTX_SESSION, &mut self.bout);
            self.flow.sent_own(n);
            self.bout
                .extend_from_slice(self.tenant.injection(conn, true));
            messages::sync(&mut self.bout);
            for tag in [ft::BIND, ft::EXECUTE, ft::SYNC] {
                self.flow.sent(tag, Owner::Proxy);
            }
            conn.session_context = true;
            // enter(..., false) leaves the verified copy empty.
            conn.carry.left();
        } else if let Some(serial) = carry
            && self.server.config().context.carries()
            && conn.carry.step(serial) == Step::Skip
        {
            // The session holds this tenant's verified context already.
            self.context.injected();
            self.server.metrics.context_carried.inc();
            return;
        } else {
            let n = conn.prepare_own(Own::CTX, &mut self.bout);
            self.flow.sent_own(n);
            self.bout
                .extend_from_slice(self.tenant.injection(conn, false));
            self.flow.sent(ft::BIND, Owner::Proxy);
            self.flow.sent(ft::EXECUTE, Owner::Proxy);
            if let Some(serial) = carry {
                conn.carry.entered(serial);
            }
        }
        self.context.injected();
        self.server.metrics.context_injections.inc();
    }

    /// The one decision point of the release rule: what the transaction may have left
    /// (seen by the client's own commands, `dirty`, and by the analysis of every text it
    /// ran, `leftover`) decides the cleanup. With the guard off every transaction is swept
    /// at least: isolation must not rest on what the guard reads.
    fn release_cleanup(&self) -> Cleanup {
        let mut leftover = self.leftover;
        if !self.server.guard_enabled {
            leftover = leftover.max(Leftover::Sweep);
        }
        if self.dirty || self.pin.is_some() || leftover == Leftover::Unseen {
            Cleanup::Full
        } else if self.server.config().context.reset_on_release == ResetMode::Always
            && !self.server.config().context.carries()
        {
            // A carried verified context stays on purpose (see `crate::backend::carry`).
            Cleanup::ResetContext
        } else if leftover == Leftover::Sweep {
            Cleanup::Sweep
        } else {
            Cleanup::None
        }
    }

    /// Returns the backend to the pool once the transaction is over (transaction pooling).
    /// After a transaction that may have changed the session, PostgreSQL is first asked what
    /// the session now has: its settings follow the client (see
    /// [`Session::learn_session_state`]), and state that cannot follow it (a temp table,
    /// LISTEN, ...) keeps the backend with the client (see [`super::pin`]). A pinned
    /// client's backend goes back only once such a check finds nothing kept.
    pub(super) async fn maybe_release(&mut self) -> Result<(), End> {
        if self.pin.is_some()
            && !self.attachment.is_attached()
            && self.status == TxStatus::Idle
            && self.flow.is_settled()
        {
            // A pin taken for a request that then never reached a backend (no backend
            // free in time): nothing is kept, so nothing holds it. (`dirty` stays: a
            // statement defined meanwhile may still run and keep state.)
            self.pin = None;
        }
        if self.pool.mode == PoolMode::Session
            || !self.attachment.is_attached()
            || !self.flow.is_settled()
            || self.status != TxStatus::Idle
            || self.input.in_copy()
        {
            return Ok(());
        }
        if !self.dirty {
            if self.pin.is_none() {
                let cleanup = self.release_cleanup();
                self.release_now(cleanup);
            }
            return Ok(());
        }
        let kept = self.learn_session_state().await?;
        self.dirty = false;
        if self.keep_pinned(&kept) {
            return Ok(());
        }
        self.release_now(Cleanup::Full);
        Ok(())
    }

    /// Nothing goes to a backend while a cancel to it is being forwarded: PostgreSQL
    /// signals whatever runs when the request arrives, and it signals twice (the process,
    /// then its group), so even a cancel that already stopped the statement it was meant
    /// for can stop the next one until the cancel connection is closed. Only a backend the
    /// client keeps (in a transaction, pinned, session pooling) can meet this; a released
    /// one is closed instead (found by the chaos checker).
    async fn settle_cancels(&mut self) {
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        if !b.conn().cancels.any() {
            return;
        }
        let cancels = b.conn().cancels.clone();
        if !cancels.settled(crate::cancel::FORWARD_WITHIN).await {
            tracing::debug!(parent: &self.span(), "a cancel to the client's backend was not confirmed in time");
        }
    }

    /// Asks PostgreSQL what the client's session now has, before the backend is cleaned
    /// with DISCARD ALL: its session-level settings (a `SET` outside `SET LOCAL`,
    /// `set_config(..., false)`, pgjdbc's `setTransactionIsolation`) then last for the
    /// client's session as on PostgreSQL, on whichever backend serves it, and never reach
    /// another client; and the kinds of state it keeps that cannot follow it (returned,
    /// comma-separated; empty when none). One round trip, only after a transaction that may
    /// have changed the session.
    async fn learn_session_state(&mut self) -> Result<String, End> {
        let Some(b) = self.attachment.conn_mut() else {
            return Ok(String::new());
        };
        let sql = format!(
            "{} UNION ALL {}",
            self.server.plan.session_settings_sql,
            super::pin::KEPT_SQL
        );
        let conn = b.conn();
        let result = conn.simple_query(&sql).await;
        let held = std::mem::take(&mut conn.held_notifications);
        self.deliver_notifications(&held);
        let Some(b) = self.attachment.conn_mut() else {
            return Ok(String::new());
        };
        let conn = b.conn();
        match result {
            Ok(rows) => {
                let mut kept = String::new();
                let listed: Vec<(String, String)> = rows
                    .into_iter()
                    .filter_map(|r| match r.as_slice() {
                        [Some(k), v] if k == super::pin::KEPT_ROW => {
                            kept = v.clone().unwrap_or_default();
                            None
                        }
                        [Some(k), Some(v)] => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect();
                let parse_env = self.params.parse_env();
                self.params.adopt_session(conn, &listed);
                if self.params.parse_env() != parse_env {
                    // A parse-deciding setting changed by the client's SQL (see
                    // `BackendStatements::distrust`).
                    conn.statements.distrust();
                }
                Ok(kept)
            }
            Err(crate::backend::BackendError::Server(e)) => {
                tracing::warn!(parent: &self.span(), code = %e.code, message = %e.message, "could not read the client's session state");
                Ok(String::new())
            }
            Err(e) => Err(End::BackendLost(e.to_string())),
        }
    }

    /// Forgets the attached backend for cancel routing and the admin console's `link`.
    pub(super) fn unlink_backend(&mut self) {
        self.me.entry.cancel.detach();
        self.me.entry.backend.store(0, Ordering::Relaxed);
    }

    fn release_now(&mut self, cleanup: Cleanup) {
        self.unlink_backend();
        self.dirty = false;
        self.leftover = Leftover::Nothing;
        self.pin = None;
        self.context.reset();
        if let Some(b) = self.attachment.detach() {
            b.release(cleanup);
        }
    }

    /// At the end of the session: a backend in a known, quiet state is cleaned and returned;
    /// anything else (replies outstanding, requests not followed by a Sync, COPY, a broken
    /// connection) is closed: never synced on the client's behalf, never reused.
    pub(super) fn detach_on_end(&mut self, end: &End) {
        self.unlink_backend();
        let quiet = self.flow.is_settled() && !self.input.in_copy();
        let broken = matches!(
            end,
            End::BackendLost(_) | End::BackendEnded(_) | End::Unreadable(_)
        );
        if !quiet || broken {
            // Closed, never reused (a COPY IN goes with it).
            drop(self.attachment.detach());
            self.input.backend_lost();
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
