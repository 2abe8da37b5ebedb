//! The deployment artifacts under `deploy/`: every YAML and JSON file parses, the compose
//! stack, Kubernetes manifests, Dockerfile and systemd unit hang together (ports, paths,
//! secrets, grace periods), the embedded pgtenant configs pass `pgtenant check-config`,
//! the alert rules pass `promtool check rules` and their unit tests, and every metric the
//! rules and the dashboard use is one pgtenant exports.
//!
//! promtool (Debian package `prometheus`) is required under CI (`CI` set); elsewhere the
//! promtool checks print a skip message when it is missing.

mod common;
use common::promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Every metric family pgtenant exports: (name, type, labels).
const METRICS: &[(&str, &str, &[&str])] = &[
    ("pgtenant_build_info", "gauge", &["version"]),
    ("pgtenant_client_connections", "gauge", &["state"]),
    (
        "pgtenant_client_connections_rejected_total",
        "counter",
        &["reason"],
    ),
    ("pgtenant_client_timeouts_total", "counter", &["kind"]),
    ("pgtenant_backend_connections", "gauge", &["pool", "state"]),
    ("pgtenant_pool_size", "gauge", &["pool"]),
    ("pgtenant_backend_up", "gauge", &["pool"]),
    ("pgtenant_pool_waiting_clients", "gauge", &["pool"]),
    (
        "pgtenant_pool_checkout_wait_seconds",
        "histogram",
        &["pool"],
    ),
    (
        "pgtenant_pool_checkout_timeouts_total",
        "counter",
        &["pool"],
    ),
    (
        "pgtenant_backend_connections_opened_total",
        "counter",
        &["pool"],
    ),
    (
        "pgtenant_backend_connections_closed_total",
        "counter",
        &["pool"],
    ),
    (
        "pgtenant_backend_connect_errors_total",
        "counter",
        &["pool"],
    ),
    ("pgtenant_transactions_total", "counter", &["pool"]),
    ("pgtenant_queries_total", "counter", &["pool"]),
    (
        "pgtenant_transaction_duration_seconds",
        "histogram",
        &["pool"],
    ),
    ("pgtenant_client_received_bytes_total", "counter", &[]),
    ("pgtenant_client_sent_bytes_total", "counter", &[]),
    (
        "pgtenant_auth_attempts_total",
        "counter",
        &["method", "result", "reason"],
    ),
    ("pgtenant_server_errors_total", "counter", &["class"]),
    ("pgtenant_context_injections_total", "counter", &[]),
    (
        "pgtenant_context_change_rejections_total",
        "counter",
        &["source"],
    ),
    (
        "pgtenant_prepared_statement_cache_hits_total",
        "counter",
        &["pool"],
    ),
    (
        "pgtenant_prepared_statement_cache_misses_total",
        "counter",
        &["pool"],
    ),
    (
        "pgtenant_prepared_statement_evictions_total",
        "counter",
        &["pool"],
    ),
    ("pgtenant_tls_handshakes_total", "counter", &["result"]),
    (
        "pgtenant_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        &["listener"],
    ),
    ("pgtenant_config_reloads_total", "counter", &["result"]),
    (
        "pgtenant_client_protocol_errors_total",
        "counter",
        &["reason"],
    ),
    ("pgtenant_tenant_client_connections", "gauge", &["tenant"]),
    ("pgtenant_tenant_backend_connections", "gauge", &["tenant"]),
    ("pgtenant_tenant_transactions_total", "counter", &["tenant"]),
    (
        "pgtenant_tenant_checkout_wait_seconds_total",
        "counter",
        &["tenant"],
    ),
    ("pgtenant_tenant_errors_total", "counter", &["tenant"]),
];

/// Series that are not pgtenant's but may appear in rules (Prometheus' own).
const OTHER_SERIES: &[&str] = &["up"];

/// Alerts the rules file must define.
const REQUIRED_ALERTS: &[&str] = &[
    "PgtenantDown",
    "PgtenantBackendDown",
    "PgtenantPoolSaturated",
    "PgtenantClientsWaiting",
    "PgtenantCheckoutTimeouts",
    "PgtenantAuthFailureSpike",
    "PgtenantTLSCertificateExpiringSoon",
    "PgtenantTLSCertificateExpired",
    "PgtenantContextChangeRejected",
    "PgtenantConfigReloadFailed",
];

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

