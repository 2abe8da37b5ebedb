//! A text is judged in every reading PostgreSQL could be switched to, not only the guard's
//! own: a view over `pg_settings` (code already in the database, which the guard never
//! reads) changes `standard_conforming_strings` inside a pipeline, and PostgreSQL reports
//! it only at the Sync, after the statements behind it were judged. Found by a red-team
//! pass, which read another tenant's rows this way in plain mode.

use super::common::raw::{self, RawConn};
use super::common::*;
use bytes::BytesMut;

/// Read with standard strings, a constant given to query_to_xml; read with backslash
/// escapes, a query that sets the context to `tenant`.
fn hidden_switch(tenant: &str) -> String {
    let inner = format!(
        r"select 1 /* \052\057, (select s\145t_config(''app.curr\145nt_tenant'', ''{tenant}'', true)) as b \057\052 */ --"
    );
    format!(
        r"select query_to_xml('{inner}\', true, false, '''') as q, ', true, false, current_user::text) as z --' as r"
    )
}

/// The pipeline: the switch through the view, the hidden text, then the context.
fn pipeline(first: Option<&str>) -> BytesMut {
    let mut out = BytesMut::new();
    if let Some(sql) = first {
        raw::extended(&mut out, sql, &[]);
    }
    raw::extended(
        &mut out,
        "UPDATE public.settings_v SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        &[],
    );
    raw::extended(&mut out, &hidden_switch(tenant_id("globex")), &[]);
    raw::extended(
        &mut out,
        "SELECT current_setting('app.current_tenant', true)",
        &[],
    );
    raw::sync(&mut out);
    out
}

#[tokio::test]
async fn a_text_is_judged_in_every_reading_postgresql_could_be_switched_to() {
    let env = TestEnv::start_with(|c| c.context.mode = pgtenant::config::ContextMode::Plain).await;
    env.superuser()
        .await
        .batch_execute(
            "CREATE VIEW public.settings_v AS SELECT * FROM pg_catalog.pg_settings;
             GRANT SELECT, UPDATE ON public.settings_v TO app_user",
        )
        .await
        .unwrap();
    // Straight to PostgreSQL as the app role, with acme's context set as the proxy sets it:
    // the last statement runs with globex's.
    let mut direct = env.raw_acme_or_direct(false).await;
    let acme_ctx = format!(
        "SELECT set_config('app.current_tenant', '{}', true)",
        tenant_id("acme")
    );
    direct.send(&pipeline(Some(&acme_ctx))).await;
    let got = direct.until_ready().await;
    assert!(raw::errors(&got).is_empty(), "{got:?}");
    let rows = raw::data_rows(&got);
    assert_eq!(
        rows.last(),
        Some(&vec![Some(tenant_id("globex").to_string())]),
        "{rows:?}"
    );

    // Through pgtenant the hidden text is refused, and nothing runs with globex's context.
    let mut acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    acme.send(&pipeline(None)).await;
    let got = acme.until_ready().await;
    let errs = raw::errors(&got);
    assert_eq!(errs.len(), 1, "{got:?}");
    assert_eq!(errs[0].code, "42501", "{got:?}");
    assert!(
        errs[0]
            .message
            .contains("standard_conforming_strings = off"),
        "{got:?}"
    );
    let globex = tenant_id("globex").to_string();
    assert!(
        raw::data_rows(&got)
            .iter()
            .all(|r| !r.contains(&Some(globex.clone()))),
        "{got:?}"
    );
    let m = acme
        .simple("SELECT current_setting('app.current_tenant'), current_setting('standard_conforming_strings')")
        .await;
    assert_eq!(
        raw::data_rows(&m),
        vec![vec![
            Some(tenant_id("acme").to_string()),
            Some("on".to_string())
        ]]
    );

    // A tenant cannot make such a view itself.
    for sql in [
        "CREATE TEMP VIEW s AS SELECT * FROM pg_settings",
        "CREATE TEMP VIEW s AS SELECT name, setting FROM pg_catalog.\"pg_settings\"",
    ] {
        let m = acme.simple(sql).await;
        let errs = raw::errors(&m);
        assert_eq!(
            errs.first().map(|e| e.code.as_str()),
            Some("42501"),
            "{sql}: {m:?}"
        );
    }
}
