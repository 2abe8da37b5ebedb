//! The RLS posture doctor against a real PostgreSQL: a clean schema that reads the context
//! through the verified readers has no finding; each deliberately broken schema produces
//! its finding with the fix SQL, and running that SQL makes the finding go away; the demo
//! schema has only the findings it keeps on purpose; `doctor.strict` refuses to start; the
//! command's JSON parses and its exit status follows the findings.

mod common;
#[path = "doctor/schemas.rs"]
mod schemas;

use std::sync::Arc;

use pgtenant::config::Config;
use pgtenant::doctor::command::{self, DbaLogin};
use pgtenant::doctor::{Finding, Report};
use pgtenant::metrics::Metrics;
use pgtenant::pgcluster::TempCluster;
use schemas::{CASES, CLEAN};

/// The test config with `[databases.app]` pointed at backend database `db`.
fn config_for(cluster: &TempCluster, db: &str) -> Config {
    let mut cfg = common::test_config(cluster);
    cfg.databases.get_mut("app").unwrap().dbname = Some(db.to_string());
    cfg
}

/// Runs the doctor on `db` through the app role and requires that every check ran.
async fn doctor(cluster: &TempCluster, db: &str) -> Report {
    let report = command::check(&config_for(cluster, db), &["app".into()], None).await;
    assert!(report.failures.is_empty(), "{db}: {:?}", report.failures);
    report
}

/// A fresh database with the clean schema.
async fn clean_database(cluster: &TempCluster, db: &str) {
    cluster
        .psql("postgres", &format!("CREATE DATABASE \"{db}\""))
        .await
        .unwrap();
    cluster.psql(db, &CLEAN.replace("DB", db)).await.unwrap();
}

fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("\n  {} {}: {}\n    {}", f.check, f.object, f.message, f.fix))
        .collect()
}

#[tokio::test]
async fn verified_readers_schema_is_clean_and_each_broken_schema_has_its_finding_and_fix() {
    let cluster = common::start_cluster().await;
    clean_database(&cluster, "clean").await;
    let report = doctor(&cluster, "clean").await;
    assert!(
        report.findings.is_empty(),
        "clean schema: {}",
        describe(&report.findings)
    );
    let mut failures = common::Failures::default();
    for (i, case) in CASES.iter().enumerate() {
        let db = format!("case{i}");
        let sub = |s: &str| s.replace("DB", &db);
        clean_database(&cluster, &db).await;
        cluster.psql(&db, &sub(case.breakage)).await.unwrap();
        let report = doctor(&cluster, &db).await;
        let hits: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.check == case.check && f.object == sub(case.object))
            .collect();
        let matching = hits.iter().find(|f| f.fix.contains(&sub(case.fix)));
        failures.check(matching.is_some(), || {
            format!(
                "{db} ({}): no {} finding on {} with fix {:?}; found:{}",
                case.breakage,
                case.check,
                sub(case.object),
                sub(case.fix),
                describe(&report.findings)
            )
        });
        // Every fix printed for this object, run as the DBA, makes the finding go away.
        for f in &hits {
            cluster.psql(&db, &f.fix).await.unwrap();
        }
        let after = doctor(&cluster, &db).await;
        let left: Vec<Finding> = after
            .findings
            .into_iter()
            .filter(|f| f.check == case.check && f.object == sub(case.object))
            .collect();
        failures.check(left.is_empty(), || {
            format!("{db}: the fix left {}", describe(&left))
        });
        cluster
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))
            .await
            .unwrap();
        if !case.cleanup.is_empty() {
            cluster.psql("postgres", case.cleanup).await.unwrap();
        }
    }
    failures.finish();
}

#[tokio::test]
async fn demo_schema_has_only_the_findings_it_keeps_on_purpose_and_a_dba_sees_the_same() {
    let cluster = common::start_cluster().await;
    // TEMP (drivers stage COPY through temp tables) stays in the demo on purpose; its
    // policies read the verified readers.
    let kept = ["temp-on-database"];
    let report = doctor(&cluster, "app").await;
    let other: Vec<Finding> = report
        .findings
        .iter()
        .filter(|f| !kept.contains(&f.check))
        .cloned()
        .collect();
    assert!(other.is_empty(), "demo schema: {}", describe(&other));

    let cfg = config_for(&cluster, "app");
    let dba = DbaLogin::parse(&format!(
        "postgresql://postgres:{}@127.0.0.1:{}/postgres",
        cluster.superuser_password(),
        cluster.port()
    ))
    .unwrap();
    let as_dba = command::check(&cfg, &["app".into()], Some(&dba)).await;
    assert!(as_dba.failures.is_empty(), "{:?}", as_dba.failures);
    assert_eq!(as_dba.findings, report.findings);

    // The demo's policies read the verified readers: nothing forgeable is left.
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.check != "forgeable-context"),
        "{}",
        describe(&report.findings)
    );
}