// ------------------------------------------------------------------------------ PromQL

/// Metric selectors in a PromQL expression: (metric name, label matchers text).
/// Skips strings, label lists of by/without/on/ignoring/group_*, range and subquery
/// brackets, numbers and durations, function and aggregation names, and Grafana variables.
fn selectors(expr: &str) -> Vec<(String, String)> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end",
    ];
    let b = expr.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    // Index just past the bracket matching the one at `i`, honouring quotes.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {} in {expr:?}", open as char);
    };
    let next_non_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'$' => {
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    i = skip_group(i, b'{', b'}');
                } else {
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let j = next_non_space(i);
                let next = b.get(j).copied();
                if LABEL_LISTS.contains(&word) {
                    if next == Some(b'(') {
                        i = skip_group(j, b'(', b')');
                    }
                } else if KEYWORDS.contains(&word)
                    || AGGREGATIONS.contains(&word)
                    || next == Some(b'(')
                {
                    // operator, aggregation or function call
                } else if next == Some(b'{') {
                    let end = skip_group(j, b'{', b'}');
                    out.push((word.to_string(), expr[j + 1..end - 1].to_string()));
                    i = end;
                } else {
                    out.push((word.to_string(), String::new()));
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The metric family a series name belongs to (histogram suffixes removed), if known.
fn family(name: &str) -> Option<&'static (&'static str, &'static str, &'static [&'static str])> {
    METRICS.iter().find(|(n, kind, _)| {
        *n == name
            || (*kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(n)))
    })
}

/// Names in `exprs` that are neither pgtenant metrics nor allowed other series.
fn unknown_metrics<'a>(exprs: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    exprs
        .into_iter()
        .flat_map(|e| selectors(e))
        .map(|(name, _)| name)
        .filter(|n| family(n).is_none() && !OTHER_SERIES.contains(&n.as_str()))
        .collect()
}

#[test]
fn promql_selector_extraction() {
    let e = r#"histogram_quantile(0.99, sum by (pool, le) (rate(pgtenant_pool_checkout_wait_seconds_bucket{instance=~"$instance", pool=~"$pool"}[$__rate_interval])))
        / on (job) group_left (x) topk(10, sum without (a) (up offset 5m)) > 14 * 86400 and time() - pgtenant_nope_total"#;
    let s = selectors(e);
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "pgtenant_pool_checkout_wait_seconds_bucket",
            "up",
            "pgtenant_nope_total"
        ]
    );
    assert_eq!(s[0].1, r#"instance=~"$instance", pool=~"$pool""#);
    let exprs = vec![e.to_string()];
    assert_eq!(
        unknown_metrics(&exprs),
        BTreeSet::from(["pgtenant_nope_total".to_string()])
    );
    assert!(family("pgtenant_transaction_duration_seconds_count").is_some());
    assert!(family("pgtenant_transactions_total_bucket").is_none());
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

// ------------------------------------------------------------------------------ kubernetes

fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for p in deploy_files(&["yml", "yaml"]) {
        if p.starts_with(deploy("kubernetes")) {
            for d in yaml_docs(&p) {
                out.push((p.clone(), d));
            }
        }
    }
    out
}

fn k8s(kind: &str, name: &str) -> Value {
    k8s_objects()
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} in deploy/kubernetes"))
}

fn deployment() -> Value {
    let deps: Vec<Value> = k8s_objects()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "Deployment")
        .collect();
    assert_eq!(deps.len(), 1, "one Deployment");
    deps.into_iter().next().unwrap()
}

/// The pgtenant container (a regular or a native sidecar container).
fn pgtenant_container(pod: &Value) -> &Value {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod[k].as_array())
        .flatten()
        .find(|c| c["name"] == "pgtenant")
        .expect("a container named pgtenant")
}

