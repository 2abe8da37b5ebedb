//! TLS on both legs with real certificates generated at run time: psql (libpq) against the
//! proxy with verify-full, client-certificate tenant identity, refusals, SCRAM-SHA-256-PLUS,
//! the SSLRequest plaintext-injection attempt, certificate rotation, and backend verify-full.

mod common;

use std::path::Path;

use common::certs::*;
use common::raw::*;
use common::*;
use pgtenant::config::AuthMethod;
use pgtenant::pgcluster::{ClusterOptions, TempCluster};
use pgtenant::tls::{SslMode, TlsMode};
use sha2::Digest;

/// Runs psql with a libpq connection string; returns (success, stdout, stderr).
async fn psql(conn: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args(["-XAtw", conn, "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new();
        let ca = Ca::new("pgtenant test CA");
        ca.write(&dir.0, "ca.crt");
        ca.issue(
            &dir.0,
            "server",
            "localhost",
            vec![dns("localhost"), ip("127.0.0.1")],
            false,
            true,
        );
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    fn conn(&self, port: u16, user: &str, client: Option<&str>, extra: &str) -> String {
        let mut s = format!(
            "host=localhost port={port} user={user} dbname=app sslmode=verify-full sslrootcert={}",
            self.path("ca.crt")
        );
        if let Some(c) = client {
            s += &format!(
                " sslcert={} sslkey={}",
                self.path(&format!("{c}.crt")),
                self.path(&format!("{c}.key"))
            );
        }
        format!("{s} {extra}")
    }
}

fn tls_config(cfg: &mut pgtenant::config::Config, dir: &Path) {
    cfg.tls.mode = TlsMode::Require;
    cfg.tls.cert_file = Some(dir.join("server.crt"));
    cfg.tls.key_file = Some(dir.join("server.key"));
    cfg.tls.client_ca_files = vec![dir.join("ca.crt")];
    cfg.auth.method = AuthMethod::CertificateOrPassword;
}

#[tokio::test]
async fn client_tls_certificates_identify_tenants() {
    let pki = Pki::new();
    let d = &pki.dir.0;
    pki.ca.issue(d, "acme", "acme", vec![], false, false);
    pki.ca.issue(d, "expired", "acme", vec![], true, false);
    pki.ca.issue(d, "nobody", "nobody", vec![], false, false);
    Ca::new("some other CA").issue(d, "foreign", "acme", vec![], false, false);
    let env = TestEnv::start_with(|c| tls_config(c, d)).await;
    let port = env.proxy.addr.port();
    let ctx = "SELECT current_setting('app.current_tenant')";

    let (ok, out, err) = psql(&pki.conn(port, "acme", Some("acme"), ""), ctx).await;
    assert!(ok, "certificate login failed: {err}");
    assert_eq!(out, ACME);

    let refusals = [
        ("expired", "acme", "expired"),
        (
            "foreign",
            "acme",
            "not signed by a trusted certificate authority",
        ),
        ("nobody", "nobody", "does not identify any tenant"),
        ("acme", "globex", "does not match the client certificate"),
    ];
    for (cert, user, message) in refusals {
        let (ok, _, err) = psql(&pki.conn(port, user, Some(cert), ""), ctx).await;
        assert!(!ok, "{cert} as {user} must be refused");
        assert!(err.contains(message), "{cert} as {user}: {err}");
    }

    // No certificate: SCRAM over TLS, with channel binding required by the client.
    let conn = pki.conn(
        port,
        "globex",
        None,
        "password=globex-secret channel_binding=require",
    );
    let (ok, out, err) = psql(&conn, ctx).await;
    assert!(ok, "SCRAM-SHA-256-PLUS failed: {err}");
    assert_eq!(out, GLOBEX);

    // Plaintext is refused with a clear FATAL when TLS is required.
    let plain = format!(
        "host=127.0.0.1 port={port} user=acme password=acme-secret dbname=app sslmode=disable"
    );
    let (ok, _, err) = psql(&plain, ctx).await;
    assert!(!ok);
    assert!(err.contains("requires an encrypted connection"), "{err}");

    // Bytes pipelined after SSLRequest are never processed (CVE-2021-23214 class).
    let mut c = RawConn::tcp(env.proxy.addr).await;
    let mut bytes = startup_packet(80877103, b"");
    bytes.extend_from_slice(&startup_packet(196608, b"user\0acme\0database\0app\0\0"));
    c.send(&bytes).await;
    let msgs = c.until_ready().await;
    let errs = errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert_eq!(errs[0].code, "08P01");
    assert!(
        errs[0]
            .message
            .contains("unencrypted data after SSL request")
    );
    assert!(c.is_closed().await);

    let metrics = env.proxy.metrics().await;
    assert!(metrics.contains("reason=\"cert_expired\""), "{metrics}");
    assert!(metrics.contains("pgtenant_tls_certificate_expiry_timestamp_seconds"));
}

#[tokio::test]
async fn rotated_certificates_apply_to_new_clients_without_dropping_old_ones() {
    let pki = Pki::new();
    let d = &pki.dir.0;
    let env = TestEnv::start_with(|c| {
        tls_config(c, d);
        c.auth.method = AuthMethod::Password;
        c.tls.client_ca_files.clear();
    })
    .await;
    let port = env.proxy.addr.port();
    let old = pki.conn(port, "acme", None, "password=acme-secret");
    let long_lived = tokio::process::Command::new("psql")
        .args([
            "-XAtw",
            &old,
            "-c",
            "SELECT pg_sleep(3)",
            "-c",
            "SELECT current_setting('app.current_tenant')",
        ])
        .output();
    let long_lived = tokio::spawn(long_lived);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Rotate to a certificate from a new CA, then reload.
    let new_ca = Ca::new("rotated CA");
    new_ca.write(d, "ca2.crt");
    new_ca.issue(
        d,
        "server",
        "localhost",
        vec![dns("localhost"), ip("127.0.0.1")],
        false,
        true,
    );
    env.proxy
        .server
        .reload_tls()
        .expect("new certificate loads");
    let new_conn = pki
        .conn(port, "acme", None, "password=acme-secret")
        .replace("ca.crt", "ca2.crt");
    let (ok, out, err) = psql(&new_conn, "SELECT current_setting('app.current_tenant')").await;
    assert!(ok, "new certificate not served: {err}");
    assert_eq!(out, ACME);
    let (ok, _, _) = psql(&old, "SELECT 1").await;
    assert!(
        !ok,
        "the old CA must no longer verify the rotated certificate"
    );

    let done = long_lived.await.unwrap().unwrap();
    assert!(
        done.status.success(),
        "long-lived client dropped: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains(ACME));

    // A broken file keeps the previous certificate.
    std::fs::write(d.join("server.crt"), "not a certificate").unwrap();
    assert!(
        env.proxy.server.reload_tls().is_err(),
        "a broken certificate file must be reported"
    );
    let (ok, _, err) = psql(&new_conn, "SELECT 1").await;
    assert!(ok, "a broken reload must keep the old certificate: {err}");
}

#[tokio::test]
async fn backend_tls_verify_full() {
    let pki = Pki::new();
    let d = &pki.dir.0;
    let server_cert = std::fs::read(d.join("server.crt")).unwrap();
    let server_key = std::fs::read(d.join("server.key")).unwrap();
    let opts = ClusterOptions {
        extra_conf: vec![("ssl".into(), "on".into())],
        extra_files: vec![
            ("server.crt".into(), server_cert),
            ("server.key".into(), server_key),
        ],
        ..Default::default()
    };
    let cluster = TempCluster::start(opts).await.unwrap();
    pgtenant::demo::load_example(&cluster).await.unwrap();

    let mut cfg = test_config(&cluster);
    for db in cfg.databases.values_mut() {
        db.host = "127.0.0.1".into();
        db.sslmode = SslMode::VerifyFull;
        db.sslrootcert = Some(d.join("ca.crt"));
        db.server_name = Some("localhost".into());
    }
    let proxy = Proxy::start(cfg.clone()).await;
    let c = proxy.connect("acme").await;
    let row = c
        .query_one("SELECT current_setting('app.current_tenant')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ACME);
    let su = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname=app",
        cluster.port(),
        cluster.superuser_password()
    );
    let su = connect(&su).await.unwrap();
    let row = su
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'app_user'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<bool>>(0),
        Some(true),
        "backend connections must use TLS"
    );

    // The certificate does not name this host: verify-full refuses it.
    for db in cfg.databases.values_mut() {
        db.server_name = Some("wrong.example".into());
    }
    let proxy = Proxy::start(cfg).await;
    let err = connect(&proxy.conn_str("acme"))
        .await
        .expect_err("must fail");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("could not connect"), "{err:?}");
}

#[tokio::test]
async fn san_uri_and_fingerprint_rules_and_direct_tls() {
    use pgtenant::tls::IdentitySource;
    let pki = Pki::new();
    let d = &pki.dir.0;
    let spiffe = pki.ca.issue(
        d,
        "spiffe",
        "workload",
        vec![uri("spiffe://example.org/tenant/initech")],
        false,
        false,
    );
    let _wrong_domain = pki.ca.issue(
        d,
        "elsewhere",
        "workload",
        vec![uri("spiffe://evil.org/tenant/initech")],
        false,
        false,
    );
    let env = TestEnv::start_with(|c| {
        tls_config(c, d);
        c.tls.identity.source = IdentitySource::SanUri;
        c.tls.identity.pattern = Some("spiffe://example.org/tenant/{tenant}".into());
    })
    .await;
    let port = env.proxy.addr.port();
    let ctx = "SELECT current_setting('app.current_tenant')";
    let (ok, out, err) = psql(&pki.conn(port, "initech", Some("spiffe"), ""), ctx).await;
    assert!(ok, "SPIFFE identity failed: {err}");
    assert_eq!(out, INITECH);
    let (ok, _, err) = psql(&pki.conn(port, "initech", Some("elsewhere"), ""), ctx).await;
    assert!(!ok && err.contains("does not identify any tenant"), "{err}");

    // Fingerprint table: the certificate's SHA-256 names the tenant.
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(spiffe.cert_pem.as_bytes()).unwrap();
    let der: rustls_pki_types::CertificateDer = der;
    let fp = pgtenant::tls::identity::hex(&sha2::Sha256::digest(der.as_ref()));
    let mut cfg = env.config();
    tls_config(&mut cfg, d);
    cfg.tls.identity.source = IdentitySource::Fingerprint;
    cfg.tls.fingerprints.insert(fp, "globex".into());
    let proxy = Proxy::start(cfg).await;
    let (ok, out, err) = psql(
        &pki.conn(proxy.addr.port(), "globex", Some("spiffe"), ""),
        ctx,
    )
    .await;
    assert!(ok, "fingerprint identity failed: {err}");
    assert_eq!(out, GLOBEX);

    // PostgreSQL 17 direct TLS: a ClientHello first, ALPN "postgresql" required.
    for (alpn, accepted) in [(Some(b"postgresql".to_vec()), true), (None, false)] {
        let mut roots = rustls::RootCertStore::empty();
        pgtenant::tls::server::add_pem_roots(&mut roots, &d.join("ca.crt")).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(pgtenant::tls::server::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.into_iter().collect();
        let tcp = tokio::net::TcpStream::connect(env.proxy.addr)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await;
        let Ok(mut tls) = tls else {
            assert!(!accepted, "direct TLS with ALPN must be accepted");
            continue;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let startup = startup_packet(196608, b"user\0acme\0database\0app\0\0");
        tls.write_all(&startup).await.unwrap();
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut first))
            .await
            .unwrap()
            .unwrap_or(0);
        if accepted {
            assert_eq!(
                (n, first[0]),
                (1, b'R'),
                "expected an authentication request over direct TLS"
            );
        } else {
            assert!(
                n == 0 || first[0] != b'R',
                "direct TLS without ALPN must be refused"
            );
        }
    }
}

/// What pgtenant writes to a TLS peer arrives whole without a later write: the TLS layer
/// keeps the records of a write that found the socket full (the write returns once the
/// plaintext is taken), so `send` flushes. Without it the tail of a large result stayed
/// inside pgtenant and a client that read slowly hung (psycopg's async COPY tests).
#[tokio::test]
async fn a_tls_send_is_delivered_without_a_later_write() {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let provider = pgtenant::tls::server::provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    const TOTAL: usize = 1 << 20;
    for round in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Small socket buffers, so the writer finds the socket full again and again.
        let small = |s: &tokio::net::TcpStream| {
            let s = socket2::SockRef::from(s);
            s.set_send_buffer_size(8192).unwrap();
            s.set_recv_buffer_size(8192).unwrap();
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg.clone()));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            small(&tcp);
            let tls = acceptor.accept(tcp).await.unwrap();
            let mut stream = pgtenant::stream::ClientStream::Tls(Box::new(tls));
            stream.send(&vec![7u8; TOTAL]).await.unwrap();
            // Holds the connection open and writes nothing more.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            drop(stream);
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        small(&tcp);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg.clone()));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = connector.connect(name, tcp).await.unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 4096];
        while got < TOTAL {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: {got} of {TOTAL} bytes arrived, then nothing")
                })
                .unwrap();
            assert!(n > 0, "round {round}: closed early");
            got += n;
            if got % (64 << 10) < 4096 {
                // A slow reader: the writer's last write is likely to find the socket full.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        server.abort();
    }
}
