//! The admin console: a virtual database (`[admin] database`, default `pgtenant`) that
//! admin users reach with psql through the normal port. Simple-query commands only, with
//! PgBouncer's command names and, where the concept is the same, its column names.

mod show;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;

use crate::protocol::codec::{read_cstr, split_frame};
use crate::protocol::messages::{self, Severity, write_msg};
use crate::protocol::{TxStatus, backend_tag, frontend_tag as ft, sqlstate};
use crate::shared::Server;
use crate::stream::ClientStream;

/// A result set of text columns.
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// What a command produced.
enum Reply {
    Rows(Table),
    /// A command tag, with an optional NOTICE before it.
    Done(&'static str, Option<String>),
}

/// A command error: SQLSTATE and message.
type Refusal = (&'static str, String);

/// Serves one authenticated admin connection until it leaves.
pub async fn serve(server: &Arc<Server>, mut client: ClientStream, mut buf: BytesMut, full: bool) {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (pgtenant admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", ""),
        ("is_superuser", "off"),
    ] {
        messages::parameter_status(&mut out, k.as_bytes(), v.as_bytes());
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, TxStatus::Idle);
    let max = server
        .config()
        .server
        .max_startup_message_size
        .max(64 * 1024);
    let mut skip_until_sync = false;
    loop {
        if !out.is_empty() {
            if client.send(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        let frame = loop {
            match split_frame(&mut buf, max) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    error(
                        &mut out,
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &e.to_string(),
                    );
                    let _ = client.send(&out).await;
                    return;
                }
            }
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        match frame.tag {
            ft::TERMINATE => return,
            ft::QUERY => {
                let sql = read_cstr(frame.body()).map(|(q, _)| q).unwrap_or_default();
                let sql = String::from_utf8_lossy(sql);
                run(server, &sql, full, &mut out).await;
                messages::ready_for_query(&mut out, TxStatus::Idle);
                if matches!(
                    command_words(&sql).first().map(String::as_str),
                    Some("shutdown")
                ) && full
                {
                    let _ = client.send(&out).await;
                    return;
                }
            }
            ft::SYNC => {
                skip_until_sync = false;
                messages::ready_for_query(&mut out, TxStatus::Idle);
            }
            _ if skip_until_sync => {}
            _ => {
                error(
                    &mut out,
                    Severity::Error,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the pgtenant admin console accepts simple queries only",
                );
                skip_until_sync = true;
            }
        }
    }
}

fn error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    messages::error_response(out, severity, code, message);
}

/// Runs every `;`-separated command of one Query, stopping at the first error.
async fn run(server: &Arc<Server>, sql: &str, full: bool, out: &mut BytesMut) {
    let commands: Vec<&str> = sql.split(';').filter(|c| !c.trim().is_empty()).collect();
    if commands.is_empty() {
        write_msg(out, backend_tag::EMPTY_QUERY, |_| {});
        return;
    }
    for command in commands {
        match execute(server, command, full).await {
            Ok(Reply::Rows(t)) => write_table(out, &t),
            Ok(Reply::Done(tag, notice)) => {
                if let Some(n) = notice {
                    notice_response(out, &n);
                }
                command_complete(out, tag);
            }
            Err((code, message)) => {
                error(out, Severity::Error, code, &message);
                return;
            }
        }
    }
}

/// Lowercased words of a command, without quotes around identifiers.
fn command_words(command: &str) -> Vec<String> {
    command
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_ascii_lowercase())
        .collect()
}

async fn execute(server: &Arc<Server>, command: &str, full: bool) -> Result<Reply, Refusal> {
    let words = command_words(command);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let admin_only = |name: &str| -> Result<(), Refusal> {
        if full {
            Ok(())
        } else {
            Err((
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("admin console: {name} needs an admin user (this is a stats user)"),
            ))
        }
    };
    let cmd = match words.as_slice() {
        ["show", what] => {
            return show::table(server, what).map(Reply::Rows).ok_or_else(|| {
                (
                    sqlstate::UNDEFINED_OBJECT,
                    format!("admin console: unknown SHOW {what}; try SHOW HELP"),
                )
            });
        }
        ["reload"] => {
            admin_only("RELOAD")?;
            let summary = server.reload().map_err(|e| {
                (
                    CONFIG_FILE_ERROR,
                    format!("reload failed, the previous configuration stays in force: {e}"),
                )
            })?;
            return Ok(Reply::Done("RELOAD", Some(summary.to_string())));
        }
        ["pause"] => {
            admin_only("PAUSE")?;
            server.set_paused(true);
            let busy = wait_for_idle_pools(server).await;
            let notice = (busy > 0).then(|| {
                format!("{busy} transaction(s) still running; new transactions wait for RESUME")
            });
            return Ok(Reply::Done("PAUSE", notice));
        }
        ["resume"] => {
            admin_only("RESUME")?;
            server.set_paused(false);
            return Ok(Reply::Done("RESUME", None));
        }
        ["kill", tenant] => {
            admin_only("KILL")?;
            let n = server.registry.kill_tenant(tenant);
            return Ok(Reply::Done(
                "KILL",
                Some(format!(
                    "{n} client connection(s) of tenant \"{tenant}\" closed"
                )),
            ));
        }
        ["shutdown"] => {
            admin_only("SHUTDOWN")?;
            server.request_shutdown();
            return Ok(Reply::Done("SHUTDOWN", None));
        }
        _ => command.trim(),
    };
    Err((
        sqlstate::SYNTAX_ERROR,
        format!(
            "admin console: unknown command {cmd:?}; commands: SHOW HELP|POOLS|CLIENTS|SERVERS|TENANTS|STATS|CONFIG|VERSION, RELOAD, PAUSE, RESUME, KILL <tenant>, SHUTDOWN"
        ),
    ))
}

/// PostgreSQL's config_file_error.
const CONFIG_FILE_ERROR: &str = "F0000";

/// After PAUSE: waits (up to the shutdown grace period) until no pool has a backend
/// checked out; returns how many still are.
async fn wait_for_idle_pools(server: &Server) -> i64 {
    let deadline = tokio::time::Instant::now() + server.config().server.shutdown_grace_period;
    loop {
        let busy: i64 = server.pools().iter().map(|p| p.metrics.active.get()).sum();
        if busy == 0 || tokio::time::Instant::now() >= deadline {
            return busy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_table(out: &mut BytesMut, t: &Table) {
    write_msg(out, backend_tag::ROW_DESCRIPTION, |b| {
        b.put_u16(t.columns.len() as u16);
        for c in &t.columns {
            b.put_slice(c.as_bytes());
            b.put_u8(0);
            b.put_u32(0); // table oid
            b.put_u16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_u16(0); // text format
        }
    });
    for row in &t.rows {
        write_msg(out, backend_tag::DATA_ROW, |b| {
            b.put_u16(row.len() as u16);
            for v in row {
                b.put_i32(v.len() as i32);
                b.put_slice(v.as_bytes());
            }
        });
    }
    command_complete(out, &format!("SHOW {}", t.rows.len()));
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    write_msg(out, backend_tag::COMMAND_COMPLETE, |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

fn notice_response(out: &mut BytesMut, message: &str) {
    write_msg(out, backend_tag::NOTICE_RESPONSE, |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
        ] {
            b.put_u8(field);
            b.put_slice(value.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}
