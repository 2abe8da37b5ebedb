//! Hostile and unusual input on the wire never hurts other clients: malformed startup
//! packets, negotiation requests, bad messages after authentication, a flood of garbage
//! connections, and cancel requests (working ones and forged ones). Every test keeps a
//! normal client open from before the hostile input and checks it still works afterwards.

mod common;
#[path = "protocol/floods_and_cancels.rs"]
mod floods_and_cancels;
#[path = "protocol/pipelined.rs"]
mod pipelined;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::raw::{self, Msg, RawConn, startup_packet};
use common::*;
use pgtenant::protocol::messages::{self, ErrorFields, parse_error_fields};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};

const CTX: &str = "SELECT current_setting('app.current_tenant')";
const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// Starts the test environment used by this file (small max_message_size).
async fn start_env() -> TestEnv {
    TestEnv::start_with(|cfg| cfg.server.max_message_size = 65536).await
}

/// Checks that a client opened before the hostile input still works and has its context.
async fn bystander_ok(f: &mut Failures, c: &Client, what: &str) {
    let r = tokio::time::timeout(Duration::from_secs(30), c.query_one(CTX, &[])).await;
    let ok = matches!(&r, Ok(Ok(row)) if row.get::<_, String>(0) == ACME);
    f.check(ok, || format!("bystander after {what}: {r:?}"));
}

/// Authenticates on an already open raw connection (after SSLRequest and the like); returns
/// every message received up to ReadyForQuery, or the ErrorResponse.
async fn handshake(
    c: &mut RawConn,
    code: u32,
    params: &[(&str, &str)],
    password: &str,
) -> Result<Vec<Msg>, ErrorFields> {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    c.send(&startup_packet(code, &body)).await;
    let mut seen = Vec::new();
    let mut scram = None;
    loop {
        let Some((tag, msg)) = c.recv().await else {
            return Err(ErrorFields {
                severity: "closed".into(),
                code: "closed".into(),
                message: format!("closed after {seen:?}"),
                detail: String::new(),
            });
        };
        seen.push((tag, msg.clone()));
        match tag {
            b'E' => return Err(parse_error_fields(&msg)),
            b'R' => {
                let code = i32::from_be_bytes(msg[..4].try_into().unwrap());
                let mut out = BytesMut::new();
                match code {
                    0 => {}
                    10 => {
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                            .unwrap();
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().unwrap();
                        s.update(&msg[4..]).unwrap();
                        frontend::sasl_response(s.message(), &mut out).unwrap();
                    }
                    12 => scram.take().unwrap().finish(&msg[4..]).unwrap(),
                    other => panic!("unexpected auth code {other}"),
                }
                if !out.is_empty() {
                    c.send(&out).await;
                }
            }
            b'Z' => return Ok(seen),
            _ => {}
        }
    }
}

/// The (pid, secret) of the BackendKeyData among `msgs`.
fn backend_key(msgs: &[Msg]) -> Option<(i32, i32)> {
    let (_, b) = msgs.iter().find(|(t, _)| *t == b'K')?;
    Some((
        i32::from_be_bytes(b[..4].try_into().ok()?),
        i32::from_be_bytes(b[4..8].try_into().ok()?),
    ))
}

/// Reads messages until EOF (or 20 s of silence); returns them and whether EOF was seen.
async fn drain(c: &mut RawConn) -> (Vec<Msg>, bool) {
    let mut msgs = Vec::new();
    while let Some(m) = c.recv().await {
        msgs.push(m);
        if msgs.len() > 100 {
            return (msgs, false);
        }
    }
    let closed = c.is_closed().await;
    (msgs, closed)
}

