//! Reported session parameters (ParameterStatus) that the client changes and then sets back
//! to their start-up value, while it moves between backends: the client must be told the
//! value it set, and every later transaction on any backend must run with it.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::raw::{Msg, RawConn, data_rows, errors};
use common::*;

/// (setting, start-up value, a different value) for every reported setting a client may
/// change (standard_conforming_strings is pinned on by the guard). The start-up values equal the server defaults, so a backend cleaned with DISCARD
/// ALL already has them, except application_name, which other backends keep from earlier
/// transactions of the same client.
const CASES: [(&str, &str, &str); 6] = [
    ("client_encoding", "UTF8", "LATIN1"),
    ("DateStyle", "ISO, MDY", "German, DMY"),
    ("IntervalStyle", "postgres", "sql_standard"),
    ("TimeZone", "UTC", "America/New_York"),
    ("application_name", "start-app", "other-app"),
    ("default_transaction_read_only", "off", "on"),
];

/// Applies every ParameterStatus in `msgs` to the client's view.
fn learn(view: &mut HashMap<String, String>, msgs: &[Msg]) {
    for (tag, body) in msgs {
        if *tag == b'S' {
            let mut parts = body.split(|b| *b == 0);
            let k = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let v = String::from_utf8_lossy(parts.next().unwrap_or_default());
            view.insert(k.into_owned(), v.into_owned());
        }
    }
}

/// Runs `sql` as `c`; fails on an error, learns ParameterStatus; returns the rows.
async fn run(
    c: &mut RawConn,
    view: &mut HashMap<String, String>,
    sql: &str,
) -> Vec<Vec<Option<String>>> {
    let msgs = c.simple(sql).await;
    assert!(errors(&msgs).is_empty(), "{sql}: {:?}", errors(&msgs));
    learn(view, &msgs);
    data_rows(&msgs)
}

#[tokio::test]
async fn setting_a_reported_parameter_back_to_its_startup_value_sticks() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 2;
        }
    })
    .await;
    env.superuser()
        .await
        .batch_execute("ALTER DATABASE app SET timezone = 'UTC'")
        .await
        .unwrap();
    let startup: Vec<(&str, &str)> = [("user", "acme"), ("database", "app")]
        .into_iter()
        .chain(CASES.iter().map(|(k, v, _)| (*k, *v)))
        .collect();
    let mut c = RawConn::connect_with(env.proxy.addr, &startup, "acme-secret")
        .await
        .unwrap();
    // A second client takes a backend on every other step, so the first one moves.
    let mut other = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    let mut holding = false;
    let mut toggle = async |other: &mut RawConn| {
        let sql = if holding { "COMMIT" } else { "BEGIN; SELECT 1" };
        holding = !holding;
        other.simple(sql).await;
    };
    let mut view: HashMap<String, String> = CASES
        .iter()
        .map(|(k, v, _)| (k.to_string(), v.to_string()))
        .collect();
    let mut f = Failures::default();
    let mut pids = BTreeSet::new();
    for round in 0..3 {
        for (name, start, changed) in CASES {
            let show = format!("SELECT current_setting('{name}'), pg_backend_pid()::text");
            // Visit both backends with the start-up values first.
            for _ in 0..2 {
                toggle(&mut other).await;
                run(&mut c, &mut view, &show).await;
            }
            run(&mut c, &mut view, &format!("SET {name} = '{changed}'")).await;
            f.check(view[name] == changed, || {
                format!(
                    "round {round}: after SET {name} = {changed:?} the client was told {:?}",
                    view[name]
                )
            });
            toggle(&mut other).await;
            run(&mut c, &mut view, &format!("SET {name} = '{start}'")).await;
            f.check(view[name] == start, || {
                format!(
                    "round {round}: after SET {name} back to {start:?} the client was told {:?}",
                    view[name]
                )
            });
            for i in 0..4 {
                toggle(&mut other).await;
                let rows = run(&mut c, &mut view, &show).await;
                let seen = rows[0][0].clone().unwrap_or_default();
                pids.extend(rows[0][1].clone());
                f.check(seen == start && view[name] == start, || {
                    format!(
                        "round {round}, transaction {i} after setting {name} back to {start:?}: SHOW {seen:?}, ParameterStatus {:?}",
                        view[name]
                    )
                });
            }
        }
    }
    f.check(pids.len() >= 2, || {
        format!("the client never moved: {pids:?}")
    });
    f.finish();
}

