//! The history: every transaction's writes and outcome, every violation with its trace,
//! and the counts of shapes run and faults injected. The final check compares it with a
//! direct read of the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the client learned about its transaction's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PostgreSQL (through pgtenant) reported the commit.
    Committed,
    /// Rolled back, failed, or abandoned before COMMIT was sent: nothing may persist.
    Aborted,
    /// COMMIT (or an autocommit write) was sent but its reply was lost: all or nothing.
    Unknown,
}

/// One transaction that sent writes.
#[derive(Clone, Debug)]
pub struct TxnRec {
    pub tenant: u16,
    pub outcome: Outcome,
    /// Writes (by index) that were sent.
    pub sent: u64,
    /// Writes that must persist if the transaction committed (sent minus rolled back).
    pub expected: u64,
    pub shape: &'static str,
    pub trace: String,
}

/// The unique id of write `j` of transaction `k` of `client` (stored in amount_cents).
pub fn write_id(client: u32, k: u32, j: u32) -> i64 {
    (((client as i64) + 1) << 40) | ((k as i64) << 6) | (j as i64 & 63)
}

/// (client, k, j) of a write id; None for rows the checker did not write.
pub fn decode(id: i64) -> Option<(u32, u32, u32)> {
    let client = (id >> 40) - 1;
    if client < 0 {
        return None;
    }
    Some((
        client as u32,
        ((id >> 6) & 0x3_FFFF_FFFF) as u32,
        (id & 63) as u32,
    ))
}

/// Violation kinds of known bugs that have an ignored regression test of their own: counted
/// and printed with their traces, but they do not fail the run (CHAOS_STRICT=1 makes them).
/// None now: `stray-cancel` was listed until its source was found (PostgreSQL signals a
/// cancelled backend twice; benches/RESULTS.md, chaos, afternoon).
pub const KNOWN_BUGS: [&str; 0] = [];

/// Everything that happened in a run.
#[derive(Default)]
pub struct Ledger {
    pub seed: u64,
    txns: Mutex<HashMap<(u32, u32), TxnRec>>,
    violations: Mutex<Vec<String>>,
    kinds: Mutex<BTreeMap<&'static str, u64>>,
    shapes: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub transactions: AtomicU64,
    pub statements: AtomicU64,
    /// Stop once this many transactions ran (0: only the time limit stops the run).
    pub target: u64,
}

impl Ledger {
    /// A ledger for a run with `seed`.
    pub fn new(seed: u64) -> Ledger {
        Ledger {
            seed,
            ..Default::default()
        }
    }

    /// Records a finished transaction that sent writes.
    pub fn record(&self, client: u32, k: u32, rec: TxnRec) {
        self.txns.lock().unwrap().insert((client, k), rec);
    }

    /// Whether the run has reached its transaction target.
    pub fn enough(&self) -> bool {
        self.target > 0 && self.transactions.load(Ordering::Relaxed) >= self.target
    }

    /// Counts a shape run.
    pub fn shape(&self, name: String) {
        *self.shapes.lock().unwrap().entry(name).or_default() += 1;
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fault injected.
    pub fn fault(&self, name: &'static str) {
        *self.faults.lock().unwrap().entry(name).or_default() += 1;
    }

    /// Counts an expected error (fault fallout), by SQLSTATE or kind.
    pub fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }

    /// Records an invariant violation with its trace and how to replay it.
    pub fn violation(&self, kind: &'static str, client: u32, k: u32, detail: String) {
        *self.kinds.lock().unwrap().entry(kind).or_default() += 1;
        let mut v = self.violations.lock().unwrap();
        if v.len() < 50 {
            v.push(format!(
                "VIOLATION {kind}: seed={} client={client} txn={k}: {detail}\n    replay: CHAOS_SEED={} CHAOS_REPLAY={client}:{k}",
                self.seed, self.seed
            ));
        }
    }

    /// Number of violations, without those of [`KNOWN_BUGS`] unless `strict`.
    pub fn violation_count(&self, strict: bool) -> u64 {
        self.kinds
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| strict || !KNOWN_BUGS.contains(k))
            .map(|(_, n)| n)
            .sum()
    }

    /// The recorded violations (first 50).
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Violations per kind.
    pub fn kinds(&self) -> BTreeMap<&'static str, u64> {
        self.kinds.lock().unwrap().clone()
    }

    /// Shapes run.
    pub fn shapes(&self) -> BTreeMap<String, u64> {
        self.shapes.lock().unwrap().clone()
    }

    /// Faults injected.
    pub fn faults(&self) -> BTreeMap<&'static str, u64> {
        self.faults.lock().unwrap().clone()
    }

    /// Expected errors seen.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }

    /// Compares the history with the rows read directly: (amount_cents, tenant index of the
    /// row, tenant index in its status marker). Returns the number of transactions checked.
    pub fn check_final(&self, rows: &[(i64, usize, Option<usize>)]) -> usize {
        let txns = self.txns.lock().unwrap().clone();
        let mut found: HashMap<(u32, u32), u64> = HashMap::new();
        for &(id, row_tenant, marker) in rows {
            if let Some(m) = marker
                && m != row_tenant
            {
                self.violation(
                    "row-changed-by-other-tenant",
                    u32::MAX,
                    0,
                    format!("row {id} of tenant {row_tenant} carries tenant {m}'s marker"),
                );
            }
            let Some((client, k, j)) = decode(id) else {
                continue;
            };
            match txns.get(&(client, k)) {
                None => self.violation(
                    "phantom-write",
                    client,
                    k,
                    format!("row {id} (write {j}) exists but its transaction never sent writes"),
                ),
                Some(t) => {
                    if t.tenant as usize != row_tenant {
                        self.violation(
                            "write-in-wrong-tenant",
                            client,
                            k,
                            format!(
                                "write {j} is in tenant {row_tenant}, sent as tenant {}\n{}",
                                t.tenant, t.trace
                            ),
                        );
                    }
                    *found.entry((client, k)).or_default() |= 1 << j;
                }
            }
        }
        for (&(client, k), t) in &txns {
            let got = found.get(&(client, k)).copied().unwrap_or(0);
            let ok = match t.outcome {
                Outcome::Committed => got == t.expected,
                Outcome::Aborted => got == 0,
                Outcome::Unknown => got == 0 || got == t.expected,
            };
            if !ok {
                let kind = match t.outcome {
                    Outcome::Committed if got & t.expected != t.expected => "committed-write-lost",
                    Outcome::Committed => "rolled-back-write-committed",
                    Outcome::Aborted => "aborted-write-committed",
                    Outcome::Unknown => "partial-commit",
                };
                self.violation(
                    kind,
                    client,
                    k,
                    format!(
                        "shape {} tenant {} outcome {:?}: sent {:b} expected {:b} found {:b}\n{}",
                        t.shape, t.tenant, t.outcome, t.sent, t.expected, got, t.trace
                    ),
                );
            }
        }
        txns.len()
    }
}
