//! One client connection up to an authenticated tenant: startup packet, authentication,
//! the initial session parameters, then hand-over to [`crate::session`].

mod auth;
mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::GaugeGuard;
use crate::protocol::messages::{self, Severity};
use crate::protocol::{TxStatus, sqlstate};
use crate::server::Server;
use crate::session::{self, Session};

pub use handshake::{Startup, StartupOutcome};

/// A client-visible failure during startup: sent as FATAL, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
}

impl Fatal {
    /// A FATAL with the given SQLSTATE.
    pub fn new(code: impl Into<std::borrow::Cow<'static, str>>, message: impl Into<String>) -> Fatal {
        Fatal { code: code.into(), message: message.into() }
    }
}

/// Serves one accepted socket to completion.
pub async fn serve(server: Arc<Server>, mut socket: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    let conn_id = rand::random::<u32>();
    let span = tracing::info_span!("client", id = conn_id, addr = %peer, tenant = tracing::field::Empty);
    async move {
        let Some(_slot) = server.admit_client() else {
            server.metrics.protocol_errors.with_label_values(&["too_many_clients"]).inc();
            send_fatal(&mut socket, &Fatal::new(sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already")).await;
            return;
        };
        let _gauge = GaugeGuard::new(server.metrics.client_connections.with_label_values(&["connected"]));
        let timeout = server.config.server.auth_timeout;
        let outcome = tokio::time::timeout(timeout, handshake::startup(&server, &mut socket)).await;
        let startup = match outcome {
            Err(_) => {
                server.metrics.protocol_errors.with_label_values(&["auth_timeout"]).inc();
                send_fatal(&mut socket, &Fatal::new(sqlstate::CONNECTION_FAILURE, "authentication timed out")).await;
                return;
            }
            Ok(Err(fatal)) => {
                send_fatal(&mut socket, &fatal).await;
                return;
            }
            Ok(Ok(StartupOutcome::Done)) => return,
            Ok(Ok(StartupOutcome::Session(s))) => s,
        };
        tracing::Span::current().record("tenant", startup.tenant.name.as_str());
        tracing::info!(database = %startup.pool.name, "client authenticated");
        let mut session = match Session::start(server.clone(), socket, startup).await {
            Ok(s) => s,
            Err((mut socket, fatal)) => {
                send_fatal(&mut socket, &fatal).await;
                return;
            }
        };
        let end = session::run(&mut session, shutdown).await;
        tracing::info!(reason = %end, "client disconnected");
    }
    .instrument(span)
    .await
}

/// Sends a FATAL error; failures are ignored because the connection is closing anyway.
pub async fn send_fatal(socket: &mut TcpStream, fatal: &Fatal) {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, Severity::Fatal, &fatal.code, &fatal.message);
    let _ = socket.write_all(&out).await;
    let _ = socket.shutdown().await;
}

/// The messages that complete a successful startup: parameters, cancel key, ready.
pub fn startup_response<'a>(
    out: &mut BytesMut,
    params: impl Iterator<Item = (&'a str, &'a str)>,
    pid: i32,
    secret: i32,
) {
    for (k, v) in params {
        messages::parameter_status(out, k.as_bytes(), v.as_bytes());
    }
    messages::backend_key_data(out, pid, secret);
    messages::ready_for_query(out, TxStatus::Idle);
}
