//! Verified tenant context against a real PostgreSQL: the spoofing battery with the SQL
//! guard off and on, replay of a copied context, fail-closed behaviour without a context, key
//! rotation across a reload, the Rust HMAC against the SQL one, and the install command.

#[path = "verified/affinity.rs"]
mod affinity;
#[path = "verified/affinity_attack.rs"]
mod affinity_attack;
#[path = "verified/battery.rs"]
mod battery;
#[path = "verified/carry.rs"]
mod carry;
mod common;
#[path = "verified/install.rs"]
mod install;
#[path = "verified/leaks.rs"]
mod leaks;
#[path = "verified/planted.rs"]
mod planted;
#[path = "verified/qualified.rs"]
mod qualified;

use std::sync::Arc;

use battery::{ATTEMPTS, Attempt, PROBE};
use bytes::{BufMut, BytesMut};
use common::raw::{self, Msg, RawConn};
use common::{ACME, Failures, GLOBEX, INITECH, Proxy, TestEnv, sqlstate};
use pgtenant::protocol::messages;
use pgtenant::verified::install::KeyStep;
use pgtenant::verified::{self, ContextKey};

/// Rows (DataRow, CopyData, NoticeResponse) that name a tenant other than globex.
fn foreign_rows(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| matches!(t, b'D' | b'd' | b'N'))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .filter(|s| s.contains(&format!("row:{ACME}")) || s.contains(&format!("row:{INITECH}")))
        .collect()
}

/// Sends one attempt as globex on a fresh connection; returns every message it got back.
async fn run_attempt(conn: &mut RawConn, attempt: &Attempt) -> Vec<Msg> {
    match attempt {
        Attempt::Simple(sql) => conn.simple(&sql.replace("{A}", ACME)).await,
        Attempt::Pipeline(steps) => {
            let mut out = BytesMut::new();
            for (sql, params) in steps.iter() {
                let params: Vec<String> = params.iter().map(|p| p.replace("{A}", ACME)).collect();
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                raw::extended(&mut out, sql, &refs);
            }
            raw::sync(&mut out);
            conn.send(&out).await;
            conn.until_ready().await
        }
        Attempt::FunctionCallSetConfig => {
            let mut out = BytesMut::new();
            messages::write_msg(&mut out, b'F', |b| {
                b.put_u32(2078);
                b.put_u16(1);
                b.put_u16(0);
                b.put_u16(3);
                for arg in ["app.current_tenant", ACME, "false"] {
                    b.put_i32(arg.len() as i32);
                    b.put_slice(arg.as_bytes());
                }
                b.put_u16(0);
            });
            conn.send(&out).await;
            let mut msgs = conn.until_ready().await;
            msgs.extend(conn.simple(PROBE).await);
            msgs
        }
    }
}

/// Runs the whole battery as globex; every attempt must end in an error or globex's own
/// rows, and so must a probe right after it on the same connection.
async fn battery(env: &TestEnv, f: &mut Failures, label: &str) {
    for (name, attempt) in ATTEMPTS {
        let mut conn = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .expect("globex connects");
        let msgs = run_attempt(&mut conn, attempt).await;
        let leaked = foreign_rows(&msgs);
        f.check(leaked.is_empty(), || {
            format!("{label}: {name}: another tenant's rows: {leaked:?}")
        });
        let after = conn.simple(PROBE).await;
        let leaked = foreign_rows(&after);
        f.check(leaked.is_empty(), || {
            format!("{label}: {name}: probe after it read another tenant's rows: {leaked:?}")
        });
        // A fresh connection must be unaffected (role and database defaults).
        let mut fresh = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .expect("globex connects");
        let rows = raw::data_rows(&fresh.simple(PROBE).await);
        f.check(
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| r[0].as_deref() == Some(&format!("row:{GLOBEX}"))),
            || format!("{label}: {name}: a fresh connection afterwards read {rows:?}"),
        );
    }
    let su = env.superuser().await;
    let moved: i64 = su
        .query_one(
            "SELECT count(*) FROM invoices WHERE amount_cents >= 900000 AND tenant_id <> $1::text::uuid",
            &[&GLOBEX],
        )
        .await
        .unwrap()
        .get(0);
    f.check(moved == 0, || {
        format!("{label}: {moved} rows written into another tenant")
    });
    // Undo what the battery may have left for the next run.
    su.batch_execute(
        "ALTER ROLE app_user RESET ALL; ALTER ROLE app_user IN DATABASE app RESET ALL;
         ALTER DATABASE app RESET ALL; DELETE FROM invoices WHERE amount_cents >= 900000;
         DROP FUNCTION IF EXISTS public.spoof_sql(), public.spoof_pl(), public.spoof_set(),
             public.spoof_set2(), public.spoof_def(), public.sha256(bytea);
         DROP FUNCTION IF EXISTS public.spoof_cat(text, bigint), public.spoof_cat(text, text) CASCADE;",
    )
    .await
    .unwrap();
}

