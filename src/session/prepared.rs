//! Forwarding Parse/Bind/Describe/Close under transaction pooling: client statement names
//! are mapped to proxy-owned names prepared on demand on the current backend (see
//! [`super::statements`]); the unnamed statement is re-created when the client uses it on a
//! backend other than the one it was parsed on. In session pooling frames go through as-is.

use std::sync::Arc;

use bytes::BytesMut;

use super::flow::Owner;
use super::statements::{
    Defined, Over, bind_statement, parse_is_unnamed, rewrite_bind, rewrite_describe,
    statement_target,
};
use super::{End, Session};
use crate::backend::statements::StatementDef;
use crate::config::PoolMode;
use crate::protocol::codec::Frame;
use crate::protocol::messages::write_msg;
use crate::protocol::{backend_tag as bt, frontend_tag as ft};

impl Session {
    /// Forwards one client request to the attached backend, translating statement names.
    pub(super) fn forward_client(&mut self, frame: Frame) -> Result<(), End> {
        if self.pool.mode == PoolMode::Transaction && self.forward_translated(&frame).is_some() {
            return Ok(());
        }
        if frame.tag == ft::PARSE && self.pool.mode == PoolMode::Transaction {
            self.unnamed_on_backend = true;
        }
        self.bout.extend_from_slice(&frame.raw);
        self.flow.sent(frame.tag, Owner::Client);
        Ok(())
    }

    /// Handles the frames that need translation; None means "forward unchanged".
    fn forward_translated(&mut self, frame: &Frame) -> Option<()> {
        match frame.tag {
            ft::PARSE => {
                let usage = usage_of(&self.pool, &self.me);
                let Defined::Named(def) =
                    self.statements
                        .define(frame.body(), self.frame_reading, usage)?
                else {
                    return None;
                };
                self.attachment.conn()?;
                // A Parse always parses, as on PostgreSQL: every copy on the backend is
                // older than this definition (see [`super::statements`]).
                self.pool.metrics.statement_misses.inc();
                self.prepare_on_backend(&def, Owner::Client);
                Some(())
            }
            ft::BIND => {
                let name = bind_statement(frame.body())?;
                if name.is_empty() {
                    return self.ensure_unnamed().and(None);
                }
                let def = self.statements.get(name)?;
                self.ensure_prepared_statement(&def);
                rewrite_bind(frame, &def.backend_name, &mut self.bout)?;
                self.flow.sent(ft::BIND, Owner::Client);
                Some(())
            }
            ft::DESCRIBE => {
                let name = statement_target(frame)?;
                if name.is_empty() {
                    return self.ensure_unnamed().and(None);
                }
                let def = self.statements.get(name)?;
                self.ensure_prepared_statement(&def);
                rewrite_describe(&def.backend_name, &mut self.bout);
                self.flow.sent(ft::DESCRIBE, Owner::Client);
                Some(())
            }
            ft::CLOSE => {
                let name = statement_target(frame)?;
                if name.is_empty() {
                    return None;
                }
                // Backend statements are shared by content and cached; only the client's
                // name goes away. PostgreSQL answers CloseComplete even for unknown names.
                self.statements.remove(name);
                self.flow
                    .sent(ft::CLOSE, Owner::Synthetic(bt::CLOSE_COMPLETE));
                Some(())
            }
            _ => None,
        }
    }

    /// Prepares `def` on the attached backend unless it is already there.
    fn ensure_prepared_statement(&mut self, def: &Arc<StatementDef>) {
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        if b.conn().statements.touch(def, self.params.parse_env()) {
            self.pool.metrics.statement_hits.inc();
        } else {
            self.pool.metrics.statement_misses.inc();
            self.prepare_on_backend(def, Owner::ProxyForwardErrors);
        }
    }

    /// Sends Parse for `def` under its backend name, closing whatever the cache evicts.
    fn prepare_on_backend(&mut self, def: &Arc<StatementDef>, owner: Owner) {
        let Some(b) = self.attachment.conn_mut() else {
            return;
        };
        for victim in b.conn().statements.insert(def, self.params.parse_env()) {
            StatementDef::close_message(&victim, &mut self.bout);
            self.flow.sent(ft::CLOSE, Owner::Proxy);
            self.pool.metrics_statement_evictions();
        }
        def.parse_message(&mut self.bout);
        self.flow
            .sent_parse(ft::PARSE, owner, Some(def.backend_name.clone()));
    }

