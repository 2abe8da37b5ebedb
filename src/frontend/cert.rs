//! Who the client is: its verified client certificate (mapped to a tenant by the configured
//! rule), its SCRAM password, or both, as the tenant's authentication method requires.

use std::sync::Arc;

use bytes::BytesMut;

use super::Fatal;
use super::auth::password;
use super::negotiate::TlsInfo;
use crate::config::AuthMethod;
use crate::protocol::{messages, sqlstate};
use crate::shared::Server;
use crate::stream::ClientStream;
use crate::tenant::Tenant;
use crate::tls::identity::tenant_from_certificate;
use crate::tls::verify::verify_chain;

/// The tenant named by a verified client certificate, None when no certificate was
/// presented. A certificate that fails verification, maps to no tenant, or names another
/// tenant than the startup user is refused (FATAL 28000).
pub fn certificate_tenant(
    server: &Server,
    tls: &TlsInfo,
    user: &str,
) -> Result<Option<String>, Fatal> {
    let Some(verifier) = &tls.verifier else {
        return Ok(None);
    };
    let Some(leaf) = tls.peer_chain.first() else {
        return Ok(None);
    };
    let refuse = |label: &str, message: &str| {
        server.metrics.auth("certificate", false, label);
        tracing::info!(user, reason = label, "client certificate refused");
        Err(Fatal::new(
            sqlstate::INVALID_AUTHORIZATION,
            message.to_string(),
        ))
    };
    if let Err(rejection) = verify_chain(verifier.as_ref(), &tls.peer_chain) {
        return refuse(rejection.label(), rejection.message());
    }
    let Some(tls_cfg) = server.tls.as_ref().map(|t| t.config()) else {
        return Ok(None);
    };
    let known =
        tenant_from_certificate(leaf, tls_cfg).filter(|t| server.tenants().by_name(t).is_some());
    let Some(tenant) = known else {
        return refuse(
            "cert_unmapped",
            "the client certificate does not identify any tenant",
        );
    };
    let user_tenant = server.tenants().tenant_name(user);
    if server.config().auth.check_user_matches_certificate && user_tenant != Some(tenant.as_str()) {
        return refuse(
            "cert_user_mismatch",
            &format!("user \"{user}\" does not match the client certificate"),
        );
    }
    Ok(Some(tenant))
}

/// Authenticates by the tenant's method and returns the tenant.
pub async fn authenticate(
    server: &Server,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    cert_tenant: Option<String>,
    tls: Option<&TlsInfo>,
) -> Result<Arc<Tenant>, Fatal> {
    let by_cert = cert_tenant
        .as_deref()
        .and_then(|t| server.tenants().by_name(t));
    let claimed = by_cert.clone().or_else(|| server.tenants().lookup(user));
    let method = claimed
        .as_ref()
        .map(|t| t.auth_method)
        .unwrap_or(server.config().auth.method);
    let cert_required = || {
        server.metrics.auth("certificate", false, "cert_missing");
        Fatal::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!("a valid client certificate is required for user \"{user}\""),
        )
    };
    match (method, by_cert) {
        (AuthMethod::Certificate | AuthMethod::CertificateOrPassword, Some(t)) => {
            server.metrics.auth("certificate", true, "ok");
            let mut out = BytesMut::new();
            messages::authentication(&mut out, 0, &[]);
            stream
                .send(&out)
                .await
                .map_err(|e| Fatal::new(sqlstate::CONNECTION_FAILURE, e.to_string()))?;
            Ok(t)
        }
        (AuthMethod::Certificate | AuthMethod::CertificateAndPassword, None) => {
            Err(cert_required())
        }
        (AuthMethod::CertificateAndPassword, Some(t)) => {
            let authed = password(server, stream, buf, user, Some(t.clone()), tls).await?;
            Ok(authed)
        }
        (AuthMethod::Password | AuthMethod::CertificateOrPassword, _) => {
            password(
                server,
                stream,
                buf,
                user,
                server.tenants().lookup(user),
                tls,
            )
            .await
        }
    }
}
