//! A client's start-up answer: its settings applied on a backend, or, when every backend is
//! busy, what a backend answered an earlier client with the same settings.

use bytes::BytesMut;

use super::flow::Flow;
use super::{Fatal, Session, attach, handover, params};
use crate::pool::Cleanup;
use crate::protocol::{messages, sqlstate};
use std::sync::atomic::Ordering;

impl Session {
    /// Answers the client's start-up: its settings applied on a backend (PostgreSQL refuses
    /// a bad one, and normalises the rest), the ParameterStatus report, BackendKeyData.
    /// Under transaction pooling, when no backend is free and a backend already answered
    /// exactly these settings, that answer is given without one (the pool's
    /// [`crate::pool::startup::StartupMemo`]).
    pub(super) async fn initial_parameters(&mut self) -> Result<(), Fatal> {
        let asked = self.params.to_pairs();
        let transaction = self.pool.mode == crate::config::PoolMode::Transaction;
        let serial = self.tenant.verified_serial();
        let free = self.pool.try_checkout(serial);
        if free.is_none()
            && transaction
            && let Some(known) = self.pool.startup.get(&asked)
        {
            return self.answer_startup(&known).await;
        }
        let mut pooled = match free {
            Some(p) => p,
            None => self.pool.checkout(serial).await.map_err(|e| {
                tracing::warn!(error = %e, "no backend for a new client");
                Fatal::new(sqlstate::CONNECTION_FAILURE, attach::client_message(&e))
            })?,
        };
        if let Err(e) = self.serve_tenant(&mut pooled).await {
            return Err(Fatal::new(sqlstate::CONNECTION_FAILURE, e.to_string()));
        }
        let conn = pooled.conn();
        let mut out = BytesMut::new();
        let (owed, _, need) = self.server.plan.owed(std::mem::take(&mut conn.owed));
        conn.prepare_own(need, &mut out);
        out.extend_from_slice(owed);
        let mut flow = Flow::default();
        self.params.fill_defaults(conn);
        self.params.apply(conn, &mut out, &mut flow);
        messages::sync(&mut out);
        let mut notices = BytesMut::new();
        if let Err(e) = conn.exchange_keeping_notices(&out, &mut notices).await {
            pooled.release(Cleanup::Full);
            // An invalid startup setting: PostgreSQL would refuse the connection the same way.
            return Err(match e {
                crate::backend::BackendError::Server(f) => Fatal::new(f.code, f.message),
                other => Fatal::new(sqlstate::CONNECTION_FAILURE, other.to_string()),
            });
        }
        self.params.normalize(conn);
        self.params.intern();
        // What this server reports (its start-up report names them): search_path, say, is
        // reported only from PostgreSQL 18.
        let mut reported: Vec<(String, String)> = conn
            .params
            .iter()
            .filter(|(k, _)| params::is_reported(k) && conn.defaults.contains_key(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in self.params.iter() {
            if let Some(slot) = reported.iter_mut().find(|(r, _)| r == k) {
                slot.1 = v.to_string();
            }
        }
        // What PostgreSQL says about the settings (a truncated application_name, say), as
        // its own start-up would.
        self.cout.extend_from_slice(&notices);
        if transaction {
            pooled.release(Cleanup::None);
            let answer = crate::pool::startup::StartupAnswer {
                reported,
                values: self.params.to_pairs(),
                notices: notices.freeze(),
            };
            self.send_startup_response(&answer.reported).await?;
            self.pool.startup.put(asked, answer);
            return Ok(());
        }
        self.me.entry.cancel.attach(&conn.cancels);
        self.me.entry.backend.store(conn.id, Ordering::Relaxed);
        self.attachment.attach(pooled);
        self.send_startup_response(&reported).await
    }

    /// Sends the client its ParameterStatus report and BackendKeyData.
    async fn send_startup_response(&mut self, reported: &[(String, String)]) -> Result<(), Fatal> {
        handover::startup_response(
            &mut self.cout,
            reported.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.me.entry.cancel_pid,
            self.me.entry.cancel_secret(),
        );
        self.client
            .send(&self.cout)
            .await
            .map_err(|e| Fatal::new(sqlstate::CONNECTION_FAILURE, e.to_string()))?;
        self.cout.clear();
        Ok(())
    }

    /// Answers the start-up from what a backend answered an earlier client with the same
    /// settings: the client holds the settings as that backend normalised them, and they are
    /// applied on each backend it uses, as after any start-up.
    async fn answer_startup(
        &mut self,
        known: &crate::pool::startup::StartupAnswer,
    ) -> Result<(), Fatal> {
        for (k, v) in &known.values {
            self.params.set(k, v);
        }
        self.params.intern();
        self.cout.extend_from_slice(&known.notices);
        self.send_startup_response(&known.reported).await
    }
}