/// A superuser session acting as the app role (`SET ROLE app_user`), the secret slot number
/// only a superuser may read, and the session's backend pid (what a proof is bound to).
async fn app_role_knowing_the_slot(env: &TestEnv) -> (tokio_postgres::Client, i64, i32) {
    let su = env.superuser().await;
    let slot: i64 = su
        .query_one("SELECT pg_sequence_last_value('pgtenant.slot')", &[])
        .await
        .unwrap()
        .get(0);
    su.batch_execute("SET ROLE app_user").await.unwrap();
    let pid: i32 = su
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (su, slot, pid)
}

/// CREATE on public for app_user, so function-body attempts reach PostgreSQL.
async fn grant_create(env: &TestEnv) {
    env.superuser()
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO app_user")
        .await
        .unwrap();
}

#[tokio::test]
async fn spoofing_battery_with_the_guard_off() {
    assert!(
        ATTEMPTS.len() >= 40,
        "the battery has {} attempts",
        ATTEMPTS.len()
    );
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    grant_create(&env).await;
    let mut f = Failures::default();
    battery(&env, &mut f, "guard off").await;
    f.finish();
}

#[tokio::test]
async fn spoofing_battery_with_the_guard_on() {
    let env = TestEnv::start().await;
    grant_create(&env).await;
    let mut f = Failures::default();
    battery(&env, &mut f, "guard on").await;
    f.finish();
}

