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
        "tenants.acme.id",
        "tenants.acme.password",
        "tenants.acme.settings.app.other",
        "doctor.tenant_column",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
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
