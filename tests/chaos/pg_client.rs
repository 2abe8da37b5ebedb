//! A tokio-postgres client of the chaos run: each transaction is one generated shape; any
//! failure that a fault explains ends the connection (the client reconnects), anything else
//! is a violation with the transaction's trace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage, Statement};

use super::ledger::{Ledger, Outcome};
use super::tx::{ROWS_SQL, Tx, probe_param_sql, probe_sql};
use super::workload;
use super::world::World;

pub(crate) type E = tokio_postgres::Error;

/// One connection and its cached statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    task: tokio::task::JoinHandle<()>,
    tenant: usize,
    pub(crate) probe: Option<Statement>,
    pub(crate) insert: Option<Statement>,
    /// A cancel this connection sent had no visible effect yet (its statement ended first):
    /// it may still stop one later statement of this client, as it would on PostgreSQL.
    late_cancel: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// INSERT of one write under the session's context; returns the row's tenant and context.
pub(crate) const INSERT_SQL: &str = "INSERT INTO invoices (tenant_id, amount_cents, status) \
     VALUES (current_setting('app.current_tenant')::uuid, $1, $2) \
     RETURNING current_setting('app.current_tenant', true), tenant_id::text";

/// SQLSTATEs a fault or a documented limit explains (backend lost, server restarting, pool
/// saturated, deadlock, and 53400: the cap on backends pinned to clients that keep session
/// state, which a temp table or LISTEN reaches while other clients hold pins).
pub fn fault_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || matches!(
            code,
            "53300" | "53400" | "40P01" | "40001" | "25P02" | "55000"
        )
}

async fn connect(
    world: &World,
    ledger: &Arc<Ledger>,
    client: u32,
    tenant: usize,
) -> Result<Conn, E> {
    let (c, mut conn) = tokio_postgres::connect(&world.conn_str(tenant), NoTls).await?;
    let channel = format!("chaos_{tenant}");
    let payload = tenant.to_string();
    let ledger = ledger.clone();
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.channel() != channel || n.payload() != payload {
                        ledger.violation(
                            "foreign-notification",
                            client,
                            0,
                            format!(
                                "tenant {payload} got NOTIFY {}, payload {:?}",
                                n.channel(),
                                n.payload()
                            ),
                        );
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    Ok(Conn {
        client: c,
        task,
        tenant,
        probe: None,
        insert: None,
        late_cancel: false,
    })
}

/// Runs client `id` until `until` (or only transaction `only`, for a replay).
pub async fn run(
    world: Arc<World>,
    ledger: Arc<Ledger>,
    id: u32,
    until: Instant,
    only: Option<u32>,
) {
    let seed = ledger.seed;
    let mut conn: Option<Conn> = None;
    let mut k = only.unwrap_or(0);
    while Instant::now() < until && !ledger.enough() {
        let tenant = workload::tenant_of(seed, id, k, world.tenants.len());
        if conn.as_ref().is_some_and(|c| c.tenant != tenant) {
            conn = None;
        }
        if conn.is_none() {
            match connect(&world, &ledger, id, tenant).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    ledger.error(format!("pg connect: {}", describe(&e)));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let mut tx = Tx::new(
            &ledger,
            id,
            k,
            tenant,
            &world.tenants[tenant].id,
            workload::txn_rng(seed, id, k),
        );
        tx.late_cancel = c.late_cancel;
        let shape = workload::pick(&mut tx.rng, &workload::PG_SHAPES);
        tx.shape = format!("pg/{shape:?}");
        ledger.shape(tx.shape.clone());
        let keep = match tokio::time::timeout(
            Duration::from_secs(60),
            super::pg_shapes::run_shape(c, &mut tx, shape),
        )
        .await
        {
            Ok(Ok(keep)) => keep,
            Ok(Err(e)) => {
                on_error(&mut tx, &e);
                false
            }
            Err(_) => {
                tx.violation("stuck", "no reply within 60 s".into());
                if tx.outcome == Outcome::Committed {
                    tx.outcome = Outcome::Unknown;
                }
                false
            }
        };
        if let Some(c) = conn.as_mut() {
            c.late_cancel = tx.late_cancel;
        }
        tx.finish();
        if !keep {
            conn = None;
        }
        k += 1;
        if only.is_some() {
            break;
        }
    }
}

fn describe(e: &E) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Classifies an error that ended a shape: fault fallout is counted, the rest is a violation.
fn on_error(tx: &mut Tx<'_>, e: &E) {
    tx.step(format!("  error: {}", describe(e)));
    match e.as_db_error().map(|d| d.code().code().to_owned()) {
        Some(code) if code == "57014" && tx.cancel_expected => tx.ledger.error(code),
        // The client's own earlier cancel, received by pgtenant after the statement it was
        // meant for had ended: it stops what the client runs then (one statement at most).
        Some(code) if code == "57014" && std::mem::take(&mut tx.late_cancel) => tx
            .ledger
            .error("57014 from the client's own late cancel".into()),
        // PostgreSQL reports the client's own CopyFail as 57014 too ("COPY from stdin
        // failed"); tokio-postgres may hand it to the request after the abandoned COPY.
        Some(code) if code == "57014" && own_copy_fail(e) => tx.ledger.error(code),
        Some(code) if code == "57014" => tx.violation(
            "stray-cancel",
            "query canceled without a cancel request".into(),
        ),
        Some(code) if fault_sqlstate(&code) => tx.ledger.error(code),
        Some(_) => tx.violation("unexpected-error", describe(e)),
        None => tx.ledger.error("pg: connection error".into()),
    }
    // A failure after COMMIT (or an autocommit write) was sent leaves the outcome unknown;
    // before that, the transaction can only have been rolled back.
}

/// A 57014 that is the client's own abandoned COPY, not a cancel.
fn own_copy_fail(e: &E) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message().starts_with("COPY from stdin failed"))
}