/// A setting the client chose at start-up is applied on each backend it moves to; a client
/// transaction that fails there must not undo it (it used to run inside that transaction,
/// while the proxy recorded it as applied).
#[tokio::test]
async fn a_failed_transaction_does_not_undo_the_clients_settings() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let conn_str = format!(
        "{} options='-c statement_timeout=5s'",
        env.proxy.conn_str("acme")
    );
    let acme = connect(&conn_str).await.unwrap();
    let globex = env.proxy.connect("globex").await;
    let mut f = Failures::default();
    for round in 0..3 {
        // Another client's SET makes the one backend get DISCARD ALL, which drops acme's
        // setting there: acme's next transaction applies it again, then fails.
        globex.batch_execute("SET work_mem = '8MB'").await.unwrap();
        let failed = acme.batch_execute("SELECT 1/0").await;
        f.check(failed.is_err(), || format!("round {round}: 1/0 succeeded"));
        let seen = one(&acme, "SHOW statement_timeout").await;
        f.check(seen == "5s", || {
            format!("round {round}: after a failed transaction statement_timeout is {seen:?}")
        });
    }
    f.finish();
}

/// A session-level `SET` of an unreported setting lasts for the client's session, as on
/// PostgreSQL, on whichever backend serves it (pgjdbc's setTransactionIsolation sends
/// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`); RESET ends it; another client of the
/// same backends never sees it. Before, the cleanup after the transaction (DISCARD ALL)
/// dropped it silently: a client that asked for SERIALIZABLE ran its next transactions at
/// READ COMMITTED.
#[tokio::test]
async fn session_settings_follow_the_client_and_no_one_else() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 2;
        }
    })
    .await;
    let long = async {
        let a = env.proxy.connect("acme").await;
        let other = env.proxy.connect("globex").await;
        let show = "SELECT current_setting('statement_timeout'), current_setting('transaction_isolation'), \
                    current_setting('search_path'), current_setting('app.current_tenant')";
        a.batch_execute(
            "SET statement_timeout = '1234ms'; \
             SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE; \
             SET search_path = public, pg_catalog",
        )
        .await
        .unwrap();
        let mut f = Failures::default();
        for round in 0..6 {
            // The other tenant takes a backend in between, so acme moves between the two.
            let o = other.simple_query(show).await.unwrap();
            let o = first_row(&o);
            f.check(
                o[0] == "0" && o[1] == "read committed" && o[3] == GLOBEX,
                || format!("round {round}: globex saw acme's settings: {o:?}"),
            );
            let got = first_row(&a.simple_query(show).await.unwrap());
            f.check(
                got == ["1234ms", "serializable", "public, pg_catalog", ACME],
                || format!("round {round}: acme's settings: {got:?}"),
            );
        }
        a.batch_execute("RESET statement_timeout").await.unwrap();
        let got = first_row(&a.simple_query(show).await.unwrap());
        f.check(got[0] == "0" && got[1] == "serializable", || {
            format!("after RESET statement_timeout: {got:?}")
        });
        f.finish();
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), long)
        .await
        .expect("no hang");
}

