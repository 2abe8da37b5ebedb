//! What the proxy itself sends on a backend connection: its prepared statements (the
//! context injection, parameters, the deferred BEGIN, the resets and the sweep), derived once
//! from the configured setting names, and the per-connection cache of a verified tenant's
//! injection. Tenant values only ever travel as bound parameters.

use bytes::{Bytes, BytesMut};

use super::Owed;
use crate::protocol::messages;

/// Prepared statement that sets every context setting transaction-locally.
pub const CTX_STATEMENT: &str = "pgtenant_ctx";
/// Prepared statement that sets every context setting for the session (for statements that
/// cannot run inside a transaction block); always followed by a reset on release.
pub const CTX_SESSION_STATEMENT: &str = "pgtenant_ctx_session";
/// Prepared statement that applies one client session parameter.
pub const PARAM_STATEMENT: &str = "pgtenant_param";
/// Prepared statement that puts one setting back to its default.
pub const PARAM_RESET_STATEMENT: &str = "pgtenant_param_reset";
/// The proxy's prepared `BEGIN`, which opens a client's deferred transaction.
pub const BEGIN_STATEMENT: &str = "pgtenant_begin";
use crate::protocol::RESERVED_PREFIX;

/// A backend connection's verified-context injection for the last tenant that used it (the
/// proof is bound to the backend's pid, so it cannot be precomputed per tenant).
#[derive(Clone)]
pub struct ContextCache {
    serial: u64,
    local: Bytes,
    session: Bytes,
}

impl ContextCache {
    /// The injection of tenant definition `serial` (transaction-local and session).
    pub fn new(serial: u64, local: Bytes, session: Bytes) -> ContextCache {
        ContextCache {
            serial,
            local,
            session,
        }
    }

    /// The tenant definition these bytes were made for.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The Bind + Execute for a transaction (`session` false) or the session.
    pub fn injection(&self, session: bool) -> &[u8] {
        if session { &self.session } else { &self.local }
    }
}

impl std::fmt::Debug for ContextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes hold the proof: a secret for this backend.
        write!(f, "ContextCache {{ serial: {}, .. }}", self.serial)
    }
}

/// The SQL of the proxy's own statements, derived from the configured setting names.
#[derive(Debug, Clone)]
pub struct InjectionPlan {
    /// The context settings, tenant id first (the order of the injection's parameters).
    pub settings: Vec<String>,
    /// What a release RESETs: the settings (verified mode's copies are transaction-local).
    pub reset_settings: Vec<String>,
    /// Parse messages for the proxy's statements, sent once per backend connection.
    pub prepare: Bytes,
    /// `RESET` of every context setting plus the sweep, as one Query, for a release after
    /// session-level context.
    pub reset_sql: String,
    /// Lists the session-level settings of a backend's session (`SET`, `set_config(...,
    /// false)`) that may follow its client to another backend: not the context settings,
    /// the proxy's own namespace, the identity settings or what changes how SQL is read.
    pub session_settings_sql: String,
    /// Bind + Execute of the prepared RESET of every context setting, then of the sweep:
    /// pipelined ahead of a connection's next user instead of a round trip at release.
    pub reset_local: Bytes,
    /// Bind + Execute of the sweep alone (`DISCARD SEQUENCES`, `DISCARD TEMP`).
    pub sweep_local: Bytes,
    /// Parse messages in `prepare`.
    pub prepare_count: usize,
    /// Bind + Execute of the prepared BEGIN: a deferred BEGIN needs no Sync of its own,
    /// so the client's first statement follows it in the same write.
    pub begin: Bytes,
}

