//! A raw-protocol client of the chaos run: pipelines with several Syncs in one write, named
//! statements reused across transactions, simple multi-statement queries, slow reading, and
//! vanishing at precise protocol points (after Parse, Bind, Execute without Sync, inside
//! COPY, in the middle of a message or of a TLS record, inside a transaction). Every other
//! raw client connects over TLS.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgtenant::protocol::messages;
use tokio::io::AsyncWriteExt;

use super::common::raw::{self, Msg, RawConn};
use super::ledger::{Ledger, Outcome};
use super::pg_client::fault_sqlstate;
use super::tx::{Tx, probe_param_sql, probe_sql};
use super::workload::{self, RawShape};
use super::world::World;

/// One Sync-terminated group of a pipeline: its own transaction.
struct Group<'a> {
    tx: Tx<'a>,
    nonces: VecDeque<String>,
    expect_err: Option<&'static str>,
    /// A SQLSTATE this group may get because an earlier reply said so (e.g. 26000 after
    /// the statement's Parse failed).
    tolerate: Option<&'static str>,
    /// A ParseComplete arrived.
    saw_parse: bool,
    /// Reply tags, for the connection's history.
    tags: String,
}

struct Conn {
    c: RawConn,
    tenant: usize,
    prepared: bool,
    /// What the last pipelines of this connection sent and got (for traces).
    history: VecDeque<String>,
}

pub(crate) fn insert_sql(tx: &mut Tx) -> String {
    let (j, id) = tx.write();
    tx.step(format!("  insert write {j} ({id})"));
    format!(
        "INSERT INTO invoices (tenant_id, amount_cents, status) \
         VALUES (current_setting('app.current_tenant')::uuid, {id}, '{}') \
         RETURNING current_setting('app.current_tenant', true), tenant_id::text",
        tx.marker('w')
    )
}

pub(crate) fn ext(out: &mut BytesMut, sql: &str) {
    raw::extended(out, sql, &[]);
}

