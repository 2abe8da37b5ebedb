//! A statement prepared again after DDL must be parsed again, as PostgreSQL does for a new
//! Parse: the proxy shares backend statements by content and caches them per backend, and
//! used to reuse one parsed before the DDL ("cached plan must not change result type", or
//! the old parameter types). Nor may a copy parsed under another client's DateStyle or
//! TimeZone serve: PostgreSQL fixes a literal's value when it parses the text.

mod common;

use common::raw::{RawConn, data_rows, errors, sync};
use common::*;
use tokio_postgres::types::Type;

/// A proxy with a pool of `n` and table `name` (one int column `a` holding 1) that app_user
/// may read; DDL runs as the superuser, as a migration would.
async fn env_with_table(n: usize, name: &str) -> (TestEnv, tokio_postgres::Client) {
    let env = TestEnv::start_with(|cfg| {
        for db in cfg.databases.values_mut() {
            db.pool_size = n;
        }
    })
    .await;
    let su = env.superuser().await;
    su.batch_execute(&format!(
        "CREATE TABLE {name} (a int); INSERT INTO {name} VALUES (1);
         GRANT SELECT ON {name} TO app_user;"
    ))
    .await
    .unwrap();
    (env, su)
}

/// A second client takes a backend on every other call, so the first one moves between
/// the backends of a pool of two.
struct Mover {
    other: tokio_postgres::Client,
    holding: bool,
}

impl Mover {
    async fn step(&mut self) {
        let sql = if self.holding {
            "COMMIT"
        } else {
            "BEGIN; SELECT 1"
        };
        self.holding = !self.holding;
        self.other.batch_execute(sql).await.unwrap();
    }
}

#[tokio::test]
async fn result_type_change_then_prepare_again() {
    let (env, su) = env_with_table(2, "rp_result").await;
    let mut c = env.proxy.connect("acme").await;
    let mut mover = Mover {
        other: env.proxy.connect("globex").await,
        holding: false,
    };
    let sql = "SELECT a FROM rp_result";
    let mut f = Failures::default();
    // Cached on both backends, prepared outside and inside a transaction.
    let old = c.prepare(sql).await.unwrap();
    for _ in 0..4 {
        mover.step().await;
        c.query(&old, &[]).await.unwrap();
    }
    su.batch_execute("ALTER TABLE rp_result ALTER a TYPE text USING a::text || 'x'")
        .await
        .unwrap();
    // The old statement fails as it does on PostgreSQL itself ...
    let r = c.query(&old, &[]).await;
    f.check(
        r.as_ref().err().and_then(sqlstate).as_deref() == Some("0A000"),
        || format!("old statement after ALTER: {r:?}"),
    );
    // ... and preparing again gives a fresh one, on every backend.
    for round in 0..4 {
        mover.step().await;
        let s = if round % 2 == 0 {
            c.prepare(sql).await
        } else {
            let tx = c.transaction().await.unwrap();
            let s = tx.prepare(sql).await;
            tx.commit().await.unwrap();
            s
        };
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                f.check(false, || {
                    format!(
                        "round {round}: prepare: {:?}",
                        e.as_db_error().map(|d| (d.code().code(), d.message()))
                    )
                });
                continue;
            }
        };
        f.check(s.columns()[0].type_() == &Type::TEXT, || {
            format!("round {round}: column type {:?}", s.columns()[0].type_())
        });
        for _ in 0..2 {
            mover.step().await;
            let r = c.query_one(&s, &[]).await.map(|r| r.get::<_, String>(0));
            f.check(r.as_ref().is_ok_and(|v| v == "1x"), || {
                format!("round {round}: execute: {r:?}")
            });
        }
    }
    f.finish();
}

#[tokio::test]
async fn parameter_type_change_and_recreated_table() {
    let (env, su) = env_with_table(2, "rp_param").await;
    let c = env.proxy.connect("acme").await;
    let mut mover = Mover {
        other: env.proxy.connect("globex").await,
        holding: false,
    };
    let sql = "SELECT count(*) FROM rp_param WHERE a = $1";
    let mut f = Failures::default();
    for _ in 0..4 {
        mover.step().await;
        let s = c.prepare(sql).await.unwrap();
        assert_eq!(s.params(), &[Type::INT4]);
        c.query_one(&s, &[&1i32]).await.unwrap();
    }
    // Drop and re-create with a text column.
    su.batch_execute(
        "DROP TABLE rp_param; CREATE TABLE rp_param (a text); INSERT INTO rp_param VALUES ('one');
         GRANT SELECT ON rp_param TO app_user;",
    )
    .await
    .unwrap();
    for round in 0..4 {
        mover.step().await;
        let s = match c.prepare(sql).await {
            Ok(s) => s,
            Err(e) => {
                f.check(false, || {
                    format!(
                        "round {round}: prepare: {:?}",
                        e.as_db_error().map(|d| (d.code().code(), d.message()))
                    )
                });
                continue;
            }
        };
        f.check(s.params() == [Type::TEXT], || {
            format!("round {round}: parameter types {:?}", s.params())
        });
        if s.params() == [Type::TEXT] {
            let r = c.query_one(&s, &[&"one"]).await.map(|r| r.get::<_, i64>(0));
            f.check(r.as_ref().is_ok_and(|n| *n == 1), || {
                format!("round {round}: execute: {r:?}")
            });
        }
    }
    f.finish();
}

