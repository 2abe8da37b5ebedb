//! The transaction shapes a tokio-postgres client of the chaos run executes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::NoTls;

use super::ledger::Outcome;
use super::pg_client::{
    Conn, E, INSERT_SQL, begin, body, commit, expect_code, first_row, insert, probe,
    probe_prepared, rollback, rows,
};
use super::tx::{ROWS_SQL, Tx, probe_param_sql, probe_sql};
use super::workload::PgShape;

/// Runs one shape; Ok(false) when the connection is to be dropped.
pub(crate) async fn run_shape(c: &mut Conn, tx: &mut Tx<'_>, shape: PgShape) -> Result<bool, E> {
    match shape {
        PgShape::Autocommit => {
            probe(c, tx).await?;
            rows(c, tx).await?;
            tx.outcome = Outcome::Unknown;
            insert(c, tx, false).await?;
            tx.outcome = Outcome::Committed;
        }
        PgShape::Explicit => {
            begin(c, tx).await?;
            let n = 1 + tx.rng.below(5);
            body(c, tx, n).await?;
            if tx.rng.chance(80) {
                commit(c, tx).await?;
            } else {
                rollback(c, tx).await?;
            }
            probe(c, tx).await?;
        }
        PgShape::Pipeline => {
            let (n1, n2) = (tx.nonce(), tx.nonce());
            let (j, id) = tx.write();
            let marker = tx.marker('w');
            tx.step(format!(
                "  pipeline: probe {n1}, rows, insert write {j} ({id}), probe {n2}"
            ));
            tx.outcome = Outcome::Unknown;
            let (q1, q2) = (probe_sql(tx.client, &n1), probe_sql(tx.client, &n2));
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &marker];
            let (p1, r, i, p2) = tokio::join!(
                c.client.simple_query(&q1),
                c.client.query(ROWS_SQL, &[]),
                c.client.query(INSERT_SQL, &params),
                c.client.simple_query(&q2),
            );
            let i = i?;
            tx.outcome = Outcome::Committed;
            tx.check_probe(&n1, &first_row(&p1?));
            let v: Vec<(String, String)> = r?.iter().map(|r| (r.get(0), r.get(1))).collect();
            tx.check_rows("pipelined select", &v);
            let v: Vec<(String, String)> = i.iter().map(|r| (r.get(0), r.get(1))).collect();
            tx.check_rows("pipelined insert", &v);
            tx.check_probe(&n2, &first_row(&p2?));
        }
        PgShape::NamedPrepared => {
            probe_prepared(c, tx).await?;
            begin(c, tx).await?;
            insert(c, tx, true).await?;
            probe_prepared(c, tx).await?;
            insert(c, tx, true).await?;
            commit(c, tx).await?;
            probe_prepared(c, tx).await?;
        }
        PgShape::UnnamedPrepared => {
            let nonce = tx.nonce();
            let rows = c
                .client
                .query_typed(
                    &probe_param_sql(tx.client),
                    &[(&nonce, tokio_postgres::types::Type::TEXT)],
                )
                .await?;
            let vals: Vec<Option<String>> = (0..6).map(|i| rows[0].get(i)).collect();
            tx.check_probe(&nonce, &vals);
            tx.outcome = Outcome::Unknown;
            insert(c, tx, false).await?;
            tx.outcome = Outcome::Committed;
        }
        PgShape::ErrorMiddle => {
            begin(c, tx).await?;
            insert(c, tx, false).await?;
            let r = c
                .client
                .batch_execute("SELECT * FROM chaos_no_such_table")
                .await;
            expect_code(tx, r, "42P01")?;
            let r = probe(c, tx).await;
            expect_code(tx, r, "25P02")?;
            if tx.rng.chance(50) {
                rollback(c, tx).await?;
            } else {
                tx.step("  COMMIT of a failed transaction");
                c.client.batch_execute("COMMIT").await?;
                tx.tag = None;
            }
            tx.outcome = Outcome::Aborted;
            probe(c, tx).await?;
        }
        PgShape::Savepoint => {
            begin(c, tx).await?;
            insert(c, tx, false).await?;
            c.client.batch_execute("SAVEPOINT s1").await?;
            tx.step("  SAVEPOINT s1");
            insert(c, tx, false).await?;
            let j = tx.last_write();
            if tx.rng.chance(50) {
                let r = c.client.batch_execute("SELECT 1/0").await;
                expect_code(tx, r, "22012")?;
            }
            c.client.batch_execute("ROLLBACK TO SAVEPOINT s1").await?;
            tx.step("  ROLLBACK TO s1");
            tx.unexpect(j);
            insert(c, tx, true).await?;
            probe(c, tx).await?;
            commit(c, tx).await?;
        }
        PgShape::CopyIn | PgShape::CopyInAborted => {
            // COPY FROM cannot write an RLS table: stage through an ON COMMIT DROP temp table.
            begin(c, tx).await?;
            let t = format!("tt_{}_{}", tx.client, tx.k);
            c.client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE {t} (tenant_id uuid, amount_cents int8, status text) ON COMMIT DROP"
                ))
                .await?;
            let n = 1 + tx.rng.below(4);
            let mut data = String::new();
            for _ in 0..n {
                let (j, id) = tx.write();
                tx.step(format!("  copy write {j} ({id})"));
                data += &format!("{}\t{id}\t{}\n", tx.tenant_id, tx.marker('w'));
            }
            let sink = c
                .client
                .copy_in::<_, Bytes>(&format!("COPY {t} FROM STDIN"))
                .await?;
            let mut sink = Box::pin(sink);
            sink.send(Bytes::from(data)).await?;
            if shape == PgShape::CopyInAborted {
                tx.step("  COPY abandoned (CopyFail)");
                drop(sink);
                let r = probe(c, tx).await;
                expect_code(tx, r, "25P02")?;
                rollback(c, tx).await?;
                probe(c, tx).await?;
            } else {
                let n_copied = sink.as_mut().finish().await?;
                tx.step(format!("  COPY {n_copied}"));
                let rows = c
                    .client
                    .query(
                        &format!(
                            "INSERT INTO invoices (tenant_id, amount_cents, status) \
                             SELECT tenant_id, amount_cents, status FROM {t} \
                             RETURNING current_setting('app.current_tenant', true), tenant_id::text"
                        ),
                        &[],
                    )
                    .await?;
                let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                tx.check_rows("insert from copy", &v);
                commit(c, tx).await?;
            }
        }
        PgShape::CopyOut => {
            let stream = c
                .client
                .copy_out("COPY (SELECT current_setting('app.current_tenant', true), tenant_id FROM invoices LIMIT 20) TO STDOUT")
                .await?;
            let mut stream = Box::pin(stream);
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk?);
            }
            let v: Vec<(String, String)> = String::from_utf8_lossy(&text)
                .lines()
                .map(|l| {
                    let mut p = l.split('\t');
                    (p.next().unwrap_or("").into(), p.next().unwrap_or("").into())
                })
                .collect();
            tx.check_rows("copy out", &v);
        }
        PgShape::Cursor => {
            begin(c, tx).await?;
            let cur = format!("cur_{}_{}", tx.client, tx.k);
            c.client
                .batch_execute(&format!(
                    "DECLARE {cur} CURSOR FOR SELECT current_setting('app.current_tenant', true), tenant_id::text FROM invoices LIMIT 30"
                ))
                .await?;
            for _ in 0..2 {
                let rows = c.client.query(&format!("FETCH 7 FROM {cur}"), &[]).await?;
                let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                tx.check_rows("fetch", &v);
            }
            probe(c, tx).await?;
            if tx.rng.chance(50) {
                c.client.batch_execute(&format!("CLOSE {cur}")).await?;
            }
            commit(c, tx).await?;
        }
        PgShape::PortalRows => {
            let stmt = c.client.prepare(ROWS_SQL).await?;
            let t = c.client.transaction().await?;
            let portal = t.bind(&stmt, &[]).await?;
            let mut v = Vec::new();
            for _ in 0..2 {
                for r in t.query_portal(&portal, 3).await? {
                    v.push((r.get(0), r.get(1)));
                }
            }
            t.commit().await?;
            tx.check_rows("portal", &v);
        }
        PgShape::ResetAll | PgShape::DiscardAll => {
            let sql = if shape == PgShape::ResetAll {
                "RESET ALL"
            } else {
                "DISCARD ALL"
            };
            tx.step(format!("  {sql}"));
            c.client.batch_execute(sql).await?;
            if shape == PgShape::DiscardAll {
                // DISCARD ALL drops the session's prepared statements, as in PostgreSQL.
                c.probe = None;
                c.insert = None;
            }
            probe(c, tx).await?;
        }
        PgShape::SessionSet => {
            let who = tx.who();
            tx.step(format!("  SET application_name = {who}"));
            c.client
                .batch_execute(&format!("SET application_name = '{who}'"))
                .await?;
            probe(c, tx).await?;
            if tx.rng.chance(40) {
                tx.step("  RESET application_name");
                c.client.batch_execute("RESET application_name").await?;
            }
            probe(c, tx).await?;
        }
        PgShape::TempTable => {
            begin(c, tx).await?;
            let t = format!("tt_{}_{}", tx.client, tx.k);
            c.client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE {t} (a int8); INSERT INTO {t} VALUES (1), (2)"
                ))
                .await?;
            let n: i64 = c
                .client
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await?
                .get(0);
            if n != 2 {
                tx.violation(
                    "temp-table-content",
                    format!("{t} has {n} rows, expected 2"),
                );
            }
            probe(c, tx).await?;
            if tx.rng.chance(70) {
                commit(c, tx).await?;
            } else {
                rollback(c, tx).await?;
            }
            probe(c, tx).await?;
        }
        PgShape::Listen => {
            let ch = format!("chaos_{}", tx.tenant);
            tx.step(format!("  LISTEN {ch}; NOTIFY {ch}"));
            c.client
                .batch_execute(&format!("LISTEN {ch}; NOTIFY {ch}, '{}'", tx.tenant))
                .await?;
            probe(c, tx).await?;
        }
        PgShape::Cancel => {
            let token = c.client.cancel_token();
            let wait = 30 + tx.rng.below(200);
            tx.step(format!("  pg_sleep(2), cancel after {wait} ms"));
            tx.cancel_expected = true;
            let canceller = async {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                token.cancel_query(NoTls).await
            };
            let (r, _) = tokio::join!(c.client.batch_execute("SELECT pg_sleep(2)"), canceller);
            match r {
                Ok(()) => {
                    tx.step("  not canceled");
                    tx.late_cancel = true;
                }
                Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "57014") => {
                    let message = e.as_db_error().map(|d| d.message().to_owned());
                    tx.step(format!("  canceled: {}", message.unwrap_or_default()))
                }
                Err(e) => return Err(e),
            }
            tx.cancel_expected = false;
            probe(c, tx).await?;
        }
        PgShape::DisconnectInTx => {
            begin(c, tx).await?;
            let prepared = tx.rng.chance(50);
            insert(c, tx, prepared).await?;
            tx.step("  vanish inside the transaction");
            tx.outcome = Outcome::Aborted;
            return Ok(false);
        }
    }
    Ok(true)
}
