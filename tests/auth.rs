//! Client authentication: SCRAM-SHA-256 against the tenant directory, without revealing
//! which tenants exist; the role.tenant user convention; database and replication checks;
//! the auth metrics; and the authentication timeout.

mod common;

use std::time::Duration;

use common::raw::RawConn;
use common::*;
use pgtenant::config::UserConvention;
use pgtenant::protocol::messages::ErrorFields;

/// (severity, SQLSTATE, message) of a failed tokio-postgres connect.
async fn connect_error(conn_str: &str) -> Option<(String, String, String)> {
    match connect(conn_str).await {
        Ok(_) => None,
        Err(e) => Some(match e.as_db_error() {
            Some(db) => (
                db.severity().to_string(),
                db.code().code().to_string(),
                db.message().to_string(),
            ),
            None => (
                "<none>".into(),
                "<not a server error>".into(),
                e.to_string(),
            ),
        }),
    }
}

fn failed_for(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Value of the `pgtenant_auth_attempts_total` sample whose labels include `reason`.
fn auth_metric(text: &str, reason: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("pgtenant_auth_attempts_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn failures_are_indistinguishable_and_counted() {
    let env = TestEnv::start().await;
    let p = &env.proxy;
    let mut f = Failures::default();

    // Correct passwords work for every tenant.
    for (tenant, _, id) in TENANTS {
        match connect(&p.conn_str(tenant)).await {
            Ok(c) => {
                let r = c
                    .query_one("SELECT current_setting('app.current_tenant')", &[])
                    .await;
                f.check(
                    r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == id),
                    || format!("{tenant}: context {r:?}"),
                );
            }
            Err(e) => f.check(false, || format!("{tenant} with its password: {e}")),
        }
    }

    // Wrong password for a real tenant vs. any password for an unknown one.
    let cases = [
        ("acme", "wrong-password"),
        ("acme", "globex-secret"),
        ("globex", "acme-secret"),
        ("nobody", "whatever"),
        ("nobody", "acme-secret"),
        ("ACME", "acme-secret"),
    ];
    for (user, pw) in cases {
        let got = connect_error(&p.conn_str_with(user, pw)).await;
        let want = ("FATAL".to_string(), "28P01".to_string(), failed_for(user));
        f.check(got.as_ref() == Some(&want), || {
            format!("user {user:?} password {pw:?}: got {got:?}, want {want:?}")
        });
    }
    // The same through the raw client: every field of the ErrorResponse is identical apart
    // from the user name.
    let a = RawConn::connect(p.addr, "acme", "wrong").await.err();
    let b = RawConn::connect(p.addr, "zzzz", "wrong").await.err();
    let norm = |e: Option<ErrorFields>, user: &str| {
        e.map(|mut e| {
            e.message = e.message.replace(&format!("\"{user}\""), "\"<user>\"");
            e
        })
    };
    let (a, b) = (norm(a, "acme"), norm(b, "zzzz"));
    f.check(a.is_some() && a == b, || {
        format!("raw errors differ: {a:?} vs {b:?}")
    });

    // A missing database is reported only after successful authentication.
    let s = format!(
        "host=127.0.0.1 port={} user=acme password=acme-secret dbname=nope",
        p.addr.port()
    );
    let got = connect_error(&s).await;
    let want = (
        "FATAL".to_string(),
        "3D000".to_string(),
        "database \"nope\" does not exist".to_string(),
    );
    f.check(got.as_ref() == Some(&want), || {
        format!("dbname=nope: got {got:?}")
    });
    let s = format!(
        "host=127.0.0.1 port={} user=acme password=wrong dbname=nope",
        p.addr.port()
    );
    let got = connect_error(&s).await;
    f.check(got.as_ref().is_some_and(|g| g.1 == "28P01"), || {
        format!("dbname=nope with a wrong password: {got:?}")
    });

    // Replication connections are not supported.
    for mode in ["database", "true", "on", "1"] {
        let r = RawConn::connect_with(
            p.addr,
            &[("user", "acme"), ("database", "app"), ("replication", mode)],
            "acme-secret",
        )
        .await
        .err();
        f.check(
            r.as_ref()
                .is_some_and(|e| e.code == "0A000" && e.severity == "FATAL"),
            || format!("replication={mode}: {r:?}"),
        );
    }
    let r = RawConn::connect_with(
        p.addr,
        &[
            ("user", "acme"),
            ("database", "app"),
            ("replication", "false"),
        ],
        "acme-secret",
    )
    .await;
    f.check(r.is_ok(), || {
        format!("replication=false refused: {:?}", r.err())
    });

    // No user name at all.
    let r = RawConn::connect_with(p.addr, &[("database", "app")], "x")
        .await
        .err();
    f.check(
        r.as_ref()
            .is_some_and(|e| e.code == "28000" && e.severity == "FATAL"),
        || format!("no user: {r:?}"),
    );

    // The metrics tell the two failure kinds apart (only operators see them).
    let text = p.metrics().await;
    let bad = auth_metric(&text, "bad_password");
    let unknown = auth_metric(&text, "unknown_tenant");
    f.check(bad.is_some_and(|v| v >= 4.0), || {
        format!("bad_password count {bad:?}")
    });
    f.check(unknown.is_some_and(|v| v >= 4.0), || {
        format!("unknown_tenant count {unknown:?}")
    });
    let ok = auth_metric(&text, "ok");
    f.check(ok.is_some_and(|v| v >= 3.0), || format!("ok count {ok:?}"));
    f.finish();
}

#[tokio::test]
async fn role_dot_tenant_convention() {
    let env =
        TestEnv::start_with(|cfg| cfg.auth.user_convention = UserConvention::RoleDotTenant).await;
    let p = &env.proxy;
    let mut f = Failures::default();
    for (user, pw, id) in [
        ("app.acme", "acme-secret", ACME),
        ("reporting.globex", "globex-secret", GLOBEX),
        ("a.b.initech", "initech-secret", INITECH),
    ] {
        match connect(&p.conn_str_with(user, pw)).await {
            Ok(c) => {
                let r = c
                    .query_one("SELECT current_setting('app.current_tenant')", &[])
                    .await;
                f.check(
                    r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == id),
                    || format!("{user}: context {r:?}"),
                );
                let rows = c
                    .query("SELECT tenant_id::text FROM invoices", &[])
                    .await
                    .unwrap();
                f.check(
                    !rows.is_empty() && rows.iter().all(|r| r.get::<_, String>(0) == id),
                    || format!("{user}: foreign rows"),
                );
            }
            Err(e) => f.check(false, || format!("{user}: {e}")),
        }
    }
    for (user, pw) in [
        ("acme", "acme-secret"),
        ("app.", "acme-secret"),
        ("app.acme", "globex-secret"),
        ("app.nobody", "x"),
    ] {
        let got = connect_error(&p.conn_str_with(user, pw)).await;
        let want = ("FATAL".to_string(), "28P01".to_string(), failed_for(user));
        f.check(got.as_ref() == Some(&want), || {
            format!("{user:?}/{pw:?}: got {got:?}")
        });
    }
    f.finish();
}

