//! SCRAM-SHA-256 authentication of a client as a tenant. Unknown tenants run the same
//! exchange against a dummy verifier and get the same error as a wrong password, so the
//! proxy never reveals which tenants exist.

use std::sync::Arc;

use super::Fatal;
use super::negotiate::TlsInfo;
use super::read::read_frame;
use crate::auth::scram::{ScramServer, ScramVerifier};
use crate::protocol::{frontend_tag, messages, sqlstate};
use crate::shared::Server;
use crate::stream::ClientStream;
use crate::tenant::Tenant;
use bytes::BytesMut;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Authenticates `user` as `tenant` (None: unknown, which fails the same way as a wrong
/// password) with SCRAM; returns the tenant or the FATAL to send.
pub async fn password(
    server: &Server,
    socket: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    tenant: Option<Arc<Tenant>>,
    tls: Option<&TlsInfo>,
) -> Result<Arc<Tenant>, Fatal> {
    let tenant = tenant.filter(|t| t.verifier.is_some());
    let verifier = tenant.as_ref().and_then(|t| t.verifier.clone());
    verify(
        server,
        socket,
        buf,
        user,
        verifier,
        tls,
        ("scram-sha-256", "unknown_tenant"),
    )
    .await?;
    // verify succeeds only with a verifier, which only a known tenant supplies.
    tenant.ok_or_else(|| failed(user))
}

/// Authenticates an admin-console user against its verifier (None: unknown user, which
/// fails exactly like a wrong password).
pub async fn admin(
    server: &Server,
    socket: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    verifier: Option<ScramVerifier>,
    tls: Option<&TlsInfo>,
) -> Result<(), Fatal> {
    verify(
        server,
        socket,
        buf,
        user,
        verifier,
        tls,
        ("admin", "unknown_user"),
    )
    .await
}

/// The SCRAM exchange plus the uniform failure for unknown users and wrong passwords.
async fn verify(
    server: &Server,
    socket: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    verifier: Option<ScramVerifier>,
    tls: Option<&TlsInfo>,
    (method, unknown): (&str, &str),
) -> Result<(), Fatal> {
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(|| ScramVerifier::dummy(user));
    let result = scram_exchange(
        server,
        socket,
        buf,
        verifier,
        tls.map(|t| t.end_point.as_slice()),
    )
    .await;
    match (result, known) {
        (Ok(()), true) => {
            server.metrics.auth(method, true, "ok");
            Ok(())
        }
        (Ok(()), false) | (Err(ScramFailure::Proof), false) => {
            server.metrics.auth(method, false, unknown);
            tracing::info!(
                user,
                method,
                "authentication failed: {}",
                unknown.replace('_', " ")
            );
            Err(failed(user))
        }
        (Err(ScramFailure::Proof), true) => {
            server.metrics.auth(method, false, "bad_password");
            tracing::info!(user, method, "authentication failed: wrong password");
            Err(failed(user))
        }
        (Err(ScramFailure::Protocol(f)), _) => {
            server.metrics.auth(method, false, "protocol");
            Err(f)
        }
    }
}

/// The one failure for an unknown user and a wrong password (no user enumeration).
fn failed(user: &str) -> Fatal {
    Fatal::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

enum ScramFailure {
    Proof,
    Protocol(Fatal),
}

impl From<Fatal> for ScramFailure {
    fn from(f: Fatal) -> Self {
        ScramFailure::Protocol(f)
    }
}

async fn scram_exchange(
    server: &Server,
    socket: &mut ClientStream,
    buf: &mut BytesMut,
    verifier: ScramVerifier,
    end_point: Option<&[u8]>,
) -> Result<(), ScramFailure> {
    let max = server.config().server.max_startup_message_size;
    let mut out = BytesMut::new();
    let mechanisms: &[&str] = if end_point.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    };
    messages::authentication_sasl(&mut out, mechanisms);
    send(socket, &mut out).await?;

    let first = read_frame(socket, buf, max).await?;
    let (mechanism, data) = messages::sasl_initial_response(&first.raw[..]).ok_or_else(bad_sasl)?;
    let channel_binding = match (mechanism, end_point) {
        (m, Some(cb)) if m == SCRAM_SHA_256_PLUS.as_bytes() => Some(cb.to_vec()),
        (m, cb) if m == SCRAM_SHA_256.as_bytes() => {
            // A client that supports channel binding but believes we do not ('y') while we
            // offered it is being downgraded by someone in the middle.
            if cb.is_some() && data.starts_with(b"y") {
                return Err(Fatal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    "SCRAM channel binding negotiation error: the server supports channel binding",
                )
                .into());
            }
            None
        }
        _ => {
            return Err(Fatal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "client selected an invalid SASL authentication mechanism",
            )
            .into());
        }
    };
    let mut scram = ScramServer::new(verifier, channel_binding);
    let server_first = scram
        .handle_client_first(data)
        .map_err(|_| ScramFailure::Proof)?;
    messages::authentication(&mut out, 11, &server_first);
    send(socket, &mut out).await?;

    let fin = read_frame(socket, buf, max).await?;
    if fin.tag != frontend_tag::PASSWORD {
        return Err(bad_sasl().into());
    }
    let server_final = scram
        .handle_client_final(fin.body())
        .map_err(|_| ScramFailure::Proof)?;
    messages::authentication(&mut out, 12, &server_final);
    messages::authentication(&mut out, 0, &[]);
    send(socket, &mut out).await?;
    Ok(())
}

fn bad_sasl() -> Fatal {
    Fatal::new(sqlstate::PROTOCOL_VIOLATION, "malformed SASL message")
}

async fn send(socket: &mut ClientStream, out: &mut BytesMut) -> Result<(), Fatal> {
    let r = socket.send(out).await;
    out.clear();
    r.map_err(|e| {
        Fatal::new(
            sqlstate::CONNECTION_FAILURE,
            format!("connection error: {e}"),
        )
    })
}
