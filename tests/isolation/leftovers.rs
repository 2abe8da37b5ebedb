//! State one tenant can leave on a backend connection without any statement the guard
//! would see: the unnamed prepared statement, sequence values, temp objects made through
//! `pg_temp`, session advisory locks through the function-call protocol, and the SQL
//! PostgreSQL keeps on view (prepared statements, each backend's last query). None of it
//! may reach the next tenant of that connection, in either release mode.

use super::*;
use pgtenant::config::ResetMode;

#[tokio::test]
async fn unnamed_statement_left_on_a_backend_is_not_served_to_the_next_tenant() {
    let env = TestEnv::start_with(|c| pool_of(c, 1)).await;
    let long = async {
        // acme leaves an unnamed statement on the only backend; PostgreSQL keeps it across
        // transactions.
        let mut acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
            .await
            .unwrap();
        let mut out = BytesMut::new();
        raw::extended(
            &mut out,
            "SELECT 'acme left this'::text AS acme_column",
            &[],
        );
        raw::sync(&mut out);
        acme.send(&out).await;
        assert_eq!(raw::tags(&acme.until_ready().await), "12DCZ");

        // globex binds the unnamed statement without parsing one, and describes it: both
        // must fail as on a connection of its own, never run or show acme's SQL.
        let mut globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .unwrap();
        for describe_first in [false, true] {
            let mut out = BytesMut::new();
            if describe_first {
                messages::write_msg(&mut out, b'D', |b| b.extend_from_slice(b"S\0"));
            }
            messages::bind(&mut out, "", std::iter::empty());
            messages::write_msg(&mut out, b'D', |b| b.extend_from_slice(b"P\0"));
            messages::execute(&mut out);
            raw::sync(&mut out);
            globex.send(&out).await;
            let msgs = globex.until_ready().await;
            let errors = raw::errors(&msgs);
            assert!(
                raw::data_rows(&msgs).is_empty() && !raw::tags(&msgs).contains('T'),
                "globex was served acme's leftover statement: {msgs:?}"
            );
            assert_eq!(errors.len(), 1, "{msgs:?}");
            assert_eq!(errors[0].code, "26000", "{:?}", errors[0]);
        }

        // globex's own unnamed statements still work, in its own context.
        let mut out = BytesMut::new();
        raw::extended(&mut out, CTX, &[]);
        raw::sync(&mut out);
        globex.send(&out).await;
        let msgs = globex.until_ready().await;
        assert_eq!(raw::data_rows(&msgs), vec![vec![Some(GLOBEX.to_string())]]);
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

/// `pg_catalog.pg_advisory_lock(bigint)`.
const ADVISORY_LOCK_OID: u32 = 2880;
/// `pg_catalog.lo_creat(integer)` and `pg_catalog.lo_unlink(oid)`.
const LO_CREAT_OID: u32 = 957;
const LO_UNLINK_OID: u32 = 964;

#[tokio::test]
async fn sequence_values_temp_objects_and_locks_do_not_reach_the_next_tenant() {
    for mode in [ResetMode::Always, ResetMode::Tracked] {
        let env = TestEnv::start_with(|c| {
            c.context.reset_on_release = mode;
            // Cleaned, not pinned: a temp table made through `pg_temp` would pin acme to
            // the one backend, which the next tenant must get.
            cleaned_pool_of(c, 1);
        })
        .await;
        // The demo schema revokes the large-object functions; this test calls two of them.
        env.cluster
            .psql(
                "app",
                "GRANT EXECUTE ON FUNCTION pg_catalog.lo_creat(integer), pg_catalog.lo_unlink(oid) TO app_user",
            )
            .await
            .unwrap();
        let long = async {
            let mut acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
                .await
                .unwrap();
            for sql in [
                // No TEMP keyword: a schema-qualified temp table, and one that shadows
                // `invoices` for whoever uses this backend next (pg_temp is searched first).
                "CREATE TABLE pg_temp.acme_notes AS SELECT 'acme secret'::text AS note",
                "CREATE TABLE pg_temp.invoices AS SELECT * FROM invoices",
                // Sets lastval() for the session, as any INSERT into a serial column does.
                "SELECT nextval('invoices_id_seq')",
            ] {
                let msgs = acme.simple(sql).await;
                assert!(raw::errors(&msgs).is_empty(), "{mode:?} {sql}: {msgs:?}");
            }
            // A function called by OID has no SQL for the guard: only large-object
            // functions go through, so a session advisory lock is refused...
            let mut out = BytesMut::new();
            raw::function_call(&mut out, ADVISORY_LOCK_OID, &["42"]);
            acme.send(&out).await;
            let msgs = acme.until_ready().await;
            assert_eq!(raw::errors(&msgs)[0].code, "42501", "{mode:?}: {msgs:?}");
            // ... and libpq's lo_creat / lo_unlink work.
            let mut out = BytesMut::new();
            raw::function_call(&mut out, LO_CREAT_OID, &["393216"]);
            acme.send(&out).await;
            let msgs = acme.until_ready().await;
            assert_eq!(raw::tags(&msgs), "VZ", "{mode:?}: {msgs:?}");
            let len = i32::from_be_bytes(msgs[0].1[..4].try_into().unwrap()) as usize;
            let oid = String::from_utf8(msgs[0].1[4..4 + len].to_vec()).unwrap();
            let mut out = BytesMut::new();
            raw::function_call(&mut out, LO_UNLINK_OID, &[&oid]);
            acme.send(&out).await;
            assert_eq!(raw::tags(&acme.until_ready().await), "VZ", "{mode:?}");

            let mut globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
                .await
                .unwrap();
            let msgs = globex.simple("SELECT note FROM pg_temp.acme_notes").await;
            assert!(raw::data_rows(&msgs).is_empty(), "{mode:?}: {msgs:?}");
            assert_eq!(raw::errors(&msgs)[0].code, "42P01", "{mode:?}: {msgs:?}");
            let msgs = globex.simple(INVOICES).await;
            let rows = raw::data_rows(&msgs);
            assert_eq!(rows.len(), expect("globex").invoices, "{mode:?}: {msgs:?}");
            assert!(
                rows.iter()
                    .all(|r| r == &vec![Some(GLOBEX.into()), Some(GLOBEX.into())]),
                "{mode:?}: globex read acme's shadow table: {rows:?}"
            );
            let msgs = globex.simple("SELECT lastval()").await;
            assert!(raw::data_rows(&msgs).is_empty(), "{mode:?}: {msgs:?}");
            assert_eq!(raw::errors(&msgs)[0].code, "55000", "{mode:?}: {msgs:?}");
            let msgs = globex
                .simple("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                .await;
            assert_eq!(
                raw::data_rows(&msgs),
                vec![vec![Some("0".into())]],
                "{mode:?}"
            );
        };
        tokio::time::timeout(Duration::from_secs(60), long)
            .await
            .expect("no hang");
        env.proxy.shutdown().await;
    }
}

#[tokio::test]
async fn other_tenants_statements_and_queries_cannot_be_read_back() {
    let env = TestEnv::start_with(|c| pool_of(c, 1)).await;
    let long = async {
        // acme prepares a statement (kept on the backend for reuse) and runs a query (which
        // pg_stat_activity shows as the backend's last query), both with a literal.
        let mut acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
            .await
            .unwrap();
        let mut out = BytesMut::new();
        messages::parse(&mut out, "s1", "SELECT 'acme prepared secret'::text");
        messages::bind(&mut out, "s1", std::iter::empty());
        messages::execute(&mut out);
        raw::sync(&mut out);
        acme.send(&out).await;
        assert_eq!(raw::tags(&acme.until_ready().await), "12DCZ");
        acme.simple("SELECT 'acme query secret'").await;

        let mut globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
            .await
            .unwrap();
        for sql in [
            "SELECT statement FROM pg_prepared_statements",
            "SELECT query FROM pg_stat_activity",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
            "SELECT table_to_xml('pg_prepared_statements', true, false, '')",
            // Ending or cancelling another tenant's backend (same role, so PostgreSQL
            // allows it).
            "SELECT pg_terminate_backend(0)",
            "SELECT pg_cancel_backend(0)",
        ] {
            let msgs = globex.simple(sql).await;
            let rows = format!("{:?}", raw::data_rows(&msgs));
            assert!(
                !rows.contains("acme"),
                "{sql}: globex read acme's SQL: {rows}"
            );
            let errors = raw::errors(&msgs);
            assert_eq!(errors.len(), 1, "{sql}: {msgs:?}");
            assert_eq!(errors[0].code, "42501", "{sql}: {:?}", errors[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("no hang");
}