#[tokio::test]
async fn silent_clients_are_disconnected_after_auth_timeout() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::start_with(|cfg| cfg.server.auth_timeout = Duration::from_secs(1)).await;
    let addr = env.proxy.addr;
    let mut f = Failures::default();

    // A normal client is unaffected by the short timeout once authenticated.
    let c = env.proxy.connect("acme").await;

    // (1) sends nothing; (2) sends half a startup packet; (3) sends a startup packet and
    // never answers the SASL request; (4) SSLRequest, then silence.
    let mut silent = RawConn::tcp(addr).await;
    let mut partial = RawConn::tcp(addr).await;
    partial.send(&[0, 0, 0, 40, 0, 3]).await;
    let mut mid_auth = RawConn::tcp(addr).await;
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "acme"), ("database", "app")],
        &mut out,
    )
    .unwrap();
    mid_auth.send(&out).await;
    let mut after_ssl = RawConn::tcp(addr).await;
    after_ssl
        .send(&common::raw::startup_packet(80877103, b""))
        .await;
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut after_ssl.stream, &mut n)
        .await
        .unwrap();
    f.check(n[0] == b'N', || {
        format!("SSLRequest answered {:?}", n[0] as char)
    });

    for (what, conn) in [
        ("silent", &mut silent),
        ("partial startup", &mut partial),
        ("mid-SASL", &mut mid_auth),
        ("after SSLRequest", &mut after_ssl),
    ] {
        let started = std::time::Instant::now();
        let mut fatal = None;
        while let Some((tag, body)) = conn.recv().await {
            if tag == b'E' {
                fatal = Some(pgtenant::protocol::messages::parse_error_fields(&body));
                break;
            }
        }
        f.check(
            fatal.as_ref().is_some_and(|e| e.severity == "FATAL"),
            || {
                format!(
                    "{what}: expected a FATAL before the close, got {fatal:?} after {:?}",
                    started.elapsed()
                )
            },
        );
        f.check(conn.is_closed().await, || {
            format!("{what}: connection not closed")
        });
    }
    let _ = silent.stream.shutdown().await;

    let r = c
        .query_one("SELECT current_setting('app.current_tenant')", &[])
        .await;
    f.check(
        r.as_ref().is_ok_and(|row| row.get::<_, String>(0) == ACME),
        || format!("normal client after timeouts: {r:?}"),
    );
    let text = env.proxy.metrics().await;
    f.check(text.contains("reason=\"auth_timeout\""), || {
        "no auth_timeout protocol error metric".into()
    });
    f.finish();
}

