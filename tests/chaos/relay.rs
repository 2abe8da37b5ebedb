//! A TCP relay between pgtenant and PostgreSQL that can delay, stall or cut every
//! connection going through it (backend network faults without root or iptables).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Shared switches of the relay.
struct Ctl {
    delay_ms: AtomicU64,
    hold_new_until: Mutex<Option<Instant>>,
    stall_until: Mutex<Option<Instant>>,
    cut: watch::Sender<u64>,
}

/// A running relay to 127.0.0.1:`target`.
pub struct Relay {
    /// Port pgtenant connects to instead of PostgreSQL's.
    pub port: u16,
    ctl: Arc<Ctl>,
}

impl Relay {
    /// Listens on a free port and forwards to `target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().unwrap().port();
        let ctl = Arc::new(Ctl {
            delay_ms: AtomicU64::new(0),
            hold_new_until: Mutex::new(None),
            stall_until: Mutex::new(None),
            cut: watch::channel(0).0,
        });
        let c = ctl.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let hold = *c.hold_new_until.lock().unwrap();
                    if let Some(until) = hold {
                        tokio::time::sleep_until(until.into()).await;
                    }
                    if let Ok(out) = TcpStream::connect(("127.0.0.1", target)).await {
                        pair(inbound, out, c).await;
                    }
                });
            }
        });
        Relay { port, ctl }
    }

    /// Delays every forwarded chunk by `ms` (0: none).
    pub fn delay(&self, ms: u64) {
        self.ctl.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Forwards nothing for `d` (connections stay open).
    pub fn stall(&self, d: Duration) {
        *self.ctl.stall_until.lock().unwrap() = Some(Instant::now() + d);
    }

    /// Holds connections opened from now on for `d` before they reach PostgreSQL (a
    /// CancelRequest, say, arrives late).
    pub fn hold_new(&self, d: Duration) {
        *self.ctl.hold_new_until.lock().unwrap() = Some(Instant::now() + d);
    }

    /// Closes every connection open now.
    pub fn cut(&self) {
        self.ctl.cut.send_modify(|g| *g += 1);
    }
}

async fn pair(a: TcpStream, b: TcpStream, ctl: Arc<Ctl>) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let mut cut = ctl.cut.subscribe();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::select! {
        _ = pump(ar, bw, &ctl) => {}
        _ = pump(br, aw, &ctl) => {}
        _ = cut.changed() => {}
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    ctl: &Ctl,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let stall = *ctl.stall_until.lock().unwrap();
        if let Some(until) = stall {
            tokio::time::sleep_until(until.into()).await;
        }
        let d = ctl.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
