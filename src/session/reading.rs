//! The guard's reading of a client's SQL text. Most texts are answered by the verdict cache
//! or the fast path, inline. A text that needs PostgreSQL's parser is read on a blocking
//! thread: a long text takes the parser hundreds of milliseconds, and the runtime's thread
//! (one, on a small machine) serves every other client meanwhile. Parses wait for one of
//! the server's parser slots and for their tenant's turn, so one tenant's texts take at
//! most one slot while other tenants' wait.

use crate::policy::Analysis;
use crate::protocol::codec::Frame;

use super::{End, Session};

impl Session {
    /// The guard's analysis of `text`, which is a part of `frame`'s bytes: inline when no
    /// parse is needed (nearly every text), else off the runtime's thread. The slow path's
    /// future is boxed, so the relay's own future does not grow by its size.
    pub(super) async fn read_text(&self, frame: &Frame, text: &[u8]) -> Result<Analysis, End> {
        match self.server.sql_guard.analyze_inline(text) {
            Some(analysis) => Ok(analysis),
            None => Box::pin(self.parse_off_thread(frame, text)).await,
        }
    }

    /// [`Session::read_text`] for a text PostgreSQL's parser must read.
    async fn parse_off_thread(&self, frame: &Frame, text: &[u8]) -> Result<Analysis, End> {
        // Owned permits: a client that leaves while its text is parsed does not free the
        // slot before the parse ends.
        let closed = |_| End::ProtocolViolation("the server is shutting down".into());
        let turn = self
            .stats()
            .parse_turn
            .0
            .clone()
            .acquire_owned()
            .await
            .map_err(closed)?;
        let slot = self
            .server
            .parser_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(closed)?;
        let server = self.server.clone();
        let raw = frame.raw.clone();
        let start = text.as_ptr() as usize - raw.as_ptr() as usize;
        let end = start + text.len();
        let job = tokio::task::spawn_blocking(move || {
            let analysis = server.sql_guard.analyze(&raw[start..end]);
            drop((slot, turn));
            analysis
        });
        match job.await {
            Ok(analysis) => Ok(analysis),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(End::ProtocolViolation(format!(
                "the guard's reading failed: {e}"
            ))),
        }
    }
}
