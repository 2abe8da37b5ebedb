//! The RLS posture doctor against a real PostgreSQL: a clean schema that reads the context
//! through the verified readers has no finding; each deliberately broken schema produces
//! its finding with the fix SQL, and running that SQL makes the finding go away; the demo
//! schema has only the findings it keeps on purpose; `doctor.strict` refuses to start; the
//! command's JSON parses and its exit status follows the findings.

mod common;

use std::sync::Arc;

use pgtenant::config::Config;
use pgtenant::doctor::command::{self, DbaLogin};
use pgtenant::doctor::{Finding, Report};
use pgtenant::metrics::Metrics;
use pgtenant::pgcluster::TempCluster;

/// A tenant table whose policy reads the verified reader (stubbed here: the real one comes
/// from `pgtenant db install`), and nothing the app role should not have. `DB` is replaced
/// by the database name.
const CLEAN: &str = r#"
CREATE SCHEMA pgtenant;
CREATE FUNCTION pgtenant.tenant_id() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.current_tenant', true) $$;
CREATE FUNCTION pgtenant.setting(name text) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting(name, true) $$;
GRANT USAGE ON SCHEMA pgtenant TO app_user;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE "DB" FROM PUBLIC;
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND (p.proname IN ('pg_stat_get_activity', 'pg_stat_get_backend_activity',
                                  'pg_cancel_backend', 'pg_terminate_backend', 'loread', 'lowrite')
                    OR p.proname LIKE 'lo\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;
CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
    USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
    WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);
GRANT CONNECT ON DATABASE "DB" TO app_user;
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO app_user;
GRANT USAGE ON SEQUENCE notes_id_seq TO app_user;
"#;

/// One deliberately broken schema: the breakage, the finding it must produce (check id and
/// object), its exact fix SQL, and cluster-wide leftovers to drop afterwards.
struct Case {
    breakage: &'static str,
    check: &'static str,
    object: &'static str,
    fix: &'static str,
    cleanup: &'static str,
}

