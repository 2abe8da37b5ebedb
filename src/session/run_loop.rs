//! When a session runs: the relay while the client is busy, parking between
//! transactions (and the hand-over to the lot), and the reads both directions wait on.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::{CLIENT_IDLE, End, IDLE_IN_TRANSACTION, PINNED_IDLE, Session, buffers};
use crate::pool::PooledConn;
use crate::protocol::TxStatus;
use crate::registry::{ClientState, SessionSignal};
use crate::stream::ClientStream;

impl Session {
    /// What the client is doing, for the admin console and the state gauges.
    fn current_state(&self) -> ClientState {
        match self.attachment.conn() {
            // A deferred BEGIN: in a transaction as far as the client knows.
            None if self.status != TxStatus::Idle => ClientState::IdleInTransaction,
            None => ClientState::Idle,
            Some(_) if !self.flow.is_idle() => ClientState::Active,
            // Requests answered but not synced: the transaction is still open.
            Some(_) if !self.flow.is_settled() => ClientState::IdleInTransaction,
            Some(_) if self.status != TxStatus::Idle => ClientState::IdleInTransaction,
            Some(_) => ClientState::Idle,
        }
    }

    /// The timeout that applies while the client is silent in `state`, if any.
    fn silence_limit(&self, state: ClientState) -> Option<(std::time::Duration, &'static str)> {
        // The configuration is loaded only for the states that have a limit: a busy client
        // passes here several times per transaction.
        let (limit, kind) = match state {
            ClientState::IdleInTransaction => (
                self.server.config().server.idle_in_transaction_timeout,
                IDLE_IN_TRANSACTION,
            ),
            ClientState::Idle if self.pin.is_some() => {
                let cfg = self.server.config();
                if cfg.server.pinned_idle_timeout.is_zero() {
                    (cfg.server.client_idle_timeout, CLIENT_IDLE)
                } else {
                    (cfg.server.pinned_idle_timeout, PINNED_IDLE)
                }
            }
            ClientState::Idle => (self.server.config().server.client_idle_timeout, CLIENT_IDLE),
            _ => return None,
        };
        (!limit.is_zero()).then_some((limit, kind))
    }
}

/// Relays until the session ends. Between transactions a plain-TCP client is parked: its
/// task then waits in a future of a few dozen bytes, and the relay's larger state is
/// allocated only while the client is busy (once per transaction, not per message).
pub(super) async fn relay_loop(s: &mut Session) -> End {
    let mut stopping = s.server.is_shutting_down();
    loop {
        let woken = s.parkable();
        // The first park follows start-up, whose buffers are still held.
        s.release_idle_buffers();
        if woken && let Err(end) = park(s, stopping).await {
            return end;
        }
        if let Some(end) = Box::pin(relay_busy(s, &mut stopping, woken)).await {
            return end;
        }
    }
}

impl Session {
    /// True when nothing is in flight and nothing buffered: the client can be parked. TLS
    /// clients are not, since the TLS layer may hold decrypted bytes the socket no longer
    /// signals.
    fn parkable(&self) -> bool {
        !self.attachment.is_attached()
            && self.status == TxStatus::Idle
            && self.flow.is_settled()
            && self.cbuf.is_empty()
            && self.cout.is_empty()
            && !self.client.is_tls()
    }
}

/// Waits, holding nothing but the socket, for the client to send something; ends the
/// session on KILL, shutdown or the client idle timeout.
async fn park(s: &mut Session, stopping: bool) -> Result<(), End> {
    if stopping {
        return Err(End::Shutdown);
    }
    s.me.set_state(ClientState::Idle);
    let deadline = s
        .silence_limit(ClientState::Idle)
        .map(|(limit, _)| tokio::time::Instant::now() + limit);
    // Boxed, and only when configured: a timer is larger than the rest of the wait.
    let mut timer = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    let idle_timeout = async {
        match timer.as_mut() {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    let Some(tcp) = s.client.tcp() else {
        return Err(End::ClientClosed);
    };
    let signal = &s.me.entry.signal;
    // Raised by the lot's sweep once the client has been idle a while; a raise from a
    // previous idle period must not count.
    signal.clear(SessionSignal::PARK);
    tokio::select! {
        biased;
        raised = signal.wait(SessionSignal::ENDING | SessionSignal::PARK) => Err(
            if raised & SessionSignal::KILL != 0 {
                End::Killed
            } else if raised & SessionSignal::SHUTDOWN != 0 {
                End::Shutdown
            } else {
                End::Parked(deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now())))
            }
        ),
        r = client_readable(tcp) => r.map_err(End::ClientIo),
        _ = idle_timeout => Err(End::Timeout(CLIENT_IDLE)),
    }
}

/// Resolves when the client sends something (or closes). The readiness left from the last
/// read may be stale, so it is first cleared by a non-blocking peek that finds nothing.
async fn client_readable(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let peek = || {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        socket2::SockRef::from(tcp).peek(&mut byte)
    };
    match tcp.try_io(tokio::io::Interest::READABLE, peek) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.readable().await,
        Err(e) => Err(e),
    }
}