impl<'a> Group<'a> {
    fn new(parent: &Tx<'a>, g: u32) -> Group<'a> {
        let k = parent.k | ((g + 1) << 28);
        let mut rng = parent.rng.clone();
        for _ in 0..=g {
            rng.next();
        }
        let mut tx = Tx::new(
            parent.ledger,
            parent.client,
            k,
            parent.tenant,
            parent.tenant_id,
            rng,
        );
        tx.shape = format!("{} group {g}", parent.shape);
        tx.step(format!("  pipeline so far: {}", parent.steps()));
        Group {
            tx,
            nonces: VecDeque::new(),
            expect_err: None,
            tolerate: None,
            saw_parse: false,
            tags: String::new(),
        }
    }

    fn probe(&mut self, out: &mut BytesMut) {
        let n = self.tx.nonce();
        self.tx.step(format!("  probe {n}"));
        ext(out, &probe_sql(self.tx.client, &n));
        self.nonces.push_back(n);
    }

    fn insert(&mut self, out: &mut BytesMut) {
        let sql = insert_sql(&mut self.tx);
        ext(out, &sql);
    }

    /// BEGIN and the transaction tag.
    fn begin(&mut self, out: &mut BytesMut) {
        let tag = format!("x{}.{}", self.tx.client, self.tx.k);
        self.tx.step("  BEGIN");
        ext(out, "BEGIN");
        ext(
            out,
            &format!("SELECT set_config('chaos.tx', '{tag}', true)"),
        );
        self.tx.tag = Some(tag);
    }

    /// Reads this group's replies up to its ReadyForQuery; false when the connection is gone.
    async fn read(&mut self, c: &mut RawConn, implicit_commit: bool) -> bool {
        let mut err: Option<String> = None;
        let mut committed = implicit_commit;
        loop {
            let Some((tag, body)) = c.recv().await else {
                self.tx.step("  connection lost");
                self.tx.ledger.error("raw: connection lost".into());
                if self.tx.outcome != Outcome::Aborted || implicit_commit {
                    self.tx.outcome = Outcome::Unknown;
                }
                return false;
            };
            self.saw_parse |= tag == b'1';
            self.tags.push(tag as char);
            match tag {
                b'D' => self.row(&(tag, body)),
                b'E' => {
                    let e = messages::parse_error_fields(&body);
                    self.tx.step(format!("  error {} {}", e.code, e.message));
                    if err.is_none() {
                        err = Some(e.code);
                    }
                }
                b'C' if messages::command_tag(&body) == b"COMMIT" => committed = true,
                b'Z' => break,
                _ => {}
            }
        }
        self.tx.tag = None;
        self.tx.outcome = match (&err, self.expect_err) {
            (None, None) if committed => Outcome::Committed,
            (None, None) => Outcome::Unknown,
            (None, Some(want)) => {
                self.tx
                    .violation("missing-error", format!("expected {want}, got success"));
                Outcome::Committed
            }
            (Some(got), Some(want)) if got == want => Outcome::Aborted,
            (Some(got), _) if fault_sqlstate(got) || Some(got.as_str()) == self.tolerate => {
                self.tx.ledger.error(got.clone());
                Outcome::Unknown
            }
            (Some(got), _) if got == "57014" => {
                // Raw clients never cancel.
                let what = "query canceled without a cancel request".to_string();
                self.tx.violation("stray-cancel", what);
                Outcome::Unknown
            }
            (Some(got), _) => {
                self.tx
                    .violation("unexpected-error", format!("SQLSTATE {got}"));
                Outcome::Unknown
            }
        };
        true
    }

    fn row(&mut self, m: &Msg) {
        let rows = raw::data_rows(std::slice::from_ref(m));
        let row = &rows[0];
        match row.len() {
            6 => {
                let want = self.nonces.pop_front().unwrap_or_default();
                self.tx.check_probe(&want, row);
            }
            2 => {
                let v = vec![(
                    row[0].clone().unwrap_or_default(),
                    row[1].clone().unwrap_or_default(),
                )];
                self.tx.check_rows("row", &v);
            }
            _ => {}
        }
    }
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
            let t = &world.tenants[tenant];
            let (addr, user, pw) = (world.addr, t.name.clone(), t.password.clone());
            // Every other raw client speaks TLS, so every raw shape runs over both.
            let tls = (id % 2 == 1).then(|| world.tls_client.clone());
            let over = if tls.is_some() { "tls" } else { "plain" };
            let r = tokio::spawn(async move {
                match tls {
                    Some(tls) => RawConn::connect_tls(addr, &user, &pw, tls).await,
                    None => RawConn::connect(addr, &user, &pw).await,
                }
            })
            .await;
            match r {
                Ok(Ok(c)) => {
                    ledger.shape(format!("raw/connect-{over}"));
                    conn = Some(Conn {
                        c,
                        tenant,
                        prepared: false,
                        history: VecDeque::new(),
                    })
                }
                Ok(Err(e)) => {
                    ledger.error(format!("raw connect: {} {}", e.code, e.message));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => {
                    ledger.error("raw connect: panicked".into());
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
        let shape = workload::pick(&mut tx.rng, &workload::RAW_SHAPES);
        tx.shape = format!("raw/{shape:?}");
        ledger.shape(tx.shape.clone());
        let keep = tokio::time::timeout(Duration::from_secs(60), run_shape(c, tx, shape))
            .await
            .unwrap_or(false);
        if !keep {
            conn = None;
        }
        k += 1;
        if only.is_some() {
            break;
        }
    }
}

pub(crate) async fn send(c: &mut RawConn, bytes: &[u8]) -> bool {
    c.stream.write_all(bytes).await.is_ok()
}

/// Runs one shape; false when the connection is to be dropped.
async fn run_shape(conn: &mut Conn, mut tx: Tx<'_>, shape: RawShape) -> bool {
    let c = &mut conn.c;
    match shape {
        RawShape::PipelineSyncs | RawShape::NamedPrepared => {
            let n = if shape == RawShape::NamedPrepared {
                2
            } else {
                2 + tx.rng.below(3) as u32
            };
            let mut out = BytesMut::new();
            let mut parsed = false;
            if shape == RawShape::NamedPrepared && (!conn.prepared || tx.rng.chance(20)) {
                parsed = true;
                if conn.prepared {
                    raw::close_statement(&mut out, "rp");
                }
                messages::parse(&mut out, "rp", &probe_param_sql(tx.client));
                tx.step("  Parse rp");
                conn.prepared = true;
            }
            if shape == RawShape::NamedPrepared {
                let h: Vec<&str> = conn.history.iter().map(|s| s.as_str()).collect();
                tx.step(format!("  connection history: {}", h.join(" | ")));
            }
            let mut groups: Vec<Group> = (0..n).map(|g| Group::new(&tx, g)).collect();
            for g in groups.iter_mut() {
                if shape == RawShape::NamedPrepared {
                    let nonce = g.tx.nonce();
                    g.tx.step(format!("  Bind rp ({nonce})"));
                    messages::bind(&mut out, "rp", [nonce.as_bytes()].into_iter());
                    messages::execute(&mut out);
                    g.nonces.push_back(nonce);
                    if g.tx.rng.chance(50) {
                        g.insert(&mut out);
                    }
                    raw::sync(&mut out);
                    continue;
                }
                match g.tx.rng.below(4) {
                    0 => g.probe(&mut out),
                    1 => {
                        g.probe(&mut out);
                        g.insert(&mut out);
                        g.probe(&mut out);
                    }
                    2 => {
                        g.insert(&mut out);
                        g.tx.step("  SELECT 1/0");
                        ext(&mut out, "SELECT 1/0");
                        g.probe(&mut out);
                        g.expect_err = Some("22012");
                    }
                    _ => {
                        g.begin(&mut out);
                        g.probe(&mut out);
                        g.insert(&mut out);
                        g.insert(&mut out);
                        g.tx.step("  COMMIT");
                        ext(&mut out, "COMMIT");
                    }
                }
                raw::sync(&mut out);
            }
            for g in groups.iter_mut() {
                g.tx.outcome = Outcome::Unknown;
            }
            tx.step(format!("  {} groups in one write", groups.len()));
            let mut alive = send(c, &out).await;
            if !alive {
                tx.ledger.error("raw: write failed".into());
            }
            // A named statement's ParseComplete comes first.
            let mut kept = Vec::new();
            let mut parse_failed = false;
            let mut summary = format!("txn {} {shape:?} parse={parsed}:", tx.k);
            for mut g in groups {
                if parse_failed {
                    g.tolerate = Some("26000");
                }
                if alive {
                    let implicit = g.tx.tag.is_none();
                    alive = g.read(c, implicit).await;
                }
                if parsed && kept.is_empty() && !g.saw_parse {
                    // The Parse itself failed (a fault): the statement does not exist.
                    parse_failed = true;
                    conn.prepared = false;
                }
                summary += &format!(" [{}]", g.tags);
                kept.push(g);
            }
            if conn.history.len() >= 6 {
                conn.history.pop_front();
            }
            conn.history.push_back(summary);
            for g in kept {
                g.tx.finish();
            }
            tx.finish();
            alive
        }
        RawShape::SimpleMulti => {
            let mut g = Group::new(&tx, 0);
            let tag = format!("x{}.{}", tx.client, tx.k);
            let n1 = g.tx.nonce();
            let ins1 = insert_sql(&mut g.tx);
            let ins2 = insert_sql(&mut g.tx);
            let fail = g.tx.rng.chance(30);
            let mut sql = format!(
                "BEGIN; SELECT set_config('chaos.tx', '{tag}', true); {}; {ins1}; ",
                probe_sql(tx.client, &n1)
            );
            if fail {
                sql += "SELECT 1/0; ";
                g.expect_err = Some("22012");
            }
            sql += &format!("{ins2}; COMMIT");
            g.tx.step(format!("  simple query: {sql}"));
            g.nonces.push_back(n1);
            g.tx.tag = Some(tag);
            g.tx.outcome = Outcome::Unknown;
            let mut out = BytesMut::new();
            messages::query(&mut out, &sql);
            let alive = send(c, &out).await && g.read(c, false).await;
            g.tx.finish();
            tx.finish();
            alive
        }
        RawShape::SlowConsumer => {
            let nonce = tx.nonce();
            let rows = 20_000;
            let wait = 500 + tx.rng.below(2500);
            let mut out = BytesMut::new();
            messages::query(
                &mut out,
                &format!("SELECT '{nonce}', repeat('x', 200), g FROM generate_series(1, {rows}) g"),
            );
            tx.step(format!("  {rows} rows, read after {wait} ms"));
            if !send(c, &out).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let msgs = c.until_ready().await;
            let data = raw::data_rows(&msgs);
            let errs = raw::errors(&msgs);
            if let Some(e) = errs.first() {
                if !fault_sqlstate(&e.code) {
                    tx.violation("unexpected-error", format!("{} {}", e.code, e.message));
                }
                tx.finish();
                return false;
            }
            if msgs.last().map(|m| m.0) != Some(b'Z') {
                tx.finish();
                return false;
            }
            let wrong = data
                .iter()
                .filter(|r| r[0].as_deref() != Some(nonce.as_str()))
                .count();
            if data.len() != rows || wrong > 0 {
                tx.violation(
                    "reply-for-another-statement",
                    format!(
                        "{} rows ({wrong} with another nonce), expected {rows}",
                        data.len()
                    ),
                );
            }
            tx.finish();
            true
        }
        _ => super::raw_cuts::cut(c, tx, shape).await,
    }
}
