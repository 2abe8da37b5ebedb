//! Driver compatibility matrix: real client drivers (psycopg 3 sync and async, asyncpg,
//! node-postgres + pg-copy-streams, pgjdbc, psql + pgbench, tokio-postgres) run the same
//! checks — CRUD, rollback, a named prepared statement reused across many transactions, an
//! error inside a transaction, COPY, cancel, tenant isolation, and each driver's own way to
//! pipeline, stream a cursor and set an isolation level — once through pgtenant
//! (`PGT_MODE=proxy`, which injects the tenant context) and once straight against PostgreSQL
//! as `app_user` (`PGT_MODE=direct`, where the program sets the context itself). A driver
//! whose runtime is missing is skipped, except under CI (`CI` set), where that fails.
//!
//! The external programs live in `tests/drivers/`; `.ci/run` installs what they need.
//! sqlx is not covered yet (it needs a dev-dependency).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use tokio::process::Command;

/// Per program run (one driver, one mode).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Proxy,
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Direct => "direct",
        }
    }
}

/// Connection settings for one mode: host, port, and (user, password, tenant id) for A and B.
struct Target {
    mode: Mode,
    host: String,
    port: u16,
    tenants: [(String, String, &'static str); 2],
}

impl Target {
    fn new(env: &TestEnv, mode: Mode) -> Target {
        let tenant = |name: &str| -> (String, String, &'static str) {
            let (n, pw, id) = TENANTS
                .iter()
                .copied()
                .find(|t| t.0 == name)
                .expect("known tenant");
            match mode {
                Mode::Proxy => (n.to_string(), pw.to_string(), id),
                Mode::Direct => ("app_user".to_string(), "app_password".to_string(), id),
            }
        };
        let (host, port) = match mode {
            Mode::Proxy => (env.proxy.addr.ip().to_string(), env.proxy.addr.port()),
            Mode::Direct => (env.cluster.host().to_string(), env.cluster.port()),
        };
        Target {
            mode,
            host,
            port,
            tenants: [tenant("acme"), tenant("globex")],
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("PGT_HOST".to_string(), self.host.clone()),
            ("PGT_PORT".to_string(), self.port.to_string()),
            ("PGT_DB".to_string(), "app".to_string()),
            ("PGT_MODE".to_string(), self.mode.name().to_string()),
        ];
        for (x, (user, pw, id)) in ["A", "B"].iter().zip(&self.tenants) {
            v.push((format!("PGT_USER_{x}"), user.clone()));
            v.push((format!("PGT_PASSWORD_{x}"), pw.clone()));
            v.push((format!("PGT_TENANT_{x}"), id.to_string()));
        }
        v
    }
}

fn drivers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn python() -> String {
    std::env::var("PGT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `program args` to see whether a runtime/package is there.
async fn probe(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("`{program}` not runnable: {e}")),
    }
}

/// True when the driver should be skipped; under CI a missing driver is a failure.
fn missing(driver: &str, probes: Vec<Result<(), String>>) -> bool {
    let reasons: Vec<String> = probes.into_iter().filter_map(Result::err).collect();
    if reasons.is_empty() {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{driver}: driver runtime missing under CI (.ci/run must install it): {}",
            reasons.join("; ")
        );
    }
    println!(
        "SKIP {driver}: {} (run .ci/run's driver section to install)",
        reasons.join("; ")
    );
    true
}

/// Runs one driver program in one mode; Err carries its output.
async fn run_program(
    driver: &str,
    target: &Target,
    program: &str,
    args: &[String],
) -> Result<(), String> {
    let mode = target.mode.name();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(drivers_dir())
        .envs(target.vars())
        .kill_on_drop(true);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSSLMODE",
    ] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let out = match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{driver} [{mode}]: timed out after {RUN_TIMEOUT:?}"
            ));
        }
        Ok(Err(e)) => return Err(format!("{driver} [{mode}]: cannot run {program}: {e}")),
        Ok(Ok(o)) => o,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "---- {driver} [{mode}] ({:.1}s, {}) ----\n{stdout}",
        started.elapsed().as_secs_f64(),
        out.status
    );
    if out.status.success() {
        if !stderr.trim().is_empty() {
            println!("{driver} [{mode}] stderr:\n{stderr}");
        }
        return Ok(());
    }
    Err(format!(
        "{driver} [{mode}] failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    ))
}

/// Before the direct runs: the example policies read the verified context, which only
/// pgtenant can set, so a program talking to PostgreSQL directly (setting
/// `app.current_tenant` itself, as an app without pgtenant must) gets policies that read the
/// plain setting instead.
async fn policies_for_direct(env: &TestEnv) {
    env.superuser()
        .await
        .batch_execute(
            r#"DO $$
DECLARE
    p record;
    reader constant text := '\( SELECT pgtenant\.tenant_id\(\) AS tenant_id\)';
    plain constant text := 'current_setting(''app.current_tenant'')';
BEGIN
    FOR p IN SELECT * FROM pg_catalog.pg_policies WHERE schemaname = 'public' LOOP
        EXECUTE format('ALTER POLICY %I ON %I.%I USING (%s) WITH CHECK (%s)',
            p.policyname, p.schemaname, p.tablename,
            regexp_replace(p.qual, reader, plain, 'g'),
            regexp_replace(p.with_check, reader, plain, 'g'));
    END LOOP;
END
$$"#,
        )
        .await
        .expect("plain policies for the direct runs");
}

/// Runs the driver program through the proxy and directly; fails if either failed.
async fn matrix(driver: &str, program: &str, args: &[&str]) {
    matrix_with_pool(driver, program, args, None).await
}

/// Like [`matrix`], with the proxy's pool set to `pool` backends (the harness default is 5).
async fn matrix_with_pool(driver: &str, program: &str, args: &[&str], pool: Option<usize>) {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = pool.unwrap_or(db.pool_size);
        }
    })
    .await;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut failures = Vec::new();
    for mode in [Mode::Proxy, Mode::Direct] {
        if mode == Mode::Direct {
            policies_for_direct(&env).await;
        }
        if let Err(e) = run_program(driver, &Target::new(&env, mode), program, &args).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn psycopg_sync() {
    let py = python();
    if missing(
        "psycopg-sync",
        vec![probe(&py, &["-c", "import psycopg"]).await],
    ) {
        return;
    }
    // One backend: a backend released in the middle of a pipeline would be handed to the
    // other tenant's connection that the program runs meanwhile (issue 16, defect 1).
    let pool = Some(1);
    matrix_with_pool("psycopg-sync", &py, &["python/psycopg_sync.py"], pool).await;
}

#[tokio::test]
async fn psycopg_async() {
    let py = python();
    if missing(
        "psycopg-async",
        vec![probe(&py, &["-c", "import psycopg"]).await],
    ) {
        return;
    }
    matrix("psycopg-async", &py, &["python/psycopg_async.py"]).await;
}

#[tokio::test]
async fn asyncpg() {
    let py = python();
    if missing("asyncpg", vec![probe(&py, &["-c", "import asyncpg"]).await]) {
        return;
    }
    matrix("asyncpg", &py, &["python/asyncpg_check.py"]).await;
}

#[tokio::test]
async fn node_postgres() {
    let modules = drivers_dir().join("node/node_modules");
    let installed = |m: &str| match modules.join(m).join("package.json").is_file() {
        true => Ok(()),
        false => Err(format!(
            "{m} not installed (npm ci --prefix tests/drivers/node)"
        )),
    };
    let probes = vec![
        probe("node", &["--version"]).await,
        installed("pg"),
        installed("pg-copy-streams"),
        installed("pg-cursor"),
        installed("pg-query-stream"),
    ];
    if missing("node-postgres", probes) {
        return;
    }
    matrix("node-postgres", "node", &["node/check.js"]).await;
}

#[tokio::test]
async fn pgjdbc() {
    const JAR: &str = "/usr/share/java/postgresql.jar";
    let jar = match std::path::Path::new(JAR).is_file() {
        true => Ok(()),
        false => Err(format!(
            "{JAR} missing (apt-get install libpostgresql-jdbc-java)"
        )),
    };
    if missing("pgjdbc", vec![probe("java", &["-version"]).await, jar]) {
        return;
    }
    matrix("pgjdbc", "java", &["-cp", JAR, "java/Main.java"]).await;
}

#[tokio::test]
async fn psql_and_pgbench() {
    let probes = vec![
        probe("psql", &["--version"]).await,
        probe("pgbench", &["--version"]).await,
    ];
    if missing("psql+pgbench", probes) {
        return;
    }
    matrix("psql+pgbench", "bash", &["libpq/check.sh"]).await;
}

#[tokio::test]
async fn tokio_postgres() {
    let env = TestEnv::start().await;
    let mut failed = Vec::new();
    for mode in [Mode::Proxy, Mode::Direct] {
        if mode == Mode::Direct {
            policies_for_direct(&env).await;
        }
        let target = Target::new(&env, mode);
        let run = tokio::time::timeout(RUN_TIMEOUT, tokio_pg::run(&target));
        match run.await {
            Ok(f) => failed.extend(f),
            Err(_) => failed.push(format!("[{}] timed out after {RUN_TIMEOUT:?}", mode.name())),
        }
    }
    assert!(
        failed.is_empty(),
        "tokio-postgres failed checks:\n{}",
        failed.join("\n")
    );
}

/// The same checks with tokio-postgres (in process).
#[path = "drivers/tokio_pg.rs"]
mod tokio_pg;
