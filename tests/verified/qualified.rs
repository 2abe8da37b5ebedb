//! The readers (`tenant_id()`, `setting(name)`) pin no search_path, for speed: they are
//! SECURITY DEFINER and run with the caller's search_path, so a name PostgreSQL resolves
//! through it (an unqualified function, operator or type, or a construct that looks `=` up by
//! name: IS DISTINCT FROM, NULLIF, IN, a simple CASE) would let a tenant that can create
//! objects somewhere run its own code as the owner or change the setting name the reader
//! trusts. These tests read the generated SQL with PostgreSQL's own parsers and refuse any
//! such name; the battery's "shadow the readers' operators" attempt shows the same against a
//! real server.

use pg_query::ParserOptions;
use pgtenant::verified::sql::Objects;
use serde_json::Value;

/// The installed SQL for two context settings, as `db install` generates it.
fn objects() -> Objects {
    Objects {
        schema: "pgtenant".into(),
        app_roles: vec!["app_user".into()],
        settings: vec!["app.current_tenant".into(), "app.tenant_plan".into()],
    }
}

/// The CREATE FUNCTION text of `name` (e.g. `pgtenant.tenant_id(`) in `sql`.
fn function_text<'a>(sql: &'a str, name: &str) -> &'a str {
    let start = sql
        .find(&format!("CREATE OR REPLACE FUNCTION {name}"))
        .unwrap_or_else(|| panic!("{name} is not in the install SQL"));
    let body_end = sql[start..].find("\n$f$;").expect("function end") + start;
    &sql[start..body_end + "\n$f$".len()]
}

/// Every name in a parse tree that PostgreSQL would resolve through the search_path.
fn unqualified(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                let names_len = |field: &str| c.get(field).and_then(Value::as_array).map(Vec::len);
                match k.as_str() {
                    "FuncCall" if names_len("funcname") != Some(2) => {
                        out.push(format!("function {}", c["funcname"]))
                    }
                    // kind 1 is AEXPR_OP; every other kind (DISTINCT, NULLIF, IN, LIKE,
                    // BETWEEN, ...) looks its operator up by name.
                    "AExpr" if c.get("kind").and_then(Value::as_i64) != Some(1) => {
                        out.push(format!("operator construct (kind {})", c["kind"]))
                    }
                    "AExpr" if names_len("name") != Some(2) => {
                        out.push(format!("operator {}", c["name"]))
                    }
                    "TypeCast"
                        if c["type_name"]
                            .get("names")
                            .and_then(Value::as_array)
                            .map(Vec::len)
                            != Some(2) =>
                    {
                        out.push(format!("type {}", c["type_name"]["names"]))
                    }
                    "CollateClause" if names_len("collname") != Some(2) => {
                        out.push(format!("collation {}", c["collname"]))
                    }
                    "CaseExpr" if !c["arg"].is_null() => out.push("simple CASE".into()),
                    "SubLink" | "RangeVar" | "RowExpr" | "MinMaxExpr" => {
                        out.push(format!("construct {k}"))
                    }
                    _ => {}
                }
                unqualified(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| unqualified(c, out)),
        _ => {}
    }
}

/// Every PL/pgSQL expression in a function tree: (query, parse mode).
fn expressions(v: &Value, out: &mut Vec<(String, i64)>) {
    match v {
        Value::Object(o) => {
            if let Some(e) = o.get("PLpgSQL_expr") {
                let q = e["query"].as_str().unwrap_or_default().to_string();
                out.push((q, e["parseMode"].as_i64().unwrap_or(0)));
                return;
            }
            o.values().for_each(|c| expressions(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| expressions(c, out)),
        _ => {}
    }
}

/// The declared variables' types that are not schema-qualified (libpg_query's PL/pgSQL tree
/// keeps only a type's last name, so they are read from the DECLARE section's text).
fn unqualified_declarations(function: &str) -> Vec<String> {
    let body = &function[function.find("$f$").expect("body") + 3..];
    let Some(declare) = body.find("DECLARE") else {
        return Vec::new();
    };
    let section = &body[declare + "DECLARE".len()..body.find("\nBEGIN").expect("BEGIN")];
    section
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let ty = d.split_whitespace().nth(1).unwrap_or_default();
            !ty.starts_with("pg_catalog.")
        })
        .map(String::from)
        .collect()
}

