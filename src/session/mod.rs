//! One authenticated client: the transaction-pooling relay. Client frames are forwarded
//! untouched; at each transaction start a backend is checked out and the tenant's
//! precomputed context injection goes out in the same write as the client's first message;
//! when the backend reports ReadyForQuery(Idle) the connection is released.

mod attach;
pub mod attachment;
mod buffers;
pub mod channels;
pub mod context;
mod deferred;
mod duplex;
pub mod flow;
mod guard;
pub mod handover;
pub mod input;
mod large;
pub mod lot;
pub mod params;
mod pin;
mod prepared;
mod reading;
mod recover;
mod relay;
mod run_loop;
mod split;
mod startup;
pub mod statements;

use std::fmt;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::pool::Pool;
use crate::protocol::TxStatus;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::registry::{ClientHandle, TenantStats};
use crate::shared::Server;
use crate::stream::ClientStream;
use crate::tenant::Tenant;
use attachment::Attachment;
use flow::Flow;
use handover::{Fatal, Startup};
use input::InputMode;
use params::ClientParams;

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientTerminated,
    ClientClosed,
    ClientIo(std::io::Error),
    BackendLost(String),
    /// The backend ended the session with a FATAL (or PANIC) of its own, already passed on
    /// to the client: nothing more is said, as PostgreSQL says nothing more.
    BackendEnded(String),
    ProtocolViolation(String),
    Shutdown,
    /// KILL from the admin console.
    Killed,
    /// A reload removed the client's tenant or database.
    Removed(&'static str),
    /// The client sent nothing for too long (the timeout's metric label).
    Timeout(&'static str),
    /// The backend reported a setting under which the guard cannot read SQL as PostgreSQL
    /// does (`standard_conforming_strings=off`, a client-only encoding): FATAL, and the
    /// backend is closed, before another statement runs.
    Unreadable(String),
    /// Memory the proxy will not give one more large message (FATAL 53200).
    OutOfMemory(String),
    /// Not an end: the idle session moves to the lot (with its idle timeout left, if any).
    Parked(Option<std::time::Duration>),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientTerminated => write!(f, "client sent Terminate"),
            End::ClientClosed => write!(f, "client closed the connection"),
            End::ClientIo(e) => write!(f, "client I/O error: {e}"),
            End::BackendLost(e) => write!(f, "backend connection lost: {e}"),
            End::BackendEnded(m) => write!(f, "backend ended the session: {m}"),
            End::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            End::OutOfMemory(m) => write!(f, "{m}"),
            End::Shutdown => write!(f, "server shutting down"),
            End::Killed => write!(f, "killed by an administrator"),
            End::Removed(what) => write!(f, "its {what} was removed from the configuration"),
            End::Timeout(kind) => write!(f, "{kind} timeout"),
            End::Parked(_) => write!(f, "parked outside the runtime"),
            End::Unreadable(m) => write!(f, "backend reported {m}"),
        }
    }
}

/// State of one client session.
pub struct Session {
    server: Arc<Server>,
    client: ClientStream,
    /// Bytes read from the client and not yet processed.
    cbuf: BytesMut,
    /// Bytes to write to the client.
    cout: BytesMut,
    /// Bytes to write to the backend.
    bout: BytesMut,
    /// The backend serving the session, or a deferred BEGIN, or neither.
    attachment: Attachment,
    flow: Flow,
    tenant: Arc<Tenant>,
    pool: Arc<Pool>,
    params: ClientParams,
    /// Transaction status from the last ReadyForQuery (Idle while detached).
    status: TxStatus,
    /// Whether the backend's current transaction carries the tenant context.
    context: context::Context,
    /// The portal last bound clears the context (COMMIT, ROLLBACK, RESET ALL, ...).
    clearing_portal: bool,
    /// The portal last bound drops what the proxy keeps in the session (DISCARD ALL, ...).
    resetting_portal: bool,
    /// The client's transaction was lost with a backend whose proxy request failed: the
    /// next backend gets an aborted transaction, so PostgreSQL answers as it would.
    aborted_elsewhere: bool,
    /// The client opened a transaction since the last ReadyForQuery (its status is not
    /// known yet).
    began: bool,
    /// The client may have left session state on the attached backend.
    dirty: bool,
    /// What the texts run since the backend was attached may have left that no statement
    /// names (the release rule, see [`crate::policy::sql::Leftover`]).
    leftover: crate::policy::sql::Leftover,
    /// What the guard read in the text of the frame being handled (recorded with the
    /// statement a Parse defines).
    frame_reading: crate::policy::Reading,
    /// The client keeps session state: its backend stays attached between transactions.
    /// Boxed: most clients never pin, and an idle client's session must stay within
    /// mimalloc's 384-byte size class.
    pin: Option<Box<pin::Pin>>,
    /// Relaying the client's frames, skipping them to its Sync, or COPY IN.
    input: InputMode,
    /// The shared budget's bytes held for a large message being read (see [`large`]).
    large: Option<Box<large::Reservation>>,
    /// The client's named and unnamed prepared statements.
    statements: statements::ClientStatements,
    /// The client's unnamed statement exists on the attached backend.
    unnamed_on_backend: bool,
    /// The client's unnamed statement is an SQL DEALLOCATE of one of its own statements,
    /// answered by the proxy (see `Session::deallocate_locally`): its Bind, Describe and
    /// Execute are answered too.
    local_dealloc: bool,
    /// This client's registration (state, kill signal, tenant counters).
    me: ClientHandle,
    /// When the current transaction started (its duration metric).
    txn_started: Option<std::time::Instant>,
    /// The rest of a simple Query split after its transaction setup, sent once the setup
    /// has run (see [`split`]).
    /// Boxed: rare, and an idle client's session must stay within mimalloc's 384-byte size
    /// class (see the `size` test).
    split_rest: Option<Box<split::Rest>>,
    /// The client's place under `max_client_connections`, freed with the session.
    slot: Option<crate::shared::ClientSlot>,
}