/// Checks the connection got an ErrorResponse with one of `codes` (and `needle` in the
/// message) and was then closed.
async fn expect_error_and_close(
    f: &mut Failures,
    c: &mut RawConn,
    codes: &[&str],
    needle: &str,
    what: &str,
) {
    let (msgs, closed) = drain(c).await;
    let errs = raw::errors(&msgs);
    f.check(
        errs.len() == 1 && codes.contains(&errs[0].code.as_str()) && errs[0].message.contains(needle),
        || format!("{what}: expected one error {codes:?} mentioning {needle:?}, got {errs:?} (tags {})", raw::tags(&msgs)),
    );
    f.check(closed, || format!("{what}: connection not closed"));
}

/// A simple query on a raw connection returning the context, or a description of the failure.
async fn raw_ctx(c: &mut RawConn) -> Result<String, String> {
    let m = c.simple(CTX).await;
    match raw::data_rows(&m).as_slice() {
        [row] if row.len() == 1 => row[0].clone().ok_or_else(|| "null".into()),
        _ => Err(format!(
            "tags {} errors {:?}",
            raw::tags(&m),
            raw::errors(&m)
        )),
    }
}

#[tokio::test]
async fn malformed_startup_packets_are_refused() {
    let env = start_env().await;
    let addr = env.proxy.addr;
    let bystander = env.proxy.connect("acme").await;
    let mut f = Failures::default();

    let mut cases: Vec<(&str, Vec<u8>, &[&str], &str)> = vec![
        ("length 3", vec![0, 0, 0, 3], &["08P01"], "length"),
        ("length 0", vec![0, 0, 0, 0], &["08P01"], "length"),
        (
            "length 0xffffffff",
            vec![0xff, 0xff, 0xff, 0xff],
            &["08P01"],
            "length",
        ),
        // Only the 8-byte header of a 200 KB packet: refused without waiting for the body.
        (
            "length 200000",
            {
                let mut v = 200_000u32.to_be_bytes().to_vec();
                v.extend_from_slice(&PROTOCOL_3.to_be_bytes());
                v
            },
            &["08P01"],
            "length",
        ),
        (
            "length 10001",
            {
                let mut v = 10_001u32.to_be_bytes().to_vec();
                v.extend_from_slice(&PROTOCOL_3.to_be_bytes());
                v
            },
            &["08P01"],
            "length",
        ),
        (
            "protocol 2.0",
            startup_packet(2 << 16, b"user\0acme\0database\0app\0\0").to_vec(),
            &["0A000", "08P01"],
            "unsupported frontend protocol",
        ),
        (
            "protocol 4.0",
            startup_packet(4 << 16, b"user\0acme\0\0").to_vec(),
            &["0A000", "08P01"],
            "unsupported frontend protocol",
        ),
        (
            "protocol 1234.5690",
            startup_packet((1234 << 16) | 5690, b"").to_vec(),
            &["0A000", "08P01"],
            "unsupported frontend protocol",
        ),
        (
            "no terminator",
            startup_packet(PROTOCOL_3, b"user\0acme").to_vec(),
            &["08P01"],
            "startup packet",
        ),
        (
            "no final NUL",
            startup_packet(PROTOCOL_3, b"user\0acme\0database\0app\0").to_vec(),
            &["08P01"],
            "startup packet",
        ),
        (
            "bytes after terminator",
            startup_packet(PROTOCOL_3, b"user\0acme\0\0junk").to_vec(),
            &["08P01"],
            "startup packet",
        ),
        (
            "non-UTF-8 name",
            startup_packet(PROTOCOL_3, b"us\xffer\0acme\0\0").to_vec(),
            &["08P01"],
            "UTF-8",
        ),
        (
            "non-UTF-8 value",
            startup_packet(PROTOCOL_3, b"user\0ac\xc3\x28me\0\0").to_vec(),
            &["08P01"],
            "UTF-8",
        ),
        (
            "SSLRequest with a body",
            startup_packet(SSL_REQUEST, b"xxxx").to_vec(),
            &["08P01"],
            "length",
        ),
        (
            "CancelRequest too short",
            startup_packet(CANCEL_REQUEST, b"\0\0\0\x01").to_vec(),
            &["08P01"],
            "length",
        ),
    ];
    // An empty user name, and a startup packet of only the terminator.
    cases.push((
        "empty user",
        startup_packet(PROTOCOL_3, b"user\0\0database\0app\0\0").to_vec(),
        &["28000"],
        "user",
    ));
    cases.push((
        "no parameters",
        startup_packet(PROTOCOL_3, b"\0").to_vec(),
        &["28000"],
        "user",
    ));

    for (what, bytes, codes, needle) in &cases {
        let mut c = RawConn::tcp(addr).await;
        c.send(bytes).await;
        expect_error_and_close(&mut f, &mut c, codes, needle, what).await;
        bystander_ok(&mut f, &bystander, what).await;
    }

    // A 200 KB startup packet sent in full is refused just the same (the proxy may close
    // before reading all of it, so write errors are fine).
    let mut c = RawConn::tcp(addr).await;
    let mut big = startup_packet(PROTOCOL_3, &vec![b'a'; 200_000 - 8]);
    big[200_000 - 1] = 0;
    let _ = c.stream.write_all(&big).await;
    let (msgs, _) = drain(&mut c).await;
    let errs = raw::errors(&msgs);
    f.check(errs.len() == 1 && errs[0].code == "08P01", || {
        format!("full 200 KB startup: {errs:?}")
    });
    bystander_ok(&mut f, &bystander, "full 200 KB startup").await;

    // A Terminate before the startup packet (node-postgres's connect() then end()): closed
    // without a reply, as PostgreSQL does, then the startup packet is never read.
    let mut c = RawConn::tcp(addr).await;
    let mut out = bytes::BytesMut::from(&b"X\0\0\0\x04"[..]);
    out.extend_from_slice(&startup_packet(
        PROTOCOL_3,
        b"user\0acme\0database\0app\0\0",
    ));
    c.send(&out).await;
    let (msgs, _) = drain(&mut c).await;
    f.check(msgs.is_empty(), || {
        format!("Terminate before startup: {msgs:?}")
    });
    bystander_ok(&mut f, &bystander, "Terminate before startup").await;

    // A client that connects and leaves at once, or after part of a packet.
    for bytes in [&[][..], &[0, 0][..], &[0, 0, 0, 40, 0, 3, 0][..]] {
        let mut c = RawConn::tcp(addr).await;
        c.send(bytes).await;
        let _ = c.stream.shutdown().await;
        drop(c);
    }
    bystander_ok(&mut f, &bystander, "abrupt disconnects during startup").await;

    let text = env.proxy.metrics().await;
    f.check(
        text.contains("pgtenant_client_protocol_errors_total{reason=\"bad_startup\"}"),
        || "no bad_startup metric".into(),
    );
    f.finish();
}

