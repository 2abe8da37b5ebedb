//! The client-facing TLS acceptor: builds a rustls `ServerConfig` from PEM files, swaps it
//! atomically on reload (SIGHUP, or when the files change), and keeps the old one when the
//! new files are broken. Client certificates are requested when CA bundles are configured;
//! their verification is deferred until after the handshake (see [`super::verify`]) so a
//! bad certificate gets a PostgreSQL FATAL 28000 instead of a bare TLS alert.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::identity::end_point_hash;
use super::verify::DeferredClientVerifier;
use crate::config::tls::TlsConfig;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA bundle: {0}")]
    Verifier(String),
}

/// One consistent generation of TLS material.
pub struct TlsGeneration {
    pub config: Arc<ServerConfig>,
    /// `tls-server-end-point` data for SCRAM-SHA-256-PLUS.
    pub end_point: Vec<u8>,
    /// Full verifier for client certificates (None: client certificates not requested).
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The server certificate's notAfter, for the expiry metric.
    pub not_after: Option<i64>,
}

/// The live acceptor state, replaced as a whole on reload.
pub struct ServerTls {
    cfg: TlsConfig,
    current: ArcSwap<TlsGeneration>,
    stamp: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

/// The process-wide crypto provider (ring), passed explicitly so no default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Loads the configured files; errors name the file.
    pub fn load(cfg: &TlsConfig) -> Result<ServerTls, TlsError> {
        let generation = build(cfg)?;
        let tls = ServerTls {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(generation),
            stamp: std::sync::Mutex::new(Vec::new()),
        };
        tls.changed();
        Ok(tls)
    }

    /// The current generation.
    pub fn current(&self) -> Arc<TlsGeneration> {
        self.current.load_full()
    }

    /// The client-facing TLS settings.
    pub fn config(&self) -> &TlsConfig {
        &self.cfg
    }

    /// Re-reads the files; on error the previous generation stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let generation = build(&self.cfg)?;
        self.current.store(Arc::new(generation));
        Ok(())
    }

    /// True when any file's modification time changed since the last call.
    pub fn changed(&self) -> bool {
        let files = self
            .cfg
            .cert_file
            .iter()
            .chain(self.cfg.key_file.iter())
            .chain(self.cfg.client_ca_files.iter());
        let now: Vec<Option<SystemTime>> = files
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        let Ok(mut stamp) = self.stamp.lock() else {
            return false;
        };
        let changed = *stamp != now;
        *stamp = now;
        changed
    }
}

fn build(cfg: &TlsConfig) -> Result<TlsGeneration, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&cfg.cert_file, &cfg.key_file) else {
        return Err(TlsError::File {
            path: "tls.cert_file".into(),
            message: "not configured".into(),
        });
    };
    let file_err = |p: &std::path::Path| {
        let path = p.display().to_string();
        move |e: rustls_pki_types::pem::Error| TlsError::File {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(file_err(cert_path))?
        .collect::<Result<_, _>>()
        .map_err(file_err(cert_path))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::File {
            path: cert_path.display().to_string(),
            message: "no certificate found".into(),
        });
    };
    let end_point = end_point_hash(leaf);
    let not_after = not_after(leaf);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(file_err(key_path))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let client_verifier = client_verifier(cfg, &provider)?;
    let mut config = match &client_verifier {
        Some(v) => builder
            .with_client_cert_verifier(Arc::new(DeferredClientVerifier::new(v.clone())))
            .with_single_cert(chain, key)?,
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsGeneration {
        config: Arc::new(config),
        end_point,
        client_verifier,
        not_after,
    })
}

fn client_verifier(
    cfg: &TlsConfig,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if cfg.client_ca_files.is_empty() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    for path in &cfg.client_ca_files {
        add_pem_roots(&mut roots, path)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Some(verifier))
}

fn not_after(cert_der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert_der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// Adds every certificate of a PEM bundle to `roots`; errors name the file.
pub fn add_pem_roots(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), TlsError> {
    let file_err = |e: String| TlsError::File {
        path: path.display().to_string(),
        message: e,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(e.to_string()))?;
    for c in certs {
        roots.add(c).map_err(|e| file_err(e.to_string()))?;
    }
    Ok(())
}
