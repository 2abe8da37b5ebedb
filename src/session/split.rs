//! One simple Query that sets a transaction up and goes on (`BEGIN ISOLATION LEVEL
//! SERIALIZABLE; SELECT ...`, as psql -c, ActiveRecord and many ORMs send it) goes to the
//! backend as two: the setup statements, then, once they have run, the tenant context and
//! the rest. The context takes the transaction's snapshot, after which PostgreSQL refuses
//! an isolation level; it cannot go between two statements of one Query.
//!
//! The client sees what PostgreSQL sends for the one Query: the setup's replies, the rest's,
//! and one ReadyForQuery (the head's is swallowed, see [`Owner::ClientHead`]). When the
//! setup fails the rest is dropped, as PostgreSQL skips the statements after an error, and
//! the head's ReadyForQuery is the client's. Only a text whose first statement opens a
//! transaction block, or one sent inside a block, is split: the rest then runs in that
//! block either way. (Outside a block the statements of one Query share an implicit
//! transaction that two Queries would not, so such a text is sent whole.)

use bytes::{Bytes, BytesMut};

use super::Session;
use super::flow::Owner;
use crate::policy::Analysis;
use crate::policy::setup::{self, SetupSplit};
use crate::protocol::codec::{Frame, read_cstr};
use crate::protocol::{TxStatus, frontend_tag as ft, messages};

/// The part of a split Query still to send, sent once the head's ReadyForQuery arrives.
#[derive(Debug)]
pub(super) struct Rest {
    /// The Query message of the statements after the setup.
    message: Bytes,
    /// Some statement of it ends the transaction or clears the context.
    clears: bool,
}

/// A Query message carrying `sql`.
fn query_message(sql: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    messages::write_msg(&mut out, ft::QUERY, |b| {
        b.extend_from_slice(sql);
        b.extend_from_slice(&[0]);
    });
    out.freeze()
}

impl Session {
    /// Where to split the simple Query `frame` (see the module doc); None to send it whole.
    /// Asked before a backend is attached: then the next transaction owes the context.
    pub(super) fn setup_split(&self, frame: &Frame, a: &Analysis) -> Option<SetupSplit> {
        if frame.tag != ft::QUERY || !a.setup_prefix {
            return None;
        }
        let owed = !self.attachment.is_attached() || self.context.must_inject(self.status);
        if !owed {
            return None;
        }
        let (text, _) = read_cstr(frame.body())?;
        let s = setup::split(text)?;
        (s.opens_block || self.status == TxStatus::InTransaction).then_some(s)
    }

    /// Sends the head of the split Query and keeps the rest for [`Session::send_rest`].
    pub(super) fn forward_head(&mut self, frame: &Frame, s: SetupSplit, clears: bool) {
        let text = read_cstr(frame.body()).map_or(&[][..], |(t, _)| t);
        let (head, rest) = (&text[..s.head], &text[s.rest..]);
        self.bout.extend_from_slice(&query_message(head));
        self.flow.sent(ft::QUERY, Owner::ClientHead);
        self.split_rest = Some(Box::new(Rest {
            message: query_message(rest),
            clears,
        }));
    }

    /// The head ran without error: the tenant context, then the rest of the Query.
    pub(super) fn send_rest(&mut self) {
        let Some(rest) = self.split_rest.take() else {
            return;
        };
        self.inject(false);
        if rest.clears {
            self.context.end_sent();
        }
        self.bout.extend_from_slice(&rest.message);
        self.flow.sent(ft::QUERY, Owner::Client);
    }
}
