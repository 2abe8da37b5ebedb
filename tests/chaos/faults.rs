//! The fault injector: every kind in turn (in a seeded order per round), spaced out over the
//! run, each counted in the ledger when it was actually injected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ledger::Ledger;
use super::workload::Rng;
use super::world::World;

/// Every fault kind.
pub const FAULTS: [&str; 11] = [
    "terminate-backends",
    "restart-fast",
    "restart-immediate",
    "relay-delay",
    "relay-stall",
    "relay-cut",
    "relay-hold-new",
    "sighup-reload",
    "admin-reload",
    "pool-resize",
    "pause-resume",
];

/// Injects faults until `until`, one every `every` (jittered; zero: none).
pub async fn run(
    world: Arc<World>,
    ledger: Arc<Ledger>,
    until: Instant,
    seed: u64,
    every: Duration,
) {
    if every.is_zero() {
        return; // CHAOS_FAULT_EVERY_MS=0: faults off
    }
    let mut rng = Rng::new(seed ^ 0xFA17);
    'outer: loop {
        let mut order: Vec<&str> = FAULTS.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for kind in order {
            let jitter = rng.below(every.as_millis() as u64 + 1);
            let next = Instant::now() + every / 2 + Duration::from_millis(jitter);
            tokio::time::sleep_until(next.min(until).into()).await;
            if Instant::now() >= until || ledger.enough() {
                break 'outer;
            }
            if inject(&world, kind, &mut rng).await {
                ledger.fault(kind);
            } else {
                ledger.error(format!("fault {kind} not injected"));
            }
        }
    }
    world.relay.delay(0);
}

async fn inject(world: &World, kind: &str, rng: &mut Rng) -> bool {
    match kind {
        "terminate-backends" => {
            let Some(su) = world.superuser().await else {
                return false;
            };
            let n = 1 + rng.below(3) as i64;
            let sql = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity \
                 WHERE usename = 'app_user' ORDER BY random() LIMIT {n}) s"
            );
            su.simple_query(&sql).await.is_ok()
        }
        "restart-fast" => world.pg_ctl("-m fast -w -t 60 restart").await,
        "restart-immediate" => {
            world.pg_ctl("-m immediate -w -t 60 stop").await;
            world.pg_ctl("-w -t 60 start").await
        }
        "relay-delay" => {
            world.relay.delay(5 + rng.below(40));
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
            world.relay.delay(0);
            true
        }
        "relay-stall" => {
            world
                .relay
                .stall(Duration::from_millis(500 + rng.below(2000)));
            true
        }
        "relay-hold-new" => {
            // New backend connections (and forwarded CancelRequests) arrive late.
            world
                .relay
                .hold_new(Duration::from_millis(300 + rng.below(1500)));
            true
        }
        "relay-cut" => {
            world.relay.cut();
            true
        }
        "sighup-reload" => {
            world.signal(libc::SIGHUP);
            true
        }
        "admin-reload" => admin(world, "RELOAD").await,
        "pool-resize" => {
            world.write_config(2 + rng.below(11) as usize);
            admin(world, "RELOAD").await
        }
        "pause-resume" => {
            let ok = admin(world, "PAUSE").await;
            tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
            ok & admin(world, "RESUME").await
        }
        _ => false,
    }
}

/// Runs an admin-console command through pgtenant's own port.
async fn admin(world: &World, cmd: &str) -> bool {
    let s = format!(
        "host=127.0.0.1 port={} user=admin password=admin-secret dbname=pgtenant connect_timeout=5",
        world.addr.port()
    );
    let Ok((c, conn)) = tokio_postgres::connect(&s, tokio_postgres::NoTls).await else {
        return false;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match tokio::time::timeout(Duration::from_secs(20), c.simple_query(cmd)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            eprintln!("admin {cmd}: {e}");
            false
        }
        Err(_) => false,
    }
}