/// The relay while the client is busy: returns None once it can be parked again. `woken`:
/// the client just became readable, so it is read before it may be parked again.
async fn relay_busy(s: &mut Session, stopping: &mut bool, mut woken: bool) -> Option<End> {
    let entry = s.me.entry.clone();
    let mask =
        |stopping: bool| SessionSignal::KILL | if stopping { 0 } else { SessionSignal::SHUTDOWN };
    // Kept across iterations: waiting on it then costs one atomic load per wake-up.
    let signal = entry.signal.wait(mask(*stopping));
    tokio::pin!(signal);
    loop {
        if let Err(end) = s.process_client().await {
            return Some(end);
        }
        if let Err(end) = s.flush().await {
            return Some(end);
        }
        if let Err(end) = s.maybe_release().await {
            return Some(end);
        }
        // What the release's own exchange with the backend brought (a notification that
        // arrived meanwhile) goes out now, not at the client's next wake-up.
        if !s.cout.is_empty()
            && let Err(end) = s.flush().await
        {
            return Some(end);
        }
        if s.client.is_tls() {
            // Never parked: released here instead, between transactions.
            s.release_idle_buffers();
        }
        // A pinned client between transactions is idle too: it ends with the others (one
        // in a deferred transaction is not between transactions).
        let between = s.attachment.is_detached()
            || (s.pin.is_some() && s.flow.is_settled() && s.status == TxStatus::Idle);
        if *stopping && between {
            return Some(End::Shutdown);
        }
        if entry.is_killed() {
            return Some(End::Killed);
        }
        if s.parkable() && !std::mem::take(&mut woken) {
            return None;
        }
        let state = s.current_state();
        s.me.set_state(state);
        let silence = s.silence_limit(state);
        let timer = async {
            match silence {
                Some((limit, _)) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        // A frame waiting for a ReadyForQuery stops the reads only once a little more is
        // buffered behind it: so a client that leaves while its request waits is seen to
        // leave (and its backend closed), whatever the wait is for.
        let read_client = !s.has_blocked_frame() || s.cbuf.len() < READ_AHEAD;
        let backend = s.attachment.conn_mut();
        tokio::select! {
            // Fixed order (no per-iteration random start): the backend's replies first, so
            // a transaction finishes before the client's next request is looked at.
            biased;
            raised = &mut signal => {
                if raised & SessionSignal::KILL != 0 {
                    return Some(End::Killed);
                }
                *stopping = true;
                signal.set(entry.signal.wait(mask(true)));
            }
            r = read_backend(backend) => match r {
                Ok(()) => {
                    if let Err(end) = s.process_backend() {
                        return Some(end);
                    }
                }
                Err(e) => return Some(End::BackendLost(e)),
            },
            r = read_client_bytes(&mut s.client, &mut s.cbuf), if read_client => match r {
                Ok(0) => return Some(End::ClientClosed),
                Ok(n) => {
                    s.server.metrics.client_received_bytes.inc_by(n as u64);
                    // Before more of a large message is read (see `large`).
                    if let Err(end) = s.budget_large_message() {
                        return Some(end);
                    }
                    // A request is coming: room for what goes to the backend and back.
                    buffers::fill(&mut s.bout);
                    buffers::fill(&mut s.cout);
                }
                Err(e) => return Some(End::ClientIo(e)),
            },
            _ = timer => {
                return Some(End::Timeout(silence.map(|(_, k)| k).unwrap_or(CLIENT_IDLE)));
            }
        }
    }
}

/// Client bytes read beyond a frame that must wait (see `relay_busy`), at most.
const READ_AHEAD: usize = 64 * 1024;

/// Reads more client bytes. A plain socket with released buffers waits for data before
/// allocating any, so an idle client holds no read buffer and a read is never cut into
/// 64-byte pieces. Cancel safe.
async fn read_client_bytes(
    client: &mut ClientStream,
    cbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    if cbuf.capacity() == 0
        && let ClientStream::Plain(tcp) = client
    {
        tcp.readable().await?;
        buffers::fill(cbuf);
    }
    client.read_buf(cbuf).await
}

/// True when `rbuf` starts with a complete message (or bytes that cannot start one, which
/// the frame handling then reports).
fn holds_frame(rbuf: &[u8]) -> bool {
    match crate::protocol::codec::peek_frame(rbuf, crate::backend::MAX_BACKEND_MESSAGE) {
        Ok(Some((_, total))) => total <= rbuf.len(),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Reads more backend bytes; pending forever when no backend is attached.
async fn read_backend(backend: Option<&mut PooledConn>) -> Result<(), String> {
    match backend {
        Some(b) => {
            let c = b.conn();
            // Frames already read (after the proxy's own exchange stopped at its
            // ReadyForQuery, say) are handled before waiting for more: a notification there
            // must not wait for the next byte from PostgreSQL.
            if holds_frame(&c.rbuf) {
                return Ok(());
            }
            match c.stream.read_buf(&mut c.rbuf).await {
                Ok(0) => Err("backend closed the connection".into()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        None => std::future::pending().await,
    }
}
