//! Session parameters that follow a client from backend to backend. PostgreSQL reports some
//! settings to the client (ParameterStatus); the client's view of those, plus any unreported
//! settings it chose at startup, is re-applied on each backend it uses — only where the
//! backend's value differs, and pipelined ahead of the client's own request.

use std::borrow::Cow;

use bytes::BytesMut;

use crate::backend::BackendConn;
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages;
use crate::session::flow::{Flow, Owner};
use crate::tenant::{PARAM_RESET_STATEMENT, PARAM_STATEMENT};

/// Settings PostgreSQL reports with ParameterStatus (GUC_REPORT), as of PostgreSQL 18.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "search_path",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Reported settings a client may change and that therefore must follow it.
const FOLLOWED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "IntervalStyle",
    "search_path",
    "standard_conforming_strings",
    "TimeZone",
];

/// True for settings PostgreSQL reports with ParameterStatus.
pub fn is_reported(name: &str) -> bool {
    REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// The canonical spelling of a setting name: PostgreSQL's for reported ones (no
/// allocation: every client has them), else lowercase.
pub fn canonical(name: &str) -> Cow<'static, str> {
    REPORTED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
        .map(|r| Cow::Borrowed(*r))
        .unwrap_or_else(|| Cow::Owned(name.to_ascii_lowercase()))
}

/// The client's view of its session parameters.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    values: Vec<(Cow<'static, str>, String)>,
    /// Settings the client chose itself (startup parameters and options).
    explicit: Vec<Cow<'static, str>>,
}

impl ClientParams {
    /// Starts from the settings in the client's StartupMessage and `options`.
    pub fn from_startup(settings: Vec<(String, String)>) -> ClientParams {
        let mut p = ClientParams::default();
        for (k, v) in settings {
            p.set(&k, &v);
            p.explicit.push(canonical(&k));
        }
        p
    }

    /// Records a value (from startup or from a ParameterStatus while attached).
    pub fn set(&mut self, name: &str, value: &str) {
        let name = canonical(name);
        match self.values.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.values.push((name, value.to_string())),
        }
    }

    /// Learns a ParameterStatus the backend sent while serving this client.
    pub fn observe(&mut self, name: &str, value: &str) {
        if FOLLOWED.contains(&name) {
            self.set(name, value);
        }
    }

    /// Takes the server's default (as of connection start, never what an earlier client
    /// left) for every followed setting the client has not chosen.
    pub fn fill_defaults(&mut self, conn: &BackendConn) {
        for name in FOLLOWED {
            if !self.explicit.iter().any(|e| e == name)
                && let Some(v) = conn.defaults.get(*name)
            {
                self.set(name, &v.clone());
            }
        }
    }

    /// After the client's settings were applied, adopts the values as the server reported
    /// them (normalised, e.g. `iso` becomes `ISO, MDY`).
    pub fn normalize(&mut self, conn: &BackendConn) {
        for name in self.explicit.clone() {
            if FOLLOWED.contains(&name.as_ref())
                && let Some(v) = conn.params.get(name.as_ref())
            {
                self.set(&name, &v.clone());
            }
        }
    }

    /// All values, for the startup ParameterStatus report.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// Appends the proxy requests that bring `conn` to this client's view; returns how many.
    pub fn sync_backend(
        &self,
        conn: &mut BackendConn,
        out: &mut BytesMut,
        flow: &mut Flow,
    ) -> usize {
        let mut n = 0;
        for (k, v) in &self.values {
            if conn.params.get(k.as_ref()) == Some(v) {
                continue;
            }
            messages::bind(
                out,
                PARAM_STATEMENT,
                [k.as_bytes(), v.as_bytes()].into_iter(),
            );
            messages::execute(out);
            flow.sent(ft::BIND, Owner::Proxy);
            flow.sent(ft::EXECUTE, Owner::Proxy);
            if !is_reported(k) && conn.params.insert(k.to_string(), v.clone()).is_none() {
                conn.unreported.push(k.to_string());
            }
            n += 1;
        }
        let mut i = 0;
        while i < conn.unreported.len() {
            let k = &conn.unreported[i];
            if self.values.iter().any(|(c, _)| c == k) {
                i += 1;
                continue;
            }
            messages::bind(out, PARAM_RESET_STATEMENT, [k.as_bytes()].into_iter());
            messages::execute(out);
            flow.sent(ft::BIND, Owner::Proxy);
            flow.sent(ft::EXECUTE, Owner::Proxy);
            let k = conn.unreported.swap_remove(i);
            conn.params.remove(&k);
            n += 1;
        }
        n
    }
}
