//! Deferred client-certificate verification. During the handshake the client proves it
//! holds the key of whatever certificate it presents (signatures are checked by the real
//! verifier); whether that certificate chains to a configured CA and is within its validity
//! period is checked right after the handshake, so the client gets a readable FATAL 28000
//! with the reason instead of a TLS alert. No certificate is ever used before that check.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Accepts any presented certificate at handshake time; see the module docs.
#[derive(Debug)]
pub struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl DeferredClientVerifier {
    /// Wraps the real verifier, whose signature checks are kept.
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> DeferredClientVerifier {
        DeferredClientVerifier { inner }
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a presented client certificate was refused; the bounded metric label and the text
/// the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRejection {
    Expired,
    NotYetValid,
    UnknownCa,
    Invalid,
}

impl CertRejection {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CertRejection::Expired => "cert_expired",
            CertRejection::NotYetValid => "cert_not_yet_valid",
            CertRejection::UnknownCa => "cert_unknown_ca",
            CertRejection::Invalid => "cert_invalid",
        }
    }

    /// Client-facing reason.
    pub fn message(self) -> &'static str {
        match self {
            CertRejection::Expired => "the client certificate has expired",
            CertRejection::NotYetValid => "the client certificate is not yet valid",
            CertRejection::UnknownCa => {
                "the client certificate is not signed by a trusted certificate authority"
            }
            CertRejection::Invalid => "the client certificate is invalid",
        }
    }
}

/// Verifies a presented chain against the configured CAs, now.
pub fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
) -> Result<(), CertRejection> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertRejection::Invalid);
    };
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(e)) => Err(match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertRejection::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertRejection::NotYetValid
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                CertRejection::UnknownCa
            }
            _ => CertRejection::Invalid,
        }),
        Err(_) => Err(CertRejection::Invalid),
    }
}
