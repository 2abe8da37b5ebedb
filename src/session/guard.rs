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
use crate::protocol::messages::Severity;
use crate::protocol::{TxStatus, frontend_tag as ft, messages, sqlstate};

/// What the session learnt about a request it lets through.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Judged {
    /// It cannot run inside a transaction block (VACUUM, CREATE DATABASE, ...).
    pub no_txn_block: bool,
    /// A simple Query that ends the context (COMMIT, ROLLBACK, RESET ALL).
    pub clears_context: bool,
    /// A simple Query that drops what the proxy keeps in the session (DISCARD ALL, ...).
    pub resets_session: bool,
}

/// Why a request is refused: its SQLSTATE, message, the metric's label, and for a syntax
/// error where PostgreSQL's grammar stopped.
#[derive(Debug)]
pub(super) struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub source: &'static str,
    pub position: Option<u32>,
}

impl Refusal {
    pub(super) fn new(
        code: &'static str,
        message: impl Into<String>,
        source: &'static str,
    ) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            source,
            position: None,
        }
    }
}

/// The DETAIL of the error a backend raises for a refusal (see [`raise_sql`]); the relay
/// turns such an error back into the plain one PostgreSQL would have sent (no PL/pgSQL
/// CONTEXT, the syntax error's position).
const REFUSAL_DETAIL: &str = "pgtenant refusal";

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
        let mut keeps_state = None;
        let guard = self.server.guard_enabled;
        if let Some(a) = analysis {
            judged.clears_context = a.clears_context;
            judged.resets_session = a.resets_session;
            let widened = |v: &crate::policy::GuardViolation| v.widened_by(self.pool.guard_allow());
            if let Some(v) = a.protected_change.filter(|v| guard && !widened(v)) {
                let mut refusal = Refusal::new(v.code, v.message(), "sql");
                refusal.position = v.position;
                return Err(refusal);
            }
            if let Some(what) = a.keeps_state
                && let Some((code, msg)) = self.pin_refusal(what)
            {
                return Err(Refusal::new(code, msg, "pin"));
            }
            keeps_state = a.keeps_state;
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
            self.resetting_portal = reading.is_some_and(|r| r.resets_session);
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
        // Last, once nothing else refuses the request: the pin is held from here on. Not
        // for a named Parse the proxy answers itself (no backend runs it now; its
        // statement is seen when it runs, by the state PostgreSQL reports after it).
        let answered_here = !self.attachment.is_attached() && self.answers_locally(frame);
        if let Some(what) = keeps_state.filter(|_| !answered_here)
            && let Some((code, msg)) = self.reserve_pin(what)
        {
            return Err(Refusal::new(code, msg, "pin"));
        }
        Ok(judged)
    }

    /// Refuses `frame` as `r` says (`r.source` labels the metric).
    pub(super) async fn refuse(&mut self, frame: &Frame, r: &Refusal) -> Result<(), End> {
        let (code, message, source) = (r.code, r.message.as_str(), r.source);
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
            messages::error_response_at(&mut self.cout, Severity::Error, code, message, r.position);
            if extended {
                if frame.tag != ft::SYNC {
                    self.input.error_before_sync();
                }
            } else {
                messages::ready_for_query(&mut self.cout, TxStatus::Idle);
            }
            return Ok(());
        }
        let raise = raise_sql(code, message, r.position);
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

/// A DO block that raises `message` as SQLSTATE `code`, marked as a refusal (with the
/// syntax error's `position`) for [`plain_refusal`]. The message is built by the
/// proxy from fixed text, validated setting names and the parser's message; quotes and
/// dollars are neutralised anyway.
fn raise_sql(code: &str, message: &str, position: Option<u32>) -> String {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '$')
            .collect::<String>()
            .replace('\'', "''")
    };
    let detail = match position {
        Some(p) => format!("{REFUSAL_DETAIL} at {p}"),
        None => REFUSAL_DETAIL.to_string(),
    };
    format!(
        "DO $pgtenant_raise$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}', DETAIL = '{detail}'; END$pgtenant_raise$",
        clean(code),
        clean(message)
    )
}

/// The error PostgreSQL would have sent for a refusal a backend raised (`fields`, whose
/// DETAIL marks it, see [`raise_sql`]): severity, SQLSTATE, message and position only.
/// None for any other error. A client that raises an error with that DETAIL itself only
/// changes how its own error looks.
pub(super) fn plain_refusal(fields: &messages::ErrorFields) -> Option<bytes::BytesMut> {
    let rest = fields.detail.strip_prefix(REFUSAL_DETAIL)?;
    let position = match rest.strip_prefix(" at ") {
        Some(p) => Some(p.parse().ok()?),
        None if rest.is_empty() => None,
        None => return None,
    };
    let mut out = bytes::BytesMut::new();
    let (code, message) = (&fields.code, &fields.message);
    messages::error_response_at(&mut out, Severity::Error, code, message, position);
    Some(out)
}
