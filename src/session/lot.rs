//! Deep parking. A plain-TCP client idle for [`LOT_AFTER`] leaves the runtime: its task
//! ends, its socket is taken out of tokio's reactor and watched by one poller thread, and
//! its session waits as a boxed record. An idle client then costs its session and its
//! registry entry; the task, its parked future and tokio's per-socket state (over half of
//! what it cost before) are gone. The client's next byte (or its hang-up), a KILL or
//! shutdown signal, or its idle timeout spawns a task that resumes the session where it
//! stopped; a busy client pays none of this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Wake as StdWake, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::Session;
use crate::signal::SessionSignal;

/// Idle time after which a parked client leaves the runtime (give or take a sweep).
pub const LOT_AFTER: Duration = Duration::from_secs(1);
/// How often idle clients are looked for (by [`sweep`]).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// The bell's token: some parked session got a signal.
const BELL: Token = Token(usize::MAX);
/// How often deadlines are checked while some parked session has one.
const DEADLINE_TICK: Duration = Duration::from_millis(100);

/// Why a parked session is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The client sent something or hung up, or a signal was raised: relay as usual.
    Ready,
    /// The client idle timeout passed while parked.
    IdleTimeout,
}

/// The sessions waiting in the lot. The table holds only the box (there may be tens of
/// thousands); the few with a client idle timeout have their deadline in a table of its own.
#[derive(Default)]
struct Parked {
    /// By key: the session's address, unique while it is parked.
    sessions: HashMap<usize, Box<Session>>,
    /// When the client idle timeout ends a parked session, for those that have one.
    deadlines: HashMap<usize, Instant>,
}

/// The poller thread's shared state. One per process: it holds sessions of every server.
struct Lot {
    registry: Registry,
    bell: mio::Waker,
    parked: Mutex<Parked>,
    /// The waker every parked session's signal holds: it rings the bell, and the poller
    /// then looks for raised signals (rare: KILL, shutdown), so no session needs its own.
    signal_bell: Waker,
    /// Parked sessions with a deadline (the poller then wakes up to check them); read
    /// without the lock.
    deadlines: AtomicUsize,
}

static LOT: OnceLock<Option<Lot>> = OnceLock::new();

/// The lot, started on first use; None where its poller cannot be created.
fn lot() -> Option<&'static Lot> {
    LOT.get_or_init(|| match Lot::start() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "idle clients stay in the runtime: no poller");
            None
        }
    })
    .as_ref()
}

/// Whether deep parking works here.
pub fn available() -> bool {
    lot().is_some()
}

/// Parked sessions (all servers in the process).
pub fn parked() -> usize {
    lot().map_or(0, |l| lock(&l.parked).sessions.len())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lot {
    fn start() -> std::io::Result<Lot> {
        let poll = Poll::new()?;
        let lot = Lot {
            registry: poll.registry().try_clone()?,
            bell: mio::Waker::new(poll.registry(), BELL)?,
            parked: Mutex::default(),
            signal_bell: Waker::from(Arc::new(SignalBell)),
            deadlines: AtomicUsize::new(0),
        };
        std::thread::Builder::new()
            .name("pgtenant-lot".into())
            .spawn(move || poll_forever(poll))?;
        Ok(lot)
    }

    /// Takes a session out of the lot and resumes it on its runtime.
    fn resume(&self, parked: &mut Parked, key: usize, wake: Wake) {
        let Some(session) = parked.sessions.remove(&key) else {
            return;
        };
        if parked.deadlines.remove(&key).is_some() {
            self.deadlines.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(fd) = session.client.parked_fd() {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
        // On a runtime that has shut down the task is dropped, and the session with it.
        if let Some(runtime) = session.server.runtime.clone() {
            runtime.spawn(resume(session, wake));
        }
    }
}

/// Wakes the poller when a parked session's signal is raised.
struct SignalBell;

impl StdWake for SignalBell {
    fn wake(self: Arc<Self>) {
        if let Some(l) = lot() {
            let _ = l.bell.wake();
        }
    }
}

/// Moves an idle session into the lot. `idle_limit`: the client idle timeout left, if any.
/// Gives the session back (still registered with the runtime) when it cannot be parked.
pub fn park(mut s: Box<Session>, idle_limit: Option<Duration>) -> Result<(), Box<Session>> {
    let (Some(l), true) = (lot(), s.server.runtime.is_some()) else {
        return Err(s);
    };
    let fd = match s.client.park() {
        Ok(fd) => fd,
        Err(_) => return Err(s),
    };
    let key = &*s as *const Session as usize;
    let entry = s.me.entry.clone();
    let deadline = idle_limit.map(|d| Instant::now() + d);
    // Held until the session is fully parked, so the poller cannot resume it half-way.
    let mut parked = lock(&l.parked);
    if let Err(e) = l
        .registry
        .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
    {
        drop(parked);
        tracing::debug!(parent: &s.span(), error = %e, "could not park the client");
        // Failing here too, the session's next read fails and ends it.
        let _ = s.client.unpark();
        return Err(s);
    }
    if let Some(deadline) = deadline {
        parked.deadlines.insert(key, deadline);
        l.deadlines.fetch_add(1, Ordering::Relaxed);
        // A poller asleep without a timeout must learn that it now has one.
        let _ = l.bell.wake();
    }
    parked.sessions.insert(key, s);
    entry.signal.set_waker(l.signal_bell.clone());
    if entry.signal.raised() & SessionSignal::ENDING != 0 {
        let _ = l.bell.wake();
    }
    Ok(())
}

/// The poller: resumes sessions whose socket became readable, that were signalled, or
/// whose idle timeout passed.
fn poll_forever(mut poll: Poll) {
    let Some(l) = lot() else { return };
    let mut events = Events::with_capacity(256);
    loop {
        let timeout = (l.deadlines.load(Ordering::Relaxed) > 0).then_some(DEADLINE_TICK);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "the idle-client poller failed");
            return;
        }
        let mut parked = lock(&l.parked);
        for ev in events.iter() {
            if ev.token() == BELL {
                let signalled: Vec<usize> = parked
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.me.entry.signal.raised() & SessionSignal::ENDING != 0)
                    .map(|(k, _)| *k)
                    .collect();
                for key in signalled {
                    l.resume(&mut parked, key, Wake::Ready);
                }
            } else {
                l.resume(&mut parked, ev.token().0, Wake::Ready);
            }
        }
        if l.deadlines.load(Ordering::Relaxed) > 0 {
            let now = Instant::now();
            let due: Vec<usize> = parked
                .deadlines
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(k, _)| *k)
                .collect();
            for key in due {
                l.resume(&mut parked, key, Wake::IdleTimeout);
            }
        }
    }
}

/// Sends clients idle for [`LOT_AFTER`] to the lot, every [`SWEEP_EVERY`], until aborted.
pub async fn sweep(registry: Arc<crate::registry::Registry>) {
    if !available() {
        return;
    }
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        registry.nudge_idle(LOT_AFTER);
    }
}

/// A resumed session's task: back into the runtime, then relayed as before.
async fn resume(mut s: Box<Session>, wake: Wake) {
    if let Err(e) = s.client.unpark() {
        let end = super::End::ClientIo(e);
        tracing::info!(parent: &s.span(), reason = %end, "client disconnected");
        return;
    }
    super::drive(s, wake).await;
}
