//! One connection from the proxy to PostgreSQL: its socket, read buffer, the session
//! parameters it currently has, and helpers for the proxy's own request/response exchanges.

pub mod carry;
mod connect;
pub mod injection;
pub mod statements;

use std::collections::HashMap;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

pub use connect::BackendTarget;

use crate::cancel::{BackendKey, CancelsInFlight};
use crate::protocol::codec::{Frame, FrameError, split_frame};
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::{TxStatus, backend_tag as bt};
use crate::stream::BackendStream;

/// A new seed for `random()` from PostgreSQL's strong random source (52 bits of
/// `gen_random_uuid()`): DISCARD ALL leaves a `setseed()` in force, so a session's previous
/// user could otherwise predict the next one's values and count how many it drew.
const RESEED: &str = "SELECT pg_catalog.setseed(('x' OPERATOR(pg_catalog.||) \
    pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 13))::bit(52)::int8 \
    OPERATOR(pg_catalog./) 4503599627370496.0)";

/// Largest message accepted from PostgreSQL (its own limit for a field is 1 GiB).
pub const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("I/O error on backend connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend closed the connection")]
    Closed,
    #[error("backend sent an invalid message: {0}")]
    Framing(#[from] FrameError),
    #[error("backend protocol error: {0}")]
    Protocol(String),
    #[error("backend TLS: {0}")]
    Tls(String),
    #[error("backend authentication failed: {0}")]
    Auth(String),
    #[error("backend error {}: {}", .0.code, .0.message)]
    Server(ErrorFields),
    /// A role or database default made the connection's client_encoding one the guard
    /// cannot read SQL in; the connector retries with the server's encoding.
    #[error("a role or database default sets an unreadable client_encoding")]
    UnreadableDefault { server_encoding: String },
}

/// A client parameter set a connection already matches, opaque here: the session defines
/// the set and compares it by identity. Holding it keeps the set alive, so its address is
/// not reused for another set while the match stands.
#[derive(Clone)]
pub struct MatchedParams(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for MatchedParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatchedParams")
    }
}

impl MatchedParams {
    /// Whether this match is for the set `set` points at.
    pub fn is<T>(&self, set: &std::sync::Arc<T>) -> bool {
        std::ptr::addr_eq(std::sync::Arc::as_ptr(&self.0), std::sync::Arc::as_ptr(set))
    }
}

/// An established, authenticated backend connection.
#[derive(Debug)]
pub struct BackendConn {
    pub stream: BackendStream,
    pub rbuf: BytesMut,
    /// Session parameters as the backend has them: reported ones from ParameterStatus, and
    /// unreported ones the proxy set itself.
    pub params: HashMap<String, String>,
    /// The unreported names in `params` (what a later client may have to reset), so that
    /// attaching need not sort the reported ones out every time.
    pub unreported: Vec<String>,
    /// Reported parameters as the server set them at connection start (its defaults).
    pub defaults: HashMap<String, String>,
    /// The client parameter set `params` last matched exactly (nothing to apply for it);
    /// dropped whenever `params` or `unreported` change.
    pub params_match: Option<MatchedParams>,
    /// Which of the proxy's statements exist on this connection.
    pub prepared: injection::Own,
    /// The proxy's statements, to prepare what is missing.
    own: std::sync::Arc<injection::OwnStatements>,
    /// Session-level context was set (for a statement that cannot run in a transaction
    /// block); it must be reset before anyone else uses this connection.
    pub session_context: bool,
    /// Verified mode: the last tenant's injection on this connection (its proof is bound
    /// to this backend's pid).
    pub context_cache: Option<injection::ContextCache>,
    /// Verified mode with `context.carry`: which tenant's context the session holds
    /// between transactions.
    pub carry: carry::Carry,
    /// Verified mode: the tenant (definition serial) whose client used this backend last;
    /// another tenant gets it only after it was emptied (see [`crate::pool::PooledConn::serve_tenant`]).
    pub tenant: Option<u64>,
    /// What the last release left owed: the next user pipelines it ahead of everything it
    /// sends (see [`crate::pool::PooledConn::release`]).
    pub owed: Owed,
    /// Client statements prepared here under proxy-owned names.
    pub statements: statements::BackendStatements,
    /// NotificationResponses that arrived during the proxy's own exchanges (whole
    /// messages), for the attached client to receive.
    pub held_notifications: BytesMut,
    /// Cancels forwarded to this connection and not yet confirmed delivered.
    pub cancels: std::sync::Arc<CancelsInFlight>,
    pub created: Instant,
    pub last_used: Instant,
    pub id: u64,
}

/// Cleanup a release leaves for the connection's next user to send ahead of its first
/// message, so it costs no round trip of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Owed {
    /// Nothing (a new connection, or one that had DISCARD ALL).
    #[default]
    Nothing,
    /// Forget session state no client statement names: sequence values (`lastval()`, set
    /// by any INSERT into a serial column) and temp objects (`pg_temp.x`, or created
    /// inside a function).
    Sweep,
    /// RESET the context settings too (`reset_on_release = "always"`).
    ResetAndSweep,
}

impl BackendConn {
    /// The backend's cancel key (kept with its cancel count, which a client's slot points
    /// at).
    pub fn key(&self) -> BackendKey {
        self.cancels.key
    }

