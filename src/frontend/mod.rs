//! One client connection up to an authenticated tenant: startup packet, authentication,
//! the initial session parameters, then hand-over to [`crate::session`].

mod auth;
mod cert;
mod handshake;
pub mod negotiate;
mod read;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::registry::{ClientHandle, Identity, SessionSignal};
use crate::session::{self, Session};
use crate::shared::Server;
use crate::stream::ClientStream;

use crate::session::handover::{Fatal, Startup};
pub use handshake::Login;
use negotiate::Negotiated;

/// Serves one accepted socket to completion. A plain function returning the task's future:
/// its arguments are used up before the future exists, so the future does not keep them.
pub fn serve(
    server: Arc<Server>,
    socket: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    let _ = socket.set_nodelay(true);
    if let Some(k) = server.config().server.keepalive() {
        let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&k);
    }
    // The id is the one SHOW CLIENTS lists, so logs and the console line up.
    let me = server.registry.connect(peer);
    let conn_id = me.entry.id;
    let span =
        tracing::info_span!("client", id = conn_id, addr = %peer, tenant = tracing::field::Empty);
    let entry = me.entry.clone();
    async move {
        // The whole start-up (TLS, SCRAM, refusals) is boxed and freed once it is over, so
        // the task of a long-lived client carries only the session's small state. KILL
        // ends it at any point: from the console, or to make room for a new connection
        // (`server.startup_evict_after`). Only the start-up runs in the client's span: the
        // session makes one for each event it logs (see `Session::span`).
        let started = tokio::select! {
            biased;
            started = Box::pin(start_up(server, socket, me).instrument(span.clone())) => started,
            _ = entry.signal.wait(SessionSignal::KILL) => {
                tracing::info!(parent: &span, "connection closed in start-up: killed, or gave way to a new one");
                None
            }
        };
        drop((entry, span));
        let Some((slot, mut session)) = started else {
            return;
        };
        session.hold(slot);
        session::drive(session, session::lot::Wake::Ready).await;
    }
}

/// Admission, negotiation, authentication and the session's start; None when the
/// connection ended there (the client was told why, or was the admin console, or a cancel
/// request).
async fn start_up(
    server: Arc<Server>,
    socket: TcpStream,
    me: ClientHandle,
) -> Option<(crate::shared::ClientSlot, Box<Session>)> {
    let Some(slot) = server.admit_client(me.entry.id) else {
        refuse(
            &server,
            ClientStream::Plain(socket),
            "max_client_connections",
        )
        .await;
        return None;
    };
    let deadline = tokio::time::Instant::now() + server.config().server.auth_timeout;
    // negotiate enforces the deadline itself, so it can still send a FATAL.
    // Start-up futures are boxed: they are large (TLS, SCRAM) and finished before the
    // session starts, so an idle client's task does not carry their size.
    let (stream, negotiated) = Box::pin(negotiate::negotiate(&server, socket, deadline)).await;
    let mut stream = stream?;
    let Negotiated::Startup { params, buf, tls } = settle(&server, &mut stream, negotiated).await?
    else {
        return None;
    };
    let outcome = tokio::time::timeout_at(
        deadline,
        Box::pin(handshake::startup(&server, &mut stream, params, buf, tls)),
    )
    .await;
    let (stream, startup, me) = tenant_login(&server, stream, outcome, me).await?;
    tracing::Span::current().record("tenant", startup.tenant.name.as_str());
    if me
        .authenticate(identity(&me, &startup), startup.tenant.connection_limit)
        .is_none()
    {
        tracing::info!("refused: the tenant has reached its connection limit");
        let message = format!(
            "too many connections for tenant \"{}\"",
            startup.tenant.name
        );
        refuse_with(&server, stream, "tenant_max_connections", message).await;
        return None;
    }
    tracing::info!(database = %startup.pool.name, "client authenticated");
    match Session::start(server, stream, startup, me).await {
        Ok(session) => Some((slot, session)),
        Err((mut socket, fatal)) => {
            send_fatal(&mut socket, &fatal).await;
            None
        }
    }
}

/// Negotiation's outcome: a startup packet to go on with, or None once it ended the
/// connection (a FATAL sent, a cancel request served, the client gone).
async fn settle(
    server: &Server,
    stream: &mut ClientStream,
    negotiated: Result<Negotiated, Fatal>,
) -> Option<Negotiated> {
    match negotiated {
        Err(fatal) => {
            send_fatal(stream, &fatal).await;
            None
        }
        Ok(Negotiated::Closed) => None,
        Ok(Negotiated::Cancel { pid, secret }) => {
            match server.registry.cancel_target(pid, secret) {
                Some(client) => {
                    Box::pin(client.cancel.cancel(pid)).await;
                }
                None => tracing::debug!(client = pid, "cancel request with an unknown key"),
            }
            None
        }
        Ok(startup) => Some(startup),
    }
}

/// The end of the handshake: a tenant's start-up (with the stream and the registry entry,
/// handed back), or None when it ended here: a timeout or FATAL (sent), or an admin user
/// (served by the console, outside the client registry).
async fn tenant_login(
    server: &Arc<Server>,
    mut stream: ClientStream,
    outcome: Result<Result<Login, Fatal>, tokio::time::error::Elapsed>,
    me: ClientHandle,
) -> Option<(ClientStream, Startup, ClientHandle)> {
    match outcome {
        Err(_) => {
            server
                .metrics
                .client_timeouts
                .with_label_values(&["auth"])
                .inc();
            let timed_out = Fatal::new(sqlstate::CONNECTION_FAILURE, "authentication timed out");
            send_fatal(&mut stream, &timed_out).await;
            None
        }
        Ok(Err(fatal)) => {
            send_fatal(&mut stream, &fatal).await;
            None
        }
        Ok(Ok(Login::Tenant(s))) => Some((stream, s, me)),
        Ok(Ok(Login::Admin {
            user,
            full,
            leftover,
        })) => {
            drop(me);
            tracing::info!(user, "admin console login");
            Box::pin(crate::admin::serve(server, stream, leftover, full)).await;
            None
        }
    }
}

/// What the registry shows of an authenticated client (SHOW CLIENTS, per-tenant limits).
fn identity(me: &ClientHandle, startup: &Startup) -> Identity {
    Identity {
        names: me
            .registry()
            .names(&startup.tenant.name, &startup.user, &startup.pool.name),
        application_name: startup
            .settings
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.chars().take(64).collect())
            .unwrap_or_default(),
        stats: Default::default(),
    }
}

/// Refuses a client over `max_client_connections` (FATAL 53300, counted under `reason`).
async fn refuse(server: &Server, stream: ClientStream, reason: &str) {
    refuse_with(
        server,
        stream,
        reason,
        "sorry, too many clients already".into(),
    )
    .await;
}

/// Refuses a client over a connection limit with FATAL 53300 and `message`.
async fn refuse_with(server: &Server, mut stream: ClientStream, reason: &str, message: String) {
    server
        .metrics
        .client_rejections
        .with_label_values(&[reason])
        .inc();
    send_fatal(
        &mut stream,
        &Fatal::new(sqlstate::TOO_MANY_CONNECTIONS, message),
    )
    .await;
}

/// Sends a FATAL error; failures are ignored because the connection is closing anyway.
pub async fn send_fatal(socket: &mut ClientStream, fatal: &Fatal) {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, Severity::Fatal, &fatal.code, &fatal.message);
    let _ = socket.send(&out).await;
    let _ = socket.shutdown().await;
}
