//! The release rule: what a transaction may have left on its backend, and the cleanup that
//! needs. Session state made where no client statement names it (a serial column's
//! INSERT, `nextval()` in a SELECT, a temp table made inside a function, a function in
//! `pg_temp`, a setting or a DEALLOCATE ALL inside a function already in the database)
//! never reaches the next tenant of the backend, with the guard on and off. Each kind is
//! first shown to last straight against PostgreSQL as the app role.

use super::*;

/// Functions and a table made by a superuser, as code already in the database: the guard
/// never reads their bodies.
const SETUP: &str = "
CREATE TABLE public.hyg_log (id serial PRIMARY KEY, note text);
GRANT SELECT, INSERT ON public.hyg_log TO app_user;
GRANT USAGE, SELECT ON SEQUENCE public.hyg_log_id_seq TO app_user;
CREATE FUNCTION public.hyg_make_temp() RETURNS text LANGUAGE plpgsql AS $$
BEGIN CREATE TEMP TABLE IF NOT EXISTS hyg_left AS SELECT 'acme secret'::text AS note; RETURN 'made'; END $$;
CREATE FUNCTION public.hyg_set() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM set_config('hyg.left', 'acme', false); RETURN 'set'; END $$;
CREATE FUNCTION public.hyg_set_to(v text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM set_config('hyg.left', v, false); RETURN 'set'; END $$;
CREATE FUNCTION public.hyg_forget_all() RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'DEALLOCATE ALL'; RETURN 'forgot'; END $$;
CREATE FUNCTION public.hyg_forget_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'DEALLOCATE ALL'; RETURN NEW; END $$;
CREATE TRIGGER hyg_forget BEFORE INSERT ON public.hyg_log FOR EACH ROW
    WHEN (NEW.note = 'forget') EXECUTE FUNCTION public.hyg_forget_trigger();
";

/// The first column of the only row of `sql`, or the SQLSTATE of its error.
async fn first(c: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).map(String::from)),
                _ => None,
            })
            .flatten()),
        Err(e) => Err(sqlstate(&e).unwrap_or_default()),
    }
}

#[tokio::test]
async fn each_kind_of_left_state_lasts_on_a_plain_postgres_session() {
    let env = TestEnv::start().await;
    env.superuser().await.batch_execute(SETUP).await.unwrap();
    let app = env.app_user_direct().await;
    let ok = |r: Result<Option<String>, String>| r.expect("runs");
    ok(first(
        &app,
        "INSERT INTO hyg_log (note) VALUES ('acme') RETURNING id",
    )
    .await);
    assert!(ok(first(&app, "SELECT lastval()").await).is_some());
    ok(first(&app, "SELECT nextval('hyg_log_id_seq')").await);
    assert!(ok(first(&app, "SELECT currval('hyg_log_id_seq')").await).is_some());
    ok(first(&app, "SELECT hyg_make_temp()").await);
    let note = first(&app, "SELECT note FROM pg_temp.hyg_left").await;
    assert_eq!(ok(note).as_deref(), Some("acme secret"));
    ok(first(&app, "SELECT hyg_set()").await);
    let left = first(&app, "SELECT current_setting('hyg.left', true)").await;
    assert_eq!(ok(left).as_deref(), Some("acme"));
    app.batch_execute(
        "CREATE FUNCTION pg_temp.hyg_f() RETURNS text LANGUAGE sql AS $$ SELECT 'acme' $$",
    )
    .await
    .unwrap();
    assert_eq!(
        ok(first(&app, "SELECT pg_temp.hyg_f()").await).as_deref(),
        Some("acme")
    );
    app.batch_execute(
        "CREATE FUNCTION pg_temp.hyg_g() RETURNS text LANGUAGE plpgsql AS $$ \
         BEGIN SET hyg.temp_left = 'acme'; RETURN 'set'; END $$",
    )
    .await
    .unwrap();
    ok(first(&app, "SELECT pg_temp.hyg_g()").await);
    let left = first(&app, "SELECT current_setting('hyg.temp_left', true)").await;
    assert_eq!(ok(left).as_deref(), Some("acme"));
    // A prepared statement vanishes under a function that runs DEALLOCATE ALL.
    let stmt = app.prepare("SELECT 1").await.unwrap();
    ok(first(&app, "SELECT hyg_forget_all()").await);
    let e = app.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}");
    let stmt = app.prepare("SELECT 1").await.unwrap();
    ok(first(&app, "INSERT INTO hyg_log (note) VALUES ('forget')").await);
    let e = app.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}");
}