#[tokio::test]
async fn negotiation_requests_and_stray_cancels() {
    let env = start_env().await;
    let addr = env.proxy.addr;
    let bystander = env.proxy.connect("acme").await;
    let mut f = Failures::default();
    let params = [("user", "globex"), ("database", "app")];

    // SSLRequest and GSSENCRequest are answered with a single 'N'; the client may then
    // start up in plaintext on the same connection.
    for (what, requests) in [
        ("SSLRequest", vec![SSL_REQUEST]),
        ("GSSENCRequest", vec![GSSENC_REQUEST]),
        (
            "GSSENCRequest then SSLRequest",
            vec![GSSENC_REQUEST, SSL_REQUEST],
        ),
    ] {
        let mut c = RawConn::tcp(addr).await;
        for code in requests {
            c.send(&startup_packet(code, b"")).await;
            let mut b = [0u8; 1];
            let r =
                tokio::time::timeout(Duration::from_secs(10), c.stream.read_exact(&mut b)).await;
            f.check(matches!(r, Ok(Ok(_))) && b[0] == b'N', || {
                format!("{what}: answer {r:?} {:?}", b[0] as char)
            });
        }
        match handshake(&mut c, PROTOCOL_3, &params, "globex-secret").await {
            Ok(_) => {
                let r = raw_ctx(&mut c).await;
                f.check(r.as_deref() == Ok(GLOBEX), || {
                    format!("{what}: context afterwards {r:?}")
                });
            }
            Err(e) => f.check(false, || format!("{what}: startup after 'N' failed: {e:?}")),
        }
        bystander_ok(&mut f, &bystander, what).await;
    }

    // Protocol 3.2 is negotiated down to 3.0 with NegotiateProtocolVersion, then auth works.
    for (what, code, extra) in [
        ("protocol 3.2", PROTOCOL_3 | 2, None),
        (
            "protocol 3.0 with a _pq_ option",
            PROTOCOL_3,
            Some(("_pq_.test_option", "1")),
        ),
        (
            "protocol 3.9999 with a _pq_ option",
            PROTOCOL_3 | 9999,
            Some(("_pq_.other", "x")),
        ),
    ] {
        let mut c = RawConn::tcp(addr).await;
        let mut ps = params.to_vec();
        if let Some(o) = extra {
            ps.push(o);
        }
        match handshake(&mut c, code, &ps, "globex-secret").await {
            Ok(msgs) => {
                f.check(msgs.first().is_some_and(|m| m.0 == b'v'), || {
                    format!("{what}: first message {}", raw::tags(&msgs))
                });
                let v = msgs.iter().find(|m| m.0 == b'v');
                if let Some((_, body)) = v {
                    let minor = u32::from_be_bytes(body[..4].try_into().unwrap());
                    let n = u32::from_be_bytes(body[4..8].try_into().unwrap());
                    f.check(minor == PROTOCOL_3, || {
                        format!("{what}: negotiated version {minor:#x}")
                    });
                    let want = u32::from(extra.is_some());
                    f.check(n == want, || {
                        format!("{what}: {n} unsupported options listed, expected {want}")
                    });
                    if let Some((name, _)) = extra {
                        f.check(body[8..].starts_with(name.as_bytes()), || {
                            format!("{what}: option not named")
                        });
                    }
                }
                let r = raw_ctx(&mut c).await;
                f.check(r.as_deref() == Ok(GLOBEX), || {
                    format!("{what}: context afterwards {r:?}")
                });
            }
            Err(e) => f.check(false, || format!("{what}: {e:?}")),
        }
        bystander_ok(&mut f, &bystander, what).await;
    }
    // Protocol 3.0 without options: no NegotiateProtocolVersion.
    let mut c = RawConn::tcp(addr).await;
    let msgs = handshake(&mut c, PROTOCOL_3, &params, "globex-secret")
        .await
        .expect("3.0 startup");
    f.check(!msgs.iter().any(|m| m.0 == b'v'), || {
        "NegotiateProtocolVersion for 3.0".into()
    });

    // A CancelRequest with a key nobody holds: the connection is closed, nothing is sent,
    // and a query running meanwhile on the bystander is not affected.
    let running = bystander.query_one(
        "SELECT pg_sleep(1), current_setting('app.current_tenant')",
        &[],
    );
    let cancels = async {
        for (pid, secret) in [(12345, 678), (0, 0), (-1, -1), (i32::MAX, i32::MIN)] {
            let mut c = RawConn::tcp(addr).await;
            let mut body = Vec::new();
            body.put_i32(pid);
            body.put_i32(secret);
            c.send(&startup_packet(CANCEL_REQUEST, &body)).await;
            let mut rest = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(10), c.stream.read_to_end(&mut rest))
                .await;
            let closed = matches!(r, Ok(Ok(0)) | Ok(Err(_)));
            f.check(closed, || {
                format!("stray cancel ({pid}, {secret}): {r:?}, received {rest:?}")
            });
        }
    };
    let (r, ()) = tokio::join!(running, cancels);
    f.check(
        r.as_ref().is_ok_and(|row| row.get::<_, String>(1) == ACME),
        || format!("query during stray cancels: {r:?}"),
    );
    bystander_ok(&mut f, &bystander, "stray cancels").await;
    f.finish();
}

