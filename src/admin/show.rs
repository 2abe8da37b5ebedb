//! The SHOW tables of the admin console, built from the registry, the pools and the config.
//! Secrets (passwords, verifiers, keys) never appear.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::Table;
use crate::registry::ClientState;
use crate::shared::Server;

/// The table for `SHOW <what>`, or None for an unknown name.
pub fn table(server: &Server, what: &str) -> Option<Table> {
    Some(match what {
        "help" => help(),
        "version" => Table {
            columns: vec!["version"],
            rows: vec![vec![format!("pgtenant {}", env!("CARGO_PKG_VERSION"))]],
        },
        "pools" => pools(server),
        "clients" => clients(server),
        "servers" => servers(server),
        "tenants" => tenants(server),
        "stats" => stats(server),
        "config" => config(server),
        _ => return None,
    })
}

fn help() -> Table {
    let rows = [
        "SHOW HELP|VERSION|POOLS|CLIENTS|SERVERS|TENANTS|STATS|CONFIG",
        "RELOAD    re-read the configuration file (SIGHUP does the same)",
        "PAUSE     let running transactions finish; new ones wait",
        "RESUME    undo PAUSE",
        "KILL <tenant>  close every client connection of a tenant",
        "SHUTDOWN  graceful shutdown, as SIGTERM",
    ];
    Table {
        columns: vec!["command"],
        rows: rows.iter().map(|r| vec![r.to_string()]).collect(),
    }
}

fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