/// Session settings that never follow a client: its identity, what changes how PostgreSQL
/// reads SQL text (the guard reads it with the defaults), and the settings of one
/// transaction (`SET TRANSACTION` lists them as session-level until the next transaction
/// starts, and PostgreSQL refuses them once a statement ran).
const NEVER_FOLLOWED: [&str; 8] = [
    "role",
    "session_authorization",
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// Prefix of the prepared `RESET <setting>` statements (one per setting).
pub const RESET_STATEMENT_PREFIX: &str = "pgtenant_reset_";
/// Session state that no client statement has to name, so the guard cannot see it being
/// made: a sequence's `lastval()` (any INSERT into a serial column sets it) and temp
/// objects (`CREATE TABLE pg_temp.x`, or made inside a function). Swept at a release when
/// the release rule (`policy::sql::Leftover`) says the transaction may have left them; both
/// run inside a transaction block and cost microseconds when there is nothing to drop.
const SWEEP: [(&str, &str); 2] = [
    ("pgtenant_sweep_seq", "DISCARD SEQUENCES"),
    ("pgtenant_sweep_temp", "DISCARD TEMP"),
];

impl InjectionPlan {
    /// Builds the statements for the configured settings. Setting names are validated at
    /// config load (lowercase identifiers and dots), so they are safe as SQL literals; tenant
    /// values only ever travel as bound parameters.
    /// `verified_schema`: in verified mode, the schema of `enter()`, called as
    /// `enter(key id, proof, local, values...)` instead of one set_config per setting.
    pub fn new(settings: Vec<String>, verified_schema: Option<&str>) -> InjectionPlan {
        let sql = |local: bool| {
            if let Some(schema) = verified_schema {
                let values: Vec<String> =
                    (3..settings.len() + 3).map(|i| format!("${i}")).collect();
                return format!(
                    "SELECT {schema}.enter($1, $2, {local}, {})",
                    values.join(", ")
                );
            }
            let calls: Vec<String> = settings
                .iter()
                .enumerate()
                .map(|(i, name)| format!("pg_catalog.set_config('{name}', ${}, {local})", i + 1))
                .collect();
            format!("SELECT {}", calls.join(", "))
        };
        let mut prepare = BytesMut::new();
        messages::parse(&mut prepare, CTX_STATEMENT, &sql(true));
        messages::parse(&mut prepare, CTX_SESSION_STATEMENT, &sql(false));
        messages::parse(
            &mut prepare,
            PARAM_STATEMENT,
            "SELECT pg_catalog.set_config($1, $2, false)",
        );
        messages::parse(
            &mut prepare,
            PARAM_RESET_STATEMENT,
            "SELECT pg_catalog.set_config($1, (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = $1), false)",
        );
        messages::parse(&mut prepare, BEGIN_STATEMENT, "BEGIN");
        let reset_settings = settings.clone();
        let mut reset_local = BytesMut::new();
        for (i, name) in reset_settings.iter().enumerate() {
            let statement = format!("{RESET_STATEMENT_PREFIX}{i}");
            messages::parse(&mut prepare, &statement, &format!("RESET {name}"));
            messages::bind(&mut reset_local, &statement, std::iter::empty());
            messages::execute(&mut reset_local);
        }
        let mut sweep_local = BytesMut::new();
        for (statement, sql) in SWEEP {
            messages::parse(&mut prepare, statement, sql);
            messages::bind(&mut sweep_local, statement, std::iter::empty());
            messages::execute(&mut sweep_local);
        }
        reset_local.extend_from_slice(&sweep_local);
        let reset_sql = reset_settings
            .iter()
            .map(|s| format!("RESET {s}"))
            .chain(SWEEP.iter().map(|(_, sql)| sql.to_string()))
            .collect::<Vec<_>>()
            .join("; ");
        let excluded: Vec<String> = reset_settings
            .iter()
            .map(String::as_str)
            .chain(NEVER_FOLLOWED)
            .map(|s| format!("'{s}'"))
            .collect();
        let session_settings_sql = format!(
            "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
             AND name NOT IN ({}) AND name NOT LIKE '{RESERVED_PREFIX}%' AND name NOT LIKE 'pgtenant.%'",
            excluded.join(", ")
        );
        InjectionPlan {
            session_settings_sql,
            prepare_count: 5 + reset_settings.len() + SWEEP.len(),
            settings,
            reset_settings,
            prepare: prepare.freeze(),
            reset_sql,
            reset_local: reset_local.freeze(),
            sweep_local: sweep_local.freeze(),
            begin: Self::bind_execute(BEGIN_STATEMENT, &[]),
        }
    }

    /// The messages paying what a release left owed, and how many Bind/Execute pairs
    /// they hold (their replies are the proxy's to swallow).
    pub fn owed(&self, owed: Owed) -> (&[u8], usize) {
        match owed {
            Owed::Nothing => (&[], 0),
            Owed::Sweep => (&self.sweep_local, SWEEP.len()),
            Owed::ResetAndSweep => (&self.reset_local, self.reset_settings.len() + SWEEP.len()),
        }
    }

    /// Bind + Execute of one of the proxy's statements with `values`.
    pub fn injection(&self, statement: &str, values: &[&[u8]]) -> Bytes {
        Self::bind_execute(statement, values)
    }

    /// Bind + Execute of `statement` with `values` (a complete message pair).
    pub fn bind_execute(statement: &str, values: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        messages::bind(&mut out, statement, values.iter().copied());
        messages::execute(&mut out);
        out.freeze()
    }
}
