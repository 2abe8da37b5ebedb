//! A failed proxy request (the context injection, the sweep, a parameter setting) ends
//! the client's transaction, not its session. The backend is closed (its state is not
//! known), the client gets an ERROR where its request's reply would be, and a client that
//! was inside a transaction finds it aborted: the next backend it gets opens a transaction
//! and fails it on purpose, so PostgreSQL itself answers 25P02 until the client ends it.

use super::Session;
use super::flow::Owner;
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{TxStatus, frontend_tag as ft};

/// SQLSTATE serialization_failure: what drivers and pgbench (`--max-tries`) retry.
const RETRY: &str = "40001";

/// The client's error for a failed proxy request. A statement of the proxy's own missing
/// on the backend (26000 on a `pgtenant_` name: a DEALLOCATE ALL or DISCARD ALL ran where
/// the proxy could not see it, in a trigger, a view or a function already in the
/// database) is the backend's fault, not the request's: nothing the client sent ran
/// (PostgreSQL skips to the Sync after the failure, and the proxy's requests come first),
/// the backend is closed, and the client is told to retry (40001), which then runs on
/// another backend.
fn retryable(e: &ErrorFields) -> (&str, String) {
    let own = e.code == "26000" && e.message.contains(crate::protocol::RESERVED_PREFIX);
    if own {
        let msg = format!(
            "pgtenant: the server connection lost pgtenant's prepared statements ({}); \
             nothing of this request ran and the connection was replaced: retry the transaction",
            e.message
        );
        return (RETRY, msg);
    }
    let msg = format!(
        "pgtenant could not set the tenant context for this transaction: {}",
        e.message
    );
    (&e.code, msg)
}

/// Opens a transaction and aborts it (division by zero); every reply is swallowed.
const ABORTED_TRANSACTION: &str = "BEGIN; SELECT pg_catalog.int4div(1, 0)";

impl Session {
    /// The proxy's own request failed on the attached backend: closes it and answers the
    /// client's outstanding request with the error.
    pub(super) fn proxy_request_failed(&mut self, e: ErrorFields) {
        tracing::error!(parent: &self.span(), code = %e.code, message = %e.message,
            "a request of pgtenant's failed on the backend (context injection or cleanup); closing that backend");
        let in_transaction = self.status != TxStatus::Idle || self.began;
        let reply_due = self.flow.awaiting_ready();
        self.unlink_backend();
        // Closed, not returned: its state is not known.
        drop(self.attachment.detach());
        if self.pin.take().is_some() {
            tracing::warn!(parent: &self.span(), "the session state of a pinned client was lost with its server connection");
        }
        self.flow.clear();
        self.split_rest = None;
        self.context.reset();
        self.input.backend_lost();
        self.unnamed_on_backend = false;
        self.clearing_portal = false;
        self.resetting_portal = false;
        self.dirty = false;
        self.leftover = Default::default();
        self.began = false;
        self.status = if in_transaction {
            TxStatus::Failed
        } else {
            TxStatus::Idle
        };
        self.aborted_elsewhere = in_transaction;
        let (code, message) = retryable(&e);
        messages::error_response(&mut self.cout, Severity::Error, code, &message);
        if reply_due {
            messages::ready_for_query(&mut self.cout, self.status);
        } else {
            self.input.error_before_sync();
        }
    }

    /// On a newly attached backend, re-creates the aborted transaction the client is in.
    pub(super) fn recreate_aborted_transaction(&mut self) {
        if !std::mem::take(&mut self.aborted_elsewhere) {
            return;
        }
        messages::query(&mut self.bout, ABORTED_TRANSACTION);
        self.flow.sent(ft::QUERY, Owner::ProxyExpectsError);
        self.status = TxStatus::Failed;
    }
}
