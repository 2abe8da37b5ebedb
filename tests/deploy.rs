//! The deployment artifacts under `deploy/`: every YAML and JSON file parses, the compose
//! stack, Kubernetes manifests, Dockerfile and systemd unit hang together (ports, paths,
//! secrets, grace periods), the embedded pgtenant configs pass `pgtenant check-config`,
//! the alert rules pass `promtool check rules` and their unit tests, and every metric the
//! rules and the dashboard use is one pgtenant exports.
//!
//! promtool (Debian package `prometheus`) is required under CI (`CI` set); elsewhere the
//! promtool checks print a skip message when it is missing.

mod common;
#[path = "deploy/kubernetes.rs"]
mod kubernetes;
#[path = "deploy/monitoring.rs"]
mod monitoring;
use common::promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The demo passwords the compose and Kubernetes examples document.
const DEMO_PASSWORDS: &[(&str, &str)] = &[("acme", "acme-secret"), ("globex", "globex-secret")];

// ------------------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn deploy_files(ext: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files_under(&root().join("deploy"), &mut all);
    all.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ext.contains(&e))
    });
    all.sort();
    all
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("missing string at {ptr} in {v}"))
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgtenant-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a command, returning (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pgtenant check-config` on config text, with `env` set; returns (ok, output).
fn check_config(text: &str, env: &[(&str, &str)], name: &str) -> (bool, String) {
    let dir = scratch(name);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    cmd.arg("--config").arg(&path).arg("check-config");
    for var in [
        "PGTENANT_CONFIG",
        "PGTENANT_LISTEN",
        "PGTENANT_METRICS_LISTEN",
        "PGTENANT_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (ok, out, err) = run(&mut cmd);
    let _ = std::fs::remove_dir_all(&dir);
    (ok, format!("{out}{err}"))
}

fn parse_config(text: &str) -> pgtenant::config::Config {
    toml::from_str(text).unwrap_or_else(|e| panic!("config does not parse: {e}"))
}

/// "40s", "1m30s", "2m", "45" (seconds) as a Duration.
fn parse_duration(s: &str) -> Duration {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Duration::from_secs(n);
    }
    let (mut total, mut num) = (0u64, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {s:?}"));
        num.clear();
        total += n * match unit.as_str() {
            "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            _ => panic!("bad duration unit in {s:?}"),
        };
    }
    assert!(num.is_empty(), "bad duration {s:?}");
    Duration::from_secs(total)
}

/// True when `verifier` (SCRAM-SHA-256 in pg_authid format) was made from `password`.
fn verifier_matches(verifier: &str, password: &str) -> bool {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    type H = Hmac<Sha256>;
    let v = pgtenant::auth::scram::ScramVerifier::parse(verifier).expect("a SCRAM verifier");
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut m = H::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().into()
    };
    // PBKDF2-HMAC-SHA-256, one block.
    let mut u = hmac(
        password.as_bytes(),
        &[v.salt.as_slice(), &[0, 0, 0, 1]].concat(),
    );
    let mut salted = u;
    for _ in 1..v.iterations {
        u = hmac(password.as_bytes(), &u);
        salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac(&salted, b"Client Key");
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    stored == v.stored_key && hmac(&salted, b"Server Key") == v.server_key
}

// ------------------------------------------------------------------------------ files

#[test]
fn every_yaml_and_json_file_parses() {
    let yamls = deploy_files(&["yml", "yaml"]);
    assert!(
        yamls.len() >= 8,
        "expected the deploy/ YAML files, found {yamls:?}"
    );
    for p in &yamls {
        assert!(!yaml_docs(p).is_empty(), "{} is empty", p.display());
    }
    let jsons = deploy_files(&["json"]);
    assert!(!jsons.is_empty());
    for p in &jsons {
        json(p);
    }
    for p in deploy_files(&["toml"]) {
        toml::from_str::<toml::Value>(&read(&p))
            .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", p.display()));
    }
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = read(&deploy("Dockerfile")).replace("\\\n", " ");
    let lines: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_ascii_uppercase(), v.trim().to_string()))
        })
        .collect();
    let froms: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage build: {froms:?}");
    let final_stage = &lines[*froms.last().unwrap()..];
    let get = |k: &str| -> Vec<&str> {
        final_stage
            .iter()
            .filter(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let users = get("USER");
    let user = users.last().expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER must be a numeric non-root uid, got {user}"
    );
    if let Some(gid) = user.split(':').nth(1) {
        assert!(gid.parse::<u32>().is_ok_and(|g| g != 0), "gid {gid}");
    }
    let exposed: Vec<&str> = get("EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for port in ["6432", "9187"] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
    let entry = get("ENTRYPOINT");
    assert!(entry.iter().any(|e| e.contains("pgtenant")), "{entry:?}");
    let cmd = get("CMD");
    assert!(
        cmd.iter()
            .any(|c| c.contains("--config") && c.contains("/etc/pgtenant/config.toml")),
        "{cmd:?}"
    );
    assert!(
        final_stage
            .iter()
            .any(|(k, v)| k == "COPY" && v.contains("--from=")),
        "the runtime stage copies the binary from the build stage"
    );
    assert!(
        lines
            .iter()
            .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")),
        "release build with the locked dependencies"
    );
    let ignore = read(&root().join(".dockerignore"));
    for entry in ["target", "tests/drivers/node/node_modules", ".git"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

// ------------------------------------------------------------------------------ compose

fn compose() -> Value {
    yaml(&deploy("docker-compose.yml"))
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c.pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose service {name}"))
}

/// Bind mounts of a compose service: (host path relative to deploy/, container path).
fn binds(svc: &Value) -> Vec<(String, String)> {
    svc.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (host, target) = (parts.next()?, parts.next()?);
            (host.starts_with('.') || host.starts_with('/'))
                .then(|| (host.to_string(), target.to_string()))
        })
        .collect()
}

fn env_of(svc: &Value) -> BTreeMap<String, String> {
    match svc.get("environment") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                (k.clone(), v)
            })
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[test]
fn compose_stack_hangs_together() {
    let c = compose();
    let services: BTreeSet<&str> = c["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    for s in ["postgres", "pgtenant", "prometheus"] {
        assert!(services.contains(s), "service {s} in {services:?}");
    }
    // Every bind-mounted file exists.
    for name in &services {
        for (host, _) in binds(service(&c, name)) {
            let p = root().join("deploy").join(&host);
            assert!(p.exists(), "service {name} mounts missing {host}");
        }
    }

    let pg = service(&c, "postgres");
    assert!(
        str_at(pg, "/image").starts_with("postgres:"),
        "official image"
    );
    let init: Vec<(String, String)> = binds(pg)
        .into_iter()
        .filter(|(_, t)| t.starts_with("/docker-entrypoint-initdb.d/"))
        .collect();
    assert_eq!(init.len(), 1, "one init script: {init:?}");
    let schema = read(&root().join("deploy").join(&init[0].0));
    assert!(schema.contains("CREATE POLICY"), "the demo RLS schema");
    let pg_env = env_of(pg);
    assert_eq!(pg_env.get("POSTGRES_DB").map(String::as_str), Some("app"));

    let pt = service(&c, "pgtenant");
    let depends = &pt["depends_on"];
    let on_pg = match depends {
        Value::Array(a) => a.iter().any(|v| v == "postgres"),
        Value::Object(m) => m.contains_key("postgres"),
        _ => false,
    };
    assert!(on_pg, "pgtenant depends on postgres: {depends}");
    assert_eq!(str_at(pt, "/build/dockerfile"), "deploy/Dockerfile");
    assert!(
        root()
            .join("deploy")
            .join(str_at(pt, "/build/context"))
            .join("deploy/Dockerfile")
            .is_file()
    );
    // The config file it runs with.
    let cfg_host = binds(pt)
        .into_iter()
        .find(|(_, t)| t == "/etc/pgtenant/config.toml")
        .expect("pgtenant mounts /etc/pgtenant/config.toml")
        .0;
    let cfg_text = read(&root().join("deploy").join(&cfg_host));
    let cfg = parse_config(&cfg_text);
    let db = cfg.databases.get("app").expect("[databases.app]");
    assert_eq!(db.host, "postgres");
    assert_eq!(db.user, "app_user", "the role demo_schema.sql creates");
    let var = db.password_env.as_deref().expect("password_env");
    let password = env_of(pt)
        .get(var)
        .cloned()
        .unwrap_or_else(|| panic!("pgtenant service sets {var}"));
    assert!(
        schema.contains(&format!("PASSWORD '{password}'")),
        "{var} must be the password demo_schema.sql gives app_user"
    );
    let ports = pt["ports"].to_string();
    let listen = cfg.server.listen;
    let metrics = cfg.server.metrics_listen.expect("metrics_listen");
    assert!(listen.ip().is_unspecified() && metrics.ip().is_unspecified());
    for p in [listen.port(), metrics.port()] {
        assert!(
            ports.contains(&format!(":{p}\"")),
            "port {p} published: {ports}"
        );
    }
    let stop = parse_duration(str_at(pt, "/stop_grace_period"));
    assert!(
        stop > cfg.server.shutdown_grace_period,
        "stop_grace_period {stop:?} must exceed shutdown_grace_period {:?}",
        cfg.server.shutdown_grace_period
    );

    let prom = service(&c, "prometheus");
    let prom_binds = binds(prom);
    assert!(
        prom_binds
            .iter()
            .any(|(h, _)| h.ends_with("prometheus/alerts.yml")),
        "prometheus loads the alert rules: {prom_binds:?}"
    );
    let prom_cfg = yaml(&deploy("compose/prometheus.yml"));
    let targets = prom_cfg["scrape_configs"].to_string();
    assert!(
        targets.contains(&format!("pgtenant:{}", metrics.port())),
        "prometheus scrapes pgtenant's metrics port: {targets}"
    );
}

#[test]
fn compose_config_passes_check_config_and_matches_the_demo_passwords() {
    let text = read(&deploy("compose/pgtenant.toml"));
    let (ok, out) = check_config(&text, &[("PGTENANT_APP_PASSWORD", "x")], "compose");
    assert!(ok, "check-config failed:\n{out}");
    // password_env must be set: without it the check fails.
    let (ok, out) = check_config(&text, &[], "compose-noenv");
    assert!(!ok && out.contains("PGTENANT_APP_PASSWORD"), "{out}");
    let cfg = parse_config(&text);
    for (tenant, password) in DEMO_PASSWORDS {
        let t = cfg.tenants.get(*tenant).expect("demo tenant");
        assert!(
            verifier_matches(&t.password, password),
            "{tenant}'s verifier is not for {password}"
        );
    }
    assert!(!verifier_matches(
        &cfg.tenants["acme"].password,
        "globex-secret"
    ));
}

#[test]
fn compose_prometheus_config_and_rules_load() {
    let Some(promtool) = promtool() else { return };
    let dir = scratch("promconfig");
    let text = read(&deploy("compose/prometheus.yml"));
    let rules = "/etc/prometheus/rules/";
    assert!(text.contains(rules));
    std::fs::create_dir(dir.join("rules")).unwrap();
    std::fs::copy(
        deploy("prometheus/alerts.yml"),
        dir.join("rules/pgtenant-alerts.yml"),
    )
    .unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        text.replace(rules, &format!("{}/rules/", dir.display())),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(&promtool).arg("check").arg("config").arg(&cfg));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "promtool check config:\n{out}{err}");
    assert!(
        out.contains("1 rule files found"),
        "the alert rules were loaded:\n{out}"
    );
}

// ------------------------------------------------------------------------------ systemd

#[test]
fn systemd_unit() {
    let path = deploy("systemd/pgtenant.service");
    let text = read(&path);
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        keys.entry(format!("{section}.{k}"))
            .or_default()
            .push(v.to_string());
    }
    let one = |k: &str| -> &str {
        keys.get(&format!("Service.{k}"))
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("[Service] {k}"))
    };
    assert!(["exec", "simple"].contains(&one("Type")));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("LimitNOFILE"), "65536");
    assert!(
        keys.contains_key("Service.DynamicUser")
            || keys
                .get("Service.User")
                .is_some_and(|u| u.iter().all(|u| u != "root" && u != "0")),
        "a dedicated user"
    );
    assert!(one("ExecStart").contains("--config"));
    let grace = pgtenant::config::ServerConfig::default().shutdown_grace_period;
    let stop = parse_duration(one("TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed the default shutdown_grace_period {grace:?}"
    );
    assert!(keys.contains_key("Install.WantedBy"));

    // systemd's own check, when systemd-analyze is installed (it is not required).
    let exe = env!("CARGO_BIN_EXE_pgtenant");
    let dir = scratch("systemd");
    let unit = dir.join("pgtenant.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/pgtenant", exe)).unwrap();
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => {
            let msg = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(o.status.success(), "systemd-analyze verify:\n{msg}");
        }
        Err(_) => eprintln!("SKIP: systemd-analyze not installed; unit not verified by systemd"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
