//! Parked idle clients: no CPU while idle, and they wake up for their next transaction.
//! Alone in its own test binary because it measures the CPU time of the whole process
//! (where the proxy runs), which other tests running in parallel would add to.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const CTX: &str = "SELECT current_setting('app.current_tenant')";

/// CPU time this process has used (the proxy runs in it).
fn process_cpu() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// Idle clients are parked between transactions: they must cost no CPU, whether they went
/// quiet right after start-up or after a transaction, and must wake up for the next one.
/// (A parked client whose socket still held unread bytes once spun a core; a spinning
/// session burns a whole second of CPU here, an idle proxy a few milliseconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_cost_no_cpu_and_wake_up() {
    let body = async {
        let env = TestEnv::start().await;
        let mut clients = Vec::new();
        for i in 0..20 {
            let c = env
                .proxy
                .connect(if i % 2 == 0 { "acme" } else { "globex" })
                .await;
            if i % 4 == 0 {
                one(&c, CTX).await;
            }
            clients.push(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = process_cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = process_cpu() - before;
        assert!(
            used < Duration::from_millis(300),
            "20 idle clients used {used:?} of CPU in 1 s"
        );
        for (i, c) in clients.iter().enumerate() {
            let want = if i % 2 == 0 { ACME } else { GLOBEX };
            assert_eq!(one(c, CTX).await, want, "client {i}");
        }
    };
    // A watchdog thread, since spinning sessions can starve the runtime's own timers.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(90));
        if !watch.load(Ordering::Acquire) {
            eprintln!("parked clients did not answer within 90 s (a spinning session?)");
            std::process::exit(1);
        }
    });
    body.await;
    done.store(true, Ordering::Release);
}
