//! The hand-over from the frontend to the session: what an authenticated client brings
//! ([`Startup`]), the FATAL a failed start reports ([`Fatal`]), and the messages that
//! complete the client's start-up. The session defines its input; the frontend fills it in.

use std::sync::Arc;

use bytes::BytesMut;

use crate::pool::Pool;
use crate::protocol::{TxStatus, messages};
use crate::tenant::Tenant;

/// An authenticated client, ready for a session.
pub struct Startup {
    /// The tenant the client authenticated as.
    pub tenant: Arc<Tenant>,
    /// The pool of the database it asked for.
    pub pool: Arc<Pool>,
    /// The startup `user`, as sent (it names the tenant under the user convention).
    pub user: String,
    /// Session settings the client asked for at startup (its parameters and `options`).
    pub settings: Vec<(String, String)>,
    /// Bytes the client sent after authenticating, already read.
    pub leftover: BytesMut,
}

/// A client-visible failure during startup: sent as FATAL, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// The SQLSTATE.
    pub code: std::borrow::Cow<'static, str>,
    /// The message the client sees (never a secret).
    pub message: String,
}

impl Fatal {
    /// A FATAL with the given SQLSTATE.
    pub fn new(
        code: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Fatal {
        Fatal {
            code: code.into(),
            message: message.into(),
        }
    }
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
