//! The Kubernetes manifests: the sidecar deployment, its secrets and probes, the example
//! placeholders and the embedded pgtenant config.

use super::*;

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