    /// Re-creates the client's unnamed statement on this backend if it was parsed elsewhere.
    /// A client with none gets the backend's dropped: an earlier client of this connection
    /// may have left one (PostgreSQL keeps it across transactions), and binding it would
    /// run that client's SQL and return its literals. The Bind then fails as it would on a
    /// connection of the client's own (26000).
    fn ensure_unnamed(&mut self) -> Option<()> {
        if self.unnamed_on_backend {
            return Some(());
        }
        self.unnamed_on_backend = true;
        let Some(def) = self.statements.unnamed() else {
            StatementDef::close_message("", &mut self.bout);
            self.flow.sent(ft::CLOSE, Owner::Proxy);
            return None;
        };
        write_msg(&mut self.bout, ft::PARSE, |b: &mut BytesMut| {
            b.extend_from_slice(&[0]);
            b.extend_from_slice(&def.body);
        });
        self.flow.sent(ft::PARSE, Owner::ProxyForwardErrors);
        Some(())
    }

    /// Emits replies the proxy owes for requests it answered itself, once they are due.
    pub(super) fn emit_synthetic(&mut self) {
        while let Some(tag) = self.flow.take_synthetic() {
            write_msg(&mut self.cout, tag, |b| {
                // The one synthetic command: a locally answered DEALLOCATE.
                if tag == bt::COMMAND_COMPLETE {
                    b.extend_from_slice(LOCAL_DEALLOCATE_TAG);
                }
            });
        }
    }

    /// Answers SQL `DEALLOCATE [PREPARE] name` of one of the client's protocol-level
    /// statements, which the backend knows only under the proxy's name: the name is
    /// forgotten, as a Close would, and the client gets PostgreSQL's replies. A simple
    /// Query is answered where nothing is in flight; with the extended protocol (psycopg on
    /// libpq before 17 evicts its statements this way) the Parse of the unnamed statement
    /// and the Bind, Describe and Execute of it that follow get their replies in order
    /// through the flow, and the Sync goes on as usual. Returns false when the message
    /// must go on as it is.
    /// `text`: the message's SQL text (a Query's or a Parse's), as the relay read it.
    pub(super) fn deallocate_locally(&mut self, frame: &Frame, text: Option<&[u8]>) -> bool {
        // A Parse of the unnamed statement or a simple Query replaces the unnamed statement.
        let was_local = self.local_dealloc;
        if matches!(frame.tag, ft::PARSE | ft::QUERY) {
            self.local_dealloc = false;
        }
        match frame.tag {
            ft::QUERY => self.deallocate_query(text),
            // In a failed transaction PostgreSQL refuses it (25P02): the backend says so.
            ft::PARSE
                if parse_is_unnamed(frame) && self.status != crate::protocol::TxStatus::Failed =>
            {
                let Some(name) = text.and_then(deallocated_name) else {
                    return false;
                };
                if self.statements.get(&name).is_none() {
                    return false;
                }
                self.statements.remove(&name);
                self.local_dealloc = true;
                self.answer_in_order(ft::PARSE, bt::PARSE_COMPLETE);
                true
            }
            ft::BIND if was_local && unnamed_bind(frame.body()) => {
                self.answer_in_order(ft::BIND, bt::BIND_COMPLETE);
                true
            }
            ft::DESCRIBE if was_local && frame.body() == b"P\0" => {
                self.answer_in_order(ft::DESCRIBE, bt::NO_DATA);
                true
            }
            ft::EXECUTE if was_local && frame.body().first() == Some(&0) => {
                self.answer_in_order(ft::EXECUTE, bt::COMMAND_COMPLETE);
                true
            }
            _ => false,
        }
    }