impl Session {
    /// Applies the client's startup settings on a backend, reports the resulting parameters
    /// and the cancel key, and returns a session ready to relay.
    pub async fn start(
        server: Arc<Server>,
        client: ClientStream,
        s: Startup,
        me: ClientHandle,
    ) -> Result<Box<Session>, (ClientStream, Fatal)> {
        // Boxed: a session outlives every await of its task, and idle clients are many.
        let mut session = Box::new(Session {
            me,
            txn_started: None,
            large: None,
            client,
            cbuf: s.leftover,
            cout: BytesMut::new(),
            bout: BytesMut::new(),
            attachment: Attachment::Detached,
            flow: Flow::default(),
            tenant: s.tenant,
            pool: s.pool,
            params: ClientParams::from_startup(s.settings),
            status: TxStatus::Idle,
            context: Default::default(),
            clearing_portal: false,
            resetting_portal: false,
            aborted_elsewhere: false,
            began: false,
            dirty: false,
            leftover: Default::default(),
            frame_reading: Default::default(),
            pin: None,
            input: InputMode::Normal,
            statements: Default::default(),
            unnamed_on_backend: false,
            local_dealloc: false,
            split_rest: None,
            slot: None,
            server,
        });
        match session.initial_parameters().await {
            Ok(()) => Ok(session),
            Err(f) => Err((session.client, f)),
        }
    }

    /// Writes the replies gathered for the client.
    async fn send_to_client(&mut self) -> Result<(), End> {
        if !self.cout.is_empty() {
            self.client.send(&self.cout).await.map_err(End::ClientIo)?;
            self.server
                .metrics
                .client_sent_bytes
                .inc_by(self.cout.len() as u64);
            self.cout.clear();
        }
        Ok(())
    }

    /// Sends an ERROR to the client (the connection stays open).
    fn client_error(&mut self, code: &str, message: &str) {
        messages::error_response(&mut self.cout, Severity::Error, code, message);
    }

    /// Writes pending bytes: requests to the backend first (reading its replies while it
    /// takes no more, see [`duplex`]), then replies to the client.
    async fn flush(&mut self) -> Result<(), End> {
        if !self.bout.is_empty() {
            self.send_to_backend().await?;
        }
        self.send_to_client().await?;
        trim(&mut self.cout);
        trim(&mut self.bout);
        if self.cbuf.is_empty() {
            trim(&mut self.cbuf);
        }
        Ok(())
    }
}

impl Session {
    /// Between transactions, gives every per-connection buffer back (to the thread's spares
    /// or the allocator), so thousands of idle clients cost little memory.
    fn release_idle_buffers(&mut self) {
        if self.attachment.is_attached() || !self.flow.is_settled() {
            return;
        }
        for buf in [&mut self.cbuf, &mut self.cout, &mut self.bout] {
            buffers::recycle(buf);
        }
        self.flow.shrink();
    }

    /// The tenant's counters (kept with the client's identity, not copied into every
    /// session).
    fn stats(&self) -> &Arc<TenantStats> {
        stats_of(&self.me)
    }

    /// Keeps the client's admission slot until the session ends.
    pub fn hold(&mut self, slot: crate::shared::ClientSlot) {
        self.slot = Some(slot);
    }
}

