use super::*;

#[test]
fn example_config_is_valid() {
    let cfg = Config::parse(crate::demo::EXAMPLE_CONFIG).expect("config.toml must be valid");
    assert_eq!(
        cfg.context.settings(),
        vec!["app.current_tenant", "app.tenant_plan"]
    );
    assert_eq!(cfg.tenants.len(), 2);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
        [context]
        tenant_id_setting = "Current Tenant"
        [databases.app]
        host = ""
        user = "u"
        pool_size = 0
        guard_allow = ["AlterRoleStmt", "SelectStmt", "drop table", "TwoPhaseCommit"]
        [tenants.acme]
        id = ""
        password = "plaintext"
        settings = { "app.other" = "x" }
        [doctor]
        tenant_column = ""
    "#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("expected invalid")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "context.tenant_id_setting",
        "databases.app.host",
        "databases.app.pool_size",
        "databases.app.guard_allow[1]",
        "databases.app.guard_allow[2]",
        "tenants.acme.id",
        "tenants.acme.password",
        "tenants.acme.settings.app.other",
        "doctor.tenant_column",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    for ok in [
        "databases.app.guard_allow[0]",
        "databases.app.guard_allow[3]",
    ] {
        assert!(
            !keys.contains(&ok),
            "a refused kind may be widened: {keys:?}"
        );
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
}

#[test]
fn custom_setting_names() {
    assert!(is_custom_setting_name("app.current_tenant"));
    assert!(is_custom_setting_name("a.b.c"));
    assert!(!is_custom_setting_name("search_path"));
    assert!(!is_custom_setting_name("app.Tenant"));
    assert!(!is_custom_setting_name("app.x'y"));
    assert!(!is_custom_setting_name("app."));
}

#[test]
fn verified_mode_problems_name_their_keys() {
    let base = "[databases.app]\nhost = \"h\"\nuser = \"u\"\n";
    let keys = |context: &str| -> Vec<String> {
        match Config::parse(&format!("[context]\n{context}\n{base}")) {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.key).collect(),
            other => panic!("expected invalid: {other:?}"),
        }
    };
    assert_eq!(keys("mode = \"verified\""), ["context.key_file"]);
    assert_eq!(
        keys("mode = \"verified\"\nkey_file = \"/k\"\nkey_env = \"K\""),
        ["context.key_env"]
    );
    assert_eq!(keys("schema = \"Bad-Name\""), ["context.schema"]);
    assert_eq!(
        keys("carry = true"),
        ["context.carry"],
        "plain mode cannot carry"
    );
    assert_eq!(
        keys("extra_settings = [\"pgtenant.stamp\"]"),
        ["context.extra_settings[0]"]
    );
    let many: Vec<String> = (0..MAX_SETTINGS).map(|i| format!("\"app.s{i}\"")).collect();
    assert_eq!(
        keys(&format!("extra_settings = [{}]", many.join(", "))),
        ["context.extra_settings"],
        "one statement bit per setting"
    );
}

#[test]
fn the_key_is_read_from_its_file_and_named_when_missing() {
    let dir = std::env::temp_dir().join(format!("pgtenant-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let key = dir.join("key");
    let text = format!(
        "[context]\nmode = \"verified\"\nkey_file = {:?}\n[databases.app]\nhost = \"h\"\nuser = \"u\"\n",
        key.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("context.key_file"), "{err}");
    std::fs::write(&key, "short").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("context.key_file") && !err.contains("short"),
        "{err}"
    );
    std::fs::write(&key, "k".repeat(40)).unwrap();
    let cfg = Config::load(&path).expect("valid with the key");
    assert!(cfg.context.key.is_some());
    assert!(!format!("{cfg:?}").contains(&"k".repeat(40)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_channel_key_is_read_from_its_file_and_named_when_bad() {
    let dir = std::env::temp_dir().join(format!("pgtenant-chkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let key = dir.join("channel-key");
    let text = format!(
        "[server]\nchannel_key_file = {:?}\n[databases.app]\nhost = \"h\"\nuser = \"u\"\n",
        key.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("server.channel_key_file"), "{err}");
    std::fs::write(&key, "short").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("server.channel_key_file") && !err.contains("short"),
        "{err}"
    );
    std::fs::write(&key, "c".repeat(40)).unwrap();
    let cfg = Config::load(&path).expect("valid with the key");
    assert!(cfg.server.channel_key.is_some());
    let both = "[server]\nchannel_key_file = \"/k\"\nchannel_key_env = \"K\"\n[databases.app]\nhost = \"h\"\nuser = \"u\"\n";
    let err = Config::parse(both).unwrap_err().to_string();
    assert!(err.contains("server.channel_key_env"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_listen_empty_turns_the_listener_off_and_absent_keeps_the_default() {
    let base = "[databases.app]\nhost = \"h\"\nuser = \"u\"\n";
    let off = Config::parse(&format!("[server]\nmetrics_listen = \"\"\n{base}")).unwrap();
    assert_eq!(off.server.metrics_listen, None);
    let default = Config::parse(base).unwrap();
    assert_eq!(
        default.server.metrics_listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9187)))
    );
    let set = Config::parse(&format!(
        "[server]\nmetrics_listen = \"0.0.0.0:9100\"\n{base}"
    ))
    .unwrap();
    assert_eq!(
        set.server.metrics_listen,
        Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
    );
    let bad = Config::parse(&format!("[server]\nmetrics_listen = \"nine\"\n{base}"));
    let message = format!("{:?}", bad.expect_err("an address that is none is refused"));
    assert!(message.contains("metrics_listen"), "{message}");
}