/// globex's view of the backend acme just used: `sql` must fail with `code`, or return
/// nothing but NULL or an empty string.
async fn globex_sees_nothing(globex: &mut RawConn, sql: &str, code: Option<&str>, what: &str) {
    let msgs = globex.simple(sql).await;
    let errors = raw::errors(&msgs);
    match code {
        Some(code) => {
            assert_eq!(errors.len(), 1, "{what}: {sql}: {msgs:?}");
            assert_eq!(errors[0].code, code, "{what}: {sql}: {:?}", errors[0]);
        }
        None => {
            assert!(errors.is_empty(), "{what}: {sql}: {msgs:?}");
            let rows = raw::data_rows(&msgs);
            assert!(
                rows.iter()
                    .flatten()
                    .all(|v| v.as_deref().unwrap_or("").is_empty()),
                "{what}: globex saw acme's state: {rows:?}"
            );
        }
    }
    // And its own context is in force.
    let msgs = globex.simple(CTX).await;
    assert_eq!(
        raw::data_rows(&msgs),
        vec![vec![Some(GLOBEX.to_string())]],
        "{what}: {msgs:?}"
    );
}

/// A proxy with one backend (cleaned, not pinned: see `cleaned_pool_of`), the guard on
/// or off, and this file's objects created.
async fn one_backend_with_setup(guard: bool) -> TestEnv {
    one_backend_in_mode(guard, pgtenant::config::ContextMode::Verified).await
}

/// [`one_backend_with_setup`] in context mode `mode` (plain mode keeps a backend's
/// session from one tenant to the next, so only the release rule cleans it).
async fn one_backend_in_mode(guard: bool, mode: pgtenant::config::ContextMode) -> TestEnv {
    let env = TestEnv::start_with(|c| {
        c.server.sql_guard = guard;
        c.context.mode = mode;
        cleaned_pool_of(c, 1);
    })
    .await;
    env.superuser().await.batch_execute(SETUP).await.unwrap();
    env
}

/// Raw connections of acme and globex.
async fn acme_and_globex(env: &TestEnv) -> (RawConn, RawConn) {
    let acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    (acme, globex)
}

#[tokio::test]
async fn left_state_never_reaches_the_next_tenant_guard_on_and_off() {
    use pgtenant::config::ContextMode::{Plain, Verified};
    for (guard, mode) in [(true, Verified), (false, Verified), (true, Plain)] {
        let env = one_backend_in_mode(guard, mode).await;
        let long = async {
            let (mut acme, mut globex) = acme_and_globex(&env).await;
            let mut cases: Vec<(&str, &str, Option<&str>)> = vec![
                (
                    "INSERT INTO hyg_log (note) VALUES ('acme')",
                    "SELECT lastval()",
                    Some("55000"),
                ),
                (
                    "INSERT INTO hyg_log (note) VALUES ('acme')",
                    "SELECT currval('hyg_log_id_seq')",
                    Some("55000"),
                ),
                (
                    "SELECT nextval('hyg_log_id_seq')",
                    "SELECT currval('hyg_log_id_seq')",
                    Some("55000"),
                ),
                (
                    "SELECT hyg_make_temp()",
                    "SELECT note FROM pg_temp.hyg_left",
                    Some("42P01"),
                ),
                (
                    "SELECT hyg_set()",
                    "SELECT current_setting('hyg.left', true)",
                    None,
                ),
                (
                    // A call in a join condition (once read as `CREATE INDEX ... ON t (c)`).
                    "SELECT count(*) FROM (VALUES (1)) x JOIN (VALUES (1)) y ON hyg_set() IS NOT NULL",
                    "SELECT current_setting('hyg.left', true)",
                    None,
                ),
                (
                    // Attribute notation: `(x).f` calls `f(x)`.
                    "SELECT ('acme'::text).hyg_set_to",
                    "SELECT current_setting('hyg.left', true)",
                    None,
                ),
                (
                    "SELECT ('{acme}'::text[])[1].hyg_set_to",
                    "SELECT current_setting('hyg.left', true)",
                    None,
                ),
                (
                    // A function in FROM: its alias stands for its value.
                    "SELECT u.hyg_set_to FROM upper('acme') u",
                    "SELECT current_setting('hyg.left', true)",
                    None,
                ),
                (
                    "SELECT ('hyg_log_id_seq'::regclass).nextval",
                    "SELECT currval('hyg_log_id_seq')",
                    Some("55000"),
                ),
                (
                    "SELECT count(*) FROM (VALUES (1)) x JOIN (VALUES (1)) y \
                     ON nextval('hyg_log_id_seq') > 0",
                    "SELECT currval('hyg_log_id_seq')",
                    Some("55000"),
                ),
                (
                    "CREATE FUNCTION pg_temp.hyg_f() RETURNS text LANGUAGE sql AS $$ SELECT 'acme' $$; \
                     SELECT pg_temp.hyg_f()",
                    "SELECT pg_temp.hyg_f()",
                    Some("42883"),
                ),
                (
                    "CREATE FUNCTION \"pg_temp\".hyg_f() RETURNS text LANGUAGE sql AS $$ SELECT 'acme' $$; \
                     SELECT \"pg_temp\".hyg_f()",
                    "SELECT current_setting('hyg.nothing', true)",
                    None,
                ),
            ];
            if !guard {
                // A session SET inside a pg_temp function (the guard refuses it in a body).
                cases.push((
                    "CREATE FUNCTION pg_temp.hyg_g() RETURNS text LANGUAGE plpgsql AS $$ \
                     BEGIN SET hyg.temp_left = 'acme'; RETURN 'set'; END $$; \
                     SELECT pg_temp.hyg_g()",
                    "SELECT current_setting('hyg.temp_left', true)",
                    None,
                ));
            }
            for (made, seen, code) in cases {
                let what = format!("guard {guard}, {mode:?}: acme ran {made}");
                let msgs = acme.simple(made).await;
                assert!(raw::errors(&msgs).is_empty(), "{what}: {msgs:?}");
                if made.contains("hyg_f") {
                    assert_eq!(raw::data_rows(&msgs), vec![vec![Some("acme".into())]]);
                }
                globex_sees_nothing(&mut globex, seen, code, &what).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), long)
            .await
            .expect("no hang");
        env.proxy.shutdown().await;
    }
}

