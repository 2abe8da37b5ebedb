//! Reading the client during start-up: more bytes, or one bounded message, with failures
//! as the FATAL the client is sent.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::Fatal;
use crate::protocol::codec::{Frame, split_frame};
use crate::protocol::sqlstate;
use crate::stream::ClientStream;

/// Reads more bytes from the client.
pub(super) async fn read_more(
    socket: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<usize, Fatal> {
    socket.read_buf(buf).await.map_err(io_fatal)
}

/// Reads one tagged message during authentication, bounded by the startup size limit.
pub(super) async fn read_frame(
    socket: &mut ClientStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, Fatal> {
    loop {
        match split_frame(buf, max) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(Fatal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        }
        if read_more(socket, buf).await? == 0 {
            return Err(Fatal::new(
                sqlstate::CONNECTION_FAILURE,
                "client closed the connection during authentication",
            ));
        }
    }
}

/// A socket error as the FATAL the client is sent.
pub(super) fn io_fatal(e: std::io::Error) -> Fatal {
    Fatal::new(
        sqlstate::CONNECTION_FAILURE,
        format!("connection error: {e}"),
    )
}
