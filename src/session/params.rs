//! Session parameters that follow a client from backend to backend. PostgreSQL reports some
//! settings to the client (ParameterStatus); the client's view of those, plus any unreported
//! settings it chose at startup, is re-applied on each backend it uses — only where the
//! backend's value differs, and pipelined ahead of the client's own request.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use crate::backend::injection::{Own, PARAM_RESET_STATEMENT, PARAM_STATEMENT};
use crate::backend::{BackendConn, MatchedParams};
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages;
use crate::session::flow::{Flow, Owner};

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

/// Settings that decide what PostgreSQL makes of a statement's text when it parses it: a
/// literal's value is fixed at Parse (`'03/04/2026'` under DateStyle, a `timestamptz`
/// under TimeZone, `x = NULL` under transform_null_equals; its very characters under
/// client_encoding), so a prepared statement parsed under one client's values must not
/// serve a client with others. `search_path`
/// and `row_security` are not here: PostgreSQL re-plans a statement when they change.
const PARSE_SETTINGS: &[&str] = &[
    // The text itself: PostgreSQL converts a Parse's bytes from the client encoding, so
    // the same bytes are another literal (or name) under LATIN1 than under UTF8.
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "timezone_abbreviations",
    "transform_null_equals",
    "array_nulls",
    "xmloption",
    "lc_monetary",
    "backslash_quote",
];

/// True for settings that decide how PostgreSQL parses a statement ([`PARSE_SETTINGS`]).
pub fn decides_parsing(name: &str) -> bool {
    PARSE_SETTINGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

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

/// The client's view of its session parameters. Shared copy-on-write: most clients of a
/// deployment have identical settings, so after start-up they point at one interned set
/// instead of holding a few hundred bytes each.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    set: Arc<ParamSet>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ParamSet {
    values: Vec<(Cow<'static, str>, String)>,
    /// Settings the client chose itself (startup parameters and options).
    explicit: Vec<Cow<'static, str>>,
    /// A digest of the values of [`PARSE_SETTINGS`] (see [`ClientParams::parse_env`]),
    /// kept up to date with `values`.
    parse_env: u64,
}

impl ParamSet {
    /// Recomputes `parse_env` from `values`.
    fn refresh_parse_env(&mut self) {
        let mut h = std::hash::DefaultHasher::new();
        let mut any = false;
        for name in PARSE_SETTINGS {
            let v = self
                .values
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name));
            any |= v.is_some();
            std::hash::Hash::hash(&v.map(|(_, v)| v.as_str()), &mut h);
        }
        // 0 for a set without any (as a new, empty set has).
        self.parse_env = if any {
            std::hash::Hasher::finish(&h)
        } else {
            0
        };
    }
}

/// Distinct parameter sets kept for sharing; beyond this many, new sets are not interned.
const INTERNED_SETS: usize = 64;

static INTERNED: Mutex<Vec<Arc<ParamSet>>> = Mutex::new(Vec::new());

impl ClientParams {
    /// Starts from the settings in the client's StartupMessage and `options`.
    pub fn from_startup(settings: Vec<(String, String)>) -> ClientParams {
        let mut p = ClientParams::default();
        for (k, v) in settings {
            p.set(&k, &v);
            Arc::make_mut(&mut p.set).explicit.push(canonical(&k));
        }
        p
    }

    /// Shares an identical set another client already holds (or offers this one for
    /// sharing); called once the start-up values are settled.
    pub fn intern(&mut self) {
        let Ok(mut interned) = INTERNED.lock() else {
            return;
        };
        if let Some(same) = interned.iter().find(|s| **s == self.set) {
            self.set = same.clone();
        } else if interned.len() < INTERNED_SETS {
            interned.push(self.set.clone());
        }
    }