const CASES: &[Case] = &[
    // 1. RLS off, or not forced, on a tenant table the role reaches directly, via PUBLIC, or
    //    through a role it belongs to.
    Case {
        breakage: "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
        check: "rls-not-forced",
        object: "public.notes",
        fix: "ALTER TABLE public.notes FORCE ROW LEVEL SECURITY;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE TABLE public.open_notes (tenant_id uuid); GRANT SELECT ON open_notes TO PUBLIC",
        check: "rls-not-forced",
        object: "public.open_notes",
        fix: "ALTER TABLE public.open_notes ENABLE ROW LEVEL SECURITY;\nALTER TABLE public.open_notes FORCE ROW LEVEL SECURITY;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE ROLE doctor_readers; GRANT doctor_readers TO app_user;
                   CREATE TABLE \"Odd Notes\" (tenant_id uuid); GRANT DELETE ON \"Odd Notes\" TO doctor_readers",
        check: "rls-not-forced",
        object: "public.\"Odd Notes\"",
        fix: "ALTER TABLE public.\"Odd Notes\" ENABLE ROW LEVEL SECURITY;\nALTER TABLE public.\"Odd Notes\" FORCE ROW LEVEL SECURITY;",
        cleanup: "DROP ROLE doctor_readers",
    },
    // 2. Policies without WITH CHECK, and commands with no policy.
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)",
        check: "policy-without-check",
        object: "public.notes policy tenant_isolation",
        fix: "ALTER POLICY tenant_isolation ON public.notes WITH CHECK ((tenant_id = (( SELECT pgtenant.tenant_id() AS tenant_id))::uuid));",
        cleanup: "",
    },
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY reads ON notes FOR ALL TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)
                       WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);
                   CREATE POLICY adds ON notes FOR INSERT TO app_user",
        check: "policy-without-check",
        object: "public.notes policy adds",
        fix: "ALTER POLICY adds ON public.notes WITH CHECK (tenant_id = (SELECT pgtenant.tenant_id())::uuid);",
        cleanup: "",
    },
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY reads ON notes FOR SELECT TO app_user
                       USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid)",
        check: "command-without-policy",
        object: "public.notes",
        fix: "CREATE POLICY tenant_isolation_delete ON public.notes AS PERMISSIVE FOR DELETE TO app_user USING (tenant_id = (SELECT pgtenant.tenant_id())::uuid);",
        cleanup: "",
    },
    // 3. The context read through a forgeable path (tenant id and an extra setting).
    Case {
        breakage: "DROP POLICY tenant_isolation ON notes;
                   CREATE POLICY tenant_isolation ON notes FOR ALL TO app_user
                       USING (tenant_id = current_setting('app.current_tenant')::uuid
                              AND current_setting('app.tenant_plan', true) <> 'frozen')
                       WITH CHECK (tenant_id = current_setting('app.current_tenant')::uuid)",
        check: "forgeable-context",
        object: "public.notes policy tenant_isolation",
        fix: "ALTER POLICY tenant_isolation ON public.notes USING (((tenant_id = ((SELECT pgtenant.tenant_id()))::uuid) AND ((SELECT pgtenant.setting('app.tenant_plan')) <> 'frozen'::text))) WITH CHECK ((tenant_id = ((SELECT pgtenant.tenant_id()))::uuid));",
        cleanup: "",
    },
    // 4. The role bypasses RLS, can become a role that does, or owns a tenant table.
    Case {
        breakage: "ALTER ROLE app_user SUPERUSER",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "ALTER ROLE app_user NOSUPERUSER;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER ROLE app_user BYPASSRLS",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "ALTER ROLE app_user NOBYPASSRLS;",
        cleanup: "",
    },
    Case {
        breakage: "CREATE ROLE doctor_bypass NOLOGIN BYPASSRLS; CREATE ROLE doctor_ops NOLOGIN;
                   GRANT doctor_bypass TO doctor_ops; GRANT doctor_ops TO app_user",
        check: "role-bypasses-rls",
        object: "app_user",
        fix: "REVOKE doctor_ops FROM app_user;",
        cleanup: "DROP ROLE doctor_ops; DROP ROLE doctor_bypass",
    },
    Case {
        breakage: "ALTER TABLE notes OWNER TO app_user",
        check: "owns-tenant-table",
        object: "public.notes",
        fix: "ALTER TABLE public.notes OWNER TO postgres;",
        cleanup: "",
    },
    // 5. CREATE on a schema (directly or via PUBLIC) or the database, TEMP on the database.
    Case {
        breakage: "GRANT CREATE ON SCHEMA public TO app_user",
        check: "create-on-schema",
        object: "public",
        fix: "REVOKE CREATE ON SCHEMA public FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT CREATE ON SCHEMA pgtenant TO PUBLIC",
        check: "create-on-schema",
        object: "pgtenant",
        fix: "REVOKE CREATE ON SCHEMA pgtenant FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT CREATE ON DATABASE \"DB\" TO app_user",
        check: "create-on-database",
        object: "DB",
        fix: "REVOKE CREATE ON DATABASE DB FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT TEMPORARY ON DATABASE \"DB\" TO PUBLIC",
        check: "temp-on-database",
        object: "DB",
        fix: "REVOKE TEMPORARY ON DATABASE DB FROM PUBLIC;",
        cleanup: "",
    },
    // 6. Role- and database-level defaults for context settings.
    Case {
        breakage: "ALTER ROLE app_user SET app.current_tenant = '11111111-1111-4111-8111-111111111111'",
        check: "context-default",
        object: "role app_user",
        fix: "ALTER ROLE app_user RESET app.current_tenant;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER DATABASE \"DB\" SET app.tenant_plan = 'pro'",
        check: "context-default",
        object: "database DB",
        fix: "ALTER DATABASE DB RESET app.tenant_plan;",
        cleanup: "",
    },
    Case {
        breakage: "ALTER ROLE app_user IN DATABASE \"DB\" SET app.current_tenant = 'x'",
        check: "context-default",
        object: "role app_user in database DB",
        fix: "ALTER ROLE app_user IN DATABASE DB RESET app.current_tenant;",
        cleanup: "",
    },
    // 7. Functions that cross tenants on a shared role, and pg_stat_activity's query text.
    Case {
        breakage: "GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO PUBLIC",
        check: "cross-tenant-function",
        object: "pg_catalog.pg_cancel_backend(integer)",
        fix: "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT EXECUTE ON FUNCTION pg_catalog.lo_open(oid, integer) TO app_user",
        check: "large-object-function",
        object: "large-object functions",
        fix: "REVOKE EXECUTE ON FUNCTION pg_catalog.lo_open(oid, integer) FROM app_user;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC;
                   GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) TO app_user",
        check: "stat-activity-query-text",
        object: "pg_catalog.pg_stat_activity",
        fix: "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;",
        cleanup: "",
    },
    Case {
        breakage: "GRANT pg_monitor TO app_user",
        check: "stat-activity-query-text",
        object: "pg_monitor",
        fix: "REVOKE pg_monitor FROM app_user;",
        cleanup: "",
    },
];

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
    // TEMP (drivers stage COPY through temp tables) and large objects (libpq's lo_* API)
    // stay in the demo; its policies read current_setting until they move to the verified
    // readers.
    let kept = [
        "forgeable-context",
        "temp-on-database",
        "large-object-function",
    ];
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

    // The printed migration, with the readers in place, leaves no forgeable policy.
    cluster
        .psql("app", &CLEAN[..CLEAN.find("REVOKE CREATE").unwrap()])
        .await
        .unwrap();
    for f in report
        .findings
        .iter()
        .filter(|f| f.check == "forgeable-context")
    {
        cluster.psql("app", &f.fix).await.unwrap();
    }
    let after = doctor(&cluster, "app").await;
    assert!(
        after
            .findings
            .iter()
            .all(|f| f.check != "forgeable-context"),
        "{}",
        describe(&after.findings)
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
    for part in [
        "doctor.strict",
        "forgeable-context",
        "public.invoices policy tenant_isolation",
    ] {
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
    let (code, out) = run_doctor(&cluster, "app", &["--format", "json"]);
    assert_eq!(code, command::EXIT_FINDINGS as i32, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output parses");
    let findings = v["findings"].as_array().expect("findings array");
    assert!(v["failures"].as_array().unwrap().is_empty(), "{out}");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "forgeable-context" && f["severity"] == "critical"),
        "{out}"
    );
    for f in findings {
        for key in ["database", "check", "severity", "object", "message", "fix"] {
            assert!(f[key].as_str().is_some_and(|s| !s.is_empty()), "{key}: {f}");
        }
    }
    let (code, out) = run_doctor(&cluster, "app", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("CRITICAL  app  forgeable-context"), "{out}");
    assert!(
        out.contains("fix: ALTER POLICY tenant_isolation ON public.invoices"),
        "{out}"
    );
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