/// The ConfigMap's config.toml and where the container sees it.
fn k8s_config_text() -> String {
    let pod = deployment()["spec"]["template"]["spec"].clone();
    let c = pgtenant_container(&pod);
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let path = args[at + 1];
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("a volume mounted at {dir}"));
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the config volume");
    let cm = str_at(vol, "/configMap/name");
    str_at(&k8s("ConfigMap", cm), &format!("/data/{file}")).to_string()
}

#[test]
fn kubernetes_sidecar_deployment() {
    let dep = deployment();
    let tpl = &dep["spec"]["template"];
    let pod = &tpl["spec"];
    let c = pgtenant_container(pod);
    let cfg = parse_config(&k8s_config_text());

    // Ports, probes and scrape annotations agree with the config.
    let metrics = cfg.server.metrics_listen.expect("metrics_listen");
    assert!(
        metrics.ip().is_unspecified(),
        "kubelet and Prometheus reach the metrics port on the pod IP"
    );
    let port_of = |p: &Value| -> u64 {
        match p {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == name.as_str())
                .and_then(|x| x["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("named port {name}")),
            _ => panic!("bad port {p}"),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_of(&get["port"]),
            u64::from(metrics.port()),
            "{probe} on the metrics port"
        );
    }
    let ann = &tpl["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], metrics.port().to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    // Grace periods: preStop sleep + shutdown_grace_period < terminationGracePeriodSeconds.
    let tgps = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = &c["lifecycle"]["preStop"];
    let sleep = pre_stop["sleep"]["seconds"]
        .as_u64()
        .or_else(|| {
            let cmd = pre_stop["exec"]["command"].as_array()?;
            cmd.iter().rev().find_map(|a| a.as_str()?.parse().ok())
        })
        .expect("a preStop sleep on the pgtenant container");
    assert!(sleep > 0);
    let grace = cfg.server.shutdown_grace_period;
    assert!(
        Duration::from_secs(tgps) > grace + Duration::from_secs(sleep),
        "terminationGracePeriodSeconds {tgps} must exceed preStop {sleep}s + shutdown_grace_period {grace:?}"
    );

    // Security context.
    let sc = &c["securityContext"];
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "runAsNonRoot");
    if let Some(uid) = sc["runAsUser"].as_u64() {
        assert_ne!(uid, 0);
    }
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(
        sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL")),
        "drop ALL capabilities"
    );
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["memory"].is_string(),
            "resources.{k}.memory"
        );
    }

    // The backend password comes from a Secret through password_env.
    let db = cfg.databases.values().next().expect("a database");
    let var = db
        .password_env
        .as_deref()
        .expect("password_env, not password");
    assert!(db.password.is_none());
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
        .unwrap_or_else(|| panic!("container env {var}"));
    let secret = str_at(env, "/valueFrom/secretKeyRef/name");
    let key = str_at(env, "/valueFrom/secretKeyRef/key");
    let example = k8s("Secret", secret);
    assert!(
        example["stringData"][key].is_string(),
        "secret.example.yaml shows {secret}.{key}"
    );

    // Every file the config names is projected into the TLS volume from an example Secret.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mut files = vec![];
    files.extend(cfg.tls.cert_file.clone());
    files.extend(cfg.tls.key_file.clone());
    files.extend(cfg.tls.client_ca_files.clone());
    for db in cfg.databases.values() {
        files.extend(db.sslrootcert.clone());
        files.extend(db.sslcert.clone());
        files.extend(db.sslkey.clone());
    }
    assert!(
        !files.is_empty(),
        "the example shows TLS files from Secrets"
    );
    for f in files {
        let (dir, file) = f.to_str().unwrap().rsplit_once('/').unwrap();
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{} is not under a volume mount", f.display()));
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let found = vol["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(vol))
            .filter_map(|s| s.get("secret"))
            .find_map(|s| {
                let item = s["items"].as_array()?.iter().find(|i| i["path"] == file)?;
                Some((
                    s["secretName"].as_str().or(s["name"].as_str())?.to_string(),
                    item["key"].as_str()?.to_string(),
                ))
            });
        let (secret, key) =
            found.unwrap_or_else(|| panic!("{} is not projected from a Secret", f.display()));
        assert!(
            k8s("Secret", &secret)["stringData"][key.as_str()].is_string(),
            "secret.example.yaml shows {secret}.{key}"
        );
    }
}

