//! Response accounting: which backend messages answer which request, so that responses to
//! the proxy's own injected requests are swallowed and everything else reaches the client in
//! order. PostgreSQL answers requests strictly in order, so a FIFO of expected replies is
//! enough.

use std::collections::VecDeque;

use crate::protocol::{backend_tag as bt, frontend_tag as ft};

/// Who a request belongs to and what to do with its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The client's own request: replies are forwarded.
    Client,
    /// The proxy's request: replies are swallowed; an error means the session is unusable.
    Proxy,
    /// The proxy's request on the client's behalf (a refusal raised by the backend, or a
    /// re-prepare of the client's statement): success replies are swallowed, errors are
    /// the client's to see.
    ProxyForwardErrors,
    /// A request the proxy sends to fail on purpose (to leave the backend's transaction
    /// aborted, as the client's was): every reply is swallowed, its error too.
    ProxyExpectsError,
    /// The setup head of a client's simple Query that the proxy split in two (see
    /// [`super::split`]): replies are forwarded but its ReadyForQuery, after which the proxy
    /// sends the context and the rest; after an error the ReadyForQuery is the client's
    /// (the rest must not run, as in one Query).
    ClientHead,
    /// A request the proxy answered itself with this reply tag (no backend reply comes);
    /// emitted in order, and dropped like any request when an earlier error skips it.
    Synthetic(u8),
}

impl Owner {
    /// The proxy's own request: its success replies and notices never reach the client.
    fn is_proxys(self) -> bool {
        matches!(
            self,
            Owner::Proxy | Owner::ProxyForwardErrors | Owner::ProxyExpectsError
        )
    }
}

/// One request whose final reply has not arrived yet.
#[derive(Debug, Clone)]
struct Pending {
    tag: u8,
    owner: Owner,
    /// For a Parse of a proxy-named statement: its name, forgotten if the Parse fails.
    statement: Option<String>,
}

/// What to do with one backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
    /// An injected request failed: the tenant context may not be in place.
    ProxyRequestFailed,
    /// The ReadyForQuery of a split Query's head that ran without error: swallowed, and
    /// the rest of the Query is due.
    HeadDone,
}

/// The FIFO of requests sent to the backend and not yet fully answered.
#[derive(Debug, Default)]
pub struct Flow {
    pending: VecDeque<Pending>,
    /// Sync, Query and FunctionCall requests still waiting for their ReadyForQuery.
    boundaries: usize,
    /// Those of them that are the client's: a proxy's own Sync leaves the status it had.
    client_boundaries: usize,
    /// Requests whose replies are skipped by the backend after an extended-protocol error.
    skipping: bool,
    /// Proxy-named statements whose Parse failed or was skipped, for the session to forget.
    failed_statements: Vec<FailedParse>,
    /// Extended-protocol requests went out after the last Sync (or Query): the backend's
    /// implicit or explicit transaction stays open until a Sync, however many of their
    /// replies have arrived (a Flush makes them all arrive).
    unsynced: bool,
    /// The proxy sent a Flush so that a pending Execute's outcome arrives (see
    /// [`Flow::copy_may_start`]); cleared when the client sends another Execute or a COPY
    /// starts.
    flushed_for_copy: bool,
}

/// The name a skipped Parse of one of the proxy's own statements is reported under (they
/// are tracked as a set per backend, not by name).
pub const OWN_STATEMENTS: &str = "\0pgtenant own statements";

/// A Parse of a proxy-named statement that created nothing on the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedParse {
    /// The statement's backend name.
    pub statement: String,
    /// The client's own Parse (its statement does not exist, as on PostgreSQL); false for
    /// the proxy re-preparing a statement the client defined earlier, which stays defined
    /// (but see `relay::text_rejected`).
    pub by_client: bool,
}

impl FailedParse {
    fn new(statement: Option<String>, owner: Owner) -> Option<FailedParse> {
        statement.map(|statement| FailedParse {
            statement,
            by_client: owner == Owner::Client,
        })
    }
}

/// Requests a transaction's queue gets room for at once (an extended-protocol statement is
/// five; the queue is freed while the client is idle).
const PENDING_ROOM: usize = 16;

fn is_boundary(tag: u8) -> bool {
    matches!(tag, ft::SYNC | ft::QUERY | ft::FUNCTION_CALL)
}

/// Whether a request gets any reply at all (Flush and copy messages do not).
fn expects_reply(tag: u8) -> bool {
    matches!(
        tag,
        ft::QUERY
            | ft::PARSE
            | ft::BIND
            | ft::DESCRIBE
            | ft::EXECUTE
            | ft::CLOSE
            | ft::SYNC
            | ft::FUNCTION_CALL
    )
}

impl Flow {
    /// Records a request sent to the backend.
    pub fn sent(&mut self, tag: u8, owner: Owner) {
        self.sent_parse(tag, owner, None);
    }