impl Session {
    /// The client's span (id, address, tenant) for one log event, made only when the event
    /// is logged. A span held for the session's life would be entered and left on every
    /// wake-up: 7 % of pgtenant's instructions per TPC-B-like transaction at the default
    /// `info` level (benches/RESULTS.md), and memory per idle client.
    pub(super) fn span(&self) -> tracing::Span {
        let e = &self.me.entry;
        tracing::info_span!("client", id = e.id, addr = %e.addr, tenant = self.tenant.name.as_str())
    }
}

/// Frees a large buffer once it is empty, so idle clients hold little memory.
fn trim(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 64 * 1024 {
        *buf = BytesMut::new();
    }
}

/// Drives a session until it ends, or until it moves to the lot while idle (a task that
/// resumes it calls this again).
pub async fn drive(mut s: Box<Session>, mut wake: lot::Wake) {
    loop {
        let end = match wake {
            lot::Wake::IdleTimeout => finish(&mut s, End::Timeout(CLIENT_IDLE)).await,
            lot::Wake::Ready => run(&mut s).await,
        };
        let End::Parked(idle_left) = end else {
            tracing::info!(parent: &s.span(), reason = %end, "client disconnected");
            return;
        };
        match lot::park(s, idle_left) {
            Ok(()) => return,
            Err(back) => (s, wake) = (back, lot::Wake::Ready),
        }
    }
}

/// The counters of the tenant of the client `me` (one shared set for clients not yet
/// logged in).
fn stats_of(me: &ClientHandle) -> &Arc<TenantStats> {
    static UNCOUNTED: std::sync::LazyLock<Arc<TenantStats>> =
        std::sync::LazyLock::new(Arc::default);
    me.entry.identity().map_or(&UNCOUNTED, |i| &i.stats)
}

/// Relays until the client leaves (then returns the backend, cleaned, or closes it) or
/// can be parked outside the runtime.
pub async fn run(s: &mut Session) -> End {
    match run_loop::relay_loop(s).await {
        End::Parked(left) => End::Parked(left),
        end => finish(s, end).await,
    }
}

/// Tells the client why its session ends, closes it and detaches the backend.
async fn finish(s: &mut Session, end: End) -> End {
    match &end {
        End::BackendLost(_) => messages::error_response(
            &mut s.cout,
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        ),
        End::ProtocolViolation(m) => {
            s.server
                .metrics
                .protocol_errors
                .with_label_values(&["bad_message"])
                .inc();
            messages::error_response(
                &mut s.cout,
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                m,
            )
        }
        End::OutOfMemory(m) => {
            messages::error_response(&mut s.cout, Severity::Fatal, sqlstate::OUT_OF_MEMORY, m)
        }
        End::Unreadable(m) => messages::error_response(
            &mut s.cout,
            Severity::Fatal,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            &format!(
                "terminating connection: the server reports {m}, under which pgtenant's guard cannot read SQL as PostgreSQL does"
            ),
        ),
        End::Shutdown | End::Killed => messages::error_response(
            &mut s.cout,
            Severity::Fatal,
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        ),
        End::Removed(what) => messages::error_response(
            &mut s.cout,
            Severity::Fatal,
            sqlstate::ADMIN_SHUTDOWN,
            &format!(
                "terminating connection: its {what} was removed from the pgtenant configuration"
            ),
        ),
        End::Timeout(kind) => {
            s.server
                .metrics
                .client_timeouts
                .with_label_values(&[kind])
                .inc();
            let (code, message) = if *kind == IDLE_IN_TRANSACTION {
                (
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout",
                )
            } else {
                (
                    sqlstate::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout",
                )
            };
            messages::error_response(&mut s.cout, Severity::Fatal, code, message)
        }
        _ => {}
    }
    if !s.cout.is_empty() {
        let _ = s.client.send(&s.cout).await;
    }
    let _ = s.client.shutdown().await;
    s.detach_on_end(&end);
    end
}

/// Metric label of the idle-in-transaction timeout.
const IDLE_IN_TRANSACTION: &str = "idle_in_transaction";
/// Metric label of the idle timeout of a pinned client.
const PINNED_IDLE: &str = "pinned_idle";
/// Metric label of the client idle timeout.
const CLIENT_IDLE: &str = "client_idle";
#[cfg(test)]
mod size {
    /// A parked client's memory is mostly its boxed Session: past 384 bytes, mimalloc puts
    /// it in the 448-byte size class, 64 bytes more per idle client (benches/idle.sh).
    #[test]
    fn an_idle_session_fits_mimallocs_384_byte_class() {
        let size = std::mem::size_of::<super::Session>();
        assert!(
            size <= 384,
            "Session is {size} bytes: box what idle clients rarely use"
        );
    }
}
