//! The two directions of the relay: client frames (guarded, then forwarded after any
//! injection) and backend frames (accounted, then forwarded or swallowed).

use std::sync::atomic::Ordering;

use bytes::Buf;

use super::flow::{Disposition, Owner};
use super::guard::{Judged, Refusal};
use super::{End, Session};
use crate::policy::sql::Leftover;
use crate::protocol::codec::{Frame, peek_frame, read_cstr, split_frame};
use crate::protocol::messages;
use crate::protocol::{TxStatus, backend_tag as bt, frontend_tag as ft, sqlstate};

impl Session {
    /// True when a complete client frame must wait before it may go on (for a
    /// ReadyForQuery, or a copy message for its Execute's outcome); the client is then read
    /// only a bounded amount further (see `run_loop::READ_AHEAD`).
    pub(super) fn has_blocked_frame(&self) -> bool {
        (self.frames_must_wait() || self.copy_must_wait()) && self.cbuf.len() >= 5 && {
            let len = (&self.cbuf[1..5]).get_u32() as usize;
            self.cbuf.len() > len
        }
    }

    fn frames_must_wait(&self) -> bool {
        self.flow.awaiting_ready() && !self.input.in_copy()
    }

    /// True when the next frame is a copy message that a client's unanswered Execute may
    /// yet make COPY data: PostgreSQL reads CopyData, CopyDone and CopyFail pipelined behind
    /// an Execute of `COPY ... FROM STDIN` as that COPY's, and ignores them behind any other
    /// request, so they wait for the Execute's outcome (CopyInResponse, or its end).
    fn copy_must_wait(&self) -> bool {
        matches!(
            self.cbuf.first(),
            Some(&(ft::COPY_DATA | ft::COPY_DONE | ft::COPY_FAIL))
        ) && !self.input.in_copy()
            && !self.input.skips_to_sync()
            && self.flow.copy_may_start()
    }

