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
        }

        impl $name {
            /// The TCP socket underneath.
            pub fn tcp(&self) -> &TcpStream {
                match self {
                    $name::Plain(s) => s,
                    $name::Tls(s) => s.get_ref().0,
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
                matches!(self.tcp().poll_peek(&mut cx, &mut buf), Poll::Pending)
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
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::Plain(s) => s.is_write_vectored(),
                    $name::Tls(s) => s.is_write_vectored(),
                }
            }
        }
    };
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