pub(crate) async fn probe(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    let nonce = tx.nonce();
    let rows = c.client.simple_query(&probe_sql(tx.client, &nonce)).await?;
    let row = first_row(&rows);
    tx.check_probe(&nonce, &row);
    Ok(())
}

pub(crate) async fn probe_prepared(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    if c.probe.is_none() {
        c.probe = Some(c.client.prepare(&probe_param_sql(tx.client)).await?);
    }
    let nonce = tx.nonce();
    let row = c
        .client
        .query_one(c.probe.as_ref().unwrap(), &[&nonce])
        .await?;
    let vals: Vec<Option<String>> = (0..6).map(|i| row.get(i)).collect();
    tx.check_probe(&nonce, &vals);
    Ok(())
}

pub(crate) fn first_row(msgs: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            return (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect();
        }
    }
    Vec::new()
}

pub(crate) async fn rows(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    let rows = c.client.query(ROWS_SQL, &[]).await?;
    let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    tx.check_rows("select", &v);
    Ok(())
}

pub(crate) async fn insert(c: &mut Conn, tx: &mut Tx<'_>, prepared: bool) -> Result<(), E> {
    let (j, id) = tx.write();
    let marker = tx.marker('w');
    tx.step(format!(
        "  insert write {j} ({id}){}",
        if prepared { " prepared" } else { "" }
    ));
    let rows = if prepared {
        if c.insert.is_none() {
            c.insert = Some(c.client.prepare(INSERT_SQL).await?);
        }
        c.client
            .query(c.insert.as_ref().unwrap(), &[&id, &marker])
            .await?
    } else {
        let types = [
            tokio_postgres::types::Type::INT8,
            tokio_postgres::types::Type::TEXT,
        ];
        c.client
            .query_typed(
                INSERT_SQL,
                &[(&id, types[0].clone()), (&marker, types[1].clone())],
            )
            .await?
    };
    let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    tx.check_rows("insert returning", &v);
    Ok(())
}

/// Updates a random row id: RLS must leave other tenants' rows alone.
pub(crate) async fn update(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    let target = 1 + tx.rng.below(2000) as i64;
    let marker = tx.marker('u');
    tx.step(format!("  update row {target}"));
    let rows = c
        .client
        .query(
            "UPDATE invoices SET status = $1 WHERE id = $2 \
             RETURNING current_setting('app.current_tenant', true), tenant_id::text",
            &[&marker, &target],
        )
        .await?;
    let v: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    tx.check_rows("update returning", &v);
    Ok(())
}

pub(crate) async fn begin(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    tx.step("  BEGIN");
    c.client.batch_execute("BEGIN").await?;
    probe(c, tx).await?;
    let tag = format!("x{}.{}", tx.client, tx.k);
    c.client
        .simple_query(&format!("SELECT set_config('chaos.tx', '{tag}', true)"))
        .await?;
    tx.tag = Some(tag);
    Ok(())
}

pub(crate) async fn commit(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    tx.step("  COMMIT");
    tx.outcome = Outcome::Unknown;
    let msgs = c.client.simple_query("COMMIT").await?;
    tx.tag = None;
    let committed = msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)));
    tx.outcome = if committed {
        Outcome::Committed
    } else {
        Outcome::Unknown
    };
    Ok(())
}

pub(crate) async fn rollback(c: &mut Conn, tx: &mut Tx<'_>) -> Result<(), E> {
    tx.step("  ROLLBACK");
    c.client.batch_execute("ROLLBACK").await?;
    tx.tag = None;
    tx.outcome = Outcome::Aborted;
    Ok(())
}

/// Some random reads and writes inside an open transaction.
pub(crate) async fn body(c: &mut Conn, tx: &mut Tx<'_>, n: u64) -> Result<(), E> {
    for _ in 0..n {
        match tx.rng.below(5) {
            0 => probe(c, tx).await?,
            1 => rows(c, tx).await?,
            2 => update(c, tx).await?,
            3 => probe_prepared(c, tx).await?,
            _ => {
                let prepared = tx.rng.chance(50);
                insert(c, tx, prepared).await?
            }
        }
    }
    Ok(())
}

/// Expects an error with `code`; anything else is a violation (a fault error is returned).
pub(crate) fn expect_code(tx: &mut Tx<'_>, r: Result<(), E>, code: &str) -> Result<(), E> {
    match r {
        Ok(()) => {
            tx.violation(
                "missing-error",
                format!("expected SQLSTATE {code}, got success"),
            );
            Ok(())
        }
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == code) => {
            tx.step(format!("  expected error {code}"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
