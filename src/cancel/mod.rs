//! Cancel routing. Every client gets a proxy-issued (pid, secret) pair (issued with its
//! registry entry, which also finds it by that pid); a CancelRequest carrying it is
//! forwarded to whichever backend serves that client at that moment, and is ignored when
//! the client is idle or the key is unknown. Keys are random, so one tenant
//! cannot guess another's. A backend that a cancel was sent to is closed when its client
//! releases it, never handed to anyone else: PostgreSQL never acknowledges a cancel, and the
//! close of the cancel connection can come from anything on the way before PostgreSQL read
//! it (see [`CancelsInFlight`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod gate;

pub use gate::{BackendKey, CancelsInFlight};

/// How long a forwarded cancel may take to be confirmed before the backend it targets is
/// given up (closed at its next release instead of reused).
const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// The longest one forwarding takes (connect, then wait for the close), after which its
/// count in [`CancelsInFlight`] is always back down.
pub const FORWARD_WITHIN: Duration = Duration::from_secs(2 * CONFIRM_WITHIN.as_secs() + 1);

/// The secret half of a client's cancel key; never shown (its Debug is redacted).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CancelSecret(pub i32);

impl std::fmt::Debug for CancelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelSecret(..)")
    }
}

/// Where a client's running query can be cancelled right now. Part of the client's registry
/// entry (one allocation per client, not two), so it holds only a pointer: the backend's
/// key lives in its [`CancelsInFlight`].
#[derive(Debug, Default)]
pub struct CancelSlot {
    current: Mutex<Option<Arc<CancelsInFlight>>>,
}

impl CancelSlot {
    /// Records the backend now serving the client (its cancel gate).
    pub fn attach(&self, gate: &Arc<CancelsInFlight>) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some(gate.clone());
        }
    }

    /// Forgets the backend: the client is detached. Call before the backend is released,
    /// so a cancel either counted itself in flight on it already or finds no target.
    pub fn detach(&self) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = None;
        }
    }

    /// The backend to cancel, counted in flight on it under the same lock that
    /// [`Self::detach`] takes, so a release after detach always sees the count.
    fn begin_cancel(&self) -> Option<Arc<CancelsInFlight>> {
        let cur = self.current.lock().ok()?;
        let gate = cur.as_ref()?;
        gate.begin();
        Some(gate.clone())
    }

    /// Forwards a cancel to the backend serving the client of this slot (`pid`: the
    /// client's cancel key, for the log); returns whether PostgreSQL confirmed it (closed
    /// the cancel connection after signalling the backend).
    pub async fn cancel(&self, pid: i32) -> bool {
        let Some(gate) = self.begin_cancel() else {
            tracing::debug!(
                client = pid,
                "cancel request for no running transaction: ignored"
            );
            return false;
        };
        let target = gate.key;
        tracing::debug!(client = pid, backend = target.pid, "cancel begins");
        let delivery = forward(target).await;
        tracing::debug!(
            client = pid,
            backend = target.pid,
            ?delivery,
            "cancel forwarded"
        );
        match delivery {
            Delivery::NotSent => {
                gate.end();
                false
            }
            // PostgreSQL closed the connection after signalling the backend, or seemed to:
            // either way the backend is closed at its release, never handed on.
            Delivery::Confirmed => {
                gate.mark_sent();
                gate.end();
                true
            }
            // Sent, perhaps, but not confirmed: it may still arrive, so the backend is
            // closed at its release instead of handed on. The forwarding itself is over.
            Delivery::Unknown => {
                gate.mark_sent();
                gate.end();
                false
            }
        }
    }
}

/// What became of one forwarded cancel.
#[derive(Debug)]
enum Delivery {
    /// PostgreSQL read it and closed the connection: the backend has been signalled.
    Confirmed,
    /// It never left (no connection).
    NotSent,
    /// It may or may not have reached PostgreSQL.
    Unknown,
}

/// Sends the CancelRequest for `target` and waits for PostgreSQL to close the connection.
async fn forward(target: BackendKey) -> Delivery {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(target.pid, target.secret, &mut out);
    let Ok(Ok(mut s)) = tokio::time::timeout(CONFIRM_WITHIN, TcpStream::connect(target.addr)).await
    else {
        return Delivery::NotSent;
    };
    if s.write_all(&out).await.is_err() {
        return Delivery::Unknown;
    }
    let mut sink = [0u8; 64];
    // Only an orderly close is PostgreSQL's answer. A reset or another error can come from
    // anything on the way (a proxy, a load balancer, a cut link) while the request still
    // travels to PostgreSQL, so it confirms nothing (found by the chaos checker's relay
    // cuts: a late cancel then hit the next client of the backend).
    let closed = async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(CONFIRM_WITHIN, closed).await {
        Ok(true) => Delivery::Confirmed,
        Ok(false) | Err(_) => Delivery::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A stand-in for PostgreSQL's cancel port that reads the request and then closes the
    /// connection in order (`reset` false) or with a reset.
    async fn endpoint(reset: bool) -> BackendKey {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 16];
            s.read_exact(&mut request).await.unwrap();
            if reset {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(s);
        });
        BackendKey {
            addr,
            pid: 7,
            secret: 9,
        }
    }

    #[tokio::test]
    async fn only_an_orderly_close_confirms_a_cancel() {
        assert!(matches!(
            forward(endpoint(false).await).await,
            Delivery::Confirmed
        ));
        assert!(matches!(
            forward(endpoint(true).await).await,
            Delivery::Unknown
        ));
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let key = BackendKey {
            addr,
            pid: 7,
            secret: 9,
        };
        assert!(matches!(forward(key).await, Delivery::NotSent));
    }
}