/// Sends `out` for globex until it gets rows: a backend whose statements were dropped where
/// the proxy could not see it may fail the first try with 40001 (retry), never otherwise.
async fn globex_runs(globex: &mut RawConn, out: &BytesMut, what: &str) {
    for attempt in 0..2 {
        globex.send(out).await;
        let msgs = globex.until_ready().await;
        let errors = raw::errors(&msgs);
        if attempt == 0 && errors.len() == 1 && errors[0].code == "40001" {
            continue;
        }
        assert_eq!(
            raw::data_rows(&msgs),
            vec![vec![Some(GLOBEX.to_string())]],
            "{what}: {msgs:?}"
        );
        return;
    }
    panic!("{what}: failed twice");
}

#[tokio::test]
async fn deallocate_all_in_database_code_does_not_break_the_next_tenant() {
    for guard in [true, false] {
        let env = one_backend_with_setup(guard).await;
        let long = async {
            let (mut acme, mut globex) = acme_and_globex(&env).await;
            // A named statement of globex's, prepared on the only backend.
            let mut out = BytesMut::new();
            messages::parse(&mut out, "g1", CTX);
            messages::bind(&mut out, "g1", std::iter::empty());
            messages::execute(&mut out);
            raw::sync(&mut out);
            globex.send(&out).await;
            assert_eq!(raw::tags(&globex.until_ready().await), "12DCZ");
            let mut simple = BytesMut::new();
            messages::query(&mut simple, CTX);
            let mut unnamed = BytesMut::new();
            raw::extended(&mut unnamed, CTX, &[]);
            raw::sync(&mut unnamed);
            let mut named = BytesMut::new();
            messages::bind(&mut named, "g1", std::iter::empty());
            messages::execute(&mut named);
            raw::sync(&mut named);
            for made in [
                // A call of a function the guard never read (DISCARD ALL at release), and a
                // trigger no statement names: both drop every prepared statement of the
                // session, the proxy's too.
                "SELECT hyg_forget_all()",
                "INSERT INTO hyg_log (note) VALUES ('forget')",
                "BEGIN; INSERT INTO hyg_log (note) VALUES ('forget'); COMMIT",
            ] {
                let what = format!("guard {guard}: acme ran {made}");
                // globex, next on that backend: simple, extended unnamed, and its named
                // statement, all in its own context.
                for out in [&simple, &unnamed, &named] {
                    let msgs = acme.simple(made).await;
                    assert!(raw::errors(&msgs).len() <= 1, "{what}: {msgs:?}");
                    if let Some(e) = raw::errors(&msgs).first() {
                        // acme's own next transaction may meet the dropped statements first.
                        assert_eq!(e.code, "40001", "{what}: {msgs:?}");
                        let msgs = acme.simple(made).await;
                        assert!(raw::errors(&msgs).is_empty(), "{what}: {msgs:?}");
                    }
                    globex_runs(&mut globex, out, &what).await;
                    if made.starts_with("SELECT") {
                        // DISCARD ALL at release: no retry needed.
                        let msgs = acme.simple(made).await;
                        assert!(raw::errors(&msgs).is_empty(), "{what}: {msgs:?}");
                        globex.send(out).await;
                        let msgs = globex.until_ready().await;
                        assert_eq!(
                            raw::data_rows(&msgs),
                            vec![vec![Some(GLOBEX.to_string())]],
                            "{what}: {msgs:?}"
                        );
                    }
                }
            }
            // acme's own session goes on too.
            let msgs = acme.simple(CTX).await;
            let msgs = match raw::errors(&msgs).first() {
                Some(e) if e.code == "40001" => acme.simple(CTX).await,
                _ => msgs,
            };
            assert_eq!(raw::data_rows(&msgs), vec![vec![Some(ACME.to_string())]]);
        };
        tokio::time::timeout(Duration::from_secs(60), long)
            .await
            .expect("no hang");
        env.proxy.shutdown().await;
    }
}
