//! Judging and refusing client requests. What SQL may do is decided in `crate::policy`;
//! here the session applies it with what only the session knows (the guard switch, the
//! database's `guard_allow`, pinning, the pool mode). A refusal looks exactly like a
//! PostgreSQL error: while a backend is attached the backend itself raises it (so an open
//! transaction fails as it would in PostgreSQL); otherwise the proxy answers locally.

use super::flow::Owner;
use super::{End, Session};
use crate::config::{PinMode, PoolMode};
use crate::policy::sql::Analysis;
use crate::protocol::codec::Frame;
use crate::protocol::{TxStatus, frontend_tag as ft, messages, sqlstate};

/// What the session learnt about a request it lets through.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Judged {
    /// It cannot run inside a transaction block (VACUUM, CREATE DATABASE, ...).
    pub no_txn_block: bool,
    /// A simple Query that ends the context (COMMIT, ROLLBACK, RESET ALL).
    pub clears_context: bool,
}

/// Why a request is refused: its SQLSTATE, message and the metric's label.
#[derive(Debug)]
pub(super) struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub source: &'static str,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>, source: &'static str) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            source,
        }
    }
}

impl Session {
    /// Applies the guard's reading of `frame` (`analysis`, or the statement a Bind names):
    /// refuses what policy, pinning or the protocol rules forbid; otherwise records what
    /// the request does to the session and returns what the relay needs.
    pub(super) fn judge(
        &mut self,
        frame: &Frame,
        analysis: Option<Analysis>,
        bound: Option<&[u8]>,
    ) -> Result<Judged, Refusal> {
        let mut judged = Judged::default();
        let guard = self.server.guard_enabled;
        if let Some(a) = analysis {
            judged.clears_context = a.clears_context;
            let widened = |v: &crate::policy::GuardViolation| v.widened_by(self.pool.guard_allow());
            if let Some(v) = a.protected_change.filter(|v| guard && !widened(v)) {
                return Err(Refusal::new(v.code, v.message(), "sql"));
            }
            if let Some(what) = a.keeps_state
                && let Some((code, msg)) = self.pin_refusal(what)
            {
                return Err(Refusal::new(code, msg, "pin"));
            }
            if guard
                && self.pool.mode == PoolMode::Transaction
                && a.sql_prepared_statements
                && self.pool.pin_mode() != PinMode::Pin
            {
                let msg = "SQL-level PREPARE/EXECUTE/DEALLOCATE is not supported in transaction pooling mode; \
                           use protocol-level prepared statements (every driver's default) or a session-mode database";
                return Err(Refusal::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    msg,
                    "unsupported",
                ));
            }
            self.dirty |= a.changes_session_state;
            judged.no_txn_block = a.no_transaction_block;
        }
        if let Some(name) = bound {
            let reading = self.statements.reading(name);
            judged.no_txn_block = reading.is_some_and(|r| r.no_txn_block);
            self.clearing_portal = reading.is_some_and(|r| r.clears_context);
        }
        if frame.tag == ft::FUNCTION_CALL
            && guard
            && !crate::policy::frames::is_large_object_call(frame.body())
        {
            let msg = "permission denied: through pgtenant the function-call protocol may only call large-object functions";
            return Err(Refusal::new(sqlstate::INSUFFICIENT_PRIVILEGE, msg, "sql"));
        }
        if crate::policy::frames::uses_reserved_name(frame) {
            let msg =
                "prepared statement and portal names starting with \"pgtenant_\" are reserved";
            return Err(Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                msg,
                "reserved_name",
            ));
        }
        Ok(judged)
    }

    /// Refuses `frame` with SQLSTATE `code` and `message`; `source` labels the metric.
    pub(super) async fn refuse(
        &mut self,
        frame: &Frame,
        code: &str,
        message: &str,
        source: &str,
    ) -> Result<(), End> {
        self.server
            .metrics
            .context_rejections
            .with_label_values(&[source])
            .inc();
        tracing::warn!(parent: &self.span(), "refused: {message}");
        let extended = !matches!(frame.tag, ft::QUERY | ft::FUNCTION_CALL);
        // A request answered locally did not send the deferred BEGIN; a refusal is raised by
        // the backend inside the transaction, which it aborts, as PostgreSQL would.
        if self.attachment.is_deferred_begin() && !self.attach(frame, false).await? {
            return Ok(());
        }
        if !self.attachment.is_attached() {
            self.client_error(code, message);
            if extended {
                if frame.tag != ft::SYNC {
                    self.input.error_before_sync();
                }
            } else {
                messages::ready_for_query(&mut self.cout, TxStatus::Idle);
            }
            return Ok(());
        }
        let raise = raise_sql(code, message);
        if extended {
            self.unnamed_on_backend = false;
            messages::parse(&mut self.bout, "", &raise);
            messages::bind(&mut self.bout, "", std::iter::empty());
            messages::execute(&mut self.bout);
            for tag in [ft::PARSE, ft::BIND, ft::EXECUTE] {
                self.flow.sent(tag, Owner::ProxyForwardErrors);
            }
        } else {
            messages::query(&mut self.bout, &raise);
            self.flow.sent(ft::QUERY, Owner::Client);
        }
        Ok(())
    }
}

/// A DO block that raises `message` as SQLSTATE 42501. The message is built by the proxy
/// from fixed text and validated setting names; quotes and dollars are neutralised anyway.
fn raise_sql(code: &str, message: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '$')
            .collect::<String>()
            .replace('\'', "''")
    };
    format!(
        "DO $pgtenant_raise$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$pgtenant_raise$",
        clean(code),
        clean(message)
    )
}
