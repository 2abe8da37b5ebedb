//! Client certificate → tenant name, by the configured rule: subject CN, a SAN DNS name, a
//! SAN URI (e.g. SPIFFE), each optionally matched against a `{tenant}` pattern, or an
//! explicit fingerprint table.

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::tls::{IdentitySource, TlsConfig, normalize_fingerprint};

/// The tenant a certificate names, or None when it names none under the rule.
pub fn tenant_from_certificate(cert_der: &[u8], cfg: &TlsConfig) -> Option<String> {
    if cfg.identity.source == IdentitySource::Fingerprint {
        let fp = hex(&Sha256::digest(cert_der));
        return cfg
            .fingerprints
            .iter()
            .find(|(k, _)| normalize_fingerprint(k).as_deref() == Some(fp.as_str()))
            .map(|(_, tenant)| tenant.clone());
    }
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let candidates: Vec<String> = match cfg.identity.source {
        IdentitySource::Cn => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect(),
        IdentitySource::SanDns | IdentitySource::SanUri => {
            let want_dns = cfg.identity.source == IdentitySource::SanDns;
            let Ok(Some(san)) = cert.subject_alternative_name() else {
                return None;
            };
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) if want_dns => Some(d.to_string()),
                    GeneralName::URI(u) if !want_dns => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        }
        IdentitySource::Fingerprint => return None,
    };
    candidates.iter().find_map(|c| match &cfg.identity.pattern {
        Some(p) => extract(p, c),
        None => Some(c.clone()),
    })
}

/// Matches `value` against a pattern with one `{tenant}` placeholder.
pub fn extract(pattern: &str, value: &str) -> Option<String> {
    let (prefix, suffix) = pattern.split_once("{tenant}")?;
    let middle = value.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let ok = !middle.is_empty()
        && middle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| middle.to_string())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `tls-server-end-point` channel binding data for a certificate (RFC 5929): its hash
/// with the certificate's signature hash, SHA-256 for MD5/SHA-1 or when unknown.
pub fn end_point_hash(cert_der: &[u8]) -> Vec<u8> {
    use x509_parser::oid_registry as oids;
    let alg = X509Certificate::from_der(cert_der)
        .ok()
        .map(|(_, c)| c.signature_algorithm.algorithm.clone());
    match alg {
        Some(a) if a == oids::OID_PKCS1_SHA384WITHRSA || a == oids::OID_SIG_ECDSA_WITH_SHA384 => {
            sha2::Sha384::digest(cert_der).to_vec()
        }
        Some(a) if a == oids::OID_PKCS1_SHA512WITHRSA || a == oids::OID_SIG_ECDSA_WITH_SHA512 => {
            sha2::Sha512::digest(cert_der).to_vec()
        }
        _ => Sha256::digest(cert_der).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_extract_one_safe_name() {
        assert_eq!(
            extract(
                "spiffe://example.org/tenant/{tenant}",
                "spiffe://example.org/tenant/acme"
            ),
            Some("acme".into())
        );
        assert_eq!(
            extract("{tenant}.tenants.example.com", "globex.tenants.example.com"),
            Some("globex".into())
        );
        assert_eq!(
            extract(
                "spiffe://example.org/tenant/{tenant}",
                "spiffe://other.org/tenant/acme"
            ),
            None
        );
        assert_eq!(
            extract(
                "spiffe://example.org/tenant/{tenant}",
                "spiffe://example.org/tenant/a/b"
            ),
            None
        );
        assert_eq!(extract("x/{tenant}", "x/"), None);
    }
}
