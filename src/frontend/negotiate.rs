//! Connection-level negotiation before the StartupMessage: SSLRequest, GSSENCRequest,
//! PostgreSQL 17 direct TLS (a ClientHello as the first byte, ALPN `postgresql` required),
//! and CancelRequest. Bytes a client sends after SSLRequest but before the TLS handshake are
//! a protocol violation and are never processed (CVE-2021-23214).

use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Fatal;
use super::read::read_more;
use crate::protocol::sqlstate;
use crate::protocol::startup::{StartupPacket, StartupParams, parse_startup};
use crate::shared::Server;
use crate::stream::ClientStream;
use crate::tls::TlsMode;

/// First byte of a TLS handshake record: a client speaking TLS right away.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the TLS handshake established about the client.
pub struct TlsInfo {
    /// The certificate chain the client presented (not yet verified against the CAs).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// `tls-server-end-point` channel binding data of the certificate we served.
    pub end_point: Vec<u8>,
    /// Verifier for the presented chain (None when client certificates are not requested).
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// How negotiation ended.
pub enum Negotiated {
    Startup {
        params: StartupParams,
        buf: BytesMut,
        tls: Option<TlsInfo>,
    },
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// The client went away, or TLS failed (no PostgreSQL error can be sent then).
    Closed,
}

/// Runs negotiation; returns the stream (None once a failed TLS handshake consumed it) and
/// the outcome, or the FATAL to send on that stream.
pub async fn negotiate(
    server: &Arc<Server>,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
) -> (Option<ClientStream>, Result<Negotiated, Fatal>) {
    let mut stream = ClientStream::Plain(tcp);
    let mut tls_info = None;
    if server.tls.is_some() {
        let mut first = [0u8; 1];
        if let ClientStream::Plain(tcp) = &stream
            && matches!(
                tokio::time::timeout_at(deadline, tcp.peek(&mut first))
                    .await
                    .unwrap_or(Ok(0)),
                Ok(1)
            )
            && first[0] == TLS_HANDSHAKE_RECORD
        {
            let ClientStream::Plain(tcp) = stream else {
                unreachable!()
            };
            match tokio::time::timeout_at(deadline, accept_tls(server, tcp, true))
                .await
                .ok()
                .flatten()
            {
                Some((s, info)) => {
                    stream = s;
                    tls_info = Some(info);
                }
                None => return (None, Ok(Negotiated::Closed)),
            }
        }
    }
    let max = server.config().server.max_startup_message_size;
    let mut buf = BytesMut::with_capacity(256);
    // Like PostgreSQL: one SSLRequest and one GSSENCRequest at most; a repeat is FATAL (a
    // client repeating them unread would otherwise get `N`s until its window is full).
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let packet = loop {
            match parse_startup(&mut buf, max) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                // A Terminate where the startup packet belongs: a client that hung up
                // before it began (node-postgres's connect() then end()). PostgreSQL closes
                // without a word; an error would reach a client that already left.
                Err(_) if buf.starts_with(b"X\0\0\0\x04") => {
                    return (Some(stream), Ok(Negotiated::Closed));
                }
                Err(e) => {
                    server
                        .metrics
                        .protocol_errors
                        .with_label_values(&["bad_startup"])
                        .inc();
                    return (
                        Some(stream),
                        Err(Fatal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
                    );
                }
            }
            match tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf)).await {
                Err(_) => {
                    server
                        .metrics
                        .protocol_errors
                        .with_label_values(&["auth_timeout"])
                        .inc();
                    let f = Fatal::new(sqlstate::CONNECTION_FAILURE, "authentication timed out");
                    return (Some(stream), Err(f));
                }
                Ok(Ok(0) | Err(_)) => return (Some(stream), Ok(Negotiated::Closed)),
                Ok(Ok(_)) => {}
            }
        };
        match packet {
            StartupPacket::SslRequest if ssl_done || stream.is_tls() => {
                return (Some(stream), Err(repeated_request(80877103)));
            }
            StartupPacket::GssEncRequest if gss_done => {
                return (Some(stream), Err(repeated_request(80877104)));
            }
            StartupPacket::SslRequest if server.tls.is_some() => {
                if !buf.is_empty() {
                    server
                        .metrics
                        .protocol_errors
                        .with_label_values(&["data_after_sslrequest"])
                        .inc();
                    let f = Fatal::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    );
                    return (Some(stream), Err(f));
                }
                let ClientStream::Plain(mut tcp) = stream else {
                    unreachable!()
                };
                if tcp.write_all(b"S").await.is_err() {
                    return (Some(ClientStream::Plain(tcp)), Ok(Negotiated::Closed));
                }
                match tokio::time::timeout_at(deadline, accept_tls(server, tcp, false))
                    .await
                    .ok()
                    .flatten()
                {
                    Some((s, info)) => {
                        stream = s;
                        tls_info = Some(info);
                    }
                    None => return (None, Ok(Negotiated::Closed)),
                }
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let ssl = matches!(packet, StartupPacket::SslRequest);
                (ssl_done, gss_done) = (ssl_done || ssl, gss_done || !ssl);
                let wrote = tokio::time::timeout_at(deadline, stream.write_all(b"N")).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    return (Some(stream), Ok(Negotiated::Closed));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                return (Some(stream), Ok(Negotiated::Cancel { pid, secret }));
            }
            StartupPacket::Startup(params) => {
                let required = server
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.config().mode == TlsMode::Require);
                if required && !stream.is_tls() {
                    server.metrics.auth("tls", false, "tls_required");
                    let f = Fatal::new(
                        sqlstate::INVALID_AUTHORIZATION,
                        "pgtenant requires an encrypted connection (connect with sslmode=require)",
                    );
                    return (Some(stream), Err(f));
                }
                return (
                    Some(stream),
                    Ok(Negotiated::Startup {
                        params,
                        buf,
                        tls: tls_info,
                    }),
                );
            }
        }
    }
}

/// PostgreSQL's answer to a second SSLRequest or GSSENCRequest (`code`): the request code
/// read as a protocol version it does not support.
fn repeated_request(code: u32) -> Fatal {
    Fatal::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
            code >> 16,
            code & 0xffff
        ),
    )
}

/// TLS handshake with the current certificate generation; None when it fails.
async fn accept_tls(
    server: &Arc<Server>,
    tcp: TcpStream,
    direct: bool,
) -> Option<(ClientStream, TlsInfo)> {
    let tls = server.tls.as_ref()?;
    let generation = tls.current();
    let acceptor = tokio_rustls::TlsAcceptor::from(generation.config.clone());
    let accepted = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            server
                .metrics
                .tls_handshakes
                .with_label_values(&["failure"])
                .inc();
            tracing::info!(error = %e, "TLS handshake failed");
            return None;
        }
    };
    let conn = accepted.get_ref().1;
    if direct && conn.alpn_protocol() != Some(b"postgresql") {
        server
            .metrics
            .tls_handshakes
            .with_label_values(&["failure"])
            .inc();
        tracing::info!("direct TLS connection without ALPN \"postgresql\" refused");
        return None;
    }
    let peer_chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    server
        .metrics
        .tls_handshakes
        .with_label_values(&["success"])
        .inc();
    let info = TlsInfo {
        peer_chain,
        end_point: generation.end_point.clone(),
        verifier: generation.client_verifier.clone(),
    };
    Some((ClientStream::Tls(Box::new(accepted)), info))
}
