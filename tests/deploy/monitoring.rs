//! Monitoring artifacts: the metric families pgtenant exports, PromQL selector extraction,
//! the alert rules (promtool checks and unit tests) and the Grafana dashboard.

use super::*;

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
    ("pgtenant_context_carried_total", "counter", &[]),
    ("pgtenant_context_switches_total", "counter", &[]),
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