/// Every setting client SQL can see in one of `c`'s transactions: the context values and
/// whatever `pg_settings` lists under the verified schema's or the app's prefix.
async fn visible_context(c: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = c
        .query(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'pgtenant.%' OR name LIKE 'app.%' \
             UNION SELECT n, current_setting(n, true) FROM unnest(ARRAY['app.current_tenant', 'app.tenant_plan']) n",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// `BEGIN`, `set_config` of every copied setting (transaction-locally), the probe, `COMMIT`.
fn replay_sql(copied: &[(String, String)]) -> String {
    let sets: Vec<String> = copied
        .iter()
        .map(|(n, v)| format!("set_config('{n}', '{v}', true)"))
        .collect();
    format!(
        "BEGIN; SELECT {}; SELECT tenant_id FROM invoices; COMMIT",
        sets.join(", ")
    )
}

#[tokio::test]
async fn a_context_copied_into_a_later_transaction_or_elsewhere_is_refused() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    let mut f = Failures::default();
    let a = env.proxy.connect("acme").await;
    let copied = visible_context(&a).await;
    f.check(
        copied
            .iter()
            .any(|(n, v)| n == "app.current_tenant" && v == ACME),
        || format!("acme's transaction shows its context: {copied:?}"),
    );
    f.check(
        !copied.iter().any(|(n, _)| n.starts_with("pgtenant.s")),
        || format!("pg_settings lists a slot setting: {copied:?}"),
    );
    // Another tenant's transaction through pgtenant (its own verified copy disagrees).
    let g = env.proxy.connect("globex").await;
    let other = g.simple_query(&replay_sql(&copied)).await;
    f.check(
        other.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("acme's context copied into globex's transaction: {other:?}"),
    );
    // Straight to PostgreSQL as the app role (no enter() at all in that transaction).
    let direct = env.app_user_direct().await;
    let replay = direct.simple_query(&replay_sql(&copied)).await;
    f.check(
        replay.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("acme's context replayed straight to PostgreSQL: {replay:?}"),
    );
    // The verified copy is the session's (the backend carries it into the tenant's next
    // transaction) until the session is emptied: as a superuser who knows the slot.
    let (su, slot, pid) = app_role_knowing_the_slot(&env).await;
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    let proof = verified::proof(&key, pid, &[ACME.as_bytes(), b"enterprise"]);
    su.batch_execute("BEGIN").await.unwrap();
    su.execute(
        "SELECT pgtenant.enter($1, $2, true, $3, $4)",
        &[&key.id(), &proof, &ACME, &"enterprise"],
    )
    .await
    .unwrap();
    let copy = format!("SELECT current_setting('pgtenant.s{slot}_1', true)");
    let inside: Option<String> = su.query_one(&copy, &[]).await.unwrap().get(0);
    su.batch_execute("COMMIT").await.unwrap();
    let after: Option<String> = su.query_one(&copy, &[]).await.unwrap().get(0);
    su.batch_execute("DISCARD ALL").await.unwrap();
    su.batch_execute("SET ROLE app_user").await.unwrap();
    let left: Option<String> = su.query_one(&copy, &[]).await.unwrap().get(0);
    f.check(
        inside.as_deref() == Some(ACME)
            && after.as_deref() == Some(ACME)
            && left.as_deref().unwrap_or("").is_empty(),
        || format!("verified copy inside the transaction {inside:?}, after it {after:?}, after DISCARD ALL {left:?}"),
    );
    f.finish();
}

#[tokio::test]
async fn no_context_sees_no_rows() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    let mut f = Failures::default();
    let direct = env.app_user_direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    f.check(n == 0, || {
        format!("app role without pgtenant saw {n} invoices")
    });
    let t: Option<String> = direct
        .query_one("SELECT pgtenant.tenant_id()", &[])
        .await
        .unwrap()
        .get(0);
    f.check(t.is_none(), || {
        format!("tenant_id() without a context: {t:?}")
    });
    let forged = direct
        .simple_query(&format!(
            "SET app.current_tenant = '{ACME}'; SELECT count(*) FROM invoices"
        ))
        .await;
    f.check(
        forged.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("a plain set_config straight to PostgreSQL: {forged:?}"),
    );
    let write = direct
        .execute(
            &format!("INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{ACME}', 1)"),
            &[],
        )
        .await;
    f.check(write.is_err(), || "insert with no context succeeded".into());
    // Through pgtenant, the client clears the visible values: the verified copy still says
    // globex, so the reader raises rather than run with no context.
    let c = env.proxy.connect("globex").await;
    let cleared = c
        .simple_query(
            "BEGIN; SELECT set_config('app.current_tenant', '', true), set_config('app.tenant_plan', '', true); \
             SELECT tenant_id::text FROM invoices; COMMIT",
        )
        .await;
    f.check(
        cleared.as_ref().err().and_then(sqlstate).as_deref() == Some("42501"),
        || format!("cleared visible context: {cleared:?}"),
    );
    f.finish();
}

async fn count(c: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
    c.query_one("SELECT count(*) FROM invoices", &[])
        .await
        .map(|r| r.get(0))
}

