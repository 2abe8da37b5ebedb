//! The same checks with tokio-postgres (in process). COPY TO STDOUT is not checked here: its
//! stream needs the `futures` Stream trait, which is not a dev-dependency.

use super::*;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Transaction};

const COPY_AMOUNTS: [i64; 3] = [7001, 7002, 7003];
const STAGE_SQL: &str =
    "CREATE TEMP TABLE invoices_in (tenant_id uuid, amount_cents bigint) ON COMMIT DROP";
const UNSTAGE_SQL: &str = "INSERT INTO invoices (tenant_id, amount_cents) SELECT tenant_id, amount_cents FROM invoices_in";

struct Checks {
    mode: &'static str,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Debug) {
        let tag = if ok { "ok  " } else { "FAIL" };
        if ok {
            println!("{tag} tokio-postgres [{}] {name}", self.mode);
        } else {
            println!("{tag} tokio-postgres [{}] {name} -- {detail:?}", self.mode);
            self.failed
                .push(format!("[{}] {name}: {detail:?}", self.mode));
        }
    }
    fn result<T>(&mut self, name: &str, r: Result<T, tokio_postgres::Error>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map(|d| format!("{} {}", d.code().code(), d.message()));
                self.check(name, false, msg.unwrap_or_else(|| format!("{e:?}")));
                None
            }
        }
    }
}

/// Starts a transaction; in direct mode sets the tenant context first thing.
async fn tx<'a>(
    c: &'a mut Client,
    direct: bool,
    id: &str,
) -> Result<Transaction<'a>, tokio_postgres::Error> {
    let t = c.transaction().await?;
    if direct {
        t.execute("SELECT set_config('app.current_tenant', $1, true)", &[&id])
            .await?;
    }
    Ok(t)
}

async fn context(t: &Transaction<'_>) -> Result<String, tokio_postgres::Error> {
    Ok(
        t.query_one("SELECT current_setting('app.current_tenant')", &[])
            .await?
            .get(0),
    )
}

pub async fn run(target: &Target) -> Vec<String> {
    let mut c = Checks {
        mode: target.mode.name(),
        failed: Vec::new(),
    };
    for (i, (user, pw, id)) in target.tenants.iter().enumerate() {
        let p = ["A:", "B:"][i];
        let other = target.tenants[1 - i].2;
        let s = format!(
            "host={} port={} user={user} password={pw} dbname=app",
            target.host, target.port
        );
        let Some(mut client) = c.result(&format!("{p} connect"), connect(&s).await) else {
            continue;
        };
        c.check(&format!("{p} connect"), true, ());
        let r = tenant(
            &mut c,
            &mut client,
            p,
            target.mode == Mode::Direct,
            id,
            other,
        )
        .await;
        c.result(&format!("{p} unexpected error"), r);
    }
    c.failed
}

