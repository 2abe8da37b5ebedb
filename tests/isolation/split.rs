//! One simple-query string that sets a transaction up and goes on (`BEGIN ISOLATION LEVEL
//! SERIALIZABLE; SELECT ...; COMMIT`, as psql -c, ActiveRecord and many ORMs send it): the
//! setup runs first, then the tenant context, then the rest, and the client gets exactly
//! the replies PostgreSQL sends for the one Query, errors in the setup or the rest included.

use super::*;
use pgtenant::protocol::messages::parse_error_fields;

const CHECK: &str = "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), \
     current_setting('app.current_tenant'), (SELECT count(*) FROM invoices WHERE tenant_id::text <> current_setting('app.current_tenant'))::text";

/// (the setup prefix, the isolation level and read-only flag it sets).
const OPENINGS: [(&str, &str, &str); 6] = [
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "serializable", "off"),
    (
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "repeatable read",
        "off",
    ),
    (
        "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "repeatable read",
        "off",
    ),
    (
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, DEFERRABLE",
        "serializable",
        "on",
    ),
    ("START TRANSACTION READ ONLY", "read committed", "on"),
    (
        "BEGIN READ WRITE; SET TRANSACTION READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "serializable",
        "on",
    ),
];

/// Texts sent as one Query through pgtenant and straight to PostgreSQL: the replies must
/// match message for message (the session is left as each text leaves it).
const SAME_AS_POSTGRES: [&str; 10] = [
    "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT current_setting('transaction_isolation'); SHOW transaction_isolation; COMMIT",
    "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT current_setting('transaction_read_only')",
    "SELECT current_setting('transaction_isolation')",
    "COMMIT",
    // The setup fails at run time: the rest does not run, one error, one ReadyForQuery.
    "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT 'bogus'; SELECT 1",
    "ROLLBACK",
    // A syntax error in the setup: nothing runs.
    "BEGIN ISOLATION LEVEL BOGUS; SELECT 1",
    // An error in the rest aborts the block, as in one Query.
    "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; SELECT 1/0; SELECT 2",
    "SELECT 3",
    "ROLLBACK",
];

fn values(msgs: &[Msg]) -> Vec<String> {
    raw::data_rows(msgs)
        .into_iter()
        .flatten()
        .map(|v| v.unwrap_or_default())
        .collect()
}

/// What the client sees, ParameterStatus aside: each message's tag with its command tag,
/// SQLSTATE, transaction status or row values.
fn summary(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t != b'S')
        .map(|(t, body)| match t {
            b'E' => format!("E {}", parse_error_fields(body).code),
            b'N' => format!("N {}", parse_error_fields(body).code),
            b'Z' => format!("Z {}", body[0] as char),
            b'C' => format!("C {}", String::from_utf8_lossy(&body[..body.len() - 1])),
            b'D' => format!("D {:?}", values(&[(b'D', body.clone())])),
            t => (*t as char).to_string(),
        })
        .collect()
}

async fn start(defer: bool) -> TestEnv {
    TestEnv::start_with(|c| {
        pool_of(c, 2);
        for db in c.databases.values_mut() {
            db.defer_begin = defer;
        }
    })
    .await
}

/// Every opening, then the check, in one string: the level and the tenant's context hold
/// inside; and the same rest sent inside a block a separate BEGIN opened.
async fn levels_in_one_string(env: &TestEnv, f: &mut Failures, label: &str) {
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    for (open, level, ro) in OPENINGS {
        let want = [level, ro, ACME, "0"];
        let r = c.simple(&format!("{open}; {CHECK}; COMMIT")).await;
        let ok = values(&r) == want && raw::errors(&r).is_empty();
        f.check(ok && r.last().is_some_and(|m| m.1[..] == *b"I"), || {
            format!("{label} {open:?}: {:?}", summary(&r))
        });
        // Inside an open block: the rest of a text that starts with SET TRANSACTION.
        let r = c.simple("BEGIN").await;
        f.check(raw::errors(&r).is_empty(), || format!("{label} BEGIN"));
        let setup: Vec<&str> = open
            .split("; ")
            .filter(|s| !s.starts_with("BEGIN"))
            .collect();
        if !setup.is_empty() && setup.iter().all(|s| s.starts_with("SET")) {
            let r = c.simple(&format!("{}; {CHECK}", setup.join("; "))).await;
            f.check(values(&r) == want && raw::errors(&r).is_empty(), || {
                format!("{label} in a block {setup:?}: {:?}", summary(&r))
            });
        }
        c.simple("COMMIT").await;
    }
}

#[tokio::test]
async fn setup_and_statements_in_one_query_string() {
    // Verified mode, the test schema's (its readers refuse the plain setting).
    for defer in [true, false] {
        let env = start(defer).await;
        let label = format!("defer={defer}");
        let long = async {
            let mut f = Failures::default();
            levels_in_one_string(&env, &mut f, &label).await;
            let mut proxy = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
                .await
                .unwrap();
            let direct_addr = format!("127.0.0.1:{}", env.cluster.port()).parse().unwrap();
            let mut direct = RawConn::connect_with(
                direct_addr,
                &[("user", "app_user"), ("database", "app")],
                "app_password",
            )
            .await
            .unwrap();
            for text in SAME_AS_POSTGRES {
                let (got, want) = (proxy.simple(text).await, direct.simple(text).await);
                f.check(summary(&got) == summary(&want), || {
                    format!(
                        "{label} {text:?}: pgtenant {:?}, PostgreSQL {:?}",
                        summary(&got),
                        summary(&want)
                    )
                });
            }
            let r = proxy.simple(CHECK).await;
            f.check(values(&r) == ["read committed", "off", GLOBEX, "0"], || {
                format!("{label} after the texts: {:?}", summary(&r))
            });
            f.finish();
        };
        tokio::time::timeout(Duration::from_secs(60), long)
            .await
            .expect("no hang");
    }
}

#[tokio::test]
async fn psql_c_runs_an_isolation_level_with_the_tenant_context() {
    let env = start(true).await;
    let sql = "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT current_setting('transaction_isolation') || ',' || \
               current_setting('transaction_read_only') || ',' || current_setting('app.current_tenant'); COMMIT";
    let out = tokio::process::Command::new("psql")
        .args(["-XAtq", "-h", "127.0.0.1", "-d", "app", "-U", "acme"])
        .args(["-p", &env.proxy.addr.port().to_string()])
        .args(["-c", sql])
        .env("PGPASSWORD", "acme-secret")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("serializable,on,{ACME}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == want),
        "psql -c: {stdout:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
