//! Validation of a parsed configuration: every problem at once, each naming its key.

use super::{AuthMethod, Config, ConfigProblem};
use crate::auth::scram::ScramVerifier;

impl Config {
    /// Returns every problem in the configuration (empty when valid).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut bad = |key: String, message: String| p.push(ConfigProblem { key, message });
        self.check_server(&mut bad);
        self.check_context(&mut bad);
        self.check_databases(&mut bad);
        self.check_tls_and_auth(&mut bad);
        self.check_admin(&mut bad);
        self.check_tenants(&mut bad);
        self.check_doctor(&mut bad);
        p
    }

    /// Limits and keepalives under `[server]`.
    fn check_server(&self, bad: &mut impl FnMut(String, String)) {
        let s = &self.server;
        if s.max_startup_message_size < 1024 {
            bad(
                "server.max_startup_message_size".into(),
                "must be at least 1024".into(),
            );
        }
        if s.max_message_size < 8192 {
            bad(
                "server.max_message_size".into(),
                "must be at least 8192".into(),
            );
        }
        if s.large_message_bytes_total < s.max_message_size {
            bad(
                "server.large_message_bytes_total".into(),
                "must be at least server.max_message_size (one message of that size must fit)"
                    .into(),
            );
        }
        if s.large_message_bytes_per_tenant < s.max_message_size
            || s.large_message_bytes_per_tenant > s.large_message_bytes_total
        {
            bad(
                "server.large_message_bytes_per_tenant".into(),
                "must be at least server.max_message_size and at most server.large_message_bytes_total"
                    .into(),
            );
        }
        if s.max_client_connections == 0 {
            bad(
                "server.max_client_connections".into(),
                "must be at least 1".into(),
            );
        }
        if s.tcp_keepalives_count == 0 && !s.tcp_keepalives_idle.is_zero() {
            bad(
                "server.tcp_keepalives_count".into(),
                "must be at least 1 when keepalives are on".into(),
            );
        }
    }

    /// The `[context]` settings, mode and schema.
    fn check_context(&self, bad: &mut impl FnMut(String, String)) {
        let settings = self.context.settings();
        for (i, name) in settings.iter().enumerate() {
            let key = if i == 0 {
                "context.tenant_id_setting".to_string()
            } else {
                format!("context.extra_settings[{}]", i - 1)
            };
            if !is_custom_setting_name(name) {
                bad(
                    key.clone(),
                    format!(
                        "{name:?} is not a custom setting name of the form prefix.name (lowercase letters, digits, _)"
                    ),
                );
            }
            if name.starts_with(&format!("{}.", self.context.schema)) {
                bad(
                    key.clone(),
                    format!(
                        "{name:?} is in context.schema's namespace, which holds the verified copies"
                    ),
                );
            }
            if settings[..i].contains(name) {
                bad(key, format!("{name:?} is listed twice"));
            }
        }
        let most = super::MAX_SETTINGS;
        if settings.len() > most {
            bad(
                "context.extra_settings".into(),
                format!(
                    "{} context settings; at most {most} (the tenant id and {} more)",
                    settings.len(),
                    most - 1
                ),
            );
        }
        if self.server.channel_key_file.is_some() && self.server.channel_key_env.is_some() {
            bad(
                "server.channel_key_env".into(),
                "set server.channel_key_file or server.channel_key_env, not both".into(),
            );
        }
        let c = &self.context;
        if c.mode == super::ContextMode::Verified {
            match (&c.key_file, &c.key_env) {
                (None, None) => bad(
                    "context.key_file".into(),
                    "verified mode needs a key: set context.key_file or context.key_env".into(),
                ),
                (Some(_), Some(_)) => bad(
                    "context.key_env".into(),
                    "set context.key_file or context.key_env, not both".into(),
                ),
                _ => {}
            }
        } else if c.carry == Some(true) {
            bad(
                "context.carry".into(),
                "only verified mode carries the context between transactions (plain mode's \
                 context is transaction-local)"
                    .into(),
            );
        }
        if !is_plain_identifier(&c.schema) {
            bad(
                "context.schema".into(),
                format!(
                    "{:?} must be a lowercase identifier (a-z, 0-9, _; not starting with a digit)",
                    c.schema
                ),
            );
        }
    }

    /// Each `[databases.<name>]`.
    fn check_databases(&self, bad: &mut impl FnMut(String, String)) {
        if self.databases.is_empty() {
            bad(
                "databases".into(),
                "at least one [databases.<name>] section is required".into(),
            );
        }
        for (name, db) in &self.databases {
            let key = |k: &str| format!("databases.{name}.{k}");
            if !is_plain_name(name) {
                bad(
                    format!("databases.{name}"),
                    "database names may use letters, digits, _ and -".into(),
                );
            }
            if db.pool_size == 0 || db.pool_size > 10_000 {
                bad(key("pool_size"), "must be between 1 and 10000".into());
            }
            if db.prepared_statement_bytes < 1024 {
                bad(
                    key("prepared_statement_bytes"),
                    "must be at least 1024 (bytes)".into(),
                );
            }
            if db.prepared_statement_bytes_total < db.prepared_statement_bytes {
                bad(
                    key("prepared_statement_bytes_total"),
                    format!(
                        "must be at least prepared_statement_bytes ({})",
                        db.prepared_statement_bytes
                    ),
                );
            }
            if let Some(n) = db.prepared_statement_bytes_per_tenant
                && (n < db.prepared_statement_bytes || n > db.prepared_statement_bytes_total)
            {
                bad(
                    key("prepared_statement_bytes_per_tenant"),
                    format!(
                        "must be at least prepared_statement_bytes ({}) and at most prepared_statement_bytes_total ({})",
                        db.prepared_statement_bytes, db.prepared_statement_bytes_total
                    ),
                );
            }
            if let Some(n) = db.max_pinned_connections
                && n > db.pool_size
            {
                bad(
                    key("max_pinned_connections"),
                    format!("must not exceed pool_size ({})", db.pool_size),
                );
            }
            if db.host.is_empty() {
                bad(key("host"), "must not be empty".into());
            }
            if db.user.is_empty() {
                bad(key("user"), "must not be empty".into());
            }
            if db.password.is_some() && db.password_env.is_some() {
                bad(
                    key("password_env"),
                    "set either password or password_env, not both".into(),
                );
            }
            if let Some(var) = &db.password_env
                && std::env::var(var).is_err()
            {
                bad(
                    key("password_env"),
                    format!("environment variable {var} is not set"),
                );
            }
            for (i, kind) in db.guard_allow.iter().enumerate() {
                if let Some(why) = crate::policy::knowledge::widening_problem(kind) {
                    bad(key(&format!("guard_allow[{i}]")), why);
                }
            }
            if db.checkout_timeout.is_zero() {
                bad(key("checkout_timeout"), "must be greater than zero".into());
            }
            if db.connect_timeout.is_zero() {
                bad(key("connect_timeout"), "must be greater than zero".into());
            }
            use super::tls::SslMode;
            if matches!(db.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
                && db.sslrootcert.is_none()
            {
                bad(
                    key("sslrootcert"),
                    "required for sslmode verify-ca and verify-full".into(),
                );
            }
            if db.sslcert.is_some() != db.sslkey.is_some() {
                bad(key("sslkey"), "sslcert and sslkey go together".into());
            }
            for (k, p) in [
                ("sslrootcert", &db.sslrootcert),
                ("sslcert", &db.sslcert),
                ("sslkey", &db.sslkey),
            ] {
                if let Some(p) = p
                    && !p.exists()
                {
                    bad(key(k), format!("{} does not exist", p.display()));
                }
            }
        }
    }

    /// `[tls]`, and the client CAs that certificate authentication needs.
    fn check_tls_and_auth(&self, bad: &mut impl FnMut(String, String)) {
        let mut tls_problems = Vec::new();
        self.tls.validate(&mut tls_problems);
        for tp in tls_problems {
            bad(tp.key, tp.message);
        }
        let cert_methods = [
            AuthMethod::Certificate,
            AuthMethod::CertificateOrPassword,
            AuthMethod::CertificateAndPassword,
        ];
        let uses_certs = cert_methods.contains(&self.auth.method)
            || self
                .tenants
                .values()
                .any(|t| t.auth_method.is_some_and(|m| cert_methods.contains(&m)));
        if uses_certs && self.tls.client_ca_files.is_empty() {
            bad(
                "tls.client_ca_files".into(),
                "certificate authentication needs at least one client CA bundle".into(),
            );
        }
    }

    /// The admin console's database name and users.
    fn check_admin(&self, bad: &mut impl FnMut(String, String)) {
        if !is_plain_name(&self.admin.database) {
            bad(
                "admin.database".into(),
                "database names may use letters, digits, _ and -".into(),
            );
        }
        if self.databases.contains_key(&self.admin.database) {
            bad(
                format!("databases.{}", self.admin.database),
                "this name is the admin console's (admin.database)".into(),
            );
        }
        for (section, users) in [
            ("admin.users", &self.admin.users),
            ("admin.stats_users", &self.admin.stats_users),
        ] {
            for (user, verifier) in users {
                if let Err(e) = ScramVerifier::parse(verifier) {
                    bad(
                        format!("{section}.{user}"),
                        format!(
                            "not a SCRAM-SHA-256 verifier ({e}); create one with `pgtenant hash-password`"
                        ),
                    );
                }
            }
        }
    }

    /// Each `[tenants.<name>]`: name, id, password verifier, settings.
    fn check_tenants(&self, bad: &mut impl FnMut(String, String)) {
        for (name, t) in &self.tenants {
            let key = |k: &str| format!("tenants.{name}.{k}");
            if !is_plain_name(name) || name.contains('.') {
                bad(
                    format!("tenants.{name}"),
                    "tenant names may use letters, digits, _ and -".into(),
                );
            }
            if t.id.is_empty() {
                bad(key("id"), "must not be empty".into());
            }
            if t.id.contains('\0') {
                bad(key("id"), "must not contain NUL".into());
            }
            let cert_only = t.auth_method.unwrap_or(self.auth.method) == AuthMethod::Certificate;
            if cert_only && t.password.is_empty() {
                // Certificate-only tenants need no password.
            } else if let Err(e) = ScramVerifier::parse(&t.password) {
                bad(
                    key("password"),
                    format!(
                        "not a SCRAM-SHA-256 verifier ({e}); create one with `pgtenant hash-password`"
                    ),
                );
            }
            for (setting, value) in &t.settings {
                if !self.context.extra_settings.contains(setting) {
                    bad(
                        format!("tenants.{name}.settings.{setting}"),
                        "not listed in context.extra_settings".into(),
                    );
                }
                if value.contains('\0') {
                    bad(
                        format!("tenants.{name}.settings.{setting}"),
                        "must not contain NUL".into(),
                    );
                }
            }
        }
    }

    /// `[doctor]`.
    fn check_doctor(&self, bad: &mut impl FnMut(String, String)) {
        let column = &self.doctor.tenant_column;
        if column.is_empty() || column.len() > 63 || column.chars().any(|c| c.is_control()) {
            bad(
                "doctor.tenant_column".into(),
                "must be a column name of 1 to 63 bytes without control characters".into(),
            );
        }
    }
}

/// A custom GUC name such as `app.current_tenant`: the only kind pgtenant injects.
pub fn is_custom_setting_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let ok_part = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit()
    };
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    ok_part(a) && ok_part(b) && parts.all(ok_part)
}

pub(super) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A lowercase SQL identifier that needs no quoting (schema names spliced into SQL).
fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
