//! Parked idle clients: no CPU while idle, out of the runtime once idle for a second, and
//! they wake up for their next transaction, a KILL, their idle timeout and shutdown.
//! Alone in its own test binary because it measures the CPU time of the whole process
//! (where the proxy runs), which other tests running in parallel would add to; the phases
//! run one after another in one test for the same reason.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::{self, RawConn};
use common::*;
use pgtenant::auth::scram::ScramVerifier;
use pgtenant::session::lot;

const CTX: &str = "SELECT current_setting('app.current_tenant')";

/// CPU time this process has used (the proxy runs in it).
#[allow(
    unsafe_code,
    reason = "getrusage(2) has no safe wrapper in the dependencies"
)]
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
        // Idle for over a second: every one of them leaves the runtime for the lot.
        wait_parked(20).await;
        for round in 0..2 {
            for (i, c) in clients.iter().enumerate() {
                let want = if i % 2 == 0 { ACME } else { GLOBEX };
                assert_eq!(one(c, CTX).await, want, "client {i}, round {round}");
            }
            // Parked again between the rounds.
            wait_parked(20).await;
        }
        drop(clients);
        signals_reach_clients_out_of_the_runtime().await;
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

/// A client in the lot still gets its KILL, its idle timeout and the shutdown, each with
/// the FATAL PostgreSQL would send.
async fn signals_reach_clients_out_of_the_runtime() {
    let env = TestEnv::start_with(|cfg| {
        cfg.admin
            .users
            .insert("admin".into(), ScramVerifier::hash_password("admin-secret"));
        cfg.server.client_idle_timeout = Duration::from_millis(2500);
    })
    .await;
    let addr = env.proxy.addr;
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=admin password=admin-secret dbname=pgtenant",
        addr.port()
    ))
    .await
    .unwrap();
    let mut killed = RawConn::connect(addr, "acme", "acme-secret").await.unwrap();
    let mut timed_out = RawConn::connect(addr, "globex", "globex-secret")
        .await
        .unwrap();
    wait_parked(2).await;
    admin.simple_query("KILL acme").await.unwrap();
    expect_fatal(&mut killed, "57P01", "KILL").await;
    // The idle timeout (2.5 s) passes while parked.
    expect_fatal(&mut timed_out, "57P05", "the idle timeout").await;
    assert!(timed_out.is_closed().await);
    // Shutdown wakes a parked client and ends it.
    let mut last = RawConn::connect(addr, "initech", "initech-secret")
        .await
        .unwrap();
    wait_parked(1).await;
    env.proxy.server.request_shutdown();
    expect_fatal(&mut last, "57P01", "shutdown").await;
}

/// Waits (up to 5 s) until exactly `n` sessions are in the lot (the lot serves the whole
/// process; the sessions of an earlier phase end once their clients are dropped).
async fn wait_parked(n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lot::parked() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} parked after 5 s",
            lot::parked()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next message `c` gets within 5 s is a FATAL with SQLSTATE `code`.
async fn expect_fatal(c: &mut RawConn, code: &str, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not reach the parked client"));
    let errs = got.map(|m| raw::errors(&[m])).unwrap_or_default();
    assert_eq!(
        errs.first().map(|e| (e.severity.as_str(), e.code.as_str())),
        Some(("FATAL", code)),
        "{what}: {errs:?}"
    );
}