#[tokio::test]
async fn bad_messages_after_authentication_close_only_that_client() {
    let env = start_env().await;
    let addr = env.proxy.addr;
    let bystander = env.proxy.connect("acme").await;
    let mut f = Failures::default();

    let unknown_type = {
        let mut b = BytesMut::new();
        messages::write_msg(&mut b, b'Y', |b| b.put_slice(b"hello\0"));
        b.to_vec()
    };
    let mut too_large = vec![b'Q'];
    too_large.extend_from_slice(&1_000_000u32.to_be_bytes());
    let mut huge = vec![b'P'];
    huge.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("unknown message type 'Y'", unknown_type.clone(), true),
        ("message type 0", vec![0, 0, 0, 0, 4], true),
        ("Query claiming 1,000,000 bytes", too_large.clone(), true),
        ("Parse claiming 4 GB", huge, true),
        ("length 3", vec![b'Q', 0, 0, 0, 3], false),
        ("length 0", vec![b'Q', 0, 0, 0, 0], false),
        // Password messages are only valid during authentication.
        (
            "password message after auth",
            {
                let mut b = BytesMut::new();
                messages::write_msg(&mut b, b'p', |b| b.put_slice(b"secret\0"));
                b.to_vec()
            },
            true,
        ),
    ];
    for in_tx in [false, true] {
        for (what, bytes, needs_fatal) in &cases {
            let what = format!("{what} (inside a transaction: {in_tx})");
            let mut c = match RawConn::connect(addr, "globex", "globex-secret").await {
                Ok(c) => c,
                Err(e) => {
                    f.check(false, || format!("{what}: connect failed {e:?}"));
                    continue;
                }
            };
            if in_tx {
                let m = c.simple("BEGIN; SELECT 1").await;
                f.check(raw::errors(&m).is_empty(), || {
                    format!("{what}: BEGIN failed")
                });
            }
            c.send(bytes).await;
            let (msgs, closed) = drain(&mut c).await;
            let errs = raw::errors(&msgs);
            let ok = if *needs_fatal {
                errs.len() == 1 && errs[0].code == "08P01" && errs[0].severity == "FATAL"
            } else {
                errs.iter()
                    .all(|e| e.code == "08P01" && e.severity == "FATAL")
                    && errs.len() <= 1
            };
            f.check(ok, || {
                format!("{what}: errors {errs:?} (tags {})", raw::tags(&msgs))
            });
            f.check(closed, || format!("{what}: connection not closed"));
            bystander_ok(&mut f, &bystander, &what).await;
        }
    }
    // The clients above that died inside a transaction must not have kept backends: the
    // pool has 5, more than 5 of them were in a transaction.
    let su = env.superuser().await;
    let busy = idle_in_transaction(&su).await;
    f.check(busy == 0, || {
        format!("{busy} backends left idle in transaction")
    });
    let others: Vec<Client> = futures_join(
        ["globex", "initech", "acme", "globex", "initech", "acme"],
        &env,
    )
    .await;
    for (i, c) in others.iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            c.query("SELECT tenant_id::text FROM invoices", &[]),
        )
        .await;
        f.check(matches!(r, Ok(Ok(ref rows)) if !rows.is_empty()), || {
            format!("fresh client {i}: {r:?}")
        });
    }
    bystander_ok(&mut f, &bystander, "all bad messages").await;
    let text = env.proxy.metrics().await;
    f.check(
        text.contains("pgtenant_client_protocol_errors_total{reason=\"bad_message\"}"),
        || "no bad_message metric".into(),
    );
    f.finish();
}

/// Connects one client per tenant name, in order.
async fn futures_join<const N: usize>(tenants: [&str; N], env: &TestEnv) -> Vec<Client> {
    let mut out = Vec::new();
    for t in tenants {
        out.push(env.proxy.connect(t).await);
    }
    out
}
