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

// Every statement of a plan (one `RESET` per context setting after seven others) has a bit
// in [`Own`]: the configuration allows no more settings than that.
const _: () = assert!(crate::config::MAX_SETTINGS + Own::FIRST_RESET <= Own::CAPACITY);

/// A set of the proxy's own statements (one bit per statement of an [`InjectionPlan`], in
/// the plan's order): what a backend has prepared, and what a message about to be sent
/// needs. A backend that changed tenant (DISCARD ALL) prepares only what it uses, when it
/// first uses it, instead of every statement at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Own(u64);

impl Own {
    /// No statement.
    pub const NONE: Own = Own(0);
    /// [`CTX_STATEMENT`].
    pub const CTX: Own = Own(1 << 0);
    /// [`CTX_SESSION_STATEMENT`].
    pub const CTX_SESSION: Own = Own(1 << 1);
    /// [`PARAM_STATEMENT`].
    pub const PARAM: Own = Own(1 << 2);
    /// [`PARAM_RESET_STATEMENT`].
    pub const PARAM_RESET: Own = Own(1 << 3);
    /// [`BEGIN_STATEMENT`].
    pub const BEGIN: Own = Own(1 << 4);
    /// The sweep's statements.
    const SWEEP: Own = Own::range(5, 7);
    /// Index of the first `RESET <setting>` statement (the last ones of the plan).
    const FIRST_RESET: usize = 7;
    /// How many statements a set can name: the context settings are limited so that every
    /// plan fits (see [`crate::config::MAX_SETTINGS`]).
    const CAPACITY: usize = 64;

    /// Every statement of a plan with `statements` statements.
    const fn all(statements: usize) -> Own {
        Own::range(0, statements)
    }

    /// Statements `from..to`.
    const fn range(from: usize, to: usize) -> Own {
        Own(Own::below(to) & !Own::below(from))
    }

