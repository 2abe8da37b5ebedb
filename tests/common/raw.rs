//! A tiny raw-protocol client for tests that need exact control of the bytes on the wire
//! (pipelines with several Syncs in one write, malformed input, abrupt disconnects).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use pgtenant::protocol::codec::split_frame;
use pgtenant::protocol::messages::{self, ErrorFields, parse_error_fields};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// One backend message as received.
pub type Msg = (u8, Bytes);

/// A raw connection's transport: plain TCP, or TLS over it.
pub enum RawStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A raw connection to the proxy.
pub struct RawConn {
    pub stream: RawStream,
    buf: BytesMut,
    /// The process id of BackendKeyData (the proxy-issued one through pgtenant).
    pub pid: i32,
    /// The NoticeResponses received while logging in.
    pub startup_notices: Vec<ErrorFields>,
}

impl RawConn {
    /// Opens a TCP connection without sending anything.
    pub async fn tcp(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: RawStream::Plain(TcpStream::connect(addr).await.expect("tcp connect")),
            buf: BytesMut::new(),
            pid: 0,
            startup_notices: Vec::new(),
        }
    }

    /// Connects and authenticates with SCRAM-SHA-256; returns the ErrorResponse on failure.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<RawConn, ErrorFields> {
        Self::connect_with(addr, &[("user", user), ("database", "app")], password).await
    }

    /// Like [`RawConn::connect`] with arbitrary startup parameters.
    pub async fn connect_with(
        addr: SocketAddr,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawConn, ErrorFields> {
        Self::tcp(addr).await.login(params, password).await
    }

    /// Like [`RawConn::connect`] over TLS (SSLRequest, then a handshake that verifies the
    /// server's certificate for `localhost` with `tls`).
    pub async fn connect_tls(
        addr: SocketAddr,
        user: &str,
        password: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<RawConn, ErrorFields> {
        let mut tcp = TcpStream::connect(addr).await.map_err(|_| closed())?;
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(|_| closed())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(|_| closed())?;
        assert_eq!(answer[0], b'S', "TLS not offered");
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|_| closed())?;
        let c = RawConn {
            stream: RawStream::Tls(Box::new(tls)),
            buf: BytesMut::new(),
            pid: 0,
            startup_notices: Vec::new(),
        };
        c.login(&[("user", user), ("database", "app")], password)
            .await
    }

    /// Sends the startup packet and answers SCRAM until ReadyForQuery.
    async fn login(
        mut self,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawConn, ErrorFields> {
        let c = &mut self;
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).unwrap();
        c.send(&out).await;
        let mut scram = None;
        loop {
            let (tag, body) = c.recv().await.ok_or_else(closed)?;
            match tag {
                b'E' => return Err(parse_error_fields(&body)),
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                                .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().unwrap();
                            s.update(&body[4..]).unwrap();
                            frontend::sasl_response(s.message(), &mut out).unwrap();
                        }
                        12 => {
                            scram.take().unwrap().finish(&body[4..]).unwrap();
                        }
                        other => panic!("unexpected auth code {other}"),
                    }
                    if !out.is_empty() {
                        c.send(&out).await;
                    }
                }
                b'K' => c.pid = i32::from_be_bytes(body[..4].try_into().unwrap()),
                b'N' => c.startup_notices.push(parse_error_fields(&body)),
                b'Z' => return Ok(self),
                _ => {}
            }
        }
    }

    /// Sends the first `at` bytes of what `bytes` becomes on the wire and closes the
    /// connection: over TLS, `bytes` is sealed into records and the cut falls inside the
    /// last one (the server can never decrypt it); plain, the cut is after `at` bytes.
    pub async fn vanish_mid_record(&mut self, bytes: &[u8], at: usize) {
        match &mut self.stream {
            RawStream::Plain(tcp) => {
                let _ = tcp.write_all(&bytes[..at.min(bytes.len())]).await;
                let _ = tcp.shutdown().await;
            }
            RawStream::Tls(tls) => {
                use std::io::Write;
                let (tcp, conn) = tls.get_mut();
                conn.writer().write_all(bytes).unwrap();
                let mut wire = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut wire).unwrap();
                }
                // The last record's start: walk the 5-byte headers (type, version, length).
                let mut start = 0;
                let mut next = 0;
                while next + 5 <= wire.len() {
                    start = next;
                    next += 5 + u16::from_be_bytes([wire[next + 3], wire[next + 4]]) as usize;
                }
                // Strictly inside it: after its first byte, before its last.
                let cut = start + 1 + at % (next - start - 1);
                let _ = tcp.write_all(&wire[..cut]).await;
                let _ = tcp.shutdown().await;
            }
        }
    }

    /// Writes bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one message; None on EOF or after 20 s of silence.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 30).ok()? {
                return Some((f.tag, Bytes::copy_from_slice(f.body())));
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
                    .await
                    .ok()?
                    .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until ReadyForQuery (inclusive).
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await {
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Runs a simple query; returns all messages up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.send(&out).await;
        self.until_ready().await
    }

    /// True when the server closed the connection (EOF within a few seconds).
    pub async fn is_closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn closed() -> ErrorFields {
    ErrorFields {
        severity: "FATAL".into(),
        code: "closed".into(),
        message: "connection closed".into(),
        detail: String::new(),
    }
}

/// Appends Parse(unnamed) + Bind + Execute of `sql` with text parameters, no Sync.
pub fn extended(out: &mut BytesMut, sql: &str, params: &[&str]) {
    messages::parse(out, "", sql);
    messages::bind(out, "", params.iter().map(|p| p.as_bytes()));
    messages::execute(out);
}

/// Appends a FunctionCall of the function with `oid`: text arguments, a text result.
pub fn function_call(out: &mut BytesMut, oid: u32, args: &[&str]) {
    messages::write_msg(out, b'F', |b| {
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(args.len() as i16).to_be_bytes());
        for a in args {
            b.extend_from_slice(&(a.len() as i32).to_be_bytes());
            b.extend_from_slice(a.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes());
    });
}

/// Appends a Sync.
pub fn sync(out: &mut BytesMut) {
    messages::sync(out);
}

/// The text values of every DataRow in `msgs`.
pub fn data_rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| {
            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut rest = &body[2..];
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
                    rest = &rest[4..];
                    if len < 0 {
                        return None;
                    }
                    let v = String::from_utf8_lossy(&rest[..len as usize]).into_owned();
                    rest = &rest[len as usize..];
                    Some(v)
                })
                .collect()
        })
        .collect()
}

/// The ErrorResponses in `msgs`.
pub fn errors(msgs: &[Msg]) -> Vec<ErrorFields> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| parse_error_fields(b))
        .collect()
}

/// The message tags in `msgs`, as a string (e.g. "12DCZ").
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// A length-prefixed untagged packet (startup-style) with `code` and `rest`.
pub fn startup_packet(code: u32, rest: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32((rest.len() + 8) as u32);
    b.put_u32(code);
    b.put_slice(rest);
    b
}

/// Flush: asks for the replies so far without ending the pipeline.
pub fn flush(out: &mut BytesMut) {
    messages::write_msg(out, b'H', |_| {});
}

/// Close of the prepared statement `name`.
pub fn close_statement(out: &mut BytesMut, name: &str) {
    messages::write_msg(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}

/// Execute of `portal` returning at most `max_rows` rows (0: all).
pub fn execute_max(out: &mut BytesMut, portal: &str, max_rows: u32) {
    messages::write_msg(out, b'E', |b| {
        b.extend_from_slice(portal.as_bytes());
        b.extend_from_slice(&[0]);
        b.extend_from_slice(&max_rows.to_be_bytes());
    });
}
