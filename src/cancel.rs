//! Cancel routing. Every client gets a proxy-issued (pid, secret) pair; a CancelRequest
//! carrying it is forwarded to whichever backend serves that client at that moment, and is
//! ignored when the client is idle or the key is unknown. Keys are random, so one tenant
//! cannot guess another's.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::BackendKey;

/// Where a client's running query can be cancelled right now.
#[derive(Debug, Default)]
pub struct CancelSlot {
    current: Mutex<Option<BackendKey>>,
}

impl CancelSlot {
    /// Records the backend now serving the client (None when detached).
    pub fn set(&self, key: Option<BackendKey>) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = key;
        }
    }

    fn get(&self) -> Option<BackendKey> {
        self.current.lock().ok().and_then(|c| *c)
    }
}

/// All live client cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: DashMap<(i32, i32), Arc<CancelSlot>>,
}

/// Removes the key when the client session ends.
pub struct CancelRegistration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.registry.keys.remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    /// Issues a fresh unpredictable key for a new client.
    pub fn register(self: &Arc<Self>) -> CancelRegistration {
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot::default());
            if let dashmap::Entry::Vacant(v) = self.keys.entry((pid, secret)) {
                v.insert(slot.clone());
                return CancelRegistration {
                    registry: self.clone(),
                    pid,
                    secret,
                    slot,
                };
            }
        }
    }

    /// Forwards a cancel for the client owning (pid, secret); returns whether one was sent.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let Some(target) = self.keys.get(&(pid, secret)).and_then(|s| s.get()) else {
            return false;
        };
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(target.pid, target.secret, &mut out);
        match TcpStream::connect(target.addr).await {
            Ok(mut s) => s.write_all(&out).await.is_ok(),
            Err(_) => false,
        }
    }
}