    /// The simple-Query form of [`Self::deallocate_locally`].
    fn deallocate_query(&mut self, text: Option<&[u8]>) -> bool {
        // In a failed transaction PostgreSQL refuses it (25P02): the backend says so.
        if !self.flow.is_settled() || self.status == crate::protocol::TxStatus::Failed {
            return false;
        }
        let Some(name) = text.and_then(deallocated_name) else {
            return false;
        };
        if self.statements.get(&name).is_none() {
            return false;
        }
        self.statements.remove(&name);
        write_msg(&mut self.cout, bt::COMMAND_COMPLETE, |b| {
            b.extend_from_slice(LOCAL_DEALLOCATE_TAG);
        });
        crate::protocol::messages::ready_for_query(&mut self.cout, self.status);
        true
    }

    /// PostgreSQL's refusal of a named Parse whose name the client already defined, under
    /// transaction pooling, where the proxy keeps the client's statements (in session
    /// pooling PostgreSQL sees the Parse and answers itself). Without it the new text
    /// would replace the old under the same name: the earlier statement would run the new SQL.
    #[inline]
    pub(super) fn redefinition(&self, frame: &Frame) -> Option<String> {
        if frame.tag != ft::PARSE || self.pool.mode != PoolMode::Transaction {
            return None;
        }
        let name = self.statements.redefined(frame.body())?;
        Some(format!(
            "prepared statement \"{}\" already exists",
            String::from_utf8_lossy(name)
        ))
    }