#[test]
fn kubernetes_examples_are_placeholders_and_kustomization_lists_real_files() {
    for (path, obj) in k8s_objects() {
        if obj["kind"] == "Secret" {
            let data = obj["stringData"].as_object().expect("stringData");
            for (k, v) in data {
                assert!(
                    v.as_str().is_some_and(|s| s.contains("REPLACE_ME")),
                    "{}: {k} must be a clearly marked placeholder",
                    path.display()
                );
            }
            assert!(
                path.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .contains("example"),
                "Secrets only in *example* files"
            );
        }
        assert!(obj["apiVersion"].is_string() && obj["kind"].is_string());
    }
    let k = yaml(&deploy("kubernetes/kustomization.yaml"));
    for r in k["resources"].as_array().expect("resources") {
        let p = deploy("kubernetes").join(r.as_str().unwrap());
        assert!(p.is_file(), "{}", p.display());
        assert!(!p.to_str().unwrap().contains("secret.example"));
    }
}

#[test]
fn kubernetes_config_passes_check_config() {
    let text = k8s_config_text();
    // The config names files in the pod's TLS volume: make them exist here.
    let dir = scratch("k8s-tls");
    let mount = "/etc/pgtenant/tls/";
    assert!(text.contains(mount));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    for (file, pem) in [
        ("server.crt", ck.cert.pem()),
        ("server.key", ck.signing_key.serialize_pem()),
        ("db-ca.crt", ck.cert.pem()),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let local = text.replace(mount, &format!("{}/", dir.display()));
    let (ok, out) = check_config(&local, &[("PGTENANT_APP_PASSWORD", "x")], "k8s");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "check-config failed:\n{out}");
    let cfg = parse_config(&text);
    for (tenant, password) in DEMO_PASSWORDS {
        assert!(
            verifier_matches(&cfg.tenants[*tenant].password, password),
            "the example verifier of {tenant} is for {password}, as the comment says"
        );
    }
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

// ------------------------------------------------------------------------------ alerts

fn alert_rules() -> Vec<Value> {
    let rules = yaml(&deploy("prometheus/alerts.yml"));
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn alert_rules_are_complete_and_documented() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for a in REQUIRED_ALERTS {
        assert!(names.contains(a), "alert {a} missing; have {names:?}");
    }
    for r in &rules {
        let name = str_at(r, "/alert");
        assert!(r["expr"].is_string(), "{name}: expr");
        let r#for = r["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: `for:` duration"));
        parse_duration(r#for);
        let sev = str_at(r, "/labels/severity");
        assert!(
            ["critical", "warning", "info"].contains(&sev),
            "{name}: {sev}"
        );
        let summary = str_at(r, "/annotations/summary");
        let description = str_at(r, "/annotations/description");
        assert!(
            format!("{summary}{description}").contains("{{ $labels."),
            "{name}: annotations name the instance/pool/... with {{{{ $labels }}}}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = deploy("prometheus");
    let (ok, out, err) =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "rules", "alerts.yml"]));
    assert!(ok, "promtool check rules:\n{out}{err}");
    let (ok, out, err) =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]));
    assert!(ok, "promtool test rules:\n{out}{err}");
    // The unit tests cover at least these alerts.
    let tests = read(&dir.join("alerts_test.yml"));
    for a in [
        "PgtenantContextChangeRejected",
        "PgtenantTLSCertificateExpiringSoon",
        "PgtenantTLSCertificateExpired",
    ] {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "a unit test for {a}"
        );
    }
}

// ------------------------------------------------------------------------------ dashboard

fn dashboard() -> Value {
    json(&deploy("grafana/pgtenant-dashboard.json"))
}

/// Every panel, including those nested in (collapsed) rows.
fn panels(d: &Value) -> Vec<Value> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(p, out);
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

/// The metric selector part of a `label_values(<selector>, label)` variable query.
fn variable_query(v: &Value) -> Option<String> {
    let q = v["query"]["query"]
        .as_str()
        .or(v["query"].as_str())
        .or(v["definition"].as_str())?;
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    Some(match inner.rsplit_once(',') {
        Some((sel, _label)) => sel.to_string(),
        None => inner.to_string(),
    })
}