    /// The bits of statements `0..n`.
    const fn below(n: usize) -> u64 {
        if n >= Own::CAPACITY {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// Both sets.
    pub fn with(self, other: Own) -> Own {
        Own(self.0 | other.0)
    }

    /// What `self` needs that `have` lacks.
    pub fn missing_from(self, have: Own) -> Own {
        Own(self.0 & !have.0)
    }

    /// True when the set holds no statement.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The statements' indexes in the plan, in order.
    fn indexes(self) -> impl Iterator<Item = usize> {
        (0..Own::CAPACITY).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// The proxy's statements as messages: all Parses at once for a new connection, and each
/// as Close + Parse for a connection that lacks some (Close of a missing statement is no
/// error, so this also serves when a client's DEALLOCATE left it unclear which exist).
#[derive(Debug, Default)]
pub struct OwnStatements {
    /// Parse of every statement, for a new connection.
    pub all: Bytes,
    /// Close + Parse of each statement, by index.
    each: Vec<Bytes>,
}

impl OwnStatements {
    /// Every statement this plan has.
    pub fn everything(&self) -> Own {
        Own::all(self.each.len())
    }

    /// Appends Close + Parse for each statement in `need` that `have` lacks, records them
    /// in `have`, and returns how many statements that was (two messages each, whose
    /// replies are the proxy's).
    pub fn prepare_missing(&self, have: &mut Own, need: Own, out: &mut BytesMut) -> usize {
        let missing = need.missing_from(*have);
        if missing.is_empty() {
            return 0;
        }
        let mut n = 0;
        for i in missing.indexes() {
            if let Some(messages) = self.each.get(i) {
                out.extend_from_slice(messages);
                n += 1;
            }
        }
        *have = have.with(missing);
        n
    }
}

/// The SQL of the proxy's own statements, derived from the configured setting names.
#[derive(Debug, Clone)]
pub struct InjectionPlan {
    /// The context settings, tenant id first (the order of the injection's parameters).
    pub settings: Vec<String>,
    /// What a release RESETs: the settings (verified mode's copies are transaction-local).
    pub reset_settings: Vec<String>,
    /// The proxy's statements as messages (see [`OwnStatements`]).
    pub own: std::sync::Arc<OwnStatements>,
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
        // In the order of `Own`'s bits.
        let mut statements: Vec<(String, String)> = vec![
            (CTX_STATEMENT.into(), sql(true)),
            (CTX_SESSION_STATEMENT.into(), sql(false)),
            (
                PARAM_STATEMENT.into(),
                "SELECT pg_catalog.set_config($1, $2, false)".into(),
            ),
            (
                PARAM_RESET_STATEMENT.into(),
                "SELECT pg_catalog.set_config($1, (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = $1), false)".into(),
            ),
            (BEGIN_STATEMENT.into(), "BEGIN".into()),
        ];
        let mut sweep_local = BytesMut::new();
        for (statement, sql) in SWEEP {
            statements.push((statement.into(), sql.into()));
            messages::bind(&mut sweep_local, statement, std::iter::empty());
            messages::execute(&mut sweep_local);
        }
        let reset_settings = settings.clone();
        let mut reset_local = BytesMut::new();
        for (i, name) in reset_settings.iter().enumerate() {
            let statement = format!("{RESET_STATEMENT_PREFIX}{i}");
            messages::bind(&mut reset_local, &statement, std::iter::empty());
            messages::execute(&mut reset_local);
            statements.push((statement, format!("RESET {name}")));
        }
        // The sweep after the resets, as the release rule wants it.
        reset_local.extend_from_slice(&sweep_local);
        let mut all = BytesMut::new();
        let mut each = Vec::with_capacity(statements.len());
        for (name, sql) in &statements {
            messages::parse(&mut all, name, sql);
            let mut one = BytesMut::new();
            super::statements::StatementDef::close_message(name, &mut one);
            messages::parse(&mut one, name, sql);
            each.push(one.freeze());
        }
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
            own: std::sync::Arc::new(OwnStatements {
                all: all.freeze(),
                each,
            }),
            settings,
            reset_settings,
            reset_sql,
            reset_local: reset_local.freeze(),
            sweep_local: sweep_local.freeze(),
            begin: Self::bind_execute(BEGIN_STATEMENT, &[]),
        }
    }

    /// The messages paying what a release left owed, how many Bind/Execute pairs they hold
    /// (their replies are the proxy's to swallow), and the statements they use.
    pub fn owed(&self, owed: Owed) -> (&[u8], usize, Own) {
        match owed {
            Owed::Nothing => (&[], 0, Own::NONE),
            Owed::Sweep => (&self.sweep_local, SWEEP.len(), Own::SWEEP),
            Owed::ResetAndSweep => (
                &self.reset_local,
                self.reset_settings.len() + SWEEP.len(),
                Own::SWEEP.with(Own::range(
                    Own::FIRST_RESET,
                    Own::FIRST_RESET + self.reset_settings.len(),
                )),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend_tag as ft;

    /// (tag, statement name) of each message in `bytes`.
    fn messages(bytes: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let body = &rest[5..1 + len];
            let body = if rest[0] == ft::CLOSE {
                &body[1..]
            } else {
                body
            };
            // A Bind names the portal first, then the statement.
            let at = usize::from(rest[0] == ft::BIND);
            let name = body.split(|b| *b == 0).nth(at).unwrap_or_default();
            out.push((rest[0], String::from_utf8_lossy(name).into_owned()));
            rest = &rest[1 + len..];
        }
        out
    }

    fn plan() -> InjectionPlan {
        InjectionPlan::new(vec!["app.t".into(), "app.plan".into()], Some("pgtenant"))
    }

    #[test]
    fn a_new_connection_prepares_every_statement_once() {
        let plan = plan();
        let all = messages(&plan.own.all);
        assert_eq!(all.len(), 9);
        assert!(all.iter().all(|(t, _)| *t == ft::PARSE));
        assert_eq!(plan.own.everything(), Own::all(9));
    }

    #[test]
    fn only_missing_statements_are_prepared_each_as_close_then_parse() {
        let plan = plan();
        let mut have = Own::NONE;
        let mut out = BytesMut::new();
        assert_eq!(plan.own.prepare_missing(&mut have, Own::CTX, &mut out), 1);
        assert_eq!(
            messages(&out),
            [
                (ft::CLOSE, CTX_STATEMENT.into()),
                (ft::PARSE, CTX_STATEMENT.into())
            ]
        );
        out.clear();
        // Already there: nothing; a set with one new statement: that one only.
        assert_eq!(plan.own.prepare_missing(&mut have, Own::CTX, &mut out), 0);
        let need = Own::CTX.with(Own::BEGIN);
        assert_eq!(plan.own.prepare_missing(&mut have, need, &mut out), 1);
        assert_eq!(messages(&out)[1], (ft::PARSE, BEGIN_STATEMENT.into()));
        assert_eq!(have, need);
    }

    #[test]
    fn what_a_release_left_owed_names_the_statements_it_binds() {
        let plan = plan();
        for owed in [Owed::Nothing, Owed::Sweep, Owed::ResetAndSweep] {
            let (bytes, pairs, need) = plan.owed(owed);
            let bound: Vec<String> = messages(bytes)
                .into_iter()
                .filter(|(t, _)| *t == ft::BIND)
                .map(|(_, n)| n)
                .collect();
            assert_eq!(bound.len(), pairs, "{owed:?}");
            let mut have = Own::NONE;
            let mut parses = BytesMut::new();
            plan.own.prepare_missing(&mut have, need, &mut parses);
            let mut prepared: Vec<String> = messages(&parses)
                .into_iter()
                .filter(|(t, _)| *t == ft::PARSE)
                .map(|(_, n)| n)
                .collect();
            let mut bound = bound;
            prepared.sort();
            bound.sort();
            assert_eq!(prepared, bound, "{owed:?}");
        }
    }
}