#[tokio::test]
async fn strict_refuses_to_start_with_findings_and_starts_on_a_clean_database() {
    let cluster = common::start_cluster().await;
    let strict = |db: &str| {
        let mut cfg = config_for(&cluster, db);
        cfg.doctor.strict = true;
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.metrics_listen = None;
        cfg
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let err = match pgtenant::server::start(strict("app"), metrics.clone(), shutdown.clone()).await
    {
        Ok(_) => panic!("doctor.strict started the proxy on the demo schema"),
        Err(e) => e.to_string(),
    };
    for part in ["doctor.strict", "temp-on-database"] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    clean_database(&cluster, "clean").await;
    let running = pgtenant::server::start(strict("clean"), metrics, shutdown)
        .await
        .expect("a clean database passes doctor.strict");
    let _ = stop.send(true);
    running.task.await.unwrap();
}

/// Runs `pgtenant doctor` with a config for backend database `db`; (exit status, stdout).
fn run_doctor(cluster: &TempCluster, db: &str, args: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("pgtenant-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{db}.toml"));
    let text = pgtenant::demo::EXAMPLE_CONFIG
        .replace("port = 5432", &format!("port = {}", cluster.port()))
        .replace("# dbname = \"app\"", &format!("dbname = \"{db}\""));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .arg("doctor")
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("PGTENANT_DOCTOR_DBA_URL")
        .env(
            "PGTENANT_CONTEXT_KEY",
            std::str::from_utf8(pgtenant::demo::DEMO_CONTEXT_KEY).unwrap(),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test]
async fn doctor_command_prints_json_and_table_and_exits_by_findings() {
    let cluster = common::start_cluster().await;
    // The demo revokes the large-object functions; one granted back is a critical finding.
    cluster
        .psql(
            "app",
            "GRANT EXECUTE ON FUNCTION pg_catalog.lo_get(oid) TO PUBLIC",
        )
        .await
        .unwrap();
    let (code, out) = run_doctor(&cluster, "app", &["--format", "json"]);
    assert_eq!(code, command::EXIT_FINDINGS as i32, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output parses");
    let findings = v["findings"].as_array().expect("findings array");
    assert!(v["failures"].as_array().unwrap().is_empty(), "{out}");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "large-object-function" && f["severity"] == "critical"),
        "{out}"
    );
    for f in findings {
        for key in ["database", "check", "severity", "object", "message", "fix"] {
            assert!(f[key].as_str().is_some_and(|s| !s.is_empty()), "{key}: {f}");
        }
    }
    let (code, out) = run_doctor(&cluster, "app", &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("CRITICAL  app  large-object-function"),
        "{out}"
    );
    assert!(out.contains("fix: REVOKE EXECUTE ON FUNCTION"), "{out}");
    assert_eq!(run_doctor(&cluster, "app", &["--database", "nope"]).0, 64);

    // Clean: 0. Warnings only: 0, and 1 with --strict. Unreachable: 2.
    clean_database(&cluster, "clean").await;
    let (code, out) = run_doctor(&cluster, "clean", &["--format", "json", "--strict"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["findings"].as_array().map(Vec::len), Some(0), "{out}");
    cluster
        .psql("clean", "GRANT TEMPORARY ON DATABASE clean TO PUBLIC")
        .await
        .unwrap();
    assert_eq!(run_doctor(&cluster, "clean", &[]).0, 0);
    let (code, out) = run_doctor(&cluster, "clean", &["--strict"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("WARNING   app  temp-on-database  clean"),
        "{out}"
    );
    let (code, out) = run_doctor(&cluster, "no_such_db", &["--format", "json"]);
    assert_eq!(code, command::EXIT_INCOMPLETE as i32, "{out}");
}

/// What `stat-activity-query-text` says, shown: PostgreSQL gives a session the query text of
/// every backend of its own role (behind pgtenant: every tenant's) and `<insufficient
/// privilege>` for other roles' backends; the printed REVOKEs end both read paths.
#[tokio::test]
async fn same_role_sessions_read_each_others_query_text_until_the_fix() {
    let cluster = common::start_cluster().await;
    cluster
        .psql(
            "postgres",
            "CREATE DATABASE open; CREATE ROLE outsider LOGIN PASSWORD 'outsider'",
        )
        .await
        .unwrap();
    cluster
        .psql(
            "open",
            "GRANT CONNECT ON DATABASE open TO app_user, outsider",
        )
        .await
        .unwrap();
    let login = |user: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname=open",
            cluster.port()
        )
    };
    let acme = common::connect(&login("app_user", "app_password"))
        .await
        .unwrap();
    acme.simple_query("SELECT 'acme-private-literal'")
        .await
        .unwrap();
    let other_tenant = common::connect(&login("app_user", "app_password"))
        .await
        .unwrap();
    let peek =
        "SELECT query FROM pg_stat_activity WHERE usename = 'app_user' AND pid <> pg_backend_pid()";
    let seen: Vec<String> = other_tenant
        .query(peek, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        seen.iter().any(|q| q.contains("acme-private-literal")),
        "{seen:?}"
    );
    let outsider = common::connect(&login("outsider", "outsider"))
        .await
        .unwrap();
    let hidden: Vec<String> = outsider
        .query(peek, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !hidden.is_empty() && hidden.iter().all(|q| q == "<insufficient privilege>"),
        "{hidden:?}"
    );

    let report = doctor(&cluster, "open").await;
    for (check, object) in [
        ("stat-activity-query-text", "pg_catalog.pg_stat_activity"),
        (
            "cross-tenant-function",
            "pg_catalog.pg_stat_get_activity(integer)",
        ),
    ] {
        let f = report
            .findings
            .iter()
            .find(|f| f.check == check && f.object == object)
            .unwrap_or_else(|| panic!("no {check} {object}: {}", describe(&report.findings)));
        cluster.psql("open", &f.fix).await.unwrap();
    }
    for sql in [peek, "SELECT query FROM pg_stat_get_activity(NULL)"] {
        let err = other_tenant.query(sql, &[]).await.unwrap_err();
        assert_eq!(common::sqlstate(&err).as_deref(), Some("42501"), "{sql}");
    }
}