async fn tenant(
    c: &mut Checks,
    client: &mut Client,
    p: &str,
    direct: bool,
    id: &str,
    other: &str,
) -> Result<(), tokio_postgres::Error> {
    let mut seen = Vec::new();
    // isolation + CRUD
    let t = tx(client, direct, id).await?;
    let ids: Vec<String> = t
        .query("SELECT DISTINCT tenant_id::text FROM invoices", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.check(
        &format!("{p} isolation: only own tenant_id visible"),
        ids == [id],
        &ids,
    );
    let rid: i64 = t
        .query_one(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1::text::uuid, 4242) RETURNING id",
            &[&id],
        )
        .await?
        .get(0);
    seen.push(context(&t).await?);
    t.commit().await?;
    let t = tx(client, direct, id).await?;
    let n = t
        .execute(
            "UPDATE invoices SET status = 'paid', amount_cents = 4343 WHERE id = $1",
            &[&rid],
        )
        .await?;
    c.check(&format!("{p} crud: update rowcount"), n == 1, n);
    seen.push(context(&t).await?);
    t.commit().await?;
    let t = tx(client, direct, id).await?;
    let row = t
        .query_one(
            "SELECT amount_cents, status FROM invoices WHERE id = $1",
            &[&rid],
        )
        .await?;
    let got: (i64, String) = (row.get(0), row.get(1));
    c.check(
        &format!("{p} crud: read updated"),
        got == (4343, "paid".to_string()),
        &got,
    );
    let n = t
        .execute("DELETE FROM invoices WHERE id = $1", &[&rid])
        .await?;
    c.check(&format!("{p} crud: delete rowcount"), n == 1, n);
    seen.push(context(&t).await?);
    t.commit().await?;
    // RLS WITH CHECK
    let t = tx(client, direct, id).await?;
    let r = t
        .execute(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1::text::uuid, 1)",
            &[&other],
        )
        .await;
    let code = r.as_ref().err().and_then(sqlstate);
    c.check(
        &format!("{p} rls refuses a foreign tenant_id"),
        code.as_deref() == Some("42501"),
        &code,
    );
    t.rollback().await?;
    // rollback
    let t = tx(client, direct, id).await?;
    let rid: i64 = t
        .query_one(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1::text::uuid, 99) RETURNING id",
            &[&id],
        )
        .await?
        .get(0);
    t.rollback().await?;
    let t = tx(client, direct, id).await?;
    let n: i64 = t
        .query_one("SELECT count(*) FROM invoices WHERE id = $1", &[&rid])
        .await?
        .get(0);
    c.check(&format!("{p} rollback: row gone"), n == 0, n);
    t.commit().await?;
    // one named statement, prepared once, used in 25 transactions
    let stmt = client
        .prepare("SELECT current_setting('app.current_tenant'), count(*) FROM invoices WHERE amount_cents >= $1")
        .await?;
    let mut results = Vec::new();
    for _ in 0..25 {
        let t = tx(client, direct, id).await?;
        let row = t.query_one(&stmt, &[&0i64]).await?;
        results.push((row.get::<_, String>(0), row.get::<_, i64>(1)));
        t.commit().await?;
    }
    let ok = results.iter().all(|r| *r == results[0]) && results[0].0 == id && results[0].1 > 0;
    c.check(
        &format!("{p} prepared statement reused in 25 transactions"),
        ok,
        &results[..3],
    );
    seen.extend(results.into_iter().map(|r| r.0));
    // error inside a transaction
    let t = tx(client, direct, id).await?;
    let e = t.query_one("SELECT 1 / 0", &[]).await.err();
    c.check(
        &format!("{p} error: division by zero raised"),
        e.as_ref().and_then(|e| e.code()) == Some(&SqlState::DIVISION_BY_ZERO),
        &e,
    );
    let e = t.query_one("SELECT 1", &[]).await.err();
    c.check(
        &format!("{p} error: transaction aborted"),
        e.as_ref().and_then(|e| e.code()) == Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        &e,
    );
    t.rollback().await?;
    let t = tx(client, direct, id).await?;
    let v: i32 = t.query_one("SELECT 41 + 1", &[]).await?.get(0);
    c.check(&format!("{p} error: next transaction works"), v == 42, v);
    seen.push(context(&t).await?);
    t.commit().await?;
    // COPY FROM STDIN (binary). PostgreSQL refuses COPY FROM into a table with RLS
    // (0A000) for every client, so the rows go through a transaction-scoped temp table.
    // (Not checked here: after a refused copy_in tokio-postgres itself reports
    // UnexpectedMessage, directly too; the Python, node and JDBC programs check it.)
    let t = tx(client, direct, id).await?;
    t.batch_execute(STAGE_SQL).await?;
    let sink = t
        .copy_in("COPY invoices_in (tenant_id, amount_cents) FROM STDIN (FORMAT binary)")
        .await?;
    let uuid = Type::UUID;
    let writer = BinaryCopyInWriter::new(sink, &[uuid, Type::INT8]);
    let mut writer = std::pin::pin!(writer);
    for a in COPY_AMOUNTS {
        writer
            .as_mut()
            .write(&[&RawUuid(id.to_string()), &a])
            .await?;
    }
    let n = writer.finish().await?;
    c.check(&format!("{p} copy: FROM STDIN row count"), n == 3, n);
    t.execute(UNSTAGE_SQL, &[]).await?;
    seen.push(context(&t).await?);
    t.commit().await?;
    let t = tx(client, direct, id).await?;
    let rows = t
        .query(
            "SELECT tenant_id::text, amount_cents FROM invoices WHERE amount_cents = ANY($1) ORDER BY 2",
            &[&&COPY_AMOUNTS[..]],
        )
        .await?;
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, i64)> = COPY_AMOUNTS.iter().map(|a| (id.to_string(), *a)).collect();
    c.check(&format!("{p} copy: rows read back"), got == want, &got);
    t.execute(
        "DELETE FROM invoices WHERE amount_cents = ANY($1)",
        &[&&COPY_AMOUNTS[..]],
    )
    .await?;
    t.commit().await?;
    // cancel
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let started = Instant::now();
    let t = tx(client, direct, id).await?;
    let e = t.execute("SELECT pg_sleep(10)", &[]).await.err();
    let elapsed = started.elapsed();
    let canceled = e.as_ref().and_then(|e| e.code()) == Some(&SqlState::QUERY_CANCELED);
    c.check(
        &format!("{p} cancel: pg_sleep(10) canceled"),
        canceled && elapsed < Duration::from_secs(5),
        (&e, elapsed),
    );
    t.rollback().await?;
    let r = canceller.await.expect("cancel task");
    c.check(&format!("{p} cancel: request sent"), r.is_ok(), &r);
    let t = tx(client, direct, id).await?;
    let ids: Vec<String> = t
        .query("SELECT DISTINCT tenant_id::text FROM invoices", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.check(
        &format!("{p} final isolation: only own tenant_id visible"),
        ids == [id],
        &ids,
    );
    seen.push(context(&t).await?);
    t.commit().await?;
    let all = seen.iter().all(|s| s == id);
    c.check(
        &format!(
            "{p} app.current_tenant = own id in all {} transactions",
            seen.len()
        ),
        all,
        &seen,
    );
    Ok(())
}

/// A uuid parameter given as its text form (tokio-postgres has no uuid support without
/// the `with-uuid-1` feature); binary encoding is the 16 raw bytes.
#[derive(Debug)]
struct RawUuid(String);

impl tokio_postgres::types::ToSql for RawUuid {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let hex: String = self.0.chars().filter(|c| *c != '-').collect();
        for i in (0..32).step_by(2) {
            out.extend_from_slice(&[u8::from_str_radix(&hex[i..i + 2], 16)?]);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
    tokio_postgres::types::to_sql_checked!();
}
