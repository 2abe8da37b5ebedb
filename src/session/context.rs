//! Whether the backend's current transaction carries the tenant context, as a state machine
//! the relay drives: requests sent, command tags and ReadyForQuery move it, and it says
//! when the injection must go in front of the next request that runs SQL.
//!
//! The rules it encodes: every transaction gets the context before its first statement
//! that runs SQL, but after the statements that only set the transaction up (`BEGIN
//! ISOLATION LEVEL ...`, `SET TRANSACTION ...`: PostgreSQL refuses them once a snapshot was
//! taken, and the injection is a SELECT). A statement that ends the transaction or clears
//! the context (COMMIT, ROLLBACK, RESET ALL) leaves whatever the client sends after it in
//! the same pipeline without the context, whatever the last known transaction status says,
//! and so does COMMIT AND CHAIN for the transaction it opens. An aborted transaction runs
//! nothing but its end, so nothing is injected into it (the injection would fail).

use crate::protocol::TxStatus;

/// The context of the backend's current (or next) transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Context {
    /// Not in the transaction: the next request that runs SQL needs the injection first.
    #[default]
    Absent,
    /// Injected into the current transaction.
    Present,
    /// A request that ends the transaction or clears the context went to the backend and
    /// its ReadyForQuery has not arrived: what follows it needs the injection, even though
    /// the last known status may say the transaction is aborted.
    EndSent,
}

impl Context {
    /// Whether the injection must precede a request that runs SQL, given the status of
    /// the last ReadyForQuery.
    pub fn must_inject(self, status: TxStatus) -> bool {
        match self {
            Context::Present => false,
            Context::EndSent => true,
            Context::Absent => status != TxStatus::Failed,
        }
    }

    /// The injection was sent.
    pub fn injected(&mut self) {
        *self = Context::Present;
    }

    /// A COMMIT, ROLLBACK, RESET ALL or the like was sent.
    pub fn end_sent(&mut self) {
        *self = Context::EndSent;
    }

    /// The client's own command changed settings (SET, RESET, DISCARD): the context may be
    /// gone from the transaction. A pending end stays pending.
    pub fn settings_changed(&mut self) {
        if *self == Context::Present {
            *self = Context::Absent;
        }
    }

    /// ReadyForQuery arrived with `status`. Frames after a Sync or Query wait for its
    /// ReadyForQuery, so it always answers the last boundary sent.
    pub fn on_ready(&mut self, status: TxStatus) {
        if status == TxStatus::Idle || *self == Context::EndSent {
            *self = Context::Absent;
        }
    }

    /// A backend was attached or released: no transaction of this client is open on it.
    pub fn reset(&mut self) {
        *self = Context::Absent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TxStatus::{Failed, Idle, InTransaction};

    #[test]
    fn a_new_transaction_needs_the_context_once() {
        let mut c = Context::default();
        assert!(c.must_inject(Idle));
        c.injected();
        assert!(!c.must_inject(Idle), "later statements of the pipeline");
        c.on_ready(InTransaction);
        assert!(!c.must_inject(InTransaction));
        c.on_ready(Idle);
        assert!(c.must_inject(Idle), "the next transaction");
    }

    #[test]
    fn setup_statements_leave_the_context_owed_in_the_open_transaction() {
        // BEGIN ISOLATION LEVEL SERIALIZABLE went without the injection.
        let mut c = Context::default();
        c.on_ready(InTransaction);
        assert!(c.must_inject(InTransaction));
        c.injected();
        assert!(!c.must_inject(InTransaction));
    }

    #[test]
    fn commit_in_a_pipeline_owes_the_context_to_what_follows() {
        let mut c = Context::default();
        c.injected();
        c.end_sent();
        assert!(c.must_inject(InTransaction));
        assert!(
            c.must_inject(Failed),
            "COMMIT of an aborted transaction ends it too"
        );
        c.injected();
        c.on_ready(Idle);
        assert_eq!(c, Context::Absent);
    }

    #[test]
    fn commit_and_chain_owes_the_context_to_the_chained_transaction() {
        let mut c = Context::default();
        c.injected();
        c.end_sent();
        c.on_ready(InTransaction);
        assert!(c.must_inject(InTransaction));
    }

    #[test]
    fn reset_all_inside_a_transaction_owes_it_again() {
        let mut c = Context::default();
        c.injected();
        c.settings_changed();
        assert!(c.must_inject(InTransaction));
        c.end_sent();
        c.settings_changed();
        assert_eq!(
            c,
            Context::EndSent,
            "a later tag does not cancel a pending end"
        );
    }

    #[test]
    fn nothing_goes_into_an_aborted_transaction() {
        let mut c = Context::default();
        c.on_ready(Failed);
        assert!(!c.must_inject(Failed));
        c.on_ready(Idle);
        assert!(c.must_inject(Idle));
    }
}