#[tokio::test]
async fn rotation_keeps_connections_working_and_retires_the_old_key() {
    let env = TestEnv::start().await;
    let old_cfg = env.config();
    let mut new_cfg = env.config();
    new_cfg.context.key = Some(Arc::new(ContextKey::generate()));
    let c = env.proxy.connect("acme").await;
    assert_eq!(count(&c).await.unwrap(), 3);
    pgtenant::demo::install_verified(&env.cluster, &new_cfg, KeyStep::Rotate)
        .await
        .unwrap();
    // Both keys valid: the proxy still proves with the old one.
    assert_eq!(count(&c).await.unwrap(), 3, "old key during the rotation");
    env.proxy
        .server
        .apply(new_cfg.clone())
        .expect("reload with the new key");
    assert_eq!(
        count(&c).await.unwrap(),
        3,
        "new key after the reload, same client"
    );
    let old_proxy = Proxy::start(old_cfg).await;
    let old_client = old_proxy.connect("acme").await;
    assert_eq!(
        count(&old_client).await.unwrap(),
        3,
        "old key still valid before finishing"
    );
    pgtenant::demo::install_verified(&env.cluster, &new_cfg, KeyStep::FinishRotation)
        .await
        .unwrap();
    assert_eq!(count(&c).await.unwrap(), 3, "new key after finishing");
    let fresh = env.proxy.connect("globex").await;
    assert_eq!(count(&fresh).await.unwrap(), 3, "new key, a new client");
    // enter() refuses the old key's proof; the proxy ends the client's transaction (it
    // cannot run one without its context). (The old proxy's backend that carries acme's
    // context keeps serving acme's transactions until it must enter again: a context
    // verified while its key was valid stays verified.)
    let old_other = old_proxy.connect("initech").await;
    let refused = count(&old_other).await;
    let message = refused
        .as_ref()
        .err()
        .and_then(|e| e.as_db_error())
        .map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("could not set the tenant context")),
        "old key after finishing: {refused:?}"
    );
}

/// The battery can fail: with a reader that trusts the plain setting (what plain mode's
/// policies do), the same attempts read acme's rows.
#[tokio::test]
async fn the_battery_catches_a_forgeable_reader() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    grant_create(&env).await;
    env.superuser()
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgtenant.tenant_id() RETURNS text LANGUAGE sql STABLE \
             AS $f$ SELECT current_setting('app.current_tenant', true) $f$",
        )
        .await
        .unwrap();
    let mut f = Failures::default();
    battery(&env, &mut f, "forgeable reader").await;
    assert!(f.0.len() >= 10, "only {} failures: {:?}", f.0.len(), f.0);
}

/// The operator-shadowing attempt leaks through a reader that, like the installed ones, pins
/// no search_path but, unlike them, spells `||` bare: the attempt is what would catch it.
#[tokio::test]
async fn the_battery_catches_a_reader_with_bare_operators() {
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    grant_create(&env).await;
    env.superuser()
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgtenant.tenant_id() RETURNS pg_catalog.text \
             LANGUAGE plpgsql STABLE SECURITY DEFINER AS $f$ \
             DECLARE v pg_catalog.text := pg_catalog.current_setting('pgtenant.s' || \
                 pg_catalog.pg_sequence_last_value('pgtenant.slot'::pg_catalog.regclass) || '_1', true); \
             BEGIN \
                 IF v OPERATOR(pg_catalog.<>) pg_catalog.current_setting('app.current_tenant', true) THEN \
                     RAISE EXCEPTION 'refused' USING ERRCODE = '42501'; \
                 END IF; \
                 RETURN v; \
             END $f$",
        )
        .await
        .unwrap();
    let (_, attempt) = ATTEMPTS
        .iter()
        .find(|(name, _)| *name == "shadow the readers' operators")
        .expect("the attempt is in the battery");
    let mut conn = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .expect("globex connects");
    let leaked = foreign_rows(&run_attempt(&mut conn, attempt).await);
    assert!(
        !leaked.is_empty(),
        "the attempt did not get past a bare `||`"
    );
}

/// A statement that cannot run in a transaction block gets the context for the session
/// through enter(..., false), which leaves the verified copy empty; the next transaction is
/// verified again.
#[tokio::test]
async fn statements_outside_a_transaction_block_use_the_session_variant() {
    let env = TestEnv::start().await;
    let c = env.proxy.connect("acme").await;
    c.batch_execute("VACUUM invoices")
        .await
        .expect("VACUUM through enter(..., false)");
    assert_eq!(count(&c).await.unwrap(), 3);
    let verified: Option<String> = c
        .query_one("SELECT pgtenant.tenant_id()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        verified.as_deref(),
        Some(ACME),
        "a transaction after it is verified again"
    );
}
