//! Whether the session holds a backend, as a state machine: detached between transactions,
//! a client BEGIN answered by the proxy and held back until the transaction's first
//! statement (see [`super::deferred`]), or attached to a backend connection. Generic over
//! the connection so its rules are tested without PostgreSQL.
//!
//! A deferred BEGIN and an attached backend never coexist: the backend a deferred
//! transaction checks out is attached by [`Attachment::attach`], which hands the owed
//! BEGIN to the caller to send first, and a failed checkout ends the deferred transaction
//! (as PostgreSQL ends a transaction whose connection is lost).
//!
//! What agrees with it: the session's last known transaction status is `InTransaction`
//! while a BEGIN is deferred and `Idle` while detached, but after a failed proxy request
//! left the client's transaction aborted (`Failed`, re-created on the next backend). That
//! status is what the proxy answers a Sync with while it holds no backend.

use crate::pool::PooledConn;

/// Whether, and how, a backend serves the session.
#[derive(Debug, Default)]
pub enum Attachment<C = PooledConn> {
    /// No backend, no transaction the proxy answered for.
    #[default]
    Detached,
    /// No backend yet: the client was told its plain BEGIN ran; the BEGIN goes out, with
    /// the tenant context, in front of the transaction's first request that needs one.
    DeferredBegin,
    /// A backend connection serves the session.
    Attached(C),
}

impl<C> Attachment<C> {
    /// The attached backend connection, if any.
    pub fn conn(&self) -> Option<&C> {
        match self {
            Attachment::Attached(c) => Some(c),
            _ => None,
        }
    }

    /// The attached backend connection, if any, to read or write.
    pub fn conn_mut(&mut self) -> Option<&mut C> {
        match self {
            Attachment::Attached(c) => Some(c),
            _ => None,
        }
    }

    /// Whether a backend is attached.
    pub fn is_attached(&self) -> bool {
        matches!(self, Attachment::Attached(_))
    }

    /// Whether no backend is attached and no BEGIN is held back: a plain BEGIN may be
    /// deferred, and the client is between transactions as far as the proxy answered.
    pub fn is_detached(&self) -> bool {
        matches!(self, Attachment::Detached)
    }

    /// Whether a BEGIN is held back (no backend attached).
    pub fn is_deferred_begin(&self) -> bool {
        matches!(self, Attachment::DeferredBegin)
    }

    /// The proxy answered a plain BEGIN itself. Only from `Detached`; false (and nothing
    /// changes) otherwise.
    pub fn begin_deferred(&mut self) -> bool {
        if !self.is_detached() {
            return false;
        }
        *self = Attachment::DeferredBegin;
        true
    }

    /// A backend was checked out for the session. True when a deferred BEGIN is owed on
    /// it: the caller sends it ahead of anything of the client's. Attaching over an
    /// attached backend drops (closes) the old one; the session never does.
    pub fn attach(&mut self, conn: C) -> bool {
        match std::mem::replace(self, Attachment::Attached(conn)) {
            Attachment::Detached => false,
            Attachment::DeferredBegin => true,
            Attachment::Attached(old) => {
                debug_assert!(false, "a backend attached twice");
                drop(old);
                false
            }
        }
    }

    /// No backend could be had. True when that ended a deferred transaction (the client
    /// gets the error and is out of it, as if its connection had been lost).
    pub fn checkout_failed(&mut self) -> bool {
        let ended = self.is_deferred_begin();
        if ended {
            *self = Attachment::Detached;
        }
        ended
    }

    /// The session lets go of its backend, returned to the pool or closed by the caller
    /// (dropping a pooled connection closes it). Whatever the state, it is `Detached` after.
    pub fn detach(&mut self) -> Option<C> {
        match std::mem::take(self) {
            Attachment::Attached(c) => Some(c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a pooled backend connection.
    #[derive(Debug, PartialEq)]
    struct Conn(u32);

    type A = Attachment<Conn>;

    #[test]
    fn a_transaction_attaches_and_releases_a_backend() {
        let mut a = A::default();
        assert!(a.is_detached() && !a.is_attached());
        assert!(!a.attach(Conn(1)), "no BEGIN owed");
        assert_eq!(a.conn(), Some(&Conn(1)));
        assert!(!a.begin_deferred(), "a BEGIN on a backend goes to it");
        assert_eq!(a.detach(), Some(Conn(1)));
        assert!(a.is_detached());
        assert_eq!(a.detach(), None);
    }

    #[test]
    fn deferred_begin_then_a_statement_then_commit() {
        let mut a = A::default();
        assert!(a.begin_deferred());
        assert!(a.is_deferred_begin() && !a.is_attached() && !a.is_detached());
        assert!(
            !a.begin_deferred(),
            "a second BEGIN is PostgreSQL's to warn about"
        );
        // The first statement checks a backend out: the BEGIN goes first, once.
        assert!(a.attach(Conn(7)), "the BEGIN is owed on the new backend");
        assert!(!a.is_deferred_begin());
        assert_eq!(a.conn_mut(), Some(&mut Conn(7)));
        // COMMIT runs on that backend; its ReadyForQuery(Idle) releases it.
        assert_eq!(a.detach(), Some(Conn(7)));
        assert!(a.is_detached());
        assert!(a.begin_deferred(), "the next transaction may defer again");
    }

    #[test]
    fn deferred_begin_then_rollback_takes_a_backend_for_both() {
        // ROLLBACK is not answered locally: it gets the BEGIN in front, as PostgreSQL
        // would run both, and the backend goes back at its ReadyForQuery.
        let mut a = A::default();
        a.begin_deferred();
        assert!(a.attach(Conn(2)));
        assert_eq!(a.detach(), Some(Conn(2)));
        assert!(a.is_detached());
    }

    #[test]
    fn deferred_begin_without_a_backend_ends_the_transaction() {
        let mut a = A::default();
        a.begin_deferred();
        assert!(a.checkout_failed(), "the client's transaction is over");
        assert!(a.is_detached());
        assert!(
            !a.checkout_failed(),
            "no transaction to end between transactions"
        );
    }

    #[test]
    fn a_deferred_begin_at_the_session_end_leaves_nothing_to_return() {
        let mut a = A::default();
        a.begin_deferred();
        assert_eq!(a.detach(), None);
        assert!(a.is_detached());
    }

    #[test]
    fn a_lost_backend_leaves_the_session_detached() {
        let mut a = A::default();
        a.attach(Conn(3));
        assert_eq!(
            a.detach(),
            Some(Conn(3)),
            "closed by the caller, not returned"
        );
        assert!(a.is_detached() && a.conn().is_none());
    }
}
