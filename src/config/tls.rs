//! TLS settings: the client-facing listener (`[tls]`, with client-certificate identity) and
//! each backend (`sslmode` and friends under `[databases.<name>]`). Typed here with the rest
//! of the configuration; [`crate::tls`] loads and serves what they name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigProblem;

/// Client-facing TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// Server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA bundles that client certificates must chain to; enables client certificates.
    pub client_ca_files: Vec<PathBuf>,
    /// How often certificate and CA files are checked for changes (0 disables polling;
    /// SIGHUP always reloads).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// How a client certificate names its tenant.
    pub identity: IdentityRule,
    /// Explicit certificate SHA-256 fingerprints (hex) to tenant names; used when
    /// `identity.source = "fingerprint"`.
    pub fingerprints: BTreeMap<String, String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::Disable,
            cert_file: None,
            key_file: None,
            client_ca_files: Vec::new(),
            reload_interval: Duration::from_secs(10),
            identity: IdentityRule::default(),
            fingerprints: BTreeMap::new(),
        }
    }
}

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// SSLRequest is answered 'N'.
    #[default]
    Disable,
    /// TLS offered; plaintext still accepted.
    Allow,
    /// Plaintext startup is refused with FATAL 28000.
    Require,
}

/// Where in a client certificate the tenant name is found.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityRule {
    pub source: IdentitySource,
    /// Optional pattern with one `{tenant}` placeholder, e.g.
    /// `spiffe://example.org/tenant/{tenant}` or `{tenant}.tenants.example.com`.
    pub pattern: Option<String>,
}

impl Default for IdentityRule {
    fn default() -> Self {
        IdentityRule {
            source: IdentitySource::Cn,
            pattern: None,
        }
    }
}

/// Certificate field holding the identity.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Subject common name.
    #[default]
    Cn,
    /// A subjectAltName DNS name.
    SanDns,
    /// A subjectAltName URI (SPIFFE IDs).
    SanUri,
    /// The certificate's SHA-256 fingerprint, looked up in `[tls.fingerprints]`.
    Fingerprint,
}

/// Backend TLS, with libpq's sslmode semantics.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    /// TLS if the server offers it, without verification.
    Prefer,
    /// TLS without verification, unless `sslrootcert` is set (then as verify-ca).
    Require,
    /// TLS, certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl TlsConfig {
    /// Problems with the client-facing TLS settings.
    pub fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("tls.{key}"),
                message,
            })
        };
        if self.mode != TlsMode::Disable {
            if self.cert_file.is_none() {
                bad(
                    "cert_file",
                    "required when tls.mode is allow or require".into(),
                );
            }
            if self.key_file.is_none() {
                bad(
                    "key_file",
                    "required when tls.mode is allow or require".into(),
                );
            }
        }
        for (key, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if let Some(p) = path
                && !p.exists()
            {
                bad(key, format!("{} does not exist", p.display()));
            }
        }
        for (i, p) in self.client_ca_files.iter().enumerate() {
            if !p.exists() {
                bad(
                    &format!("client_ca_files[{i}]"),
                    format!("{} does not exist", p.display()),
                );
            }
        }
        if let Some(p) = &self.identity.pattern
            && p.matches("{tenant}").count() != 1
        {
            bad(
                "identity.pattern",
                "must contain {tenant} exactly once".into(),
            );
        }
        if self.identity.source == IdentitySource::Fingerprint && self.fingerprints.is_empty() {
            bad(
                "fingerprints",
                "identity.source = \"fingerprint\" needs at least one entry".into(),
            );
        }
        for fp in self.fingerprints.keys() {
            if normalize_fingerprint(fp).is_none() {
                bad(
                    &format!("fingerprints.{fp}"),
                    "not a SHA-256 fingerprint (64 hex digits, colons allowed)".into(),
                );
            }
        }
    }
}

/// Lowercase hex without colons, when `fp` is a SHA-256 fingerprint.
pub fn normalize_fingerprint(fp: &str) -> Option<String> {
    let hex: String = fp
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}