    /// Reads the next complete message. Cancel safe only if the caller keeps `self`.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            if let Some(f) = split_frame(&mut self.rbuf, MAX_BACKEND_MESSAGE)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(BackendError::Closed);
            }
        }
    }

    /// Makes the connection fit for its next client: forgets notifications (the LISTEN
    /// they answer was the last client's) and notices left in its buffers, applies the
    /// settings it reported, and returns false when anything else, or part of a message,
    /// is left (the connection must then be closed, not handed on).
    pub fn settle_async(&mut self) -> bool {
        self.held_notifications.clear();
        loop {
            match split_frame(&mut self.rbuf, MAX_BACKEND_MESSAGE) {
                Ok(Some(f)) => match f.tag {
                    bt::NOTIFICATION_RESPONSE | bt::NOTICE_RESPONSE => {}
                    bt::PARAMETER_STATUS => {
                        self.note_parameter(f.body());
                    }
                    _ => return false,
                },
                Ok(None) => return self.rbuf.is_empty(),
                Err(_) => return false,
            }
        }
    }

    /// After DISCARD ALL: the backend reported every changed reported parameter; the
    /// unreported ones the proxy had set are back to their defaults, which the proxy does
    /// not know.
    pub fn forget_unreported(&mut self) {
        self.params_match = None;
        for k in self.unreported.drain(..) {
            self.params.remove(&k);
        }
    }

    /// Empties the session before another tenant uses it, or after a transaction that may
    /// have left session state: DISCARD ALL (PostgreSQL's own complete reset; its DISCARD
    /// PLANS matters too, as a cached plan keeps constants fixed under the settings of
    /// whoever planned it, a timestamptz literal under its TimeZone), then [`RESEED`]. Two
    /// Query messages in one round trip; an error in either closes the backend.
    pub async fn empty_session(&mut self) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, "DISCARD ALL");
        messages::query(&mut out, RESEED);
        self.exchange_until(&out, 2, None).await?;
        self.discarded();
        Ok(())
    }

    /// [`BackendConn::empty_session`] ran: the session holds nothing of its earlier users (prepared
    /// statements, settings, temp objects, notifications, the carried context), so it
    /// belongs to no tenant.
    pub fn discarded(&mut self) {
        self.prepared = injection::Own::NONE;
        self.statements.clear();
        self.forget_unreported();
        self.owed = Owed::Nothing;
        self.session_context = false;
        self.carry = carry::Carry::Empty;
        self.held_notifications.clear();
        self.tenant = None;
    }

    /// Appends Close + Parse of the proxy's statements in `need` that this session lacks,
    /// ahead of the messages that use them; returns how many (each two messages whose
    /// replies are the proxy's).
    pub fn prepare_own(&mut self, need: injection::Own, out: &mut BytesMut) -> usize {
        self.own.prepare_missing(&mut self.prepared, need, out)
    }

    /// Records a ParameterStatus the backend sent.
    pub fn note_parameter(&mut self, body: &[u8]) -> Option<(String, String)> {
        let (name, value) = messages::parse_parameter_status(body)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        self.params.insert(name.clone(), value.clone());
        self.params_match = None;
        Some((name, value))
    }

    /// Sends `out` and reads until ReadyForQuery, collecting DataRows as text. Used only for
    /// the proxy's own housekeeping, never on a client's behalf.
    pub async fn exchange(&mut self, out: &[u8]) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.exchange_until(out, 1, None).await
    }

    /// [`BackendConn::exchange`] that keeps the NoticeResponses it reads (whole messages)
    /// in `notices`: a client's start-up settings, applied on its behalf, get the notices
    /// PostgreSQL's own start-up would have sent it.
    pub async fn exchange_keeping_notices(
        &mut self,
        out: &[u8],
        notices: &mut BytesMut,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.exchange_until(out, 1, Some(notices)).await
    }

    /// [`BackendConn::exchange`] of `out` holding `readies` requests that each end with
    /// ReadyForQuery (Query messages, Syncs): reads through all of them, and fails if any
    /// failed.
    async fn exchange_until(
        &mut self,
        out: &[u8],
        mut readies: usize,
        mut notices: Option<&mut BytesMut>,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.stream.send(out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                bt::DATA_ROW => rows.push(decode_data_row(f.body())),
                bt::PARAMETER_STATUS => {
                    self.note_parameter(f.body());
                }
                bt::NOTIFICATION_RESPONSE => self.held_notifications.extend_from_slice(&f.raw),
                bt::NOTICE_RESPONSE => {
                    if let Some(n) = notices.as_deref_mut() {
                        n.extend_from_slice(&f.raw);
                    }
                }
                bt::ERROR_RESPONSE => {
                    error = error.or(Some(messages::parse_error_fields(f.body())));
                }
                bt::READY_FOR_QUERY => {
                    if f.body().first().copied().and_then(TxStatus::from_byte)
                        != Some(TxStatus::Idle)
                    {
                        return Err(BackendError::Protocol(
                            "housekeeping left a transaction open".into(),
                        ));
                    }
                    readies -= 1;
                    if readies > 0 {
                        continue;
                    }
                    if let Some(e) = error {
                        return Err(BackendError::Server(e));
                    }
                    return Ok(rows);
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` with the simple protocol and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.exchange(&out).await
    }

    /// True when the idle socket is still healthy: no EOF and no unsolicited bytes (such as
    /// a FATAL sent because the server is shutting down).
    pub fn is_healthy_idle(&self) -> bool {
        self.stream.is_quiet()
    }
}

fn decode_data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = (len as usize).min(rest.len());
        out.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
        rest = &rest[len..];
    }
    out
}
