//! Which tenant's verified context a backend's session holds between transactions, as the
//! proxy knows it (verified mode with `context.carry`).
//!
//! `enter()` sets the context for the session, so a backend keeps it after the transaction
//! that entered it commits, and the tenant's next transaction on that backend needs no
//! `enter()` at all. The invariant that makes this safe: while a tenant's client uses a
//! backend, the session holds that tenant's context or none. A backend another tenant used
//! last is emptied with DISCARD ALL ([`super::BackendConn::empty_session`]), in a round
//! trip of its own, before the client gets it ([`crate::pool::PooledConn::serve_tenant`]):
//! no rollback can bring the earlier tenant's context back under this tenant's statements,
//! and nothing that tenant's SQL left in the session (prepared statements under the
//! proxy's own names included) runs for this one.
//! PostgreSQL enforces the rest: `enter()` refuses a second tenant on a session that holds
//! one. The skip is taken only when PostgreSQL confirmed the transaction that entered the
//! context committed (its ReadyForQuery, no error, no ROLLBACK); whatever may have cleared
//! or rolled the context back since (an error, RESET, DISCARD, a procedure or DO block,
//! PREPARE TRANSACTION, a cleanup) makes the next transaction enter again. A wrong guess in
//! that direction can only leave a tenant's own transaction without context, which the
//! readers refuse (fail closed).

/// The session's context, identified by the tenant definition's serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carry {
    /// No verified context: a new connection, or after DISCARD ALL or a session-level
    /// `enter(..., false)` (which leaves the verified copy empty).
    #[default]
    Empty,
    /// `enter()` for this tenant went out in the current transaction: held once it commits,
    /// else the session is back to this tenant's context or none.
    Entering(u64),
    /// Held: the transaction that entered it committed and nothing since may have changed it.
    Holds(u64),
    /// This tenant's context or none: something may have cleared or rolled it back.
    HoldsOrEmpty(u64),
}

/// What the next transaction of a tenant needs on this backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The session holds the tenant's context already: send nothing.
    Skip,
    /// Call `enter()`.
    Enter,
}

impl Carry {
    /// What a transaction of tenant `serial` must send before its first statement.
    pub fn step(self, serial: u64) -> Step {
        match self {
            Carry::Holds(s) if s == serial => Step::Skip,
            _ => Step::Enter,
        }
    }

    /// A session-level `enter(..., false)` was sent in a transaction of its own (it leaves
    /// the verified copy empty); if it fails the backend is closed.
    pub fn left(&mut self) {
        *self = Carry::Empty;
    }

    /// `enter()` for tenant `serial` was sent.
    pub fn entered(&mut self, serial: u64) {
        *self = Carry::Entering(serial);
    }

    /// Something may have cleared the context or will roll its transaction back: a RESET,
    /// DISCARD, ROLLBACK, PREPARE TRANSACTION, CALL or DO, or a cleanup at release.
    pub fn unsure(&mut self) {
        if let Carry::Entering(s) | Carry::Holds(s) = *self {
            *self = Carry::HoldsOrEmpty(s);
        }
    }

    /// The backend reported an error: a transaction that entered the context rolls back.
    /// One that did not rolls back to what is held, but the error may be a reader's refusal
    /// (a context gone stale, e.g. under a slot a rotation retired): enter again either way.
    pub fn on_error(&mut self) {
        self.unsure();
    }

    /// A client-owned ReadyForQuery with this transaction status byte: idle after an
    /// entering transaction means it committed; failed means it will not.
    pub fn on_ready(&mut self, status: crate::protocol::TxStatus) {
        use crate::protocol::TxStatus;
        if let Carry::Entering(s) = *self {
            match status {
                TxStatus::Idle => *self = Carry::Holds(s),
                TxStatus::Failed => *self = Carry::HoldsOrEmpty(s),
                TxStatus::InTransaction => {}
            }
        }
    }

    /// The backend goes back to the pool: an entering transaction that never reached its
    /// ReadyForQuery is not known to have committed.
    pub fn on_release(&mut self) {
        if let Carry::Entering(s) = *self {
            *self = Carry::HoldsOrEmpty(s);
        }
    }

    /// Whether a command tag says the session's context may be gone or rolled back.
    pub fn tag_unsettles(tag: &[u8]) -> bool {
        [
            &b"ROLLBACK"[..],
            b"RESET",
            b"DISCARD",
            b"PREPARE TRANSACTION",
            b"CALL",
            b"DO",
        ]
        .iter()
        .any(|p| tag.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TxStatus::{Failed, Idle, InTransaction};

    #[test]
    fn a_committed_enter_is_carried_into_the_next_transaction() {
        let mut c = Carry::default();
        assert_eq!(c.step(1), Step::Enter);
        c.entered(1);
        c.on_ready(InTransaction);
        assert_eq!(c, Carry::Entering(1), "not committed yet");
        c.on_ready(Idle);
        assert_eq!(c.step(1), Step::Skip);
        c.on_ready(InTransaction);
        c.on_ready(Idle);
        assert_eq!(c.step(1), Step::Skip, "later transactions of the tenant");
        // An error, even in a transaction that did not enter: enter again.
        c.on_error();
        c.on_ready(Failed);
        c.on_ready(Idle);
        assert_eq!(c.step(1), Step::Enter);
    }

    #[test]
    fn another_tenant_never_skips() {
        for held in [
            Carry::Holds(1),
            Carry::HoldsOrEmpty(1),
            Carry::Entering(1),
            Carry::Empty,
        ] {
            assert_eq!(held.step(2), Step::Enter, "{held:?}");
        }
    }

    #[test]
    fn a_rolled_back_or_unsettled_enter_is_entered_again() {
        let mut c = Carry::Empty;
        c.entered(1);
        c.on_error();
        c.on_ready(Idle);
        assert_eq!(
            c,
            Carry::HoldsOrEmpty(1),
            "an implicit transaction that failed"
        );
        assert_eq!(c.step(1), Step::Enter);

        let mut c = Carry::Empty;
        c.entered(1);
        c.on_ready(Failed);
        c.on_ready(Idle);
        assert_eq!(c.step(1), Step::Enter, "ended by ROLLBACK after an error");

        let mut c = Carry::Holds(1);
        c.unsure();
        assert_eq!(c.step(1), Step::Enter, "RESET ALL in a skipped transaction");

        let mut c = Carry::Empty;
        c.entered(1);
        c.on_release();
        assert_eq!(c.step(1), Step::Enter, "released before its ReadyForQuery");
    }

    #[test]
    fn tags_that_unsettle_the_context() {
        for tag in [
            &b"ROLLBACK"[..],
            b"RESET",
            b"DISCARD ALL",
            b"PREPARE TRANSACTION",
            b"CALL",
            b"DO",
        ] {
            assert!(
                Carry::tag_unsettles(tag),
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
        for tag in [&b"COMMIT"[..], b"SELECT 1", b"SET", b"INSERT 0 1", b"BEGIN"] {
            assert!(
                !Carry::tag_unsettles(tag),
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
    }
}
