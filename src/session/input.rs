//! What the relay does with the client's next frames, as a state machine: relay them as
//! usual, drop them up to the client's Sync after an error the proxy answered, or pass COPY
//! data through while the backend is in COPY FROM STDIN. Events move it (an error inside
//! an extended-protocol pipeline, the client's Sync, CopyInResponse, CopyDone/CopyFail, a
//! backend error or the backend's loss); the relay asks it one question per call site.
//!
//! Skipping and COPY in never overlap: the proxy skips to Sync only when it answered a
//! request itself with no backend attached (a refusal, no backend to be had, a failed
//! request of the proxy's own, after which its backend is closed), so no COPY can be
//! running, and while it skips nothing reaches a backend, so none can start. (The
//! backend's own skipping after an extended-protocol error is [`super::flow::Flow`]'s.)

use crate::protocol::frontend_tag as ft;

/// The client's input mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputMode {
    /// Frames are relayed, each in its turn.
    #[default]
    Normal,
    /// The proxy answered an extended-protocol request with an error while holding no
    /// backend: the client's frames are dropped up to its Sync, whose ReadyForQuery the
    /// proxy gives, as PostgreSQL ignores everything after an error up to a Sync. Only
    /// while no backend is attached.
    SkipToSync,
    /// The attached backend is in COPY FROM STDIN: the client's CopyData, CopyDone and
    /// CopyFail go through whatever replies are pending, and its Syncs are ignored (as
    /// PostgreSQL ignores them in copy-in mode). The backend must not be reused until
    /// the COPY ends.
    CopyIn,
}

impl InputMode {
    /// Whether every client frame but a Sync is dropped (a Sync ends the skip).
    pub fn skips_to_sync(self) -> bool {
        self == InputMode::SkipToSync
    }

    /// Whether the backend is in COPY IN: copy messages go on without waiting, Syncs are
    /// ignored, and the backend is neither released nor returned at the session's end.
    pub fn in_copy(self) -> bool {
        self == InputMode::CopyIn
    }

    /// The proxy answered an extended-protocol request with an error, holding no backend
    /// (a refusal, a failed checkout, its own request failed and its backend closed): what
    /// the client pipelined behind it is dropped up to its Sync.
    pub fn error_before_sync(&mut self) {
        *self = InputMode::SkipToSync;
    }

    /// The client's Sync arrived: a skip ends (the Sync gets its ReadyForQuery). In COPY IN
    /// a Sync changes nothing.
    pub fn sync_seen(&mut self) {
        if *self == InputMode::SkipToSync {
            *self = InputMode::Normal;
        }
    }

    /// The backend sent CopyInResponse.
    pub fn copy_in_response(&mut self) {
        *self = InputMode::CopyIn;
    }

    /// The client sent a copy message (`tag`: CopyData, CopyDone or CopyFail). True when it
    /// goes to the backend; outside COPY IN PostgreSQL ignores copy messages, and so does
    /// the proxy. CopyDone and CopyFail end the COPY on the client's side.
    pub fn client_copy_message(&mut self, tag: u8) -> bool {
        if *self != InputMode::CopyIn {
            return false;
        }
        if tag != ft::COPY_DATA {
            *self = InputMode::Normal;
        }
        true
    }

    /// The backend sent ErrorResponse: a COPY IN is over (the backend rejected the data or
    /// the client's CopyFail).
    pub fn backend_error(&mut self) {
        if *self == InputMode::CopyIn {
            *self = InputMode::Normal;
        }
    }

    /// The backend was closed (its state unknown): a COPY IN went with it.
    pub fn backend_lost(&mut self) {
        if *self == InputMode::CopyIn {
            *self = InputMode::Normal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InputMode::{CopyIn, Normal, SkipToSync};

    #[test]
    fn an_error_inside_a_pipeline_drops_frames_up_to_the_sync() {
        let mut m = InputMode::default();
        assert!(!m.skips_to_sync());
        m.error_before_sync();
        assert!(m.skips_to_sync(), "Bind, Describe, Execute after the error");
        assert!(!m.client_copy_message(ft::COPY_DATA));
        assert_eq!(m, SkipToSync, "a stray copy message does not end the skip");
        m.sync_seen();
        assert_eq!(m, Normal);
        m.sync_seen();
        assert_eq!(m, Normal, "a second Sync is an ordinary one");
    }

    #[test]
    fn copy_data_goes_through_until_copy_done() {
        let mut m = InputMode::default();
        m.copy_in_response();
        assert!(m.in_copy());
        assert!(m.client_copy_message(ft::COPY_DATA));
        assert!(m.client_copy_message(ft::COPY_DATA));
        assert!(m.in_copy());
        assert!(m.client_copy_message(ft::COPY_DONE));
        assert_eq!(m, Normal);
        assert!(
            !m.client_copy_message(ft::COPY_DATA),
            "after the COPY, copy messages are ignored"
        );
    }

    #[test]
    fn copy_fail_ends_the_copy_and_goes_to_the_backend() {
        let mut m = CopyIn;
        assert!(m.client_copy_message(ft::COPY_FAIL));
        assert_eq!(m, Normal);
    }

    #[test]
    fn syncs_in_copy_in_change_nothing() {
        // A COPY started by Execute: the client's pipelined Sync is ignored by PostgreSQL.
        let mut m = CopyIn;
        m.sync_seen();
        assert!(m.in_copy());
        assert!(!m.skips_to_sync());
    }

    #[test]
    fn a_backend_error_ends_a_copy_in() {
        let mut m = CopyIn;
        m.backend_error();
        assert_eq!(m, Normal);
        let mut m = Normal;
        m.backend_error();
        assert_eq!(m, Normal, "an ordinary error changes no input mode");
    }

    #[test]
    fn copy_in_then_the_backend_lost_leaves_nothing_to_relay() {
        // The client disconnects or the proxy's request fails mid-COPY: the backend is
        // closed (never reused, since `in_copy` held until then) and the COPY is gone.
        let mut m = CopyIn;
        assert!(m.in_copy(), "the session end closes this backend");
        m.backend_lost();
        assert_eq!(m, Normal);
        assert!(!m.client_copy_message(ft::COPY_DATA));
    }

    #[test]
    fn a_failed_proxy_request_during_copy_in_skips_to_the_sync() {
        // No ReadyForQuery was due (a COPY from Execute): the client's Sync gets it.
        let mut m = CopyIn;
        m.backend_lost();
        m.error_before_sync();
        assert_eq!(m, SkipToSync);
        assert!(!m.client_copy_message(ft::COPY_DONE));
        m.sync_seen();
        assert_eq!(m, Normal);
    }
}
