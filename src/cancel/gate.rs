//! The per-backend half of cancel routing: the backend's cancel key and the count of cancels
//! on their way to it. Kept apart from the backend connection so that a client's registry
//! entry can point at it without the registry knowing about backends.

use std::net::SocketAddr;

/// Backend (pid, secret) for cancelling its running query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// Cancel requests being forwarded to one backend, and whether one ever left. PostgreSQL
/// drops a cancel that finds its backend idle, but one still on the way when the backend
/// runs another statement cancels that statement; so a backend a cancel was sent to is
/// never handed to another client, and one its client keeps runs nothing more until the
/// count is back to zero (every forwarding ends within [`super::FORWARD_WITHIN`]).
#[derive(Debug)]
pub struct CancelsInFlight {
    /// The backend these count for (what a cancel request for it carries).
    pub key: BackendKey,
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
    /// A cancel reached the wire for this backend: it is closed at release, never handed
    /// on, because nothing proves PostgreSQL has acted on it (an orderly close of the
    /// cancel connection can come from a proxy on the way before PostgreSQL read it).
    sent: std::sync::atomic::AtomicBool,
}

impl CancelsInFlight {
    /// No cancel yet for the backend with `key`.
    pub fn new(key: BackendKey) -> CancelsInFlight {
        CancelsInFlight {
            key,
            count: Default::default(),
            done: Default::default(),
            sent: Default::default(),
        }
    }

    /// A cancel is about to be sent.
    pub fn begin(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The forwarding of one cancel is over: delivered, never sent, or given up on (then
    /// [`Self::mark_sent`] keeps the connection from being reused).
    pub fn end(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.done.notify_waiters();
        }
    }

    /// A cancel left for PostgreSQL (delivered or not): the backend must not be reused.
    pub fn mark_sent(&self) {
        self.sent.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a cancel was ever sent to this backend.
    pub fn sent(&self) -> bool {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether any cancel is still on its way.
    pub fn any(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Waits up to `within` for every cancel in flight to be confirmed; true if they were.
    pub async fn settled(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.any() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.any();
            }
        }
    }
}