/// The values of the first row of a simple query.
fn first_row(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// A role or database default that changes how PostgreSQL reads SQL text (any role may set
/// one on itself: `ALTER ROLE CURRENT_USER SET ...`) neither stops pgtenant's new backend
/// connections nor applies on them: pgtenant's startup packet outranks it.
#[tokio::test]
async fn role_defaults_that_change_how_sql_is_read_do_not_reach_pgtenants_backends() {
    let cluster = start_cluster().await;
    cluster
        .psql(
            "app",
            "ALTER ROLE app_user SET standard_conforming_strings = off;
             ALTER ROLE app_user IN DATABASE app SET client_encoding = 'SJIS';",
        )
        .await
        .unwrap();
    // The defaults are in force straight against PostgreSQL as the app role, for a client
    // that names no encoding.
    let direct = cluster.port();
    let mut d = RawConn::connect_with(
        std::net::SocketAddr::from(([127, 0, 0, 1], direct)),
        &[("user", "app_user"), ("database", "app")],
        "app_password",
    )
    .await
    .unwrap();
    let rows = data_rows(
        &d.simple("SELECT current_setting('standard_conforming_strings'), current_setting('client_encoding')")
            .await,
    );
    assert_eq!(
        rows[0],
        vec![Some("off".to_string()), Some("SJIS".to_string())],
        "the defaults did not apply straight against PostgreSQL"
    );

    let proxy = Proxy::start(test_config(&cluster)).await;
    let mut f = Failures::default();
    for round in 0..3 {
        let mut c = RawConn::connect_with(
            proxy.addr,
            &[("user", "acme"), ("database", "app")],
            "acme-secret",
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: connect through pgtenant: {e:?}"));
        let msgs = c
            .simple(
                "SELECT current_setting('standard_conforming_strings'), \
                 current_setting('client_encoding'), length('a\\'), \
                 (SELECT count(DISTINCT tenant_id) FROM invoices)",
            )
            .await;
        f.check(errors(&msgs).is_empty(), || {
            format!("round {round}: {:?}", errors(&msgs))
        });
        let rows = data_rows(&msgs);
        let want = ["on", "UTF8", "2", "1"]
            .map(|v| Some(v.to_string()))
            .to_vec();
        f.check(rows.first() == Some(&want), || {
            format!("round {round}: through pgtenant {rows:?}, want {want:?}")
        });
    }
    f.finish();
    proxy.shutdown().await;
}

/// A role default any tenant can put on the shared role (with the guard off PostgreSQL is
/// what must stop it, and `ALTER ROLE CURRENT_USER SET` of a user-settable setting is
/// allowed to every role) must not stop pgtenant's new backend connections.
/// `local_preload_libraries` is user-settable; PostgreSQL loads the libraries it names
/// while a backend starts, and one it cannot load is FATAL for every new connection of the
/// role, every tenant's. pgtenant's startup packet outranks the default. (Found by a
/// red-team pass.)
#[tokio::test]
async fn a_tenants_local_preload_libraries_default_does_not_stop_new_backends() {
    use std::time::Duration;
    let env = TestEnv::start_with(|c| c.server.sql_guard = false).await;
    let acme = env.proxy.connect("acme").await;
    acme.batch_execute(
        "ALTER ROLE CURRENT_USER SET local_preload_libraries = 'pgtenant_no_such_library'",
    )
    .await
    .expect("PostgreSQL lets any role set this default on itself");
    drop(acme);
    // The premise, straight against PostgreSQL: the default fails the role's new connections.
    let direct = format!(
        "host=127.0.0.1 port={} user=app_user password=app_password dbname=app",
        env.cluster.port()
    );
    let Err(err) = connect(&direct).await else {
        panic!("a new connection of the role succeeded under the default");
    };
    assert!(
        err.to_string().contains("pgtenant_no_such_library")
            || err
                .as_db_error()
                .is_some_and(|d| d.message().contains("pgtenant_no_such_library")),
        "{err}"
    );
    // New backend connections: a second pgtenant (a fresh pool) in front of the same database.
    let mut cfg = env.config();
    cfg.server.sql_guard = false;
    for db in cfg.databases.values_mut() {
        db.checkout_timeout = Duration::from_secs(5);
    }
    let fresh = Proxy::start(cfg).await;
    let mut f = Failures::default();
    for (tenant, _, id) in TENANTS {
        let got = async {
            let c = connect(&fresh.conn_str(tenant)).await?;
            c.simple_query(
                "SELECT pgtenant.tenant_id(), count(DISTINCT tenant_id)::text FROM invoices",
            )
            .await
        }
        .await;
        match got {
            Ok(rows) => {
                let row = first_row(&rows);
                f.check(row == [id, "1"], || format!("{tenant}: {row:?}"));
            }
            Err(e) => f.check(false, || {
                format!(
                    "{tenant}: no new backend connection: {:?}",
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or(e.to_string())
                )
            }),
        }
    }
    fresh.shutdown().await;
    env.superuser()
        .await
        .batch_execute("ALTER ROLE app_user RESET local_preload_libraries")
        .await
        .unwrap();
    f.finish();
}

/// A client logs in while every backend is busy, as it can with PgBouncer, when a backend
/// already validated exactly its start-up settings: it gets that answer (the same
/// ParameterStatus report) at once and waits for a backend only at its first statement. A
/// client with settings no backend has seen yet still waits for one at login (PostgreSQL
/// must judge them), and a bad one is still refused.
#[tokio::test]
async fn a_login_while_every_backend_is_busy_is_answered_from_an_earlier_login() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
            db.checkout_timeout = std::time::Duration::from_secs(30);
        }
    })
    .await;
    let holder = env.proxy.connect("acme").await;
    let first_tz: String = holder.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The only backend is held: a login with the same settings is answered at once.
    let started = std::time::Instant::now();
    let same = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        connect(&env.proxy.conn_str("acme")),
    )
    .await
    .expect("a login with known settings does not wait for a backend")
    .expect("login");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Its first statement waits for the backend.
    let query = tokio::spawn(async move {
        let tz: String = same.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
        let tenant: String = same
            .query_one("SELECT current_setting('app.current_tenant')", &[])
            .await
            .unwrap()
            .get(0);
        (tz, tenant)
    });
    // A login with settings no backend has judged waits for the backend.
    let fresh = tokio::spawn({
        let s = format!("{} application_name=fresh_name", env.proxy.conn_str("acme"));
        async move { connect(&s).await.map(|_| std::time::Instant::now()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        !query.is_finished(),
        "the first statement waits for the held backend"
    );
    assert!(
        !fresh.is_finished(),
        "unknown settings wait for a backend to judge them"
    );
    let released = std::time::Instant::now();
    holder.batch_execute("COMMIT").await.unwrap();
    let (tz, tenant) = query.await.unwrap();
    assert_eq!(tz, first_tz);
    assert_eq!(tenant, common::ACME);
    let fresh_at = fresh
        .await
        .unwrap()
        .expect("the fresh login is served once free");
    assert!(fresh_at >= released);
    // A bad setting is judged by PostgreSQL, even while a backend is busy.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let bad = format!(
        "{} options='-c statement_timeout=soon'",
        env.proxy.conn_str("acme")
    );
    let refused = tokio::spawn(async move {
        connect(&bad).await.err().map(|e| match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let refused = refused.await.unwrap().expect("a bad setting is refused");
    assert!(refused.contains("statement_timeout"), "{refused}");
}

/// PostgreSQL merges a partial DateStyle with the one in force (`SET DateStyle = 'ISO'`
/// after `German, DMY` gives `ISO, DMY`); a connection of its own starts from the default.
/// A client logging in with `DateStyle=ISO` on a backend another client left at DMY gets
/// `ISO, MDY`, as on PostgreSQL (and the start-up memo keeps that answer for later logins).
#[tokio::test]
async fn a_partial_start_up_datestyle_starts_from_the_default_not_the_last_client() {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let direct = env.app_user_direct().await;
    direct
        .batch_execute("SET DateStyle = 'German, DMY'; SET DateStyle = 'ISO'")
        .await
        .unwrap();
    assert_eq!(one(&direct, "SHOW DateStyle").await, "ISO, DMY");

    let first = env.proxy.connect("acme").await;
    first
        .batch_execute("SET DateStyle = 'German, DMY'")
        .await
        .unwrap();
    // A transaction with the setting applied and nothing to clean after it: the backend
    // goes back to the pool at DMY.
    first.batch_execute("SELECT 1").await.unwrap();
    let iso = format!("{} options='-c DateStyle=ISO'", env.proxy.conn_str("acme"));
    let mut f = Failures::default();
    for login in [
        "on the backend the first client left",
        "a second such login",
    ] {
        let c = connect(&iso).await.unwrap();
        let style = one(&c, "SHOW DateStyle").await;
        let date = one(&c, "SELECT '03/04/2026'::date::text").await;
        f.check(style == "ISO, MDY" && date == "2026-03-04", || {
            format!("{login}: DateStyle {style}, '03/04/2026' read as {date}")
        });
    }
    f.finish();
}

/// What PostgreSQL says about a client's start-up settings reaches the client, as on a
/// direct connection: a 65-character application_name is truncated with a NOTICE (found
/// by tokio-postgres's own `notices` test). Also when the answer comes from the start-up
/// memo of an earlier client with the same settings.
#[tokio::test]
async fn start_up_notices_reach_the_client() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let long = "x".repeat(65);
    let direct_addr = format!("127.0.0.1:{}", env.cluster.port()).parse().unwrap();
    let direct = RawConn::connect_with(
        direct_addr,
        &[
            ("user", "app_user"),
            ("database", "app"),
            ("application_name", &long),
        ],
        "app_password",
    )
    .await
    .unwrap();
    let want: Vec<(String, String)> = direct
        .startup_notices
        .iter()
        .map(|n| (n.code.clone(), n.message.clone()))
        .collect();
    assert_eq!(want.len(), 1, "{want:?}");
    assert!(want[0].1.contains("will be truncated"), "{want:?}");
    let holder = env.proxy.connect("globex").await;
    for round in 0..2 {
        if round == 1 {
            // The one backend is busy: the answer comes from the first login's memo.
            holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        let through = RawConn::connect_with(
            env.proxy.addr,
            &[
                ("user", "acme"),
                ("database", "app"),
                ("application_name", &long),
            ],
            "acme-secret",
        )
        .await
        .unwrap();
        let got: Vec<(String, String)> = through
            .startup_notices
            .iter()
            .map(|n| (n.code.clone(), n.message.clone()))
            .collect();
        assert_eq!(got, want, "round {round}");
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
}