    /// Records a value (from startup or from a ParameterStatus while attached).
    pub fn set(&mut self, name: &str, value: &str) {
        let name = canonical(name);
        let parses = decides_parsing(&name);
        match self.set.values.iter().position(|(k, _)| *k == name) {
            Some(i) if self.set.values[i].1 == value => return,
            Some(i) => Arc::make_mut(&mut self.set).values[i].1 = value.to_string(),
            None => Arc::make_mut(&mut self.set)
                .values
                .push((name, value.to_string())),
        }
        if parses {
            Arc::make_mut(&mut self.set).refresh_parse_env();
        }
    }

    /// A digest of the client's values of the settings that decide how PostgreSQL parses
    /// a statement: a backend's prepared copy serves the client only if it was parsed
    /// under the same digest ([`crate::backend::statements::BackendStatements::touch`]).
    pub fn parse_env(&self) -> u64 {
        self.set.parse_env
    }

    /// The client's value of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.set
            .values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Learns a ParameterStatus the backend sent while serving this client.
    pub fn observe(&mut self, name: &str, value: &str) {
        if FOLLOWED.contains(&name) {
            self.set(name, value);
        }
    }

    /// Adopts the session-level settings PostgreSQL lists for the client's session after a
    /// transaction that may have changed them (`SET statement_timeout`, `SET SESSION
    /// CHARACTERISTICS AS TRANSACTION ...`): they follow the client to its next backends
    /// like start-up options. An unreported setting of the client's that is no longer
    /// listed was RESET. Settings this server reports (`conn`'s start-up report) follow
    /// ParameterStatus instead; `search_path`, say, is reported only from PostgreSQL 18.
    pub fn adopt_session(&mut self, conn: &BackendConn, listed: &[(String, String)]) {
        let reported = |k: &str| conn.defaults.contains_key(k);
        for (k, v) in listed {
            if !reported(k) {
                self.set(k, v);
            }
        }
        let kept = |k: &str| reported(k) || listed.iter().any(|(n, _)| n == k);
        if self.set.values.iter().any(|(k, _)| !kept(k)) {
            let set = Arc::make_mut(&mut self.set);
            set.values.retain(|(k, _)| kept(k));
            set.refresh_parse_env();
        }
    }

    /// Takes the server's default (as of connection start, never what an earlier client
    /// left) for every followed setting the client has not chosen.
    pub fn fill_defaults(&mut self, conn: &BackendConn) {
        for name in FOLLOWED {
            if !self.set.explicit.iter().any(|e| e == name)
                && let Some(v) = conn.defaults.get(*name)
            {
                self.set(name, &v.clone());
            }
        }
    }

    /// After the client's settings were applied, adopts the values as the server reported
    /// them (normalised, e.g. `iso` becomes `ISO, MDY`).
    pub fn normalize(&mut self, conn: &BackendConn) {
        for name in self.set.explicit.clone() {
            if FOLLOWED.contains(&name.as_ref())
                && let Some(v) = conn.params.get(name.as_ref())
            {
                self.set(&name, &v.clone());
            }
        }
    }

    /// All values as owned pairs (the start-up memo keeps them beyond this client).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// All values, for the startup ParameterStatus report.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set
            .values
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// Appends the proxy requests that bring `conn` to this client's view, in a transaction
    /// of their own (ended by the proxy's Sync) ahead of the client's first request.
    ///
    /// Own transaction: a client transaction that rolls back cannot undo them behind the
    /// proxy's back. Own Sync: PostgreSQL reports a changed setting only at ReadyForQuery,
    /// and only when it differs from the value it last reported, so a client that sets a
    /// setting back (`SET client_encoding` to its start-up value) in the same window in
    /// which the proxy applied the client's earlier value would never be told; the backend
    /// would hold one value while the proxy and the client believed the other.
    pub fn sync_backend(&self, conn: &mut BackendConn, out: &mut BytesMut, flow: &mut Flow) {
        if self.apply(conn, out, flow) > 0 {
            messages::sync(out);
            flow.sent(ft::SYNC, Owner::Proxy);
        }
    }