    /// Records `n` of the proxy's own statements prepared again: Close + Parse each (see
    /// [`crate::backend::BackendConn::prepare_own`]). A Parse the backend skips (an error
    /// earlier in the pipeline) is reported under [`OWN_STATEMENTS`], so the session stops
    /// counting them as prepared there.
    #[inline]
    pub fn sent_own(&mut self, n: usize) {
        for _ in 0..n {
            self.sent(ft::CLOSE, Owner::Proxy);
            self.sent_parse(ft::PARSE, Owner::Proxy, Some(OWN_STATEMENTS.to_string()));
        }
    }

    /// Records a request, remembering the proxy-named statement a Parse creates.
    pub fn sent_parse(&mut self, tag: u8, owner: Owner, statement: Option<String>) {
        self.unsynced = !is_boundary(tag);
        if !expects_reply(tag) {
            return;
        }
        if self.backend_discards() && tag != ft::SYNC {
            // The backend ignores it: no reply will come, and a Parse creates nothing.
            self.failed_statements
                .extend(FailedParse::new(statement, owner));
            return;
        }
        if is_boundary(tag) {
            self.boundaries += 1;
            self.client_boundaries += usize::from(owner != Owner::Proxy);
        } else if tag == ft::EXECUTE {
            self.flushed_for_copy = false;
        }
        if self.pending.capacity() == 0 {
            // One allocation per transaction rather than a growth per few requests.
            self.pending.reserve(PENDING_ROOM);
        }
        self.pending.push_back(Pending {
            tag,
            owner,
            statement,
        });
    }

    /// Pops a synthetic reply that is due (every earlier request has been answered).
    pub fn take_synthetic(&mut self) -> Option<u8> {
        match self.pending.front() {
            Some(Pending {
                owner: Owner::Synthetic(reply),
                ..
            }) => {
                let reply = *reply;
                self.pop_front();
                Some(reply)
            }
            _ => None,
        }
    }

    /// The proxy-named statement of the oldest unanswered request when it is a Parse sent
    /// for `owner` (the request an ErrorResponse arriving now answers).
    pub fn front_parse(&self, owner: Owner) -> Option<&str> {
        self.pending
            .front()
            .filter(|p| p.tag == ft::PARSE && p.owner == owner)
            .and_then(|p| p.statement.as_deref())
    }

    /// Statements whose Parse failed or was skipped since the last call.
    pub fn take_failed_statements(&mut self) -> Vec<FailedParse> {
        std::mem::take(&mut self.failed_statements)
    }

    /// True while some Sync/Query of the client's has not been answered by ReadyForQuery, so
    /// the transaction state after it is unknown. A proxy's own Sync (ahead of the client's
    /// first request) ends only the proxy's implicit transaction: the status after it is
    /// Idle, so the client's pipeline need not wait for it.
    pub fn awaiting_ready(&self) -> bool {
        self.client_boundaries > 0
    }