/// (where, expr) for every PromQL expression in the dashboard.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("panel {:?}", p["title"]), e.to_string()));
            }
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), e.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = variable_query(v).unwrap_or_else(|| panic!("variable query {v}"));
            out.push((format!("variable {:?}", v["name"]), q));
        }
    }
    out
}

#[test]
fn dashboard_structure() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["title"].is_string() && d["uid"].is_string());
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds_ref = if let Some(ds) = var("datasource") {
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");
        "${datasource}"
    } else {
        assert!(
            d["__inputs"].to_string().contains("DS_PROMETHEUS"),
            "a datasource variable or a DS_PROMETHEUS input"
        );
        "${DS_PROMETHEUS}"
    };
    for name in ["pool", "tenant"] {
        let v = var(name).unwrap_or_else(|| panic!("template variable {name}"));
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], ds_ref, "{name}");
        assert!(v["includeAll"] == true && v["multi"] == true, "{name}");
    }

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id in {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: gridPos"
        );
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(p["datasource"]["uid"], ds_ref, "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: targets");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: expr"
            );
            assert_eq!(t["datasource"]["uid"], ds_ref, "{title}: target datasource");
        }
    }
    assert!(graphs >= 15, "{graphs} panels");
    let titles: Vec<String> = all
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for want in [
        "client connections by state",
        "backend connections vs pool size",
        "clients waiting",
        "checkout wait p50 / p99",
        "transactions/s and queries/s",
        "transaction duration",
        "client traffic",
        "authentication attempts by result",
        "errors by sqlstate class",
        "context injections",
        "prepared-statement cache",
        "tls certificate days to expiry",
        "by tenant",
        "configuration reloads",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "a panel about {want:?}: {titles:?}"
        );
    }
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let alert_exprs: Vec<String> = alert_rules()
        .iter()
        .map(|r| str_at(r, "/expr").to_string())
        .collect();
    let unknown = unknown_metrics(&alert_exprs);
    assert!(
        unknown.is_empty(),
        "alerts.yml uses unknown metrics {unknown:?}"
    );

    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    let texts: Vec<String> = exprs.iter().map(|(_, e)| e.clone()).collect();
    let unknown = unknown_metrics(&texts);
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics {unknown:?}"
    );

    // The dashboard shows every family, and filters by the template variables.
    let used: BTreeSet<&str> = texts
        .iter()
        .flat_map(|e| selectors(e))
        .filter_map(|(n, _)| family(&n).map(|f| f.0))
        .collect();
    let unused: Vec<&str> = METRICS
        .iter()
        .map(|m| m.0)
        .filter(|m| !used.contains(m))
        .collect();
    assert!(unused.is_empty(), "the dashboard does not show {unused:?}");
    for (place, e) in exprs.iter().filter(|(p, _)| p.starts_with("panel")) {
        for (name, matchers) in selectors(e) {
            let Some((_, _, labels)) = family(&name) else {
                continue;
            };
            let mut want = vec![r#"instance=~"$instance""#];
            if labels.contains(&"pool") {
                want.push(r#"pool=~"$pool""#);
            }
            if labels.contains(&"tenant") {
                want.push(r#"tenant=~"$tenant""#);
            }
            for w in want {
                assert!(matchers.contains(w), "{place}: {name} lacks {w}");
            }
        }
    }
}

#[test]
fn dashboard_exprs_are_valid_promql() {
    let Some(promtool) = promtool() else { return };
    // Grafana variables replaced by what they expand to, each expression a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (place, e)) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$instance", ".*")
            .replace("$pool", ".*")
            .replace("$tenant", ".*");
        rules.push_str(&format!(
            "      # {}\n      - record: dashboard:expr_{i}\n        expr: {}\n",
            place.replace('\n', " "),
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = scratch("dashrules");
    let file = dir.join("dashboard.yml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, out, err) = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "dashboard PromQL does not parse:\n{out}{err}\n{rules}");
}
