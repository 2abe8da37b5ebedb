//! SCRAM-SHA-256 authentication of a client as a tenant. Unknown tenants run the same
//! exchange against a dummy verifier and get the same error as a wrong password, so the
//! proxy never reveals which tenants exist.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Fatal;
use super::handshake::read_frame;
use crate::auth::scram::{ScramServer, ScramVerifier};
use crate::protocol::codec::read_cstr;
use crate::protocol::{frontend_tag, messages, sqlstate};
use crate::server::Server;
use crate::tenant::Tenant;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Authenticates `user`; returns its tenant or the FATAL to send.
pub async fn authenticate(
    server: &Server,
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<Arc<Tenant>, Fatal> {
    let tenant = server.tenants.lookup(user);
    let verifier = tenant.as_ref().map(|t| t.verifier.clone()).unwrap_or_else(|| ScramVerifier::dummy(user));
    let result = scram_exchange(server, socket, buf, verifier).await;
    let failed = || Fatal::new(sqlstate::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""));
    match (result, tenant) {
        (Ok(()), Some(t)) => {
            server.metrics.auth("scram-sha-256", true, "ok");
            Ok(t)
        }
        (Ok(()), None) | (Err(ScramFailure::Proof), None) => {
            server.metrics.auth("scram-sha-256", false, "unknown_tenant");
            tracing::info!(user, "authentication failed: unknown tenant");
            Err(failed())
        }
        (Err(ScramFailure::Proof), Some(_)) => {
            server.metrics.auth("scram-sha-256", false, "bad_password");
            tracing::info!(user, "authentication failed: wrong password");
            Err(failed())
        }
        (Err(ScramFailure::Protocol(f)), _) => {
            server.metrics.auth("scram-sha-256", false, "protocol");
            Err(f)
        }
    }
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
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    verifier: ScramVerifier,
) -> Result<(), ScramFailure> {
    let max = server.config.server.max_startup_message_size;
    let mut out = BytesMut::new();
    messages::authentication_sasl(&mut out, &[SCRAM_SHA_256]);
    send(socket, &mut out).await?;

    let first = read_frame(socket, buf, max).await?;
    let (mechanism, data) = parse_initial_response(&first.raw[..]).ok_or_else(bad_sasl)?;
    if mechanism != SCRAM_SHA_256.as_bytes() {
        return Err(Fatal::new(sqlstate::PROTOCOL_VIOLATION, "client selected an invalid SASL authentication mechanism").into());
    }
    let mut scram = ScramServer::new(verifier, None);
    let server_first = scram.handle_client_first(data).map_err(|_| ScramFailure::Proof)?;
    messages::authentication(&mut out, 11, &server_first);
    send(socket, &mut out).await?;

    let fin = read_frame(socket, buf, max).await?;
    if fin.tag != frontend_tag::PASSWORD {
        return Err(bad_sasl().into());
    }
    let server_final = scram.handle_client_final(fin.body()).map_err(|_| ScramFailure::Proof)?;
    messages::authentication(&mut out, 12, &server_final);
    messages::authentication(&mut out, 0, &[]);
    send(socket, &mut out).await?;
    Ok(())
}

/// SASLInitialResponse: mechanism, then an Int32 length (-1 for none) and that many bytes.
fn parse_initial_response(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    if raw.first() != Some(&frontend_tag::PASSWORD) {
        return None;
    }
    let (mechanism, rest) = read_cstr(raw.get(5..)?)?;
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = i32::from_be_bytes(len_bytes);
    let data = rest.get(4..)?;
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

fn bad_sasl() -> Fatal {
    Fatal::new(sqlstate::PROTOCOL_VIOLATION, "malformed SASL message")
}

async fn send(socket: &mut TcpStream, out: &mut BytesMut) -> Result<(), Fatal> {
    let r = socket.write_all(out).await;
    out.clear();
    r.map_err(|e| Fatal::new(sqlstate::CONNECTION_FAILURE, format!("connection error: {e}")))
}
