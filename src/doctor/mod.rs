//! The RLS posture doctor: reads pg_catalog through the app role (or a DBA connection) and
//! reports every way the database lets one tenant reach another's rows, each with the SQL
//! that fixes it. RLS only isolates tenants when the schema, the grants and the app role are
//! set up for it; this is where pgtenant checks that they are.

#[macro_use]
mod sql;
pub mod checks;
pub mod command;
pub mod output;

use serde::Serialize;

use crate::backend::{BackendConn, BackendError};
use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Fails closed or is advice: nothing leaks today, but something breaks or could loosen.
    Warning,
    /// A way for one tenant to read, change or disturb another tenant's data.
    Critical,
}

impl Severity {
    /// Upper-case label for the table output and logs.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// One problem: what is wrong where, and the SQL that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The `[databases.<name>]` it was found in.
    pub database: String,
    /// The check's id (see [`checks::CHECKS`]).
    pub check: &'static str,
    pub severity: Severity,
    /// The table, policy, role, schema or function concerned.
    pub object: String,
    pub message: String,
    /// SQL that removes the finding (run it as a DBA).
    pub fix: String,
}

/// A check that could not run (its findings are unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub database: String,
    /// The check's id, or `connect` when the database could not be reached.
    pub check: String,
    pub error: String,
}

/// Everything one doctor run learned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub failures: Vec<Failure>,
}

impl Report {
    /// True when any finding is critical.
    pub fn has_critical(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Critical)
    }
}

/// What the checks need to know about one database's setup.
#[derive(Debug, Clone)]
pub struct Params {
    /// The `[databases.<name>]` section.
    pub database: String,
    /// The app role (`databases.<name>.user`).
    pub role: String,
    /// `doctor.tenant_column`.
    pub tenant_column: String,
    /// The injected settings, tenant id first.
    pub settings: Vec<String>,
    /// Schema of the verified readers.
    pub schema: String,
}

impl Params {
    /// The parameters for `[databases.<name>]` of `cfg` (None when it has no such section).
    pub fn for_database(cfg: &Config, name: &str) -> Option<Params> {
        Some(Params {
            database: name.to_string(),
            role: cfg.databases.get(name)?.user.clone(),
            tenant_column: cfg.doctor.tenant_column.clone(),
            settings: cfg.context.settings(),
            schema: cfg.context.verified_schema(),
        })
    }
}

/// Runs every check on `conn` (the app role's, or a DBA's). A check whose query fails is a
/// [`Failure`]; only a broken connection is an error.
pub async fn inspect(conn: &mut BackendConn, params: &Params) -> Result<Report, BackendError> {
    let mut report = Report::default();
    for check in checks::CHECKS {
        let rows = match conn.simple_query(&checks::bind(check.query, params)).await {
            Ok(rows) => rows,
            Err(BackendError::Server(e)) => {
                report.failures.push(Failure {
                    database: params.database.clone(),
                    check: check.id.to_string(),
                    error: format!("{}: {}", e.code, e.message),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        for row in rows {
            let row: Vec<String> = row.into_iter().map(Option::unwrap_or_default).collect();
            report.findings.push(Finding {
                database: params.database.clone(),
                check: check.id,
                severity: check.severity,
                object: row.first().cloned().unwrap_or_default(),
                message: (check.message)(&row),
                fix: (check.fix)(&row, params),
            });
        }
    }
    Ok(report)
}

/// `expr` (a deparsed policy expression) with every `current_setting('<context setting>')`
/// replaced by the verified reader for that setting: the migration the doctor prints.
pub fn verified_reads(expr: &str, params: &Params) -> String {
    let mut out = expr.to_string();
    for (i, name) in params.settings.iter().enumerate() {
        let head = format!("current_setting({}::text", quote_literal(name));
        let mut from = 0;
        while let Some(at) = out[from..].find(&head).map(|p| p + from) {
            let rest = &out[at + head.len()..];
            let tail = [")", ", true)", ", false)"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            match tail {
                Some(t) => {
                    let reader = checks::reader(i, name, params);
                    out.replace_range(at..at + head.len() + t.len(), &reader);
                    from = at + reader.len();
                }
                None => from = at + head.len(),
            }
        }
    }
    out
}

/// A SQL string literal (standard_conforming_strings, the default since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier, quoted unless it is plainly lower-case.
pub fn quote_ident(s: &str) -> String {
    let plain = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            database: "app".into(),
            role: "app_user".into(),
            tenant_column: "tenant_id".into(),
            settings: vec!["app.current_tenant".into(), "app.tenant_plan".into()],
            schema: "pgtenant".into(),
        }
    }

    #[test]
    fn current_setting_reads_become_verified_readers() {
        let p = params();
        assert_eq!(
            verified_reads(
                "(tenant_id = (current_setting('app.current_tenant'::text))::uuid)",
                &p
            ),
            "(tenant_id = ((SELECT pgtenant.tenant_id()))::uuid)"
        );
        assert_eq!(
            verified_reads(
                "((current_setting('app.tenant_plan'::text, true) = 'pro'::text) AND (current_setting('app.current_tenant'::text, false) = t))",
                &p
            ),
            "(((SELECT pgtenant.setting('app.tenant_plan')) = 'pro'::text) AND ((SELECT pgtenant.tenant_id()) = t))"
        );
        // Another setting, or a form it does not know, stays as it is.
        let other = "(current_setting('app.other'::text) = x)";
        assert_eq!(verified_reads(other, &p), other);
    }

    #[test]
    fn placeholders_become_literals() {
        let mut p = params();
        p.role = "o'brien".into();
        let sql = checks::bind("SELECT $ROLE, $COLUMN, $SETTINGS, $SCHEMA", &p);
        assert_eq!(
            sql,
            "SELECT 'o''brien', 'tenant_id', ARRAY['app.current_tenant', 'app.tenant_plan']::text[], 'pgtenant'"
        );
    }
}
