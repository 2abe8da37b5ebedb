//! Deferred BEGIN. Under transaction pooling a plain BEGIN is answered by the proxy, and
//! sent on in the same write as the transaction's first real statement: the client holds
//! no backend connection until it has something to run, and PostgreSQL sees one round trip
//! fewer per transaction (BEGIN, context and statement arrive together).
//!
//! Only BEGIN without options is deferred (no isolation level or access mode): outside a
//! transaction it cannot fail, so the reply the proxy gives is the one PostgreSQL would
//! give. The visible difference: `now()` is the time of the first statement, not of BEGIN.

use bytes::{Buf, BufMut};

use super::Session;
use super::flow::Owner;
use super::statements::bind_statement;
use crate::config::PoolMode;
use crate::policy::sql;
use crate::protocol::codec::{Frame, peek_frame, read_cstr};
use crate::protocol::messages::write_msg;
use crate::protocol::{TxStatus, backend_tag as bt, frontend_tag as ft};

/// Most replies a deferred extended-protocol BEGIN gets (Parse, Bind, two for a statement
/// Describe, Execute, Sync).
const MAX_REPLIES: usize = 6;

impl Session {
    /// Answers `frame` itself when it starts a plain BEGIN and no backend is attached; the
    /// frames of an extended-protocol BEGIN, up to its Sync, are consumed with it. Returns
    /// true when the client has been answered.
    pub(super) fn defer_begin(&mut self, frame: &Frame) -> bool {
        if !self.attachment.is_detached()
            || self.status != TxStatus::Idle
            || self.pool.mode != PoolMode::Transaction
            || !self.pool.defers_begin()
        {
            return false;
        }
        let mut replies = Replies::default();
        match frame.tag {
            ft::QUERY => {
                if !read_cstr(frame.body()).is_some_and(|(q, _)| sql::is_plain_begin(q)) {
                    return false;
                }
                replies.push(bt::COMMAND_COMPLETE);
                replies.push(bt::READY_FOR_QUERY);
            }
            ft::PARSE | ft::BIND => {
                let Some(consumed) = self.begin_pipeline(frame, &mut replies) else {
                    return false;
                };
                if frame.tag == ft::PARSE {
                    let usage = super::prepared::usage_of(&self.pool, &self.me);
                    self.statements
                        .define(frame.body(), crate::policy::Reading::BEGIN, usage);
                }
                self.cbuf.advance(consumed);
            }
            _ => return false,
        }
        for &tag in &replies.tags[..replies.len] {
            write_msg(&mut self.cout, tag, |b| match tag {
                bt::COMMAND_COMPLETE => b.put_slice(b"BEGIN\0"),
                bt::READY_FOR_QUERY => b.put_u8(TxStatus::InTransaction.as_byte()),
                bt::PARAMETER_DESCRIPTION => b.put_u16(0),
                _ => {}
            });
        }
        self.status = TxStatus::InTransaction;
        self.attachment.begin_deferred();
        self.server.metrics.deferred_begins.inc();
        true
    }

    /// When `first` (a Parse or Bind) and the buffered frames after it are exactly a plain
    /// BEGIN run through the extended protocol up to a Sync, the bytes of those frames.
    fn begin_pipeline(&self, first: &Frame, replies: &mut Replies) -> Option<usize> {
        if crate::policy::frames::uses_reserved_name(first) {
            return None;
        }
        let statement: &[u8];
        let mut bound = false;
        if first.tag == ft::PARSE {
            let (name, rest) = read_cstr(first.body())?;
            let (query, types) = read_cstr(rest)?;
            if !sql::is_plain_begin(query) || types.get(..2)? != [0, 0] {
                return None;
            }
            statement = name;
            replies.push(bt::PARSE_COMPLETE);
        } else {
            statement = bind_statement(first.body())?;
            if !self.statement_is_plain_begin(statement) || !bind_is_plain(first.body())? {
                return None;
            }
            bound = true;
            replies.push(bt::BIND_COMPLETE);
        }
        let mut at = 0;
        loop {
            let rest = &self.cbuf[at..];
            let (tag, total) = peek_frame(rest, self.server.max_message()).ok()??;
            let body = rest.get(5..total)?;
            at += total;
            match tag {
                ft::BIND if !bound => {
                    if bind_statement(body)? != statement || !bind_is_plain(body)? {
                        return None;
                    }
                    bound = true;
                    replies.push(bt::BIND_COMPLETE);
                }
                ft::DESCRIBE => match body.split_first()? {
                    (b'P', name) if bound && name == b"\0" => replies.push(bt::NO_DATA),
                    (b'S', name) if read_cstr(name)?.0 == statement => {
                        replies.push(bt::PARAMETER_DESCRIPTION);
                        replies.push(bt::NO_DATA);
                    }
                    _ => return None,
                },
                ft::EXECUTE if bound && read_cstr(body)?.0.is_empty() => {
                    replies.push(bt::COMMAND_COMPLETE);
                    // Only the Sync may follow.
                    let rest = &self.cbuf[at..];
                    let (tag, total) = peek_frame(rest, self.server.max_message()).ok()??;
                    if tag != ft::SYNC || rest.len() < total {
                        return None;
                    }
                    replies.push(bt::READY_FOR_QUERY);
                    return Some(at + total);
                }
                ft::FLUSH => {}
                _ => return None,
            }
            if replies.len >= MAX_REPLIES {
                return None;
            }
        }
    }

    /// Whether the client statement `name` (empty: the unnamed one) is a plain BEGIN.
    fn statement_is_plain_begin(&self, name: &[u8]) -> bool {
        let is_begin = |body: &[u8]| read_cstr(body).is_some_and(|(q, _)| sql::is_plain_begin(q));
        if name.is_empty() {
            self.statements.unnamed().is_some_and(|u| is_begin(&u.body))
        } else {
            self.statements.get(name).is_some_and(|d| is_begin(&d.body))
        }
    }

    /// Sends the deferred BEGIN on the backend just attached for the transaction's first
    /// request (see [`Session::attach`]), ahead of the client's requests. The context goes
    /// in front of the first request that runs SQL, after any SET TRANSACTION (which
    /// PostgreSQL refuses once the injection took a snapshot).
    pub(super) fn send_deferred_begin(&mut self) {
        self.txn_started = Some(std::time::Instant::now());
        self.prepare_own(crate::backend::injection::Own::BEGIN);
        self.bout.extend_from_slice(&self.server.plan.begin);
        self.flow.sent(ft::BIND, Owner::Proxy);
        self.flow.sent(ft::EXECUTE, Owner::Proxy);
        self.status = TxStatus::InTransaction;
    }
}

/// The reply tags owed, in order.
#[derive(Default)]
struct Replies {
    tags: [u8; MAX_REPLIES],
    len: usize,
}

impl Replies {
    fn push(&mut self, tag: u8) {
        if let Some(slot) = self.tags.get_mut(self.len) {
            *slot = tag;
            self.len += 1;
        }
    }
}

/// A Bind to the unnamed portal with no parameters (a BEGIN takes none).
fn bind_is_plain(body: &[u8]) -> Option<bool> {
    let (portal, rest) = read_cstr(body)?;
    let (_, mut rest) = read_cstr(rest)?;
    let formats = rest.try_get_u16().ok()? as usize;
    rest = rest.get(formats * 2..)?;
    let params = rest.try_get_u16().ok()?;
    Some(portal.is_empty() && params == 0)
}