/// Parse of `sql` as statement `name`, then Sync: the replies.
async fn parse_sync(c: &mut RawConn, name: &str, sql: &str) -> Vec<common::raw::Msg> {
    let mut out = bytes::BytesMut::new();
    pgtenant::protocol::messages::parse(&mut out, name, sql);
    sync(&mut out);
    c.send(&out).await;
    c.until_ready().await
}

/// Bind of statement `name` with `params`, Execute, Sync: the replies.
async fn bind_run(c: &mut RawConn, name: &str, params: &[&[u8]]) -> Vec<common::raw::Msg> {
    let mut out = bytes::BytesMut::new();
    pgtenant::protocol::messages::bind(&mut out, name, params.iter().copied());
    pgtenant::protocol::messages::execute(&mut out);
    sync(&mut out);
    c.send(&out).await;
    c.until_ready().await
}

/// The exact messages of a driver that prepares between transactions (the proxy answers the
/// Parse itself and parses at first use) and prepares the same name again after DDL.
#[tokio::test]
async fn raw_parse_between_transactions_after_ddl() {
    let (env, su) = env_with_table(1, "rp_raw").await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let run = async |c: &mut RawConn, name: &str, value: &str| {
        let mut msgs = parse_sync(c, name, "SELECT a = $1 FROM rp_raw").await;
        msgs.extend(bind_run(c, name, &[value.as_bytes()]).await);
        msgs
    };
    let msgs = run(&mut c, "s1", "1").await;
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    su.batch_execute("ALTER TABLE rp_raw ALTER a TYPE text USING 'v' || a")
        .await
        .unwrap();
    let msgs = run(&mut c, "s2", "v1").await;
    let errs = errors(&msgs);
    assert!(errs.is_empty(), "prepared again after ALTER: {errs:?}");
    assert_eq!(data_rows(&msgs), vec![vec![Some("t".to_string())]]);
}