/// Passwords that SASLprep changes: libpq (psql) and tokio-postgres hash the prepared form,
/// so `hash-password` must too (without SASLprep neither could log in).
#[tokio::test]
async fn saslprep_passwords_authenticate_through_psql_and_tokio_postgres() {
    // (tenant, password in the config, passwords the client may type, tenant id)
    let cases: [(&str, &str, &[&str], &str); 2] = [
        // U+2168 ROMAN NUMERAL NINE normalizes to "IX".
        (
            "roman",
            "IX-\u{2168}",
            &["IX-\u{2168}", "IX-IX"],
            "44444444-4444-4444-8444-444444444444",
        ),
        // A no-break space becomes a space, a soft hyphen nothing.
        (
            "spaced",
            "pass\u{A0}word\u{AD}!",
            &["pass\u{A0}word\u{AD}!", "pass word!"],
            "55555555-5555-4555-8555-555555555555",
        ),
    ];
    let env = TestEnv::start_with(|cfg| {
        for (name, pw, _, id) in cases {
            cfg.tenants.insert(
                name.into(),
                pgtenant::config::TenantConfig {
                    id: id.into(),
                    password: pgtenant::auth::scram::ScramVerifier::hash_password(pw),
                    ..Default::default()
                },
            );
        }
    })
    .await;
    let port = env.proxy.addr.port();
    let mut f = Failures::default();
    for (name, _, typed, id) in cases {
        for pw in typed {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1").port(port).user(name).dbname("app");
            cfg.password(pw.as_bytes());
            let r = match cfg.connect(tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    c.query_one("SELECT current_setting('app.current_tenant')", &[])
                        .await
                        .map(|row| row.get::<_, String>(0))
                }
                Err(e) => Err(e),
            };
            f.check(r.as_ref().is_ok_and(|got| got == id), || {
                format!("tokio-postgres {name} with {pw:?}: {r:?}")
            });

            let out = tokio::process::Command::new("psql")
                .args(["-XAt", "-h", "127.0.0.1", "-d", "app", "-U", name])
                .args(["-p", &port.to_string()])
                .args(["-c", "SELECT current_setting('app.current_tenant')"])
                .env("PGPASSWORD", pw)
                .env("PGCONNECT_TIMEOUT", "10")
                .env_remove("PGSERVICE")
                .env_remove("PGSSLMODE")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            f.check(out.status.success() && stdout.trim() == id, || {
                let err = String::from_utf8_lossy(&out.stderr);
                format!("psql {name} with {pw:?}: {stdout:?} {err}")
            });
        }
    }
    f.finish();
}

/// PostgreSQL answers one SSLRequest and refuses a second with FATAL 0A000. pgtenant used to
/// answer every repeat with `N`, each `N` written with no deadline: a client repeating the
/// request without reading could fill its window and hold the connection past auth_timeout
/// (found reviewing the slow-loris paths for benches/robustness.sh).
#[tokio::test]
async fn repeated_ssl_requests_end_the_connection() {
    use tokio::io::AsyncReadExt;
    let env = TestEnv::start().await;
    let addr = env.proxy.addr;
    let mut f = Failures::default();
    let ssl = common::raw::startup_packet(80877103, b"");

    // Two in one write: one `N`, then the FATAL PostgreSQL sends.
    let mut twice = RawConn::tcp(addr).await;
    twice.send(&[&ssl[..], &ssl[..]].concat()).await;
    let mut n = [0u8; 1];
    twice.stream.read_exact(&mut n).await.unwrap();
    f.check(n[0] == b'N', || format!("first SSLRequest answered {n:?}"));
    let e = twice.recv().await;
    let fields = e
        .as_ref()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| pgtenant::protocol::messages::parse_error_fields(body));
    f.check(
        fields
            .as_ref()
            .is_some_and(|e| e.severity == "FATAL" && e.code == "0A000"),
        || format!("second SSLRequest: expected FATAL 0A000, got {fields:?}"),
    );

    // GSSENCRequest then SSLRequest (libpq with gssencmode=prefer) stays allowed; a second
    // GSSENCRequest is refused the same way.
    let gss = common::raw::startup_packet(80877104, b"");
    let mut both = RawConn::tcp(addr).await;
    both.send(&[&gss[..], &ssl[..], &gss[..]].concat()).await;
    let mut nn = [0u8; 2];
    both.stream.read_exact(&mut nn).await.unwrap();
    f.check(&nn == b"NN", || format!("GSSENC + SSL answered {nn:?}"));
    let e = both.recv().await;
    let msg = e
        .as_ref()
        .map(|(_, body)| pgtenant::protocol::messages::parse_error_fields(body));
    f.check(
        msg.as_ref()
            .is_some_and(|e| e.code == "0A000" && e.message.contains("1234.5680")),
        || format!("second GSSENCRequest: expected FATAL 0A000, got {msg:?}"),
    );
    f.finish();
}
