//! Requests go to the backend while its replies are read. PostgreSQL stops reading its input
//! while it cannot write its output, so a relay that finished a write before reading again
//! would wait for ever once a client pipelines more than the sockets' buffers hold while it
//! reads its replies (large rows, long pipelines): the proxy waiting for PostgreSQL to take
//! its requests, PostgreSQL waiting for the proxy to take its replies.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::{End, Session};

/// Room made in the backend's read buffer for a read during a write.
const READ_ROOM: usize = 8 * 1024;

/// What one turn of [`Session::send_to_backend`] did.
enum Step {
    Wrote(usize),
    Flushed,
    Read,
    Detached,
}

impl Session {
    /// Writes `bout` to the attached backend (and flushes a TLS one); whenever the backend
    /// takes no more, reads its replies and passes them on to the client meanwhile. With no
    /// backend attached the requests are dropped.
    pub(super) async fn send_to_backend(&mut self) -> Result<(), End> {
        loop {
            let step = poll_fn(|cx| {
                let Some(b) = self.attachment.conn_mut() else {
                    return Poll::Ready(Ok(Step::Detached));
                };
                let conn = b.conn();
                let wrote = if self.bout.is_empty() && !conn.stream.is_tls() {
                    // Nothing buffered under a plain socket.
                    Poll::Ready(Ok(Step::Flushed))
                } else if self.bout.is_empty() {
                    Pin::new(&mut conn.stream)
                        .poll_flush(cx)
                        .map_ok(|()| Step::Flushed)
                } else {
                    Pin::new(&mut conn.stream)
                        .poll_write(cx, &self.bout)
                        .map_ok(Step::Wrote)
                };
                if wrote.is_ready() {
                    return wrote;
                }
                if conn.rbuf.capacity() - conn.rbuf.len() < READ_ROOM / 2 {
                    conn.rbuf.reserve(READ_ROOM);
                }
                match pin!(conn.stream.read_buf(&mut conn.rbuf)).poll(cx) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "backend closed the connection",
                    ))),
                    Poll::Ready(r) => Poll::Ready(r.map(|_| Step::Read)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
            .map_err(|e| End::BackendLost(e.to_string()))?;
            match step {
                Step::Wrote(0) => {
                    return Err(End::BackendLost("backend took no more bytes".into()));
                }
                Step::Wrote(n) if n == self.bout.len() => self.bout.clear(),
                Step::Wrote(n) => self.bout.advance(n),
                Step::Flushed => return Ok(()),
                Step::Read => {
                    self.process_backend()?;
                    self.send_to_client().await?;
                }
                Step::Detached => {
                    self.bout.clear();
                    return Ok(());
                }
            }
        }
    }
}
