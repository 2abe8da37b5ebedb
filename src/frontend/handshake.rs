//! The startup phase: the StartupMessage's parameters (refusing any attempt to choose the
//! tenant context), then authentication.

use std::sync::Arc;

use super::negotiate::TlsInfo;
use super::read::io_fatal;
use crate::protocol::messages::write_msg;
use crate::protocol::startup::{StartupParams, parse_options};
use crate::protocol::{backend_tag, sqlstate};
use crate::session::handover::{Fatal, Startup};
use crate::shared::Server;
use crate::stream::ClientStream;
use bytes::{BufMut, BytesMut};

/// Who completed the startup phase.
pub enum Login {
    /// A tenant's client, for a pool.
    Tenant(Startup),
    /// An admin-console user; `full` is false for read-only (stats) users.
    Admin {
        user: String,
        full: bool,
        leftover: BytesMut,
    },
}

/// Startup parameters handled by the proxy itself rather than passed on as settings.
const CONNECTION_PARAMS: &[&str] = &["user", "database", "options", "replication"];

/// Runs the startup phase after negotiation: parameters, then authentication by the
/// tenant's method. Not cancel safe (the caller drops the connection on timeout).
pub async fn startup(
    server: &Arc<Server>,
    stream: &mut ClientStream,
    params: StartupParams,
    mut buf: BytesMut,
    tls: Option<TlsInfo>,
) -> Result<Login, Fatal> {
    if params.minor_version > 0 || !params.unsupported_options.is_empty() {
        negotiate_protocol(stream, &params).await?;
    }
    let (user, dbname, settings) = check_params(server, &params)?;
    let admin = server.config().admin.clone();
    if dbname == admin.database {
        let full = admin.users.get(&user);
        let stats = admin.stats_users.get(&user);
        let verifier = full
            .or(stats)
            .and_then(|v| crate::auth::scram::ScramVerifier::parse(v).ok());
        super::auth::admin(server, stream, &mut buf, &user, verifier, tls.as_ref()).await?;
        return Ok(Login::Admin {
            full: full.is_some(),
            user,
            leftover: buf,
        });
    }
    let cert_tenant = match &tls {
        Some(info) => super::cert::certificate_tenant(server, info, &user)?,
        None => None,
    };
    let tenant =
        super::cert::authenticate(server, stream, &mut buf, &user, cert_tenant, tls.as_ref())
            .await?;
    let pool = server.pool(&dbname).ok_or_else(|| {
        Fatal::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{dbname}\" does not exist"),
        )
    })?;
    Ok(Login::Tenant(Startup {
        tenant,
        pool,
        user,
        settings,
        leftover: buf,
    }))
}

/// Session settings a client asked for: `(name, value)` pairs.
type Settings = Vec<(String, String)>;

/// Validates the startup parameters; returns user, database and the settings to apply.
fn check_params(server: &Server, p: &StartupParams) -> Result<(String, String, Settings), Fatal> {
    let user = p
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Fatal::new(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let dbname = p
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if let Some(r) = p.get("replication")
        && !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        )
    {
        return Err(Fatal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgtenant does not support replication connections",
        ));
    }
    let mut settings: Vec<(String, String)> = p
        .params
        .iter()
        .filter(|(k, _)| !CONNECTION_PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(options) = p.get("options") {
        let parsed = parse_options(options).map_err(|tok| {
            Fatal::new("22023", format!("invalid command-line argument in options: {tok:?} (only -c name=value and --name=value are accepted)"))
        })?;
        settings.extend(parsed);
    }
    for (name, value) in &settings {
        let lower = name.to_ascii_lowercase();
        let refusal = if !server.guard_enabled {
            None
        } else if let Some(why) = crate::policy::sql::unreadable(lower.as_bytes(), value.as_bytes())
        {
            Some(format!(
                "permission denied to set {why}: pgtenant's guard could not read SQL sent with {lower}={value}"
            ))
        } else if server.sql_guard.protected().contains(&lower) {
            let why = crate::policy::knowledge::protection_reason(&lower);
            let from = if crate::policy::knowledge::CONNECTION_SETTINGS.contains(&lower.as_str()) {
                ""
            } else {
                " from your credentials"
            };
            Some(format!(
                "permission denied to set parameter \"{lower}\": {why}{from}"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            server
                .metrics
                .context_rejections
                .with_label_values(&["startup"])
                .inc();
            return Err(Fatal::new(sqlstate::INSUFFICIENT_PRIVILEGE, message));
        }
        if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(Fatal::new(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ));
        }
    }
    Ok((user, dbname, settings))
}

/// Tells a client asking for protocol 3.x (x > 0) or `_pq_.` options that we speak 3.0.
async fn negotiate_protocol(socket: &mut ClientStream, p: &StartupParams) -> Result<(), Fatal> {
    let mut out = BytesMut::new();
    write_msg(&mut out, backend_tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_u32(3 << 16);
        b.put_u32(p.unsupported_options.len() as u32);
        for o in &p.unsupported_options {
            b.put_slice(o.as_bytes());
            b.put_u8(0);
        }
    });
    socket.send(&out).await.map_err(io_fatal)
}