    /// True when every request has been fully answered and the backend is not discarding
    /// requests after an error (it would ignore the next client's messages).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.skipping
    }

    /// True when the backend's state is settled: every request answered, and the last one
    /// sent was a Sync or Query whose ReadyForQuery has arrived. Only then does the last
    /// ReadyForQuery's status describe the connection, so only then may it be released.
    pub fn is_settled(&self) -> bool {
        self.is_idle() && !self.unsynced
    }

    /// True when requests went out after the last Sync or Query (nothing sent since one:
    /// false).
    pub fn is_unsynced(&self) -> bool {
        self.unsynced
    }

    /// True while a client's Execute is unanswered: it may start a COPY FROM STDIN, and
    /// whether copy messages behind it are the COPY's data (PostgreSQL reads them as such)
    /// or stray ones (PostgreSQL ignores them) is known only from its reply.
    pub fn copy_may_start(&self) -> bool {
        self.pending
            .iter()
            .any(|p| p.tag == ft::EXECUTE && p.owner == Owner::Client)
    }

    /// True once per wait for an Execute's outcome (see [`Flow::copy_may_start`]): the
    /// caller then sends a Flush of the proxy's, so the outcome arrives even when the
    /// client pipelined no Sync or Flush of its own before its copy messages.
    pub fn take_flush_for_copy(&mut self) -> bool {
        !std::mem::replace(&mut self.flushed_for_copy, true)
    }

    /// True when the backend ignores every request but Sync: an extended-protocol error
    /// happened and no Sync has been sent since. Such requests get no reply at all.
    pub fn backend_discards(&self) -> bool {
        self.skipping && self.boundaries == 0
    }

    /// Decides what to do with a backend message and advances the FIFO.
    pub fn on_backend(&mut self, tag: u8) -> Disposition {
        if tag == bt::NOTICE_RESPONSE {
            // A notice while the proxy's own request is being answered is about that request
            // (`enter()`, the context, a cleanup): never the client's. With the client's
            // `debug_print_plan` and `client_min_messages = log`, PostgreSQL prints the plans
            // of `enter()`'s statements, secrets folded into their constants, as notices.
            return match self.pending.front() {
                Some(p) if p.owner.is_proxys() => Disposition::Swallow,
                _ => Disposition::Forward,
            };
        }
        if matches!(tag, bt::NOTIFICATION_RESPONSE | bt::PARAMETER_STATUS) {
            return Disposition::Forward;
        }
        // Copied out, not cloned: the statement name stays in the queue.
        let Some((request, owner)) = self.pending.front().map(|p| (p.tag, p.owner)) else {
            return Disposition::Forward;
        };
        if tag == bt::ERROR_RESPONSE {
            return self.on_error(request, owner);
        }
        if self.is_final_reply(request, tag) {
            self.pop_front();
            if owner == Owner::ClientHead {
                return Disposition::HeadDone;
            }
        }
        if owner.is_proxys() {
            Disposition::Swallow
        } else {
            Disposition::Forward
        }
    }

    fn on_error(&mut self, request: u8, owner: Owner) -> Disposition {
        let disposition = match owner {
            Owner::Client | Owner::ProxyForwardErrors | Owner::Synthetic(_) => Disposition::Forward,
            Owner::ClientHead => {
                // The rest of the Query is dropped: its ReadyForQuery goes to the client.
                if let Some(p) = self.pending.front_mut() {
                    p.owner = Owner::Client;
                }
                Disposition::Forward
            }
            // The session closes the backend and answers the client's outstanding requests
            // itself, so they stay counted (a Query behind the failed request still gets its
            // ReadyForQuery, from the proxy).
            Owner::Proxy => return Disposition::ProxyRequestFailed,
            Owner::ProxyExpectsError => Disposition::Swallow,
        };
        // A Query or FunctionCall still ends with ReadyForQuery; an extended-protocol error
        // makes the backend skip every message up to the next Sync, a Query or FunctionCall
        // pipelined before that Sync included (PostgreSQL reads them and ignores them: no
        // reply, no ReadyForQuery). A skipped Parse never created its statement, exactly
        // like a failed one.
        if is_boundary(request) {
            let front = self
                .pending
                .front_mut()
                .and_then(|p| FailedParse::new(p.statement.take(), p.owner));
            self.failed_statements.extend(front);
        } else {
            while self.pending.front().is_some_and(|p| p.tag != ft::SYNC) {
                if let Some(p) = self.pending.pop_front() {
                    self.forget_boundary(&p);
                    self.failed_statements
                        .extend(FailedParse::new(p.statement, p.owner));
                }
            }
            self.skipping = true;
        }
        disposition
    }

    /// Uncounts `p` if it was a boundary (answered, or skipped by the backend).
    fn forget_boundary(&mut self, p: &Pending) {
        if is_boundary(p.tag) {
            self.boundaries -= 1;
            self.client_boundaries -= usize::from(p.owner != Owner::Proxy);
        }
    }

    fn is_final_reply(&self, request: u8, reply: u8) -> bool {
        match request {
            ft::PARSE => reply == bt::PARSE_COMPLETE,
            ft::BIND => reply == bt::BIND_COMPLETE,
            ft::CLOSE => reply == bt::CLOSE_COMPLETE,
            ft::DESCRIBE => matches!(reply, bt::ROW_DESCRIPTION | bt::NO_DATA),
            ft::EXECUTE => matches!(
                reply,
                bt::COMMAND_COMPLETE | bt::EMPTY_QUERY | bt::PORTAL_SUSPENDED
            ),
            _ => reply == bt::READY_FOR_QUERY,
        }
    }

    fn pop_front(&mut self) {
        if let Some(p) = self.pending.pop_front()
            && is_boundary(p.tag)
        {
            self.forget_boundary(&p);
            self.skipping = false;
        }
    }

    /// The backend entered COPY IN. A COPY started by Execute ignores the Syncs the client
    /// already pipelined behind it; the client sends a fresh Sync after CopyDone/CopyFail.
    pub fn copy_in_started(&mut self) {
        self.flushed_for_copy = false;
        let from_query = self.pending.front().is_some_and(|p| p.tag == ft::QUERY);
        if from_query {
            self.pending.truncate(1);
            self.boundaries = 1;
            self.client_boundaries = 1;
        } else {
            self.pending.retain(|p| !is_boundary(p.tag));
            self.boundaries = 0;
            self.client_boundaries = 0;
            // The backend waits for a Sync sent after CopyDone/CopyFail.
            self.unsynced = true;
        }
    }

    /// Frees the queue's memory while it is empty (an idle client).
    pub fn shrink(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = VecDeque::new();
        }
    }

    /// Forgets everything (the backend connection is gone).
    pub fn clear(&mut self) {
        *self = Flow::default();
    }
}

#[cfg(test)]
mod tests;
