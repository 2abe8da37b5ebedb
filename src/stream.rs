//! Byte streams that may or may not be TLS: one type per direction, so the session and
//! backend code are written once for both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

macro_rules! either_stream {
    ($name:ident, $tls:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub enum $name {
            Plain(TcpStream),
            Tls(Box<$tls>),
            /// A plain socket taken out of the runtime while its client is idle (see
            /// `crate::session::lot`); None only while it is being moved.
            Parked(Option<std::net::TcpStream>),
        }

        impl $name {
            /// Writes all of `data`, then flushes a TLS stream: its last records may
            /// otherwise stay in the TLS layer's buffer (a write that found the socket full
            /// returns once the plaintext is taken), and the peer waits for them forever.
            pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
                use tokio::io::AsyncWriteExt;
                self.write_all(data).await?;
                if matches!(self, $name::Tls(_)) {
                    self.flush().await?;
                }
                Ok(())
            }

            /// The TCP socket underneath, unless parked.
            pub fn tcp(&self) -> Option<&TcpStream> {
                match self {
                    $name::Plain(s) => Some(s),
                    $name::Tls(s) => Some(s.get_ref().0),
                    $name::Parked(_) => None,
                }
            }

            /// Takes a plain socket out of the runtime's reactor; returns its descriptor.
            pub fn park(&mut self) -> io::Result<std::os::fd::RawFd> {
                use std::os::fd::AsRawFd;
                match std::mem::replace(self, $name::Parked(None)) {
                    $name::Plain(s) => {
                        let s = s.into_std()?;
                        let fd = s.as_raw_fd();
                        *self = $name::Parked(Some(s));
                        Ok(fd)
                    }
                    other => {
                        *self = other;
                        Err(io::Error::other("only a plain socket can be parked"))
                    }
                }
            }

            /// The descriptor of a parked socket.
            pub fn parked_fd(&self) -> Option<std::os::fd::RawFd> {
                use std::os::fd::AsRawFd;
                match self {
                    $name::Parked(Some(s)) => Some(s.as_raw_fd()),
                    _ => None,
                }
            }

            /// Registers a parked socket with the current runtime again.
            pub fn unpark(&mut self) -> io::Result<()> {
                match std::mem::replace(self, $name::Parked(None)) {
                    $name::Parked(Some(s)) => {
                        *self = $name::Plain(TcpStream::from_std(s)?);
                        Ok(())
                    }
                    $name::Parked(None) => Err(not_connected()),
                    other => {
                        *self = other;
                        Ok(())
                    }
                }
            }

            /// True when the connection carries TLS.
            pub fn is_tls(&self) -> bool {
                matches!(self, $name::Tls(_))
            }

            /// Without blocking: true when nothing arrived and the peer has not closed, i.e.
            /// an idle connection is still usable.
            pub fn is_quiet(&self) -> bool {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                let mut cx = Context::from_waker(Waker::noop());
                self.tcp()
                    .is_some_and(|t| matches!(t.poll_peek(&mut cx, &mut buf), Poll::Pending))
            }
        }

        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                    $name::Parked(_) => Poll::Ready(Err(not_connected())),
                }
            }
        }

        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, data),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
                    $name::Parked(_) => Poll::Ready(Err(not_connected())),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                    $name::Parked(_) => Poll::Ready(Err(not_connected())),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                    $name::Parked(_) => Poll::Ready(Err(not_connected())),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                    $name::Parked(_) => Poll::Ready(Err(not_connected())),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::Plain(s) => s.is_write_vectored(),
                    $name::Tls(s) => s.is_write_vectored(),
                    $name::Parked(_) => false,
                }
            }
        }
    };
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket is parked")
}

either_stream!(
    ClientStream,
    tokio_rustls::server::TlsStream<TcpStream>,
    "A client connection: plaintext, or TLS after SSLRequest or direct TLS."
);
either_stream!(
    BackendStream,
    tokio_rustls::client::TlsStream<TcpStream>,
    "A connection to PostgreSQL: plaintext, or TLS after SSLRequest."
);