/// The value (one text column) statement `s` gives `c`.
async fn value(c: &tokio_postgres::Client, s: &tokio_postgres::Statement) -> String {
    c.query_one(s, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_copy_parsed_under_another_clients_datestyle_or_timezone_never_serves() {
    // One backend, so every client's statement meets the copy another client left there.
    let (env, _su) = env_with_table(1, "rp_unused").await;
    let dmy = env.proxy.connect("acme").await;
    let mdy = env.proxy.connect("globex").await;
    dmy.batch_execute("SET DateStyle = 'ISO, DMY'; SET TimeZone = 'Pacific/Kiritimati'")
        .await
        .unwrap();
    let date = "SELECT '03/04/2026'::date::text";
    let instant = "SELECT ('2026-03-04 12:00'::timestamptz AT TIME ZONE 'UTC')::text";
    let mut f = Failures::default();
    // Each client prepares once and keeps its statements; the other client's Parse of the
    // same text in between leaves a newer copy on the backend, parsed under its values.
    let mut kept = Vec::new();
    for (c, who, want_date, want_instant) in [
        (&mdy, "MDY/UTC", "2026-03-04", "2026-03-04 12:00:00"),
        (&dmy, "DMY/Kiritimati", "2026-04-03", "2026-03-03 22:00:00"),
    ] {
        let d = c.prepare(date).await.unwrap();
        let i = c.prepare(instant).await.unwrap();
        kept.push((c, who, d, want_date, i, want_instant));
    }
    for round in 0..3 {
        for (c, who, d, want_date, i, want_instant) in &kept {
            let got = value(c, d).await;
            f.check(got == *want_date, || {
                format!("round {round}, {who}: {date} gave {got}, not {want_date}")
            });
            let got = value(c, i).await;
            f.check(got == *want_instant, || {
                format!("round {round}, {who}: {instant} gave {got}, not {want_instant}")
            });
        }
    }
    // A third client, with the second one's values, changes its DateStyle in the same
    // pipeline as a Parse of the text: the backend parses it under the new value before
    // the proxy hears of the change, so the copy is recorded under the old values, which
    // are the second client's. It must not serve the second client's statement.
    let mut flip = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    for (name, sql) in [("", "SET DateStyle = 'ISO, DMY'"), ("flip", date)] {
        pgtenant::protocol::messages::parse(&mut out, name, sql);
        pgtenant::protocol::messages::bind(&mut out, name, std::iter::empty::<&[u8]>());
        pgtenant::protocol::messages::execute(&mut out);
    }
    sync(&mut out);
    flip.send(&out).await;
    let msgs = flip.until_ready().await;
    f.check(
        data_rows(&msgs) == vec![vec![Some("2026-04-03".to_string())]],
        || {
            format!(
                "the flipping client: {:?} {:?}",
                data_rows(&msgs),
                errors(&msgs)
            )
        },
    );
    let (_, who, d, want, _, _) = &kept[0];
    let got = value(&mdy, d).await;
    f.check(got == *want, || {
        format!("{who} after the other's flip: {got}")
    });
    f.finish();
}

#[tokio::test]
async fn sql_deallocate_of_a_protocol_statement_drops_it_as_on_postgres() {
    // A client may drop a protocol-level statement with SQL DEALLOCATE, as a simple Query
    // or, as psycopg with libpq before 17 does, with the extended protocol; the backend
    // knows the statement only under the proxy's name.
    let (env, _su) = env_with_table(1, "rp_dealloc").await;
    let mut c = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    let prepare =
        async |c: &mut RawConn, name: &str| parse_sync(c, name, "SELECT a FROM rp_dealloc").await;
    let run = async |c: &mut RawConn, name: &str| bind_run(c, name, &[]).await;
    for (round, (name, sql)) in [
        ("_pg3_0", "DEALLOCATE _pg3_0"),
        ("S1", "deallocate prepare \"S1\";"),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(errors(&prepare(&mut c, name).await).is_empty());
        assert_eq!(data_rows(&run(&mut c, name).await).len(), 1);
        // Between transactions and inside one alike.
        let in_tx = round == 1;
        if in_tx {
            assert!(errors(&c.simple("BEGIN").await).is_empty());
        }
        let m = c.simple(sql).await;
        assert!(errors(&m).is_empty(), "{sql}: {:?}", errors(&m));
        assert_eq!(common::raw::tags(&m), "CZ", "{m:?}");
        let status = m.last().map(|(_, b)| b[0]);
        assert_eq!(status, Some(if in_tx { b'T' } else { b'I' }), "{sql}");
        if in_tx {
            assert!(errors(&c.simple("COMMIT").await).is_empty());
        }
        // Gone, as on PostgreSQL: binding it fails; the name can be prepared again.
        let errs = errors(&run(&mut c, name).await);
        assert_eq!(
            errs.first().map(|e| e.code.as_str()),
            Some("26000"),
            "{errs:?}"
        );
        assert!(errors(&prepare(&mut c, name).await).is_empty());
        assert_eq!(data_rows(&run(&mut c, name).await).len(), 1);
    }
    // The extended protocol (libpq's PQsendQueryParams): Parse of the unnamed statement,
    // Bind, Describe of the portal, Execute, Sync; between transactions and inside one.
    for (round, name) in ["_pg3_7", "_pg3_8"].into_iter().enumerate() {
        assert!(errors(&prepare(&mut c, name).await).is_empty());
        if round == 1 {
            assert!(errors(&c.simple("BEGIN").await).is_empty());
        }
        let mut out = bytes::BytesMut::new();
        pgtenant::protocol::messages::parse(&mut out, "", &format!("DEALLOCATE {name}"));
        pgtenant::protocol::messages::bind(&mut out, "", std::iter::empty::<&[u8]>());
        out.extend_from_slice(b"D\0\0\0\x06P\0");
        pgtenant::protocol::messages::execute(&mut out);
        sync(&mut out);
        c.send(&out).await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{name}: {:?}", errors(&m));
        assert_eq!(common::raw::tags(&m), "12nCZ", "{m:?}");
        let complete = m.iter().find(|(t, _)| *t == b'C').map(|(_, b)| b.clone());
        assert_eq!(complete.as_deref(), Some(&b"DEALLOCATE\0"[..]));
        assert_eq!(
            m.last().map(|(_, b)| b[0]),
            Some(if round == 1 { b'T' } else { b'I' })
        );
        if round == 1 {
            assert!(errors(&c.simple("COMMIT").await).is_empty());
        }
        let errs = errors(&run(&mut c, name).await);
        assert_eq!(
            errs.first().map(|e| e.code.as_str()),
            Some("26000"),
            "{errs:?}"
        );
        // The unnamed statement works again after it.
        let rows = data_rows(&c.simple("SELECT 1").await);
        assert_eq!(rows.len(), 1);
    }
    // A name the client never prepared is not answered by the proxy: an error (PostgreSQL's
    // 26000, or the guard's refusal of SQL-level DEALLOCATE where it is refused).
    let errs = errors(&c.simple("DEALLOCATE nothing_here").await);
    assert!(
        matches!(
            errs.first().map(|e| e.code.as_str()),
            Some("26000" | "0A000")
        ),
        "{errs:?}"
    );
}

/// A named Parse of a name the client already defined is refused as PostgreSQL refuses it
/// (42P05), between transactions and inside one, and the first definition keeps running its
/// own SQL. (asyncpg's suite found the proxy replacing it: the earlier statement then ran
/// the new text.) PostgreSQL's answers first, then pgtenant's.
#[tokio::test]
async fn a_second_parse_of_a_defined_name_is_refused_and_the_first_stays() {
    let env = TestEnv::start().await;
    for through in [false, true] {
        let mut c = env.raw_acme_or_direct(through).await;
        let at = if through { "pgtenant" } else { "PostgreSQL" };
        assert!(errors(&parse_sync(&mut c, "dup", "SELECT 1").await).is_empty());
        let errs = errors(&parse_sync(&mut c, "dup", "SELECT 2").await);
        assert_eq!(
            errs.first().map(|e| e.code.as_str()),
            Some("42P05"),
            "{at}: {errs:?}"
        );
        assert_eq!(
            data_rows(&bind_run(&mut c, "dup", &[]).await),
            vec![vec![Some("1".to_string())]],
            "{at}: the first definition runs"
        );
        // Inside a transaction: refused, the transaction aborted, the statement unchanged.
        assert!(errors(&c.simple("BEGIN").await).is_empty());
        let m = parse_sync(&mut c, "dup", "SELECT 3").await;
        let errs = errors(&m);
        assert_eq!(
            errs.first().map(|e| e.code.as_str()),
            Some("42P05"),
            "{at}: {errs:?}"
        );
        assert_eq!(
            m.last().map(|(_, b)| b[0]),
            Some(b'E'),
            "{at}: transaction failed"
        );
        assert!(errors(&c.simple("ROLLBACK").await).is_empty());
        assert_eq!(
            data_rows(&bind_run(&mut c, "dup", &[]).await),
            vec![vec![Some("1".to_string())]],
            "{at}: still the first definition"
        );
        // Closed, the name may be defined again.
        let mut out = bytes::BytesMut::new();
        common::raw::close_statement(&mut out, "dup");
        sync(&mut out);
        c.send(&out).await;
        assert!(errors(&c.until_ready().await).is_empty());
        assert!(errors(&parse_sync(&mut c, "dup", "SELECT 4").await).is_empty());
        assert_eq!(
            data_rows(&bind_run(&mut c, "dup", &[]).await),
            vec![vec![Some("4".to_string())]],
            "{at}: the new definition after Close"
        );
    }
}

/// A statement whose Parse PostgreSQL refuses does not exist, so its name may be prepared
/// again (a driver that names statements by their text, as pgx does, prepares the same name
/// once the missing table exists). A Parse sent alone between transactions is answered by
/// the proxy, which learns of the error at first use; that error must free the name too.
#[tokio::test]
async fn a_name_whose_statement_failed_may_be_prepared_again() {
    let (env, su) = env_with_table(2, "rp_unused").await;
    for (through, table) in [(false, "rp_later_direct"), (true, "rp_later_proxy")] {
        let mut c = env.raw_acme_or_direct(through).await;
        let at = if through { "pgtenant" } else { "PostgreSQL" };
        let sql = format!("SELECT a FROM {table}");
        // PostgreSQL refuses the Parse (42P01) and the Bind finds no statement (26000);
        // through the proxy the Parse is answered and the Bind's preparation fails (42P01).
        let mut codes: Vec<String> = errors(&parse_sync(&mut c, "by_text", &sql).await)
            .into_iter()
            .map(|e| e.code)
            .collect();
        codes.extend(
            errors(&bind_run(&mut c, "by_text", &[]).await)
                .into_iter()
                .map(|e| e.code),
        );
        assert!(codes.contains(&"42P01".to_string()), "{at}: {codes:?}");
        su.batch_execute(&format!(
            "CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (7);
             GRANT SELECT ON {table} TO app_user;"
        ))
        .await
        .unwrap();
        let errs = errors(&parse_sync(&mut c, "by_text", &sql).await);
        assert!(errs.is_empty(), "{at}: prepared again: {errs:?}");
        let m = bind_run(&mut c, "by_text", &[]).await;
        assert_eq!(
            data_rows(&m),
            vec![vec![Some("7".to_string())]],
            "{at}: {:?}",
            errors(&m)
        );
    }
}

/// A named Parse pipelined with its Bind, Execute and Sync (node-postgres's named queries)
/// gets PostgreSQL's own answer: a text PostgreSQL rejects fails at the Parse, with no
/// ParseComplete (node-postgres takes one as the name being taken, and refused the fixed
/// text under that name), and the name can then carry another text.
#[tokio::test]
async fn a_named_parse_pipelined_with_its_bind_is_answered_by_postgresql() {
    let env = TestEnv::start().await;
    let mut seen = Vec::new();
    for through in [false, true] {
        let mut c = env.raw_acme_or_direct(through).await;
        let mut replies = Vec::new();
        for sql in ["SELECT $1::nonexistent_type_xyz", "SELECT $1::int AS n"] {
            let mut out = bytes::BytesMut::new();
            pgtenant::protocol::messages::parse(&mut out, "bad_stmt", sql);
            pgtenant::protocol::messages::bind(&mut out, "bad_stmt", [&b"42"[..]].into_iter());
            pgtenant::protocol::messages::execute(&mut out);
            sync(&mut out);
            c.send(&out).await;
            let m = c.until_ready().await;
            let codes: Vec<String> = errors(&m).into_iter().map(|e| e.code).collect();
            replies.push((common::raw::tags(&m), codes, data_rows(&m)));
        }
        seen.push(replies);
    }
    assert_eq!(
        seen[0][0].1,
        vec!["42704".to_string()],
        "PostgreSQL: {:?}",
        seen[0]
    );
    assert_eq!(
        seen[0][1].2,
        vec![vec![Some("42".to_string())]],
        "PostgreSQL: {:?}",
        seen[0]
    );
    assert_eq!(seen[1], seen[0], "pgtenant answers as PostgreSQL does");
}

/// The same bytes are another text under another client encoding: a copy prepared by a
/// LATIN1 client never serves a UTF8 client's statement (found by a red-team pass: the
/// UTF8 tenant got `cafÃ©`, the other tenant's literal).
#[tokio::test]
async fn a_copy_parsed_under_another_client_encoding_never_serves() {
    // Plain mode: in verified mode another tenant's turn on a backend starts clean.
    let env = TestEnv::start_with(|cfg| {
        cfg.context.mode = pgtenant::config::ContextMode::Plain;
        for db in cfg.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let text = "SELECT 'café'::text || ' ' || length('café')";
    let mut utf8 = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    parse_sync(&mut utf8, "q", text).await;
    let want = vec![vec![Some("café 4".to_string())]];
    assert_eq!(data_rows(&bind_run(&mut utf8, "q", &[]).await), want);
    let mut latin1 = RawConn::connect_with(
        env.proxy.addr,
        &[
            ("user", "acme"),
            ("database", "app"),
            ("client_encoding", "LATIN1"),
        ],
        "acme-secret",
    )
    .await
    .unwrap();
    parse_sync(&mut latin1, "q", text).await;
    let theirs = data_rows(&bind_run(&mut latin1, "q", &[]).await);
    assert_ne!(theirs, want, "LATIN1 reads other characters");
    for _ in 0..3 {
        assert_eq!(data_rows(&bind_run(&mut utf8, "q", &[]).await), want);
    }
}

/// PostgreSQL's messages that name a prepared statement name the client's statement, not
/// the proxy's name for it on the backend (red-team: `... but prepared statement
/// "pgtenant_s_<hash>" requires 1`, a name derived from the text).
#[tokio::test]
async fn errors_name_the_clients_statement() {
    let env = TestEnv::start().await;
    let mut seen = Vec::new();
    for through in [false, true] {
        let mut c = env.raw_acme_or_direct(through).await;
        parse_sync(&mut c, "s1", "SELECT $1::int").await;
        let got = bind_run(&mut c, "s1", &[b"1", b"2"]).await;
        let errs = errors(&got);
        assert_eq!(errs.len(), 1, "{got:?}");
        seen.push((errs[0].code.clone(), errs[0].message.clone()));
    }
    assert_eq!(seen[0], seen[1]);
    assert!(seen[1].1.contains("\"s1\""), "{seen:?}");
}