    /// Processes every client frame that may go on now.
    pub(super) async fn process_client(&mut self) -> Result<(), End> {
        loop {
            if self.frames_must_wait() {
                return Ok(());
            }
            if self.copy_must_wait() {
                // The outcome must come even if the client sent no Sync or Flush before its
                // copy messages (PostgreSQL sends CopyInResponse at once, other replies only
                // when asked).
                if self.flow.take_flush_for_copy() {
                    messages::flush(&mut self.bout);
                    self.flow.sent(ft::FLUSH, Owner::Proxy);
                }
                return Ok(());
            }
            let frame = match split_frame(&mut self.cbuf, self.server.max_message()) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::ProtocolViolation(e.to_string())),
            };
            self.client_frame(frame).await?;
        }
    }

    /// One client message, step by step: what needs no SQL, the guard's reading, the
    /// deferred BEGIN, the refusals, a backend, the context, then the message itself.
    async fn client_frame(&mut self, frame: Frame) -> Result<(), End> {
        tracing::trace!(parent: &self.span(), tag = %(frame.tag as char), flow = ?self.flow, status = ?self.status, input = ?self.input, attached = self.attachment.is_attached(), "client frame");
        if self.consumed_without_sql(&frame)? {
            return Ok(());
        }
        if let Some(refusal) = self.redefinition(&frame) {
            let code = sqlstate::DUPLICATE_PREPARED_STATEMENT;
            return self
                .refuse(&frame, &Refusal::new(code, refusal, "statement"))
                .await;
        }
        if let Some(refusal) = self.statements_over_budget(&frame) {
            return self.refuse(&frame, &refusal).await;
        }
        let text = sql_text(&frame);
        if self.deallocate_locally(&frame, text) {
            return Ok(());
        }
        let analysis = match text {
            Some(text) => Some(self.read_text(&frame, text).await?),
            None => None,
        };
        let frame = match analysis.as_ref().filter(|a| a.names_channel) {
            Some(_) => match self.scope_channels(&frame) {
                Ok(scoped) => scoped.unwrap_or(frame),
                Err(refusal) => {
                    let code = sqlstate::FEATURE_NOT_SUPPORTED;
                    return self
                        .refuse(&frame, &Refusal::new(code, refusal.0, "channel"))
                        .await;
                }
            },
            None => frame,
        };
        let bound = (frame.tag == ft::BIND)
            .then(|| super::statements::bind_statement(frame.body()).unwrap_or_default());
        let setup = self.is_transaction_setup(analysis.as_ref(), bound);
        // A Query that sets the transaction up and goes on is sent in two (see `split`).
        let split = analysis.as_ref().and_then(|a| self.setup_split(&frame, a));
        let setup = setup || split.is_some();
        // Whether the request runs SQL that needs the context in front of it: not a BEGIN
        // or SET TRANSACTION (they must come before the injection's snapshot), and not a
        // Describe, Execute, Close, Sync or Flush (an injection between a Bind and its
        // Execute would replace the client's unnamed portal).
        let runs_sql = matches!(
            frame.tag,
            ft::QUERY | ft::PARSE | ft::BIND | ft::FUNCTION_CALL
        ) && !setup;
        if !self.attachment.is_attached() {
            if self.defer_begin(&frame) {
                return Ok(());
            }
            // A deferred BEGIN goes out (attaching a backend) ahead of what needs one.
            if self.attachment.is_deferred_begin()
                && !self.answers_locally(&frame)
                && !self.attach(&frame, setup).await?
            {
                return Ok(());
            }
        }
        let reading = analysis.as_ref().map(crate::policy::Reading::of);
        let judged = match self.judge(&frame, analysis, bound) {
            Ok(judged) => judged,
            Err(r) => return self.refuse(&frame, &r).await,
        };
        self.note_leftover(&frame, reading, bound);
        if !self.attachment.is_attached() && self.answer_locally(&frame) {
            return Ok(());
        }
        if !self.attach(&frame, setup).await? {
            return Ok(());
        }
        self.send_client_frame(frame, runs_sql, judged, split)
    }

    /// Handles what needs no SQL reading: skipping to Sync after an error, Terminate, COPY
    /// messages, Sync and Flush with no backend, unknown message types. True when `frame`
    /// is dealt with.
    fn consumed_without_sql(&mut self, frame: &Frame) -> Result<bool, End> {
        if self.input.skips_to_sync() {
            if frame.tag == ft::SYNC {
                self.input.sync_seen();
                messages::ready_for_query(&mut self.cout, self.status);
            }
            return Ok(true);
        }
        match frame.tag {
            ft::TERMINATE => Err(End::ClientTerminated),
            ft::COPY_DATA | ft::COPY_DONE | ft::COPY_FAIL => {
                // Outside COPY IN, PostgreSQL ignores copy messages; so do we.
                if self.input.client_copy_message(frame.tag) {
                    self.bout.extend_from_slice(&frame.raw);
                }
                Ok(true)
            }
            // Holding no backend, the proxy knows the answer: Idle, in the transaction a
            // deferred BEGIN opened, or in the one a failed proxy request aborted. Waiting
            // for a backend here could deadlock the pool (see `answers_locally`).
            ft::SYNC | ft::FLUSH if !self.attachment.is_attached() => {
                if frame.tag == ft::SYNC {
                    messages::ready_for_query(&mut self.cout, self.status);
                }
                Ok(true)
            }
            ft::SYNC if self.input.in_copy() => Ok(true),
            // After an extended-protocol error PostgreSQL ignores everything up to Sync;
            // so does the proxy (nothing is translated, refused or counted).
            _ if self.flow.backend_discards() && frame.tag != ft::SYNC => Ok(true),
            ft::QUERY
            | ft::PARSE
            | ft::BIND
            | ft::DESCRIBE
            | ft::EXECUTE
            | ft::CLOSE
            | ft::SYNC
            | ft::FLUSH
            | ft::FUNCTION_CALL => Ok(false),
            other => Err(End::ProtocolViolation(format!(
                "invalid frontend message type {other}"
            ))),
        }
    }

    /// Whether the request is a BEGIN / SET TRANSACTION (by its text, or the text of the
    /// statement a Bind names), which must reach PostgreSQL before the context.
    fn is_transaction_setup(
        &self,
        analysis: Option<&crate::policy::sql::Analysis>,
        bound: Option<&[u8]>,
    ) -> bool {
        match (analysis, bound) {
            (Some(a), _) => a.transaction_setup,
            (None, Some(name)) => self
                .statements
                .reading(name)
                .is_some_and(|r| r.transaction_setup),
            _ => false,
        }
    }

    /// The context in front of SQL, the end of context after COMMIT/ROLLBACK/RESET ALL,
    /// counters, then the client's message to the backend.
    fn send_client_frame(
        &mut self,
        frame: Frame,
        runs_sql: bool,
        judged: Judged,
        split: Option<crate::policy::setup::SetupSplit>,
    ) -> Result<(), End> {
        if runs_sql {
            self.inject(judged.no_txn_block);
        }
        // What runs after a COMMIT, ROLLBACK or RESET ALL sent in this frame has no context
        // (for a split Query: once its rest is sent), nor after what may end or reset the
        // session inside (DISCARD ALL, a DO block, a CALL), which is assumed to.
        let (ends, resets) = match frame.tag {
            ft::QUERY => (judged.clears_context, judged.resets_session),
            ft::EXECUTE => (
                std::mem::take(&mut self.clearing_portal),
                std::mem::take(&mut self.resetting_portal),
            ),
            _ => (false, false),
        };
        if (ends || resets) && split.is_none() {
            self.context.end_sent();
        }
        if resets {
            self.reset_sent();
        }
        if matches!(frame.tag, ft::QUERY | ft::EXECUTE | ft::FUNCTION_CALL) {
            self.pool.metrics.queries.inc();
            self.stats().queries.fetch_add(1, Ordering::Relaxed);
        }
        match split {
            Some(s) => self.forward_head(&frame, s, judged.clears_context),
            None => self.forward_client(frame)?,
        }
        self.emit_synthetic();
        Ok(())
    }

    /// Processes every complete backend frame read so far. The frames are read in place
    /// and the forwarded ones copied once into the client's output: no per-message split,
    /// reference count or allocation.
    pub(super) fn process_backend(&mut self) -> Result<(), End> {
        let Some(b) = self.attachment.conn_mut() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut b.conn().rbuf);
        let result = self.backend_frames(&rbuf);
        if let Ok(consumed) = result {
            rbuf.advance(consumed);
            // A long message gets room for all of it, not a read at a time.
            if let Ok(Some((_, total))) = peek_frame(&rbuf, crate::backend::MAX_BACKEND_MESSAGE)
                && total > rbuf.len()
            {
                rbuf.reserve(total - rbuf.len());
            }
        }
        if let Some(b) = self.attachment.conn_mut() {
            b.conn().rbuf = rbuf;
        }
        result.map(|_| ())
    }

    /// The backend name of a client's statement whose Parse the proxy sent for a Bind or
    /// Describe (the client's own Parse was answered without a backend, or ran on another
    /// one) when PostgreSQL refuses it for its text: an error of class 42 (syntax, an
    /// undefined table, type or function). PostgreSQL would have refused the client's Parse,
    /// so the name is free again (a driver naming statements by their text prepares it
    /// again); for a statement that was valid until a migration dropped what it names,
    /// PostgreSQL would keep the name and fail each Bind, and here the client must prepare
    /// it again. A Parse failing otherwise (a cancel, an aborted transaction) leaves it.
    #[inline]
    fn text_rejected(&self, tag: u8, body: &[u8]) -> Option<String> {
        if tag != bt::ERROR_RESPONSE {
            return None;
        }
        let name = self.flow.front_parse(Owner::ProxyForwardErrors)?;
        messages::parse_error_fields(body)
            .code
            .starts_with("42")
            .then(|| name.to_string())
    }

    /// Counts a backend message against the request it answers, and forgets the
    /// statements that request's failure (or skip) left undefined.
    #[inline]
    fn account(&mut self, tag: u8, body: &[u8]) -> Disposition {
        let rejected = self.text_rejected(tag, body);
        let disposition = self.flow.on_backend(tag);
        if let Some(name) = rejected {
            self.statements.forget_backend_name(&name);
        }
        tracing::trace!(parent: &self.span(), tag = %(tag as char), ?disposition, flow = ?self.flow, "backend frame");
        self.forget_failed_statements();
        disposition
    }

    /// Handles the complete frames at the start of `rbuf`; returns the bytes consumed.
    fn backend_frames(&mut self, rbuf: &[u8]) -> Result<usize, End> {
        let mut at = 0;
        loop {
            let (tag, total) = match peek_frame(&rbuf[at..], crate::backend::MAX_BACKEND_MESSAGE) {
                Ok(Some((tag, total))) if rbuf.len() - at >= total => (tag, total),
                Ok(_) => return Ok(at),
                Err(e) => return Err(End::BackendLost(e.to_string())),
            };
            let raw = &rbuf[at..at + total];
            at += total;
            let body = &raw[5..];
            match tag {
                bt::NOTIFICATION_RESPONSE => {
                    self.deliver_notifications(raw);
                    continue;
                }
                bt::PARAMETER_STATUS => {
                    let mut conn = self.attachment.conn_mut().map(|b| b.conn());
                    if let Some((k, v)) = conn.as_mut().and_then(|c| c.note_parameter(body)) {
                        if self.server.guard_enabled
                            && let Some(why) = crate::policy::unreadable_report(&k, &v)
                        {
                            return Err(End::Unreadable(why));
                        }
                        // Not the value the proxy brought the backend to: the client's own
                        // SQL changed how texts parse, perhaps ahead of a Parse the proxy
                        // already recorded under the old value.
                        if super::params::decides_parsing(&k)
                            && self.params.get(&k) != Some(v.as_str())
                            && let Some(c) = conn
                        {
                            c.statements.distrust();
                        }
                        self.params.observe(&k, &v);
                    }
                }
                bt::COPY_IN_RESPONSE => {
                    self.flow.copy_in_started();
                    self.input.copy_in_response();
                }
                _ => {}
            }
            let disposition = self.account(tag, body);
            if tag == bt::ERROR_RESPONSE {
                self.input.backend_error();
            }
            match disposition {
                Disposition::Forward => {
                    // Only the client's own commands say what it did to its session (the
                    // proxy's pipelined RESET must not mark the connection dirty).
                    if tag == bt::COMMAND_COMPLETE {
                        self.note_command(body);
                    }
                    if tag == bt::ERROR_RESPONSE {
                        if let Some(b) = self.attachment.conn_mut() {
                            b.conn().carry.on_error();
                        }
                        let fields = messages::parse_error_fields(body);
                        if fields.code == crate::protocol::sqlstate::QUERY_CANCELED {
                            let backend = self.attachment.conn_mut().map(|b| b.conn().key().pid);
                            tracing::debug!(parent: &self.span(), client = self.me.entry.cancel_pid, ?backend, "query canceled");
                        }
                        self.server.metrics.server_error(fields.code.as_bytes());
                        self.stats().errors.fetch_add(1, Ordering::Relaxed);
                        if matches!(fields.severity.as_str(), "FATAL" | "PANIC") {
                            // PostgreSQL closes the connection after it: the client has its
                            // answer, and the session ends with it.
                            self.cout.extend_from_slice(raw);
                            return Err(End::BackendEnded(fields.message));
                        }
                        if let Some(plain) = self.as_client_sees_it(&fields, raw) {
                            self.cout.extend_from_slice(&plain);
                            self.emit_synthetic();
                            continue;
                        }
                    }
                    self.cout.extend_from_slice(raw);
                    if tag == bt::READY_FOR_QUERY {
                        self.on_ready(body.first().copied());
                    }
                }
                Disposition::Swallow => {}
                Disposition::HeadDone => {
                    self.on_ready(body.first().copied());
                    self.send_rest();
                }
                Disposition::ProxyRequestFailed => {
                    self.proxy_request_failed(messages::parse_error_fields(body));
                    return Ok(at);
                }
            }
            self.emit_synthetic();
        }
    }

    /// The release rule's reading of `frame` (see [`crate::policy::sql::Leftover`]): what
    /// its text (`reading`), the statement a Bind names, or a function call may leave;
    /// accumulated until the backend is released. Keeps `reading` for a Parse to define.
    fn note_leftover(
        &mut self,
        frame: &Frame,
        reading: Option<crate::policy::Reading>,
        bound: Option<&[u8]>,
    ) {
        self.frame_reading = reading.unwrap_or(crate::policy::Reading {
            leftover: Leftover::Sweep,
            ..Default::default()
        });
        let mut left = reading.map_or(Leftover::Nothing, |r| r.leftover);
        if let Some(name) = bound {
            left = left.max(self.statements.leftover(name));
        }
        if frame.tag == ft::FUNCTION_CALL {
            // A function by OID: large objects only with the guard on, anything without.
            left = left.max(match self.server.guard_enabled {
                true => Leftover::Sweep,
                false => Leftover::Unseen,
            });
        }
        self.leftover = self.leftover.max(left);
    }

    fn on_ready(&mut self, status: Option<u8>) {
        self.status = status
            .and_then(TxStatus::from_byte)
            .unwrap_or(TxStatus::Idle);
        self.context.on_ready(self.status);
        if let Some(b) = self.attachment.conn_mut() {
            b.conn().carry.on_ready(self.status);
        }
        self.began = false;
        if self.status == TxStatus::Idle && self.flow.is_idle() {
            self.pool.metrics.transactions.inc();
            self.stats().transactions.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.txn_started.take() {
                self.pool
                    .metrics
                    .transaction_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
    }

    /// Learns from command tags what the client did to its session.
    fn note_command(&mut self, body: &[u8]) {
        let tag = messages::command_tag(body);
        let starts = |p: &[u8]| tag.starts_with(p);
        if crate::backend::carry::Carry::tag_unsettles(tag)
            && let Some(b) = self.attachment.conn_mut()
        {
            b.conn().carry.unsure();
        }
        if tag == b"BEGIN" || tag == b"START TRANSACTION" {
            self.began = true;
        }
        if starts(b"DISCARD") || starts(b"DEALLOCATE") {
            if let Some(b) = self.attachment.conn_mut() {
                let conn = b.conn();
                conn.prepared = crate::backend::injection::Own::NONE;
                conn.statements.clear();
            }
            if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                self.statements.clear();
            }
        }
        if starts(b"SET") || starts(b"RESET") || starts(b"DISCARD") {
            self.dirty = true;
            self.context.settings_changed();
        }
        if starts(b"LISTEN") || starts(b"PREPARE") || starts(b"DECLARE") || starts(b"DEALLOCATE") {
            self.dirty = true;
        }
        // What may end the state a pinned client keeps: look again at the transaction's end.
        if self.pin.is_some() && (starts(b"DROP") || starts(b"UNLISTEN") || starts(b"CLOSE")) {
            self.dirty = true;
        }
    }
}

/// The SQL text of a Query or Parse message (read once per message: the text can be long).
fn sql_text(frame: &Frame) -> Option<&[u8]> {
    let body = frame.body();
    match frame.tag {
        ft::QUERY => read_cstr(body).map(|(q, _)| q),
        ft::PARSE => read_cstr(body)
            .and_then(|(_, rest)| read_cstr(rest))
            .map(|(q, _)| q),
        _ => None,
    }
}
