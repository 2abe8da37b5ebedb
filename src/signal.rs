//! The flags through which the rest of the proxy asks a client session to end (KILL from
//! the admin console, server shutdown), cheap enough to be polled on every wake-up.

use std::sync::atomic::{AtomicU8, Ordering};

/// Requests to a session (KILL, shutdown) as flags that stay raised. Waiting costs one
/// atomic load per poll: the session polls it on every wake-up, so unlike a `Notify` or a
/// `watch` it takes no lock unless the task's waker changed, and it holds no waiter list
/// entry, which matters for thousands of idle clients.
#[derive(Debug, Default)]
pub struct SessionSignal {
    flags: AtomicU8,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl SessionSignal {
    /// End the session now.
    pub const KILL: u8 = 1;
    /// The server is shutting down: end the session at its next transaction boundary.
    pub const SHUTDOWN: u8 = 2;
    /// The session has been idle long enough to leave the runtime (see
    /// `crate::session::lot`); cleared each time it parks.
    pub const PARK: u8 = 4;
    /// The flags that end a session.
    pub const ENDING: u8 = Self::KILL | Self::SHUTDOWN;

    /// The flags raised so far.
    pub fn raised(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }

    /// Raises `flag` and wakes the waiting session, if any.
    pub fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        // Left registered (the waiter skips re-registering an unchanged waker), so a
        // later flag wakes it again.
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Lowers `flag`.
    pub fn clear(&self, flag: u8) {
        self.flags.fetch_and(!flag, Ordering::AcqRel);
    }

    /// Replaces the waker a raise wakes (a session parked outside the runtime).
    pub fn set_waker(&self, waker: std::task::Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }

    /// Resolves with the raised flags once any flag in `mask` is raised. Keep the future
    /// across polls: a new one registers the waker again.
    pub fn wait(&self, mask: u8) -> impl std::future::Future<Output = u8> + '_ {
        let mut registered: Option<std::task::Waker> = None;
        std::future::poll_fn(move |cx| {
            let raised = self.raised();
            if raised & mask != 0 {
                return std::task::Poll::Ready(raised);
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let w = cx.waker().clone();
                *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
                registered = Some(w);
                // A raise() between the first check and the registration found no waker.
                let raised = self.raised();
                if raised & mask != 0 {
                    return std::task::Poll::Ready(raised);
                }
            }
            std::task::Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn signal_wakes_a_waiting_session_and_stays_raised() {
        let signal = Arc::new(SessionSignal::default());
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move {
                let wait = signal.wait(SessionSignal::KILL);
                tokio::pin!(wait);
                // Polled repeatedly, as the relay's select does, before the signal comes.
                for _ in 0..3 {
                    tokio::select! {
                        biased;
                        _ = &mut wait => return true,
                        _ = tokio::task::yield_now() => {}
                    }
                }
                wait.await == SessionSignal::KILL | SessionSignal::SHUTDOWN
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // A flag outside the mask wakes the task but does not end the wait.
        signal.raise(SessionSignal::SHUTDOWN);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        signal.raise(SessionSignal::KILL);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert!(matches!(woke, Ok(Ok(true))), "{woke:?}");
        assert_eq!(signal.wait(SessionSignal::SHUTDOWN).await, 3); // raised: ready at once
    }
}
