//! Running the doctor against configured databases: the `pgtenant doctor` command, its exit
//! status, and the `doctor.strict` start-up gate.

use crate::backend::BackendTarget;
use crate::config::Config;

use super::{Failure, Params, Report, inspect};

/// `pgtenant doctor` exit status: every database checked, no finding that counts.
pub const EXIT_CLEAN: u8 = 0;
/// A critical finding (with `--strict`: any finding).
pub const EXIT_FINDINGS: u8 = 1;
/// A database could not be reached or a check could not run: the report is incomplete.
pub const EXIT_INCOMPLETE: u8 = 2;
/// Invalid configuration or arguments.
pub const EXIT_USAGE: u8 = 64;

/// Why the doctor could not start checking.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("--database {0}: no [databases.{0}] section in the configuration")]
    UnknownDatabase(String),
    #[error("--dba-url: {0}")]
    DbaUrl(String),
}

/// Where and as whom the DBA connection logs in (the database is each checked one's).
#[derive(Clone)]
pub struct DbaLogin {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for DbaLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately omits the password.
        write!(f, "{}@{:?}:{:?}", self.user, self.host, self.port)
    }
}

impl DbaLogin {
    /// Parses `postgres[ql]://user[:password]@[host][:port][/database][?...]`; the database
    /// and query parts are ignored (each configured database is checked in turn).
    pub fn parse(url: &str) -> Result<DbaLogin, DoctorError> {
        let bad = |m: &str| DoctorError::DbaUrl(m.to_string());
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| bad("must start with postgresql:// or postgres://"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| bad("must name a user (postgresql://user:password@host/)"))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
            None => (percent_decode(userinfo)?, None),
        };
        if user.is_empty() {
            return Err(bad("must name a user"));
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed [ in the host"))?;
                (h, after.strip_prefix(':'))
            }
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))
            })
            .transpose()?;
        Ok(DbaLogin {
            host: (!host.is_empty()).then(|| host.to_string()),
            port,
            user,
            password,
        })
    }

    /// `app` (a database's target) as this login: same database and TLS settings.
    fn target(&self, app: &BackendTarget) -> BackendTarget {
        let mut t = app.clone();
        if let Some(h) = &self.host {
            t.host = h.clone();
            t.server_name = h.clone();
        }
        if let Some(p) = self.port {
            t.port = p;
        }
        t.user = self.user.clone();
        t.password = self.password.clone();
        t
    }
}

fn percent_decode(s: &str) -> Result<String, DoctorError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DoctorError::DbaUrl("invalid %-escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DoctorError::DbaUrl("not UTF-8 after %-decoding".into()))
}

/// The databases to check: `only`, or every configured one.
pub fn select(cfg: &Config, only: Option<&str>) -> Result<Vec<String>, DoctorError> {
    match only {
        Some(name) if cfg.databases.contains_key(name) => Ok(vec![name.to_string()]),
        Some(name) => Err(DoctorError::UnknownDatabase(name.to_string())),
        None => Ok(cfg.databases.keys().cloned().collect()),
    }
}

/// Checks each of `databases`: logs in as its app role (which must work), and runs the
/// checks through `dba` when given, else through the app role. Unreachable databases and
/// checks that fail are [`Failure`]s in the report.
pub async fn check(cfg: &Config, databases: &[String], dba: Option<&DbaLogin>) -> Report {
    let mut report = Report::default();
    for name in databases {
        let fail = |report: &mut Report, error: String| {
            report.failures.push(Failure {
                database: name.clone(),
                check: "connect".into(),
                error,
            })
        };
        let target = match BackendTarget::for_database(name, cfg, Default::default()) {
            Ok(t) => t,
            Err(e) => {
                fail(&mut report, e.to_string());
                continue;
            }
        };
        let mut app = match target.connect(0).await {
            Ok(c) => c,
            Err(e) => {
                fail(&mut report, format!("as the app role {}: {e}", target.user));
                continue;
            }
        };
        let Some(params) = Params::for_database(cfg, name) else {
            fail(&mut report, "not in the configuration".into());
            continue;
        };
        let result = match dba {
            Some(login) => match login.target(&target).connect(0).await {
                Ok(mut conn) => inspect(&mut conn, &params).await,
                Err(e) => {
                    fail(&mut report, format!("as the DBA {}: {e}", login.user));
                    continue;
                }
            },
            None => inspect(&mut app, &params).await,
        };
        match result {
            Ok(r) => {
                report.findings.extend(r.findings);
                report.failures.extend(r.failures);
            }
            Err(e) => fail(&mut report, e.to_string()),
        }
    }
    report
}

/// The exit status for `report`: incomplete beats findings; warnings count only if `strict`.
pub fn exit_status(report: &Report, strict: bool) -> u8 {
    if !report.failures.is_empty() {
        EXIT_INCOMPLETE
    } else if report.has_critical() || (strict && !report.findings.is_empty()) {
        EXIT_FINDINGS
    } else {
        EXIT_CLEAN
    }
}

/// The `doctor.strict` gate: every configured database is checked before the proxy starts,
/// and any finding, or a database that could not be checked, stops it with an error that
/// names them.
pub async fn strict_gate(cfg: &Config) -> Result<(), String> {
    let names: Vec<String> = cfg.databases.keys().cloned().collect();
    let report = check(cfg, &names, None).await;
    if report.findings.is_empty() && report.failures.is_empty() {
        return Ok(());
    }
    let mut lines: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            format!(
                "[{}] {} {} {}: {}",
                f.database,
                f.severity.label(),
                f.check,
                f.object,
                f.message
            )
        })
        .collect();
    lines.extend(report.failures.iter().map(|f| {
        format!(
            "[{}] could not check ({}): {}",
            f.database, f.check, f.error
        )
    }));
    Err(format!(
        "doctor.strict = true and the RLS doctor has {} finding(s) and {} unchecked item(s); \
         run `pgtenant doctor` for the fix SQL:\n  {}",
        report.findings.len(),
        report.failures.len(),
        lines.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dba_urls_parse() {
        let l = DbaLogin::parse("postgresql://postgres:p%40ss@db.example:5433/app?sslmode=require")
            .unwrap();
        assert_eq!(l.user, "postgres");
        assert_eq!(l.password.as_deref(), Some("p@ss"));
        assert_eq!(l.host.as_deref(), Some("db.example"));
        assert_eq!(l.port, Some(5433));
        let v6 = DbaLogin::parse("postgres://admin@[::1]:6000").unwrap();
        assert_eq!((v6.host.as_deref(), v6.port), (Some("::1"), Some(6000)));
        assert!(!format!("{l:?}").contains("p@ss"));
        let l = DbaLogin::parse("postgres://admin@/app").unwrap();
        assert_eq!((l.host, l.port, l.password), (None, None, None));
        assert!(DbaLogin::parse("mysql://x@y").is_err());
        assert!(DbaLogin::parse("postgres://host/app").is_err());
    }
}