    /// Appends the requests that bring `conn` to this client's view, without a Sync (the
    /// caller ends the transaction); returns how many.
    pub fn apply(&self, conn: &mut BackendConn, out: &mut BytesMut, flow: &mut Flow) -> usize {
        // The hot path: the connection's last client had these very settings (most clients
        // share one interned set) and nothing changed on it since: no lookups at all.
        if conn.params_match.as_ref().is_some_and(|m| m.is(&self.set)) {
            return 0;
        }
        let n = self.apply_differences(conn, out, flow);
        // Applied values are only believed once the server reports them (which drops the
        // match); an unchanged connection matches from now on.
        conn.params_match = (n == 0).then(|| MatchedParams(self.set.clone()));
        n
    }

    fn apply_differences(
        &self,
        conn: &mut BackendConn,
        out: &mut BytesMut,
        flow: &mut Flow,
    ) -> usize {
        let mut n = 0;
        for (k, v) in &self.set.values {
            if conn.params.get(k.as_ref()) == Some(v) {
                continue;
            }
            if k.as_ref() == "DateStyle" {
                // PostgreSQL merges a partial DateStyle (`ISO`) with the one in force, so an
                // earlier client's order (`German, DMY`) would decide this client's: from the
                // default, as on a connection of its own.
                reset_to_default(conn, k, out, flow);
                n += 1;
            }
            let prepared = conn.prepare_own(Own::PARAM, out);
            flow.sent_own(prepared);
            messages::bind(
                out,
                PARAM_STATEMENT,
                [k.as_bytes(), v.as_bytes()].into_iter(),
            );
            messages::execute(out);
            flow.sent(ft::BIND, Owner::Proxy);
            flow.sent(ft::EXECUTE, Owner::Proxy);
            // What this server does not report (search_path before PostgreSQL 18, say) must
            // be put back for the next client of the connection.
            let reported = conn.defaults.contains_key(k.as_ref());
            if !reported && conn.params.insert(k.to_string(), v.clone()).is_none() {
                conn.unreported.push(k.to_string());
            }
            n += 1;
        }
        let mut i = 0;
        while i < conn.unreported.len() {
            let k = &conn.unreported[i];
            if self.set.values.iter().any(|(c, _)| c == k) {
                i += 1;
                continue;
            }
            let k = conn.unreported.swap_remove(i);
            reset_to_default(conn, &k, out, flow);
            conn.params.remove(&k);
            n += 1;
        }
        n
    }
}

/// Appends the proxy's request that puts setting `k` of `conn` back to its default.
fn reset_to_default(conn: &mut BackendConn, k: &str, out: &mut BytesMut, flow: &mut Flow) {
    let prepared = conn.prepare_own(Own::PARAM_RESET, out);
    flow.sent_own(prepared);
    messages::bind(out, PARAM_RESET_STATEMENT, [k.as_bytes()].into_iter());
    messages::execute(out);
    flow.sent(ft::BIND, Owner::Proxy);
    flow.sent(ft::EXECUTE, Owner::Proxy);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> ClientParams {
        ClientParams::from_startup(vec![
            ("application_name".into(), "intern-test".into()),
            ("DateStyle".into(), "ISO, MDY".into()),
        ])
    }

    #[test]
    fn identical_sets_are_shared_and_copied_on_write() {
        let (mut a, mut b) = (startup(), startup());
        assert!(!Arc::ptr_eq(&a.set, &b.set));
        a.intern();
        b.intern();
        assert!(Arc::ptr_eq(&a.set, &b.set));
        // Re-learning the same value keeps sharing; a change is the changer's alone.
        b.observe("DateStyle", "ISO, MDY");
        assert!(Arc::ptr_eq(&a.set, &b.set));
        b.observe("DateStyle", "German, DMY");
        assert!(!Arc::ptr_eq(&a.set, &b.set));
        let date = |p: &ClientParams| {
            p.iter()
                .find(|(k, _)| *k == "DateStyle")
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(date(&a).as_deref(), Some("ISO, MDY"));
        assert_eq!(date(&b).as_deref(), Some("German, DMY"));
    }
}