    /// The refusal of a named Parse that would take the client's statements past the
    /// database's `prepared_statement_bytes`: the proxy keeps them in memory every tenant
    /// shares (PostgreSQL keeps them in the client's own backend process).
    #[inline]
    pub(super) fn statements_over_budget(&self, frame: &Frame) -> Option<super::guard::Refusal> {
        if frame.tag != ft::PARSE || self.pool.mode != PoolMode::Transaction {
            return None;
        }
        let limits = self.pool.statement_bytes();
        let counters = (&*self.pool.statement_usage, &*self.stats().statement_bytes);
        let (code, message) = match self
            .statements
            .over_budget(frame.body(), limits, counters)?
        {
            Over::Client => (
                crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "prepared statements of this connection would exceed {} bytes (databases.{}.prepared_statement_bytes); close some first",
                    limits.client, self.pool.name
                ),
            ),
            Over::Tenant => (
                crate::protocol::sqlstate::OUT_OF_MEMORY,
                format!(
                    "prepared statements of all this tenant's clients would exceed {} bytes (databases.{}.prepared_statement_bytes_per_tenant)",
                    limits.tenant, self.pool.name
                ),
            ),
            Over::Pool => (
                crate::protocol::sqlstate::OUT_OF_MEMORY,
                format!(
                    "prepared statements of all clients of database {} would exceed {} bytes (databases.{}.prepared_statement_bytes_total)",
                    self.pool.name, limits.total, self.pool.name
                ),
            ),
        };
        Some(super::guard::Refusal::new(code, message, "statement"))
    }

    /// Whether `frame` is a request the proxy answers from its own state while the session
    /// holds no backend: a named Parse or the Close of a named statement (Sync and Flush are
    /// answered earlier). The rule: a client holding no backend never waits for one for a
    /// request whose reply needs none. Between transactions and in a transaction a deferred
    /// BEGIN opened alike, so a client that prepares and then waits (libpq's PQprepare,
    /// pgbench -M prepared, whose thread blocks in it while its other clients hold every
    /// backend inside their transactions) can neither hold up the pool nor deadlock it.
    pub(super) fn answers_locally(&self, frame: &Frame) -> bool {
        if self.pool.mode != PoolMode::Transaction {
            return false;
        }
        match frame.tag {
            // The unnamed statement goes with the Bind that follows it, and so does a named
            // one the client sent a request after that needs a backend anyway (a Bind,
            // a Describe): PostgreSQL then reports a text it rejects at the Parse, as
            // drivers expect (node-postgres takes a ParseComplete as the name being taken).
            ft::PARSE => {
                !super::statements::parse_is_unnamed(frame)
                    && !super::statements::backend_needed_before_sync(&self.cbuf)
            }
            ft::CLOSE => super::statements::statement_target(frame).is_some_and(|n| !n.is_empty()),
            _ => false,
        }
    }

    /// Answers a request of [`Self::answers_locally`] (the caller holds no backend): a
    /// Parse is recorded and prepared on whichever backend first runs it, a Close forgets
    /// the client's name. The cost: a statement PostgreSQL would reject is reported at its
    /// first Bind or Describe instead. Returns false when the request must go to a backend.
    pub(super) fn answer_locally(&mut self, frame: &Frame) -> bool {
        if !self.answers_locally(frame) {
            return false;
        }
        if frame.tag == ft::CLOSE {
            if let Some(name) = super::statements::statement_target(frame) {
                self.statements.remove(name);
            }
            write_msg(&mut self.cout, bt::CLOSE_COMPLETE, |_| {});
            return true;
        }
        if self
            .statements
            .define(
                frame.body(),
                self.frame_reading,
                usage_of(&self.pool, &self.me),
            )
            .is_none()
        {
            return false;
        }
        write_msg(&mut self.cout, bt::PARSE_COMPLETE, |_| {});
        true
    }

    /// Answers request `tag` with `reply` once every earlier request is answered.
    fn answer_in_order(&mut self, tag: u8, reply: u8) {
        self.flow.sent(tag, Owner::Synthetic(reply));
        self.emit_synthetic();
    }

    /// A request that drops, or may drop, the session's settings, prepared statements or
    /// transaction (DISCARD ALL, RESET ALL, DEALLOCATE ALL, a DO block, a CALL) went out.
    /// What is pipelined behind it goes out before its CommandComplete, so from now on the
    /// proxy's own statements are closed and prepared again, the client's closed and parsed
    /// anew, and a carried context entered again, whether or not it ran.
    pub(super) fn reset_sent(&mut self) {
        if let Some(b) = self.attachment.conn_mut() {
            let conn = b.conn();
            conn.prepared = crate::backend::injection::Own::NONE;
            conn.statements.distrust();
            conn.carry.unsure();
        }
    }

    /// Forgets proxy-named statements whose Parse failed or was skipped on the backend: the
    /// backend does not have them. The client's definition goes only with its own failed
    /// Parse (or, see `relay::text_rejected`, when PostgreSQL refuses its text at the
    /// proxy's first Parse of it); a re-prepare the proxy added for a Bind that an earlier
    /// error skipped leaves the client's statement defined (the next Bind prepares it
    /// again), as on PostgreSQL.
    pub(super) fn forget_failed_statements(&mut self) {
        for failed in self.flow.take_failed_statements() {
            if failed.statement == super::flow::OWN_STATEMENTS {
                // Skipped after an error: every own statement is prepared again when next
                // needed (Close + Parse), so none is used that the backend lacks.
                if let Some(b) = self.attachment.conn_mut() {
                    b.conn().prepared = crate::backend::injection::Own::NONE;
                }
                continue;
            }
            if let Some(b) = self.attachment.conn_mut() {
                b.conn().statements.remove(&failed.statement);
            }
            if failed.by_client {
                self.statements.forget_backend_name(&failed.statement);
            }
        }
    }
}

/// The CommandComplete body of a locally answered DEALLOCATE.
const LOCAL_DEALLOCATE_TAG: &[u8] = b"DEALLOCATE\0";

/// True for a Bind of the unnamed statement to the unnamed portal.
fn unnamed_bind(body: &[u8]) -> bool {
    body.first() == Some(&0) && body.get(1) == Some(&0)
}

