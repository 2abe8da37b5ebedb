//! The seeded workload generator: every transaction's decisions come from an RNG derived
//! from (seed, client, transaction number), so one transaction can be replayed alone.

/// A tiny deterministic RNG (xorshift64*), so a seed reproduces the workload.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// An RNG for one stream of decisions.
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `pct` %.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Transactions per connection: a client reconnects (maybe as another tenant) after these.
pub const SESSION_LEN: u32 = 40;

/// The RNG of transaction `k` of `client`.
pub fn txn_rng(seed: u64, client: u32, k: u32) -> Rng {
    Rng::new(seed ^ splitmix(((client as u64) << 32) | k as u64))
}

/// The tenant (index) client `client` uses for transaction `k`: fixed per session.
pub fn tenant_of(seed: u64, client: u32, k: u32, tenants: usize) -> usize {
    let session = k / SESSION_LEN;
    let mut r = Rng::new(seed ^ 0x5E55_1011 ^ splitmix(((client as u64) << 32) | session as u64));
    r.below(tenants as u64) as usize
}

/// What a tokio-postgres client does in one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PgShape {
    Autocommit,
    Explicit,
    Pipeline,
    NamedPrepared,
    UnnamedPrepared,
    ErrorMiddle,
    Savepoint,
    CopyIn,
    CopyInAborted,
    CopyOut,
    Cursor,
    PortalRows,
    ResetAll,
    DiscardAll,
    SessionSet,
    TempTable,
    Listen,
    Cancel,
    DisconnectInTx,
}

/// Every tokio-postgres shape with its weight.
pub const PG_SHAPES: [(PgShape, u64); 19] = [
    (PgShape::Autocommit, 10),
    (PgShape::Explicit, 12),
    (PgShape::Pipeline, 6),
    (PgShape::NamedPrepared, 6),
    (PgShape::UnnamedPrepared, 5),
    (PgShape::ErrorMiddle, 4),
    (PgShape::Savepoint, 5),
    (PgShape::CopyIn, 4),
    (PgShape::CopyInAborted, 2),
    (PgShape::CopyOut, 3),
    (PgShape::Cursor, 3),
    (PgShape::PortalRows, 3),
    (PgShape::ResetAll, 2),
    (PgShape::DiscardAll, 2),
    (PgShape::SessionSet, 3),
    (PgShape::TempTable, 3),
    (PgShape::Listen, 3),
    (PgShape::Cancel, 2),
    (PgShape::DisconnectInTx, 2),
];

/// What a raw-protocol client does in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RawShape {
    /// Several Sync-terminated groups in one write, some with an error.
    PipelineSyncs,
    /// BEGIN; INSERT; ...; COMMIT in one simple Query.
    SimpleMulti,
    /// A named statement parsed once per connection, bound in many groups.
    NamedPrepared,
    /// Vanish after a Parse (no Sync).
    CutAfterParse,
    /// Vanish after Parse+Bind of an INSERT (no Execute, no Sync).
    CutAfterBind,
    /// Vanish after Execute of an INSERT without Sync: it must never commit.
    CutAfterExecute,
    /// Vanish inside COPY FROM STDIN.
    CutInCopy,
    /// Vanish in the middle of a message.
    CutMidMessage,
    /// Vanish inside an explicit transaction after its Sync.
    CutInTransaction,
    /// Vanish in the middle of the COMMIT of an open transaction: inside its TLS record
    /// (TLS clients) or inside the message (plain ones). The write must not commit.
    CutMidRecord,
    /// Ask for a large result and read nothing for a while.
    SlowConsumer,
}

/// Every raw shape with its weight.
pub const RAW_SHAPES: [(RawShape, u64); 11] = [
    (RawShape::PipelineSyncs, 14),
    (RawShape::SimpleMulti, 8),
    (RawShape::NamedPrepared, 8),
    (RawShape::CutAfterParse, 2),
    (RawShape::CutAfterBind, 2),
    (RawShape::CutAfterExecute, 3),
    (RawShape::CutInCopy, 2),
    (RawShape::CutMidMessage, 2),
    (RawShape::CutInTransaction, 2),
    (RawShape::CutMidRecord, 2),
    (RawShape::SlowConsumer, 1),
];

/// Picks an item by weight.
pub fn pick<T: Copy>(rng: &mut Rng, items: &[(T, u64)]) -> T {
    let total: u64 = items.iter().map(|i| i.1).sum();
    let mut x = rng.below(total);
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items[0].0
}
