//! One transaction as a client runs it: its trace, its writes and outcome, and the checks
//! every statement's probe row must pass.

use super::ledger::{Ledger, Outcome, TxnRec, write_id};
use super::workload::Rng;

/// Columns of the probe every client statement reads: its nonce, the tenant context, the
/// transaction tag, the session tag and foreign temp tables / cursors visible.
pub fn probe_columns(client: u32) -> String {
    format!(
        "current_setting('app.current_tenant', true), \
         coalesce(current_setting('chaos.tx', true), ''), \
         current_setting('application_name'), \
         (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema() \
            AND relname NOT LIKE 'tt!_{client}!_%' ESCAPE '!')::text, \
         (SELECT count(*) FROM pg_catalog.pg_cursors WHERE name <> '' AND name NOT LIKE 'cur!_{client}!_%' ESCAPE '!')::text"
    )
}

/// The probe with its nonce as a literal.
pub fn probe_sql(client: u32, nonce: &str) -> String {
    format!("SELECT '{nonce}', {}", probe_columns(client))
}

/// The probe with its nonce as parameter $1 (for prepared statements).
pub fn probe_param_sql(client: u32) -> String {
    format!("SELECT $1::text, {}", probe_columns(client))
}

/// Rows of the tenant's invoices with the context each was read under.
pub const ROWS_SQL: &str =
    "SELECT current_setting('app.current_tenant', true), tenant_id::text FROM invoices LIMIT 10";

/// One transaction in progress.
pub struct Tx<'a> {
    pub ledger: &'a Ledger,
    pub client: u32,
    pub k: u32,
    pub tenant: usize,
    pub tenant_id: &'a str,
    pub rng: Rng,
    pub shape: String,
    trace: Vec<String>,
    sent: u64,
    expected: u64,
    next_write: u32,
    nonces: u32,
    /// How the transaction ends if the connection fails now.
    pub outcome: Outcome,
    /// The chaos.tx tag set inside the explicit transaction, if any.
    pub tag: Option<String>,
    /// A cancel was requested, so one 57014 is expected.
    pub cancel_expected: bool,
    /// The connection's earlier cancel may still stop one statement (see pg_client's Conn).
    pub late_cancel: bool,
}

impl<'a> Tx<'a> {
    /// Starts transaction `k` of `client` as `tenant`.
    pub fn new(
        ledger: &'a Ledger,
        client: u32,
        k: u32,
        tenant: usize,
        tenant_id: &'a str,
        rng: Rng,
    ) -> Tx<'a> {
        Tx {
            ledger,
            client,
            k,
            tenant,
            tenant_id,
            rng,
            shape: String::new(),
            trace: Vec::new(),
            sent: 0,
            expected: 0,
            next_write: 0,
            nonces: 0,
            outcome: Outcome::Aborted,
            tag: None,
            cancel_expected: false,
            late_cancel: false,
        }
    }

    /// Adds a step to the trace.
    pub fn step(&mut self, s: impl Into<String>) {
        if self.trace.len() < 64 {
            self.trace.push(s.into());
        }
    }

    /// A fresh nonce for one statement.
    pub fn nonce(&mut self) -> String {
        self.nonces += 1;
        format!("n{}.{}.{}", self.client, self.k, self.nonces)
    }

    /// The session tag this client sets as application_name.
    pub fn who(&self) -> String {
        format!("chaos-c{}", self.client)
    }

    /// The status marker of rows this tenant writes or updates.
    pub fn marker(&self, what: char) -> String {
        format!("{what}:{}", self.tenant)
    }

    /// Allocates the next write: (its index, its unique id); counted as sent and expected.
    pub fn write(&mut self) -> (u32, i64) {
        let j = self.next_write.min(63);
        self.next_write += 1;
        self.sent |= 1 << j;
        self.expected |= 1 << j;
        (j, write_id(self.client, self.k, j))
    }

    /// The index of the write handed out last.
    pub fn last_write(&self) -> u32 {
        self.next_write.saturating_sub(1).min(63)
    }

    /// Write `j` was rolled back to a savepoint: it must not persist.
    pub fn unexpect(&mut self, j: u32) {
        self.expected &= !(1 << j);
    }

    /// The steps so far, for a pipeline group to carry its pipeline's.
    pub fn steps(&self) -> String {
        self.trace.join("; ")
    }

    /// The trace so far, one step a line.
    pub fn trace(&self) -> String {
        format!(
            "    tenant {} ({}), shape {}\n      {}",
            self.tenant,
            self.tenant_id,
            self.shape,
            self.trace.join("\n      ")
        )
    }

    /// Records a violation with this transaction's trace.
    pub fn violation(&self, kind: &'static str, detail: String) {
        self.ledger.violation(
            kind,
            self.client,
            self.k,
            format!("{detail} (at {})\n{}", wall_clock(), self.trace()),
        );
    }

    /// Checks one probe row: [nonce, context, tx tag, application_name, temp, cursors].
    pub fn check_probe(&mut self, nonce: &str, row: &[Option<String>]) {
        self.ledger
            .statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (n, ctx, tag, app, temp, cursors) = (get(0), get(1), get(2), get(3), get(4), get(5));
        self.step(format!(
            "  probe {n} ctx={ctx} tx={tag:?} app={app:?} temp={temp} cursors={cursors}"
        ));
        if n != nonce {
            self.violation(
                "reply-for-another-statement",
                format!("sent nonce {nonce}, got {n}"),
            );
        }
        if ctx != self.tenant_id {
            self.violation(
                "wrong-context",
                format!("context {ctx:?}, expected {}", self.tenant_id),
            );
        }
        let want = self.tag.clone().unwrap_or_default();
        if tag != want {
            self.violation(
                "foreign-transaction-state",
                format!("chaos.tx {tag:?}, expected {want:?}"),
            );
        }
        if app.starts_with("chaos-") && app != self.who() {
            self.violation("foreign-session-state", format!("application_name {app:?}"));
        }
        if temp != "0" {
            self.violation(
                "foreign-temp-table",
                format!("{temp} temp tables of others visible"),
            );
        }
        if cursors != "0" {
            self.violation(
                "foreign-cursor",
                format!("{cursors} cursors of others open"),
            );
        }
    }

    /// Checks rows of (context, tenant_id): all the tenant's own.
    pub fn check_rows(&mut self, what: &str, rows: &[(String, String)]) {
        self.ledger
            .statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.step(format!("  {what}: {} rows", rows.len()));
        for (ctx, tid) in rows {
            if ctx != self.tenant_id || tid != self.tenant_id {
                self.violation(
                    "foreign-row-visible",
                    format!("{what}: context {ctx:?}, row of tenant {tid:?}"),
                );
            }
        }
    }

    /// Records the transaction in the ledger if it sent writes.
    pub fn finish(self) {
        if self.sent != 0 {
            let trace = self.trace();
            self.ledger.record(
                self.client,
                self.k,
                TxnRec {
                    tenant: self.tenant as u16,
                    outcome: self.outcome,
                    sent: self.sent,
                    expected: self.expected,
                    shape: leak_name(&self.shape),
                    trace,
                },
            );
        }
    }
}

/// Shape names are few; intern them as 'static.
fn leak_name(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut g = NAMES.lock().unwrap();
    let set = g.get_or_insert_with(HashSet::new);
    if let Some(n) = set.get(s) {
        return n;
    }
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(n);
    n
}

/// The time of day (UTC, to the millisecond), to find a violation in pgtenant's log.
fn wall_clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 86_400_000;
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", ms % 1000)
}
