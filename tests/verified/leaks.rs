//! What PostgreSQL says about pgtenant's own statements never reaches the client. A
//! red-team pass found that a tenant which turns on `debug_print_plan` (with
//! `client_min_messages = log` and `plan_cache_mode = force_custom_plan`, all user-settable)
//! got, as notices, the plans of the statements inside `enter()`, where the secret slot's
//! setting name is folded into a constant: with it, a tenant writes any tenant id into the
//! verified copy (read acme's rows with the guard off). The secrets must not show however
//! PostgreSQL is asked to talk.

use super::common::raw::{self, Msg, RawConn};
use super::common::{ACME, TestEnv};
use super::{foreign_rows, grant_create};

/// Every way a session setting makes PostgreSQL tell the client more about what it runs.
const CHATTY: &str = "SET debug_print_plan = on; SET debug_print_parse = on; \
    SET debug_print_rewritten = on; SET debug_pretty_print = off; \
    SET client_min_messages = debug5; SET plan_cache_mode = force_custom_plan; \
    SET log_parameter_max_length_on_error = -1; SET trace_notify = on";

/// The texts of the notices in `msgs`, each also with the byte lists of plan dumps (a text
/// constant prints as `[ 40 0 0 0 112 103 ... ]`) decoded.
fn notice_texts(msgs: &[Msg]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, body) in msgs.iter().filter(|(t, _)| *t == b'N') {
        let text = String::from_utf8_lossy(body).into_owned();
        let mut decoded = String::new();
        for chunk in text.split('[').skip(1) {
            let bytes: Vec<u8> = chunk
                .split(']')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|w| w.parse::<i32>().ok())
                .map(|v| v as u8)
                .collect();
            decoded.push_str(&String::from_utf8_lossy(&bytes));
            decoded.push(' ');
        }
        out.push(format!("{text}\n{decoded}"));
    }
    out
}

/// The installed slot number, read as the superuser (the secret the tests look for).
async fn secret_slot(su: &tokio_postgres::Client) -> i64 {
    su.query_one(
        "SELECT pg_sequence_last_value('pgtenant.slot'::regclass)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn no_notice_shows_the_slot_or_the_key_however_chatty_the_session() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    grant_create(&env).await;
    let su = env.superuser().await;
    let slot = secret_slot(&su).await;
    let ipad: Vec<u8> = su
        .query_one(
            "SELECT ipad FROM pgtenant.keys WHERE state = 'current'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ipad_hex: String = ipad.iter().map(|b| format!("{b:02x}")).collect();
    // A bytea constant prints as its bytes in decimal, one space apart.
    let ipad_dec = ipad[..16]
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    let mut notices = Vec::new();
    let chatty = c.simple(CHATTY).await;
    assert!(
        raw::errors(&chatty).is_empty(),
        "{:?}",
        raw::errors(&chatty)
    );
    // Transactions that enter the context (the first on this backend, one after a DISCARD
    // that drops it), in both protocols.
    for sql in [
        "BEGIN; SELECT 1; COMMIT",
        "SELECT count(*) FROM invoices",
        "DISCARD ALL",
        "SELECT 'row:' || tenant_id FROM invoices",
    ] {
        let msgs = c.simple(sql).await;
        notices.extend(notice_texts(&msgs));
    }
    let mut out = bytes::BytesMut::new();
    raw::extended(&mut out, "SELECT $1::text", &["x"]);
    raw::sync(&mut out);
    c.send(&out).await;
    notices.extend(notice_texts(&c.until_ready().await));
    assert!(
        !notices.is_empty(),
        "the session printed nothing at all: the test no longer sees what it looks for"
    );
    let slot = slot.to_string();
    for n in &notices {
        assert!(
            !n.contains(&slot) && !n.contains(&ipad_hex) && !n.contains(&ipad_dec),
            "a notice shows a secret: {n}"
        );
    }
    // And the end-to-end attempt: whatever was shown, no forged copy reads acme's rows.
    let learned = notices.iter().find_map(|n| {
        let at = n.find(&format!("pgtenant.s{slot}"))?;
        Some(
            n[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect::<String>(),
        )
    });
    if let Some(name) = learned {
        let msgs = c
            .simple(&format!(
                "BEGIN; SELECT set_config('{name}', '{ACME}', true), \
                 set_config('app.current_tenant', '{ACME}', true); \
                 SELECT 'row:' || tenant_id FROM invoices; COMMIT"
            ))
            .await;
        assert!(foreign_rows(&msgs).is_empty(), "globex read acme's rows");
    }
}

/// When `enter()` itself fails (here: it waits on a lock a DBA holds on the key table, under
/// a chatty session's `lock_timeout`, and `log_parameter_max_length_on_error = -1` would
/// print its bound proof in the error's context), the client gets pgtenant's own error:
/// PostgreSQL's fields (context with the bound parameters, internal query) never reach it.
#[tokio::test]
async fn a_failed_enter_shows_the_client_no_secret_however_chatty_the_session() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    let su = env.superuser().await;
    let slot = secret_slot(&su).await;
    let mut c = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    let chatty = c
        .simple(&format!("{CHATTY}; SET lock_timeout = '200ms'"))
        .await;
    assert!(
        raw::errors(&chatty).is_empty(),
        "{:?}",
        raw::errors(&chatty)
    );
    // The premise, straight against PostgreSQL: with these settings an error inside
    // enter() carries its bound parameters (the proof among them) to the client.
    let mut direct = RawConn::connect_with(
        std::net::SocketAddr::from(([127, 0, 0, 1], env.cluster.port())),
        &[("user", "app_user"), ("database", "app")],
        "app_password",
    )
    .await
    .unwrap();
    direct.simple(CHATTY).await;
    let mut out = bytes::BytesMut::new();
    raw::extended(
        &mut out,
        "SELECT pgtenant.enter($1::int, $2, true, $3, $4)",
        &["1", "proof-that-must-not-show", "x", "y"],
    );
    raw::sync(&mut out);
    direct.send(&out).await;
    let shown: String = direct
        .until_ready()
        .await
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        shown.contains("proof-that-must-not-show"),
        "PostgreSQL no longer shows bound parameters in errors: the test proves nothing ({shown})"
    );

    // A DBA holds the key table; the next transaction on a new backend runs enter(), which
    // reads it. Every backend this client may get is new: no tenant has run yet.
    let mut dba = env.superuser().await;
    let lock = dba.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pgtenant.keys IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let msgs = c.simple("SELECT 'row:' || tenant_id FROM invoices").await;
    lock.rollback().await.unwrap();
    let errs = raw::errors(&msgs);
    assert!(
        errs.iter()
            .any(|e| e.code == "55P03" && e.message.contains("could not set the tenant context")),
        "enter() did not fail under the lock: the test proves nothing ({errs:?})"
    );
    let everything: String = msgs
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let hex_run = everything
        .as_bytes()
        .split(|b| !b.is_ascii_hexdigit())
        .any(|w| w.len() >= 64);
    assert!(
        !everything.contains(&slot.to_string()) && !hex_run && !everything.contains("$2"),
        "the failed enter() showed the client a secret: {everything}"
    );
    // And the client goes on: the next transaction enters the context on a backend.
    let msgs = c.simple("SELECT 'row:' || tenant_id FROM invoices").await;
    assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
    assert!(foreign_rows(&msgs).is_empty());
}
