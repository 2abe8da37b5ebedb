//! `pgtenant db install` and the HMAC both sides compute.

use pgtenant::verified::install::KeyStep;
use pgtenant::verified::{self, ContextKey};

use crate::common::{TestEnv, sqlstate};

#[tokio::test]
async fn rust_and_sql_compute_the_same_hmac_and_proof() {
    let env = TestEnv::start().await;
    let su = env.superuser().await;
    let key = ContextKey::new(pgtenant::demo::DEMO_CONTEXT_KEY);
    for msg in [&b""[..], b"x", &[0u8, 255, 10, 13][..], &[7u8; 200][..]] {
        let sql: Vec<u8> = su
            .query_one("SELECT pgtenant._hmac($1, $2)", &[&key.id(), &msg])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sql, key.hmac(msg), "message {msg:?}");
    }
    let values = ["ünïcode", "", "a'b\"c", "back\\slash'", "sp ace' 'x"];
    let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let sql: Vec<u8> = su
        .query_one(
            "SELECT pgtenant._proof_message($1, $2::text[])",
            &[&12345i32, &&values[..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        String::from_utf8_lossy(&sql),
        String::from_utf8_lossy(&verified::proof_message(12345, &bytes))
    );
    // enter() accepts the Rust proof for this backend and refuses it on another value.
    let pid: i32 = su
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let proof = verified::proof(&key, pid, &[b"t1", b"plan"]);
    let enter = "SELECT pgtenant.enter($1, $2, true, $3, $4)";
    su.execute(enter, &[&key.id(), &proof, &"t1", &"plan"])
        .await
        .expect("the Rust proof is accepted");
    let refused = su
        .execute(enter, &[&key.id(), &proof, &"t2", &"plan"])
        .await;
    assert_eq!(
        refused.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501")
    );
    // Within one transaction, a valid proof for another tenant cannot switch the context
    // (code planted by one tenant running in another's transaction).
    su.batch_execute("BEGIN").await.unwrap();
    su.execute(enter, &[&key.id(), &proof, &"t1", &"plan"])
        .await
        .unwrap();
    let t2 = verified::proof(&key, pid, &[b"t2", b"plan"]);
    let switched = su.execute(enter, &[&key.id(), &t2, &"t2", &"plan"]).await;
    assert_eq!(
        switched.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501"),
        "{switched:?}"
    );
    su.batch_execute("ROLLBACK").await.unwrap();
    // The session carries t1 (the first enter() committed): t2 only once it is emptied.
    let carried = su.execute(enter, &[&key.id(), &t2, &"t2", &"plan"]).await;
    assert_eq!(
        carried.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501"),
        "{carried:?}"
    );
    su.batch_execute("DISCARD ALL").await.unwrap();
    su.execute(enter, &[&key.id(), &t2, &"t2", &"plan"])
        .await
        .expect("after DISCARD ALL another tenant may enter");
    let other_pid = verified::proof(&key, pid + 1, &[b"t1", b"plan"]);
    let refused = su
        .execute(enter, &[&key.id(), &other_pid, &"t1", &"plan"])
        .await;
    assert_eq!(
        refused.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn install_is_idempotent_and_the_printed_sql_runs_twice() {
    let env = TestEnv::start().await;
    let cfg = env.config();
    let again = pgtenant::demo::install_verified(&env.cluster, &cfg, KeyStep::Install)
        .await
        .expect("second install");
    assert!(again.contains("already current"), "{again}");
    // Another key without --rotate is refused, and leaves the installed key alone.
    let mut other = env.config();
    other.context.key = Some(std::sync::Arc::new(ContextKey::generate()));
    let refused = pgtenant::demo::install_verified(&env.cluster, &other, KeyStep::Install).await;
    assert!(refused.is_err(), "a different key without --rotate");
    let printed = cfg.verified_objects().install_sql();
    assert!(!printed.contains(std::str::from_utf8(pgtenant::demo::DEMO_CONTEXT_KEY).unwrap()));
    for _ in 0..2 {
        env.cluster
            .psql("app", &printed)
            .await
            .expect("printed SQL runs");
    }
    // The app role still works through the proxy and cannot read the keys.
    let c = env.proxy.connect("acme").await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let direct = env.app_user_direct().await;
    let keys = direct.query("SELECT * FROM pgtenant.keys", &[]).await;
    assert_eq!(
        keys.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501")
    );
}

#[test]
fn the_binary_prints_the_sql_without_the_key() {
    let dir = std::env::temp_dir().join(format!("pgtenant-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("context.key");
    std::fs::write(&key, "a-secret-key-of-at-least-32-bytes-for-the-test").unwrap();
    let config = dir.join("config.toml");
    let text = pgtenant::demo::EXAMPLE_CONFIG.replace(
        "key_env = \"PGTENANT_CONTEXT_KEY\"",
        &format!("key_file = {:?}", key.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["db", "install", "--print", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CREATE OR REPLACE FUNCTION pgtenant.enter("));
    assert!(!stdout.contains("a-secret-key"));
    let _ = std::fs::remove_dir_all(&dir);
}