/// The statement name of a text that is exactly `DEALLOCATE [PREPARE] name` (an optional
/// `;` after): unquoted names folded to lower case, as PostgreSQL does.
fn deallocated_name(sql: &[u8]) -> Option<Vec<u8>> {
    use crate::policy::sql::{Lexer, TokenKind};
    // Every simple Query passes here: only a text that starts with the word is lexed (one
    // behind a comment goes on to PostgreSQL as before).
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    if !sql[start..]
        .get(..10)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"deallocate"))
    {
        return None;
    }
    let toks: Vec<_> = Lexer::new(sql).collect();
    let word = |i: usize, w: &str| {
        toks.get(i).is_some_and(|t| {
            t.kind == TokenKind::Ident && t.text.eq_ignore_ascii_case(w.as_bytes())
        })
    };
    if !word(0, "deallocate") {
        return None;
    }
    let at = if word(1, "prepare") { 2 } else { 1 };
    let name = toks.get(at)?;
    let rest = &toks[at + 1..];
    let ends = match rest {
        [] => true,
        [t] => t.kind == TokenKind::Op && t.text == b";",
        _ => false,
    };
    if !ends {
        return None;
    }
    match name.kind {
        TokenKind::Ident if !name.text.eq_ignore_ascii_case(b"all") => {
            Some(name.text.to_ascii_lowercase())
        }
        TokenKind::QuotedIdent => Some(
            String::from_utf8_lossy(name.text)
                .replace("\"\"", "\"")
                .into_bytes(),
        ),
        _ => None,
    }
}

/// Where the statement bytes of client `me` of `pool` are counted, for the statements it
/// defines: the pool's total and its tenant's (made only when the first is defined).
pub(super) fn usage_of<'a>(
    pool: &'a Arc<crate::pool::Pool>,
    me: &'a crate::registry::ClientHandle,
) -> impl FnOnce() -> super::statements::Usage + 'a {
    move || super::statements::Usage {
        pool: pool.statement_usage.clone(),
        tenant: super::stats_of(me).statement_bytes.clone(),
    }
}

impl Session {
    /// A backend's ErrorResponse (`raw`, read as `fields`) written again as the client
    /// must see it: a refusal without the PL/pgSQL that raised it (see
    /// [`super::guard::plain_refusal`]), a statement by the client's name; None when it
    /// goes as it is.
    pub(super) fn as_client_sees_it(
        &self,
        fields: &crate::protocol::messages::ErrorFields,
        raw: &[u8],
    ) -> Option<BytesMut> {
        super::guard::plain_refusal(fields).or_else(|| self.with_client_names(raw))
    }

    /// An ErrorResponse (`raw`, the whole message) that names a statement by the proxy's
    /// name for it (`bind message supplies 2 parameters, but prepared statement
    /// "pgtenant_s_..." requires 1`), written again with the client's own name, as
    /// PostgreSQL would have named it; None when it names none.
    fn with_client_names(&self, raw: &[u8]) -> Option<BytesMut> {
        let prefix = format!("\"{}s_", crate::protocol::RESERVED_PREFIX);
        let body = raw.get(5..)?;
        let mut out = Vec::with_capacity(body.len());
        let mut rest = body;
        let mut renamed = false;
        while let Some(at) = find(rest, prefix.as_bytes()) {
            let start = at + 1;
            let end = rest[start..]
                .iter()
                .position(|&b| b == b'"')
                .map(|n| start + n)?;
            out.extend_from_slice(&rest[..start]);
            match self.statements.name_of(&rest[start..end]) {
                Some(name) => {
                    out.extend_from_slice(name);
                    renamed = true;
                }
                None => out.extend_from_slice(&rest[start..end]),
            }
            rest = &rest[end..];
        }
        if !renamed {
            return None;
        }
        out.extend_from_slice(rest);
        let mut msg = BytesMut::new();
        write_msg(&mut msg, bt::ERROR_RESPONSE, |b| b.extend_from_slice(&out));
        Some(msg)
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::deallocated_name;

    #[test]
    fn only_a_lone_deallocate_of_one_name_is_read() {
        let name = |s: &str| deallocated_name(s.as_bytes()).map(|n| String::from_utf8(n).unwrap());
        assert_eq!(name("DEALLOCATE _pg3_0").as_deref(), Some("_pg3_0"));
        assert_eq!(name("deallocate prepare S1;").as_deref(), Some("s1"));
        assert_eq!(name("DEALLOCATE \"S\"\"1\"").as_deref(), Some("S\"1"));
        for other in [
            "DEALLOCATE ALL",
            "DEALLOCATE PREPARE ALL",
            "DEALLOCATE a; SELECT 1",
            "SELECT 1",
            "DEALLOCATE",
        ] {
            assert_eq!(name(other), None, "{other}");
        }
    }
}
