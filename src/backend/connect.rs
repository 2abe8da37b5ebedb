//! Opening a backend connection: TCP, StartupMessage, authentication (SCRAM-SHA-256, md5,
//! cleartext or trust) through `postgres-protocol`, then preparing the proxy's statements.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::injection::Own;
use super::{BackendConn, BackendError};
use crate::cancel::{BackendKey, CancelsInFlight};
use crate::protocol::messages;
use crate::protocol::{TxStatus, backend_tag as bt};
use crate::stream::BackendStream;
use crate::tls::SslMode;
use crate::tls::identity::end_point_hash;

/// Where and as whom the proxy connects.
#[derive(Clone)]
pub struct BackendTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// The proxy's statements, all prepared on every new connection.
    pub own: std::sync::Arc<super::injection::OwnStatements>,
    /// How many client statements each backend connection keeps prepared.
    pub statement_cache_size: usize,
    /// Bytes of client statements each backend connection keeps prepared at most.
    pub statement_cache_bytes: usize,
    /// TLS client configuration (None: plaintext).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub sslmode: SslMode,
    /// SNI and verified host name.
    pub server_name: String,
    /// TCP keepalive for backend sockets (None: off).
    pub keepalive: Option<socket2::TcpKeepalive>,
}

impl std::fmt::Debug for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately omits the password.
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl BackendTarget {
    /// The target for `[databases.<name>]` in `cfg` (which must have it), with `own`
    /// prepared on every new connection: one place turns config into a connection, for the
    /// pools and for the doctor alike.
    pub fn for_database(
        name: &str,
        cfg: &crate::config::Config,
        own: std::sync::Arc<super::injection::OwnStatements>,
    ) -> Result<BackendTarget, crate::tls::TlsError> {
        let db = &cfg.databases[name];
        let tls = crate::tls::client::backend_config(
            db.sslmode,
            db.sslrootcert.as_deref(),
            db.sslcert.as_deref().zip(db.sslkey.as_deref()),
        )?;
        Ok(BackendTarget {
            tls,
            sslmode: db.sslmode,
            server_name: db.server_name.clone().unwrap_or_else(|| db.host.clone()),
            host: db.host.clone(),
            port: db.port,
            dbname: db.backend_dbname(name).to_string(),
            user: db.user.clone(),
            password: db.resolve_password(),
            connect_timeout: db.connect_timeout,
            own,
            statement_cache_size: db.prepared_statement_cache_size,
            statement_cache_bytes: db.prepared_statement_bytes,
            keepalive: cfg.server.keepalive(),
        })
    }

    /// `host:port` for logs and errors.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects, authenticates and prepares the proxy's statements.
    pub async fn connect(&self, id: u64) -> Result<BackendConn, BackendError> {
        tokio::time::timeout(self.connect_timeout, self.connect_with_encoding(id))
            .await
            .map_err(|_| BackendError::ConnectTimeout(self.addr()))?
    }

    /// A role or database default of `client_encoding` (anyone on the app role can set one
    /// with `ALTER ROLE ... SET` when the guard is off) that pgtenant could not read SQL in
    /// would otherwise fail every new backend connection: connect once more, asking for the
    /// database's own encoding at startup, which a default cannot override. Without such a
    /// default the first attempt is the only one, and the client sees what PostgreSQL
    /// itself would choose.
    async fn connect_with_encoding(&self, id: u64) -> Result<BackendConn, BackendError> {
        match self.connect_inner(id, None).await {
            Err(BackendError::UnreadableDefault { server_encoding }) => {
                tracing::warn!(
                    backend = %self.addr(),
                    user = %self.user,
                    database = %self.dbname,
                    "a role or database default sets client_encoding to an encoding pgtenant cannot read SQL in; \
                     connecting with client_encoding = {server_encoding} (run `pgtenant doctor` for the fix)"
                );
                self.connect_inner(id, Some(&server_encoding)).await
            }
            other => other,
        }
    }

    async fn connect_inner(
        &self,
        id: u64,
        client_encoding: Option<&str>,
    ) -> Result<BackendConn, BackendError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| BackendError::Connect {
                addr: self.addr(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        if let Some(k) = &self.keepalive {
            socket2::SockRef::from(&tcp).set_tcp_keepalive(k)?;
        }
        let addr = tcp.peer_addr()?;
        let (stream, end_point) = self.negotiate_tls(tcp).await?;
        let now = Instant::now();
        let mut conn = BackendConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            params: HashMap::new(),
            unreported: Vec::new(),
            defaults: HashMap::new(),
            params_match: None,
            prepared: Own::NONE,
            own: self.own.clone(),
            session_context: false,
            context_cache: None,
            carry: Default::default(),
            tenant: None,
            owed: Default::default(),
            statements: super::statements::BackendStatements::new(
                self.statement_cache_size,
                self.statement_cache_bytes,
            ),
            held_notifications: BytesMut::new(),
            cancels: std::sync::Arc::new(CancelsInFlight::new(BackendKey {
                addr,
                pid: 0,
                secret: 0,
            })),
            created: now,
            last_used: now,
            id,
        };
        let mut out = BytesMut::new();
        // Settings given at startup outrank role and database defaults (and RESET returns
        // to them). Any role may set a default on itself (`ALTER ROLE CURRENT_USER SET`),
        // so the settings a tenant could turn against every later connection of the shared
        // role are pinned here: how PostgreSQL reads SQL text (`on` is its own default
        // since 9.1), and the libraries a backend loads as it starts, which fail every
        // start when they cannot be loaded (`session_preload_libraries`, superuser-only,
        // stays the DBA's).
        let mut params = vec![
            ("user", self.user.as_str()),
            ("database", self.dbname.as_str()),
            ("standard_conforming_strings", "on"),
            ("local_preload_libraries", ""),
        ];
        params.extend(client_encoding.map(|e| ("client_encoding", e)));
        frontend::startup_message(params.iter().copied(), &mut out)?;
        conn.stream.send(&out).await?;
        self.authenticate(&mut conn, end_point).await?;
        self.finish_startup(&mut conn).await?;
        conn.defaults = conn.params.clone();
        conn.exchange(&prepare_with_sync(&self.own.all)).await?;
        conn.prepared = self.own.everything();
        Ok(conn)
    }

    /// SSLRequest and the TLS handshake, per sslmode. Exactly one byte is read after the
    /// request, so a server cannot slip plaintext into the encrypted stream (CVE-2021-23222).
    async fn negotiate_tls(
        &self,
        mut tcp: TcpStream,
    ) -> Result<(BackendStream, Option<Vec<u8>>), BackendError> {
        let Some(config) = &self.tls else {
            return Ok((BackendStream::Plain(tcp), None));
        };
        let mut out = BytesMut::new();
        frontend::ssl_request(&mut out);
        tcp.write_all(&out).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if self.sslmode == SslMode::Prefer => {
                return Ok((BackendStream::Plain(tcp), None));
            }
            b'N' => {
                return Err(BackendError::Tls(format!(
                    "server at {} does not support TLS (sslmode requires it)",
                    self.addr()
                )));
            }
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected answer {other:#x} to SSLRequest"
                )));
            }
        }
        let name = ServerName::try_from(self.server_name.clone()).map_err(|_| {
            BackendError::Tls(format!("invalid server name {:?}", self.server_name))
        })?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                BackendError::Tls(format!("TLS handshake with {} failed: {e}", self.addr()))
            })?;
        let end_point = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| end_point_hash(c));
        Ok((BackendStream::Tls(Box::new(tls)), end_point))
    }

    async fn authenticate(
        &self,
        conn: &mut BackendConn,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), BackendError> {
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                bt::AUTHENTICATION => {}
                bt::ERROR_RESPONSE => {
                    return Err(BackendError::Server(messages::parse_error_fields(f.body())));
                }
                other => {
                    return Err(BackendError::Protocol(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )));
                }
            }
            let body = f.body();
            if body.len() < 4 {
                return Err(BackendError::Protocol(
                    "short authentication message".into(),
                ));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let payload = &body[4..];
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => frontend::password_message(self.password()?.as_bytes(), &mut out)?,
                5 => {
                    let salt: [u8; 4] = payload
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| BackendError::Protocol("short md5 salt".into()))?;
                    let hash = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                10 => {
                    let offers = |m: &str| payload.split(|&b| b == 0).any(|x| x == m.as_bytes());
                    let (mechanism, binding) = match &end_point {
                        Some(cb) if offers(sasl::SCRAM_SHA_256_PLUS) => (
                            sasl::SCRAM_SHA_256_PLUS,
                            sasl::ChannelBinding::tls_server_end_point(cb.clone()),
                        ),
                        Some(_) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                        None => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                    };
                    if !offers(sasl::SCRAM_SHA_256) && mechanism == sasl::SCRAM_SHA_256 {
                        return Err(BackendError::Auth(
                            "server offers no supported SASL mechanism".into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(self.password()?.as_bytes(), binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut out)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        BackendError::Protocol("SASL continue without start".into())
                    })?;
                    s.update(payload)
                        .map_err(|e| BackendError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                12 => {
                    let s = scram
                        .take()
                        .ok_or_else(|| BackendError::Protocol("SASL final without start".into()))?;
                    let mut s = s;
                    s.finish(payload)
                        .map_err(|e| BackendError::Auth(e.to_string()))?;
                    continue;
                }
                other => {
                    return Err(BackendError::Auth(format!(
                        "unsupported authentication method {other}"
                    )));
                }
            }
            conn.stream.send(&out).await?;
        }
    }

    async fn finish_startup(&self, conn: &mut BackendConn) -> Result<(), BackendError> {
        let mut unreadable_encoding = false;
        loop {
            let f = conn.read_frame().await?;
            let body = f.body();
            match f.tag {
                bt::PARAMETER_STATUS => {
                    // A role or database default under which PostgreSQL reads SQL text
                    // differently from pgtenant's guard: never hand such a backend out. An
                    // encoding is retried (see `connect_with_encoding`) once the server's
                    // own is known; anything else the startup parameters should have ruled
                    // out.
                    if let Some((k, v)) = conn.note_parameter(body)
                        && let Some(why) = crate::policy::unreadable_report(&k, &v)
                    {
                        if k.eq_ignore_ascii_case("client_encoding") {
                            unreadable_encoding = true;
                            continue;
                        }
                        return Err(BackendError::Protocol(format!(
                            "the backend reports {why}, under which pgtenant's guard cannot read SQL"
                        )));
                    }
                }
                bt::BACKEND_KEY_DATA if body.len() >= 8 => {
                    // Not shared yet: the connection is still starting.
                    conn.cancels = std::sync::Arc::new(CancelsInFlight::new(BackendKey {
                        addr: conn.cancels.key.addr,
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    }));
                }
                bt::ERROR_RESPONSE => {
                    return Err(BackendError::Server(messages::parse_error_fields(body)));
                }
                bt::READY_FOR_QUERY if unreadable_encoding => {
                    let server = conn.params.get("server_encoding").cloned();
                    return Err(match server {
                        // A server encoding is always one the guard reads (the client-only
                        // encodings cannot be a database's), but check rather than loop.
                        Some(e) if crate::policy::unreadable_report("client_encoding", &e).is_none() => {
                            BackendError::UnreadableDefault { server_encoding: e }
                        }
                        _ => BackendError::Protocol(
                            "the backend reports an unreadable client_encoding and no usable server_encoding".into(),
                        ),
                    });
                }
                bt::READY_FOR_QUERY => {
                    return match body.first().copied().and_then(TxStatus::from_byte) {
                        Some(TxStatus::Idle) => Ok(()),
                        _ => Err(BackendError::Protocol(
                            "backend not idle after startup".into(),
                        )),
                    };
                }
                _ => {}
            }
        }
    }

    fn password(&self) -> Result<&str, BackendError> {
        self.password.as_deref().ok_or_else(|| {
            BackendError::Auth("server requested a password but none is configured".into())
        })
    }
}

fn prepare_with_sync(prepare: &[u8]) -> BytesMut {
    let mut out = BytesMut::from(prepare);
    messages::sync(&mut out);
    out
}