fn pools(server: &Server) -> Table {
    // (database, state) -> count, and the longest wait per database.
    let mut counts: HashMap<(String, ClientState), usize> = HashMap::new();
    let mut maxwait: HashMap<String, Duration> = HashMap::new();
    for c in server.registry.clients() {
        let Some(id) = c.identity() else { continue };
        let state = c.state();
        *counts
            .entry((id.names.database.to_string(), state))
            .or_default() += 1;
        if state == ClientState::Waiting {
            let w = maxwait.entry(id.names.database.to_string()).or_default();
            *w = (*w).max(since(c.state_since()));
        }
    }
    let paused = if server.is_paused() { "yes" } else { "no" };
    let rows = server
        .pools()
        .iter()
        .map(|p| {
            let n = |s| counts.get(&(p.name.clone(), s)).copied().unwrap_or(0);
            let wait = maxwait.get(&p.name).copied().unwrap_or_default();
            vec![
                p.name.clone(),
                p.target().user.clone(),
                n(ClientState::Active).to_string(),
                n(ClientState::Waiting).to_string(),
                n(ClientState::Idle).to_string(),
                n(ClientState::IdleInTransaction).to_string(),
                p.metrics.active.get().to_string(),
                p.metrics.idle.get().to_string(),
                p.size().to_string(),
                wait.as_secs().to_string(),
                wait.subsec_micros().to_string(),
                format!("{:?}", p.mode).to_lowercase(),
                paused.to_string(),
                p.pinned().to_string(),
                format!("{:?}", p.pin_mode()).to_lowercase(),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_idle",
            "cl_idle_in_transaction",
            "sv_active",
            "sv_idle",
            "pool_size",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "paused",
            "sv_pinned",
            "pin_session_state",
        ],
        rows,
    }
}

fn clients(server: &Server) -> Table {
    let rows = server
        .registry
        .clients()
        .iter()
        .map(|c| {
            let id = c.identity();
            let field = |f: fn(&crate::registry::Identity) -> &str| {
                id.map(f).map(str::to_string).unwrap_or_default()
            };
            let state = c.state();
            let wait = if state == ClientState::Waiting {
                since(c.state_since())
            } else {
                Duration::ZERO
            };
            let link = c.backend.load(Ordering::Relaxed);
            vec![
                "C".to_string(),
                c.id.to_string(),
                field(|i| &i.names.tenant),
                field(|i| &i.names.user),
                field(|i| &i.names.database),
                state.label().to_string(),
                c.addr.ip().to_string(),
                c.addr.port().to_string(),
                timestamp(c.connected_at),
                timestamp(c.state_since()),
                wait.as_secs().to_string(),
                wait.subsec_micros().to_string(),
                if link == 0 {
                    String::new()
                } else {
                    link.to_string()
                },
                field(|i| &i.application_name),
                if c.pinned.load(Ordering::Relaxed) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    Table {
        columns: vec![
            "type",
            "id",
            "tenant",
            "user",
            "database",
            "state",
            "addr",
            "port",
            "connect_time",
            "request_time",
            "wait",
            "wait_us",
            "link",
            "application_name",
            "pinned",
        ],
        rows,
    }
}

fn servers(server: &Server) -> Table {
    let mut rows = Vec::new();
    for c in server.registry.clients() {
        let link = c.backend.load(Ordering::Relaxed);
        let Some(id) = c.identity().filter(|_| link != 0) else {
            continue;
        };
        let user = server
            .pool(&id.names.database)
            .map(|p| p.target().user.clone())
            .unwrap_or_default();
        rows.push(vec![
            "S".to_string(),
            link.to_string(),
            id.names.database.to_string(),
            user,
            if c.pinned.load(Ordering::Relaxed) {
                "pinned".to_string()
            } else {
                "active".to_string()
            },
            id.names.tenant.to_string(),
            c.id.to_string(),
            String::new(),
        ]);
    }
    for p in server.pools() {
        for (conn_id, _age, idle) in p.idle_snapshot() {
            rows.push(vec![
                "S".to_string(),
                conn_id.to_string(),
                p.name.clone(),
                p.target().user.clone(),
                "idle".to_string(),
                String::new(),
                String::new(),
                idle.as_secs().to_string(),
            ]);
        }
    }
    Table {
        columns: vec![
            "type", "id", "database", "user", "state", "tenant", "link", "idle_for",
        ],
        rows,
    }
}

fn tenants(server: &Server) -> Table {
    let stats: HashMap<String, _> = server.registry.tenant_stats().into_iter().collect();
    let directory = server.tenants();
    let mut names: Vec<&str> = directory.names().collect();
    names.sort_unstable();
    let limit = |n: usize| {
        if n == 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let rows = names
        .into_iter()
        .filter_map(|name| directory.by_name(name))
        .map(|t| {
            let s = stats.get(&t.name);
            let get = |f: fn(&crate::registry::TenantStats) -> u64| s.map(|s| f(s)).unwrap_or(0);
            vec![
                t.name.clone(),
                t.id.clone(),
                format!("{:?}", t.auth_method).to_lowercase(),
                get(|s| s.connections.load(Ordering::Relaxed) as u64).to_string(),
                get(|s| s.backends.load(Ordering::Relaxed) as u64).to_string(),
                limit(t.connection_limit),
                limit(t.backend_limit),
                get(|s| s.transactions.load(Ordering::Relaxed)).to_string(),
                get(|s| s.queries.load(Ordering::Relaxed)).to_string(),
                get(|s| s.errors.load(Ordering::Relaxed)).to_string(),
                get(|s| s.wait_us.load(Ordering::Relaxed)).to_string(),
                get(|s| s.pinned.load(Ordering::Relaxed) as u64).to_string(),
                limit(t.pinned_limit),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "tenant",
            "tenant_id",
            "auth_method",
            "cl_connected",
            "sv_held",
            "max_connections",
            "max_backend_connections",
            "total_xact_count",
            "total_query_count",
            "total_errors",
            "total_wait_time",
            "sv_pinned",
            "max_pinned",
        ],
        rows,
    }
}

fn stats(server: &Server) -> Table {
    let rows = server
        .pools()
        .iter()
        .map(|p| {
            let m = &p.metrics;
            let xacts = m.transactions.get();
            let xact_us = (m.transaction_seconds.get_sample_sum() * 1e6) as u64;
            let waits = m.wait_seconds.get_sample_count();
            let wait_us = (m.wait_seconds.get_sample_sum() * 1e6) as u64;
            vec![
                p.name.clone(),
                xacts.to_string(),
                m.queries.get().to_string(),
                xact_us.to_string(),
                wait_us.to_string(),
                xact_us.checked_div(xacts).unwrap_or(0).to_string(),
                wait_us.checked_div(waits).unwrap_or(0).to_string(),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "database",
            "total_xact_count",
            "total_query_count",
            "total_xact_time",
            "total_wait_time",
            "avg_xact_time",
            "avg_wait_time",
        ],
        rows,
    }
}

fn config(server: &Server) -> Table {
    let cfg = server.config();
    let s = &cfg.server;
    let d = |v: Duration| humantime::format_duration(v).to_string();
    let mut rows: Vec<(String, String, &str)> = vec![
        ("server.listen".into(), s.listen.to_string(), "no"),
        (
            "server.metrics_listen".into(),
            s.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
            "no",
        ),
        (
            "server.max_client_connections".into(),
            s.max_client_connections.to_string(),
            "yes",
        ),
        (
            "server.max_connections_per_tenant".into(),
            s.max_connections_per_tenant.to_string(),
            "yes",
        ),
        (
            "server.max_backend_connections_per_tenant".into(),
            s.max_backend_connections_per_tenant.to_string(),
            "yes",
        ),
        ("server.auth_timeout".into(), d(s.auth_timeout), "yes"),
        (
            "server.startup_evict_after".into(),
            d(s.startup_evict_after),
            "yes",
        ),
        (
            "server.client_idle_timeout".into(),
            d(s.client_idle_timeout),
            "yes",
        ),
        (
            "server.idle_in_transaction_timeout".into(),
            d(s.idle_in_transaction_timeout),
            "yes",
        ),
        (
            "server.shutdown_grace_period".into(),
            d(s.shutdown_grace_period),
            "yes",
        ),
        (
            "server.tcp_keepalives_idle".into(),
            d(s.tcp_keepalives_idle),
            "yes",
        ),
        (
            "server.max_message_size".into(),
            s.max_message_size.to_string(),
            "yes",
        ),
        (
            "server.metrics_top_tenants".into(),
            s.metrics_top_tenants.to_string(),
            "yes",
        ),
        (
            "context.settings".into(),
            cfg.context.settings().join(","),
            "no",
        ),
        (
            "context.reset_on_release".into(),
            format!("{:?}", cfg.context.reset_on_release).to_lowercase(),
            "yes",
        ),
        (
            "context.mode".into(),
            format!("{:?}", cfg.context.mode).to_lowercase(),
            "no",
        ),
        (
            // The key's public id only, never the key.
            "context.key_id".into(),
            cfg.context
                .key
                .as_ref()
                .map(|k| k.id().to_string())
                .unwrap_or_default(),
            "yes",
        ),
        ("server.sql_guard".into(), s.sql_guard.to_string(), "no"),
        (
            "auth.user_convention".into(),
            format!("{:?}", cfg.auth.user_convention).to_lowercase(),
            "yes",
        ),
        (
            "auth.method".into(),
            format!("{:?}", cfg.auth.method).to_lowercase(),
            "yes",
        ),
        (
            "tls.mode".into(),
            format!("{:?}", cfg.tls.mode).to_lowercase(),
            "no",
        ),
        ("tenants".into(), cfg.tenants.len().to_string(), "yes"),
        ("admin.database".into(), cfg.admin.database.clone(), "yes"),
        ("doctor.strict".into(), cfg.doctor.strict.to_string(), "no"),
        (
            "doctor.tenant_column".into(),
            cfg.doctor.tenant_column.clone(),
            "yes",
        ),
    ];
    for (name, db) in &cfg.databases {
        let key = |k: &str| format!("databases.{name}.{k}");
        rows.extend([
            (key("host"), format!("{}:{}", db.host, db.port), "yes"),
            (key("dbname"), db.backend_dbname(name).to_string(), "yes"),
            (key("user"), db.user.clone(), "yes"),
            (key("pool_size"), db.pool_size.to_string(), "yes"),
            (
                key("pool_mode"),
                format!("{:?}", db.pool_mode).to_lowercase(),
                "yes",
            ),
            (key("checkout_timeout"), d(db.checkout_timeout), "yes"),
            (key("defer_begin"), db.defer_begin.to_string(), "yes"),
            (key("idle_timeout"), d(db.idle_timeout), "yes"),
            (key("max_lifetime"), d(db.max_lifetime), "yes"),
            (
                key("sslmode"),
                format!("{:?}", db.sslmode).to_lowercase(),
                "yes",
            ),
        ]);
    }
    Table {
        columns: vec!["key", "value", "changeable"],
        rows: rows
            .into_iter()
            .map(|(k, v, c)| vec![k, v, c.to_string()])
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_calendar_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 3_723);
        assert_eq!(timestamp(t), "2026-11-23 01:02:03 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