/// What in one CREATE FUNCTION text would resolve through the caller's search_path, and how
/// many expressions were read (so a parse that finds nothing cannot pass for a clean one).
fn findings(function: &str) -> (Vec<String>, usize) {
    let tree = pg_query::parse_plpgsql(function).expect("PL/pgSQL parses");
    let mut exprs = Vec::new();
    expressions(&tree, &mut exprs);
    let mut out = unqualified_declarations(function);
    for (q, mode) in &exprs {
        let options = match mode {
            2 => ParserOptions::PLPGSQL_EXPR,
            3 => ParserOptions::PLPGSQL_ASSIGN1,
            4 => ParserOptions::PLPGSQL_ASSIGN2,
            5 => ParserOptions::PLPGSQL_ASSIGN3,
            _ => ParserOptions::DEFAULT,
        };
        let parsed = pg_query::parse(q, options).unwrap_or_else(|e| panic!("{q}: {e}"));
        let json = serde_json::to_value(&parsed.protobuf).expect("tree as JSON");
        let mut found = Vec::new();
        unqualified(&json, &mut found);
        out.extend(found.into_iter().map(|f| format!("{f} in `{q}`")));
    }
    (out, exprs.len())
}

#[test]
fn readers_name_nothing_through_the_search_path() {
    let sql = objects().install_sql();
    for name in ["pgtenant.tenant_id(", "pgtenant.setting("] {
        let function = function_text(&sql, name);
        assert!(
            !function.contains("SET search_path"),
            "{name}: a reader pins a search_path again; then this test and the cost notes need revisiting"
        );
        let (found, read) = findings(function);
        assert!(read >= 8, "{name}: only {read} expressions read");
        assert!(
            found.is_empty(),
            "{name} resolves through the search_path: {found:#?}"
        );
    }
}

/// The check itself finds what it is meant to: the readers as they were written while a
/// pinned search_path made bare names safe.
#[test]
fn the_check_finds_bare_names() {
    let old = r#"CREATE OR REPLACE FUNCTION pgtenant.tenant_id() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $f$
DECLARE
    v text := pg_catalog.current_setting('pgtenant.s' || pg_catalog.pg_sequence_last_value('pgtenant.slot'::regclass) || '_1', true);
    v_seen text := current_setting('app.current_tenant', true);
    v_suffix pg_catalog.text := CASE v_seen WHEN 'a' THEN '_1' END;
BEGIN
    IF v IS DISTINCT FROM v_seen OR v IN ('x') OR v COLLATE "C" OPERATOR(pg_catalog.=) '' THEN
        RETURN NULLIF(v, '');
    END IF;
    RETURN v;
END
$f$"#;
    let (found, _) = findings(old);
    let all = found.join("\n");
    for expected in [
        "v text",
        "v_seen text",
        "operator [",
        "type [",
        "function [",
        "simple CASE",
        "kind 4",
        "kind 6",
        "kind 7",
        "collation [",
    ] {
        assert!(all.contains(expected), "missed {expected:?} in:\n{all}");
    }
}

/// `setting(name)` matches names byte for byte whatever collation the caller's argument
/// brings. A red-team pass called it with a case-insensitive ICU collation: the name then
/// matched a configured setting's while the visible value it was compared with was read
/// under the name as given.
#[tokio::test]
async fn setting_matches_names_byte_for_byte_whatever_the_callers_collation() {
    let env = super::common::TestEnv::start_with(|c| c.server.sql_guard = false).await;
    env.superuser()
        .await
        .batch_execute(
            "CREATE COLLATION public.rt_ci (provider = icu, locale = 'und-u-ks-level1', \
             deterministic = false)",
        )
        .await
        .unwrap();
    let c = env.proxy.connect("globex").await;
    let row = c
        .query_one(
            "SELECT pgtenant.setting('app.current_tenant'), \
             pgtenant.setting('APP.CURRENT_TENANT' COLLATE public.rt_ci)",
            &[],
        )
        .await
        .unwrap();
    let (exact, folded): (Option<String>, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(exact.as_deref(), Some(super::common::GLOBEX));
    assert_eq!(
        folded, None,
        "a name that differs in case is no configured setting"
    );
}
