//! Isolation levels and access modes work through pgtenant as on PostgreSQL: the context
//! goes in after BEGIN ... ISOLATION LEVEL and SET TRANSACTION (which PostgreSQL refuses
//! once a statement took the transaction's snapshot), and still before any statement that
//! reads, with deferred BEGIN on and off, in the simple and the extended protocol.

use super::*;

/// (statements that open the transaction, the isolation level and read-only flag expected).
const OPENINGS: [(&str, &str, &str); 6] = [
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "serializable", "off"),
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
    ("BEGIN TRANSACTION READ ONLY", "read committed", "on"),
    (
        "START TRANSACTION; SET TRANSACTION READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "serializable",
        "on",
    ),
    ("BEGIN", "read committed", "off"),
];

const CHECK: &str = "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), \
     current_setting('app.current_tenant'), (SELECT count(*) FROM invoices WHERE tenant_id::text <> current_setting('app.current_tenant'))::text";

fn values(msgs: &[Msg]) -> Vec<String> {
    raw::data_rows(msgs)
        .into_iter()
        .flatten()
        .map(|v| v.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn isolation_levels_and_access_modes_can_be_set() {
    for defer in [true, false] {
        let env = TestEnv::start_with(|c| {
            pool_of(c, 2);
            for db in c.databases.values_mut() {
                db.defer_begin = defer;
            }
        })
        .await;
        let long = async {
            let mut f = Failures::default();
            let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
                .await
                .unwrap();
            for (open, level, ro) in OPENINGS {
                let want = [level, ro, ACME, "0"];
                // Simple protocol: one statement per query, as drivers send them.
                for stmt in open.split("; ") {
                    let r = c.simple(stmt).await;
                    f.check(raw::errors(&r).is_empty(), || {
                        format!(
                            "defer={defer} {open:?}: {stmt:?} failed: {:?}",
                            raw::errors(&r)
                        )
                    });
                }
                let r = c.simple(CHECK).await;
                f.check(values(&r) == want, || {
                    format!(
                        "defer={defer} simple {open:?}: {:?} {:?}",
                        values(&r),
                        raw::errors(&r)
                    )
                });
                let r = c.simple("COMMIT").await;
                f.check(raw::tags(&r) == "CZ", || format!("COMMIT after {open:?}"));

                // Extended protocol: the whole transaction in one pipeline.
                let mut out = BytesMut::new();
                for stmt in open.split("; ") {
                    raw::extended(&mut out, stmt, &[]);
                }
                raw::extended(&mut out, CHECK, &[]);
                raw::extended(&mut out, "COMMIT", &[]);
                raw::sync(&mut out);
                c.send(&out).await;
                let r = c.until_ready().await;
                f.check(values(&r) == want && raw::errors(&r).is_empty(), || {
                    format!(
                        "defer={defer} extended {open:?}: {:?} {:?}",
                        values(&r),
                        raw::errors(&r)
                    )
                });
            }

            // A driver's own API: tokio-postgres's transaction builder.
            let mut client = env.proxy.connect("globex").await;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .unwrap();
            let row = tx.query_one(CHECK, &[]).await.unwrap();
            let got: Vec<String> = (0..4).map(|i| row.get::<_, String>(i)).collect();
            f.check(got == ["repeatable read", "on", GLOBEX, "0"], || {
                format!("defer={defer} tokio-postgres builder: {got:?}")
            });
            tx.commit().await.unwrap();
            f.finish();
        };
        tokio::time::timeout(Duration::from_secs(60), long)
            .await
            .expect("no hang");
    }
}

#[tokio::test]
async fn serializable_transactions_conflict_as_on_postgresql() {
    let env = TestEnv::start().await;
    let long = async {
        let a = env.proxy.connect("acme").await;
        let b = env.proxy.connect("acme").await;
        for c in [&a, &b] {
            c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .await
                .unwrap();
            c.query("SELECT sum(amount_cents) FROM invoices", &[])
                .await
                .unwrap();
        }
        a.batch_execute(&format!(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{ACME}', 1)"
        ))
        .await
        .unwrap();
        b.batch_execute(&format!(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{ACME}', 2)"
        ))
        .await
        .unwrap();
        a.batch_execute("COMMIT").await.unwrap();
        let err = b
            .batch_execute("COMMIT")
            .await
            .expect_err("a write skew between two serializable transactions is refused");
        assert_eq!(sqlstate(&err).as_deref(), Some("40001"), "{err}");
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}
