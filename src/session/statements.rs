//! Named prepared statements under transaction pooling, the client's side. A client's
//! statement names are its own: the proxy remembers each definition, and on whichever
//! backend serves the client it uses the proxy-owned name of the definition
//! ([`StatementDef`]); what each backend has prepared is
//! [`crate::backend::statements::BackendStatements`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;

use crate::backend::statements::StatementDef;
use crate::policy::Reading;
use crate::policy::sql::Leftover;
pub use crate::pool::StatementBudgets as Budgets;
use crate::protocol::codec::{Frame, read_cstr};
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages::write_msg;

/// The statements one client has prepared, by the client's names. Both parts are boxed
/// and made on first use: every idle client has a session, and most have no named
/// statements (16 bytes here instead of 80 keep the session in a smaller size class).
#[derive(Debug, Default)]
pub struct ClientStatements {
    #[allow(
        clippy::box_collection,
        reason = "an empty HashMap is 48 bytes in every idle session; the box is 8 until used"
    )]
    by_name: Option<Box<Named>>,
    /// The unnamed statement, kept apart: drivers re-parse it for nearly every query, so
    /// it is copied into a reused buffer and never hashed, named or shared.
    unnamed: Option<Box<Unnamed>>,
}

/// What one named statement costs the proxy beyond its name and body (the map entry, the
/// definition with its backend name, the allocations' headers), counted against the
/// budget so that many tiny statements cost what they take.
const ENTRY_COST: usize = 256;

/// Where a client's statement bytes are also counted: the pool's total over all its
/// clients, and its tenant's over all the tenant's clients.
#[derive(Debug, Clone)]
pub struct Usage {
    pub pool: Arc<AtomicUsize>,
    pub tenant: Arc<AtomicUsize>,
}

impl Usage {
    fn add(&self, n: usize) {
        self.pool.fetch_add(n, Ordering::Relaxed);
        self.tenant.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.pool.fetch_sub(n, Ordering::Relaxed);
        self.tenant.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The client's named statements, and the bytes they take, also counted in `usage`.
#[derive(Debug)]
struct Named {
    map: HashMap<Vec<u8>, Arc<StatementDef>>,
    bytes: usize,
    usage: Usage,
}

impl Named {
    fn add(&mut self, n: usize) {
        self.bytes += n;
        self.usage.add(n);
    }

    fn sub(&mut self, n: usize) {
        self.bytes -= n;
        self.usage.sub(n);
    }

    fn take(&mut self, name: &[u8]) {
        if let Some(d) = self.map.remove(name) {
            self.sub(cost(name, &d.body));
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.usage.sub(self.bytes);
    }
}

/// Which budget a named Parse would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The client's own (`prepared_statement_bytes`).
    Client,
    /// All clients' of the pool together (`prepared_statement_bytes_total`).
    Pool,
    /// All clients' of the tenant together (`prepared_statement_bytes_per_tenant`).
    Tenant,
}

/// What a named statement counts against the budget.
fn cost(name: &[u8], body: &[u8]) -> usize {
    name.len() + body.len() + ENTRY_COST
}

/// The client's unnamed statement: its Parse body after the (empty) name, counted in
/// `usage` while it is kept.
#[derive(Debug)]
pub struct Unnamed {
    pub body: Vec<u8>,
    pub reading: Reading,
    usage: Usage,
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        self.usage.sub(self.body.len());
    }
}

/// Capacity an unnamed statement's buffer keeps across Parses; a larger one is released
/// when a smaller text replaces it.
const UNNAMED_KEPT: usize = 64 * 1024;

/// What a Parse defined.
#[derive(Debug)]
pub enum Defined {
    Unnamed,
    Named(Arc<StatementDef>),
}

impl ClientStatements {
    /// Records the statement a Parse defines, with what the guard read in its query; its
    /// bytes count in `usage` (the pool's and the tenant's totals) too.
    pub fn define(
        &mut self,
        parse_body: &[u8],
        reading: Reading,
        usage: impl FnOnce() -> Usage,
    ) -> Option<Defined> {
        let (name, rest) = read_cstr(parse_body)?;
        if name.is_empty() {
            let u = self.unnamed.get_or_insert_with(|| {
                Box::new(Unnamed {
                    body: Vec::new(),
                    reading: Reading::default(),
                    usage: usage(),
                })
            });
            // Drivers re-parse texts of one length over and over: the shared total moves
            // only when the length does.
            let old = u.body.len();
            if rest.len() > old {
                u.usage.add(rest.len() - old);
            } else if rest.len() < old {
                u.usage.sub(old - rest.len());
            }
            if u.body.capacity() > UNNAMED_KEPT && rest.len() <= UNNAMED_KEPT {
                u.body = Vec::new();
            }
            u.body.clear();
            u.body.extend_from_slice(rest);
            u.reading = reading;
            return Some(Defined::Unnamed);
        }
        let def = Arc::new(StatementDef::new(rest, reading));
        let named = self.by_name.get_or_insert_with(|| {
            Box::new(Named {
                map: HashMap::new(),
                bytes: 0,
                usage: usage(),
            })
        });
        named.take(name);
        named.add(cost(name, &def.body));
        named.map.insert(name.to_vec(), def.clone());
        Some(Defined::Named(def))
    }

    /// The name a Parse would define when the client already has a statement of that name
    /// (PostgreSQL refuses such a Parse with 42P05 and keeps the first definition). The
    /// unnamed statement is replaced by every Parse.
    pub fn redefined<'a>(&self, parse_body: &'a [u8]) -> Option<&'a [u8]> {
        let (name, _) = read_cstr(parse_body)?;
        (!name.is_empty() && self.by_name.as_ref()?.map.contains_key(name)).then_some(name)
    }

    /// Which budget the statement a Parse defines would exceed: the client's own (named
    /// statements), or the total of all clients of the pool (`pool` counts it), or of the
    /// tenant (`tenant`).
    pub fn over_budget(
        &self,
        parse_body: &[u8],
        budgets: Budgets,
        (pool, tenant): (&AtomicUsize, &AtomicUsize),
    ) -> Option<Over> {
        let (name, rest) = read_cstr(parse_body)?;
        let pool = pool.load(Ordering::Relaxed);
        let tenant = tenant.load(Ordering::Relaxed);
        // The unnamed statement (one bulk INSERT may be large) counts in the totals only,
        // and replaces the last one.
        let (n, freed) = if name.is_empty() {
            (
                rest.len(),
                self.unnamed.as_ref().map_or(0, |u| u.body.len()),
            )
        } else {
            (cost(name, rest), 0)
        };
        let held = self.by_name.as_ref().map_or(0, |n| n.bytes);
        if !name.is_empty() && held + n > budgets.client {
            Some(Over::Client)
        } else if tenant.saturating_sub(freed) + n > budgets.tenant {
            Some(Over::Tenant)
        } else if pool.saturating_sub(freed) + n > budgets.total {
            Some(Over::Pool)
        } else {
            None
        }
    }

    /// The definition behind a client statement name (not the unnamed statement).
    pub fn get(&self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.by_name.as_ref()?.map.get(name).cloned()
    }

    /// The client's name for the statement the proxy prepared on backends as
    /// `backend_name` (for PostgreSQL's messages that name it).
    pub fn name_of(&self, backend_name: &[u8]) -> Option<&[u8]> {
        let named = self.by_name.as_ref()?;
        named
            .map
            .iter()
            .find(|(_, d)| d.backend_name.as_bytes() == backend_name)
            .map(|(k, _)| k.as_slice())
    }

    /// The unnamed statement, if the client has parsed one.
    pub fn unnamed(&self) -> Option<&Unnamed> {
        self.unnamed.as_deref()
    }

    /// What the guard read in the statement a Bind names (the unnamed one for an empty
    /// name); None for a name the client never defined.
    pub fn reading(&self, name: &[u8]) -> Option<Reading> {
        if name.is_empty() {
            self.unnamed.as_ref().map(|u| u.reading)
        } else {
            self.by_name.as_ref()?.map.get(name).map(|d| d.reading)
        }
    }

    /// What running the statement a Bind names may leave (the sweep for an unknown name).
    pub fn leftover(&self, name: &[u8]) -> Leftover {
        self.reading(name).map_or(Leftover::Sweep, |r| r.leftover)
    }

    /// Forgets a statement (client Close, or a Parse that failed).
    pub fn remove(&mut self, name: &[u8]) {
        if let Some(m) = &mut self.by_name {
            m.take(name);
        }
    }

    /// Forgets every name bound to a backend statement whose Parse failed.
    pub fn forget_backend_name(&mut self, backend_name: &str) {
        if let Some(m) = &mut self.by_name {
            let mut freed = 0;
            m.map.retain(|name, d| {
                let keep = d.backend_name != backend_name;
                if !keep {
                    freed += cost(name, &d.body);
                }
                keep
            });
            m.sub(freed);
        }
    }

    /// Forgets everything (DEALLOCATE ALL / DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name = None;
        self.unnamed = None;
    }
}

/// Rewrites a Bind's statement name; None when the message is malformed.
pub fn rewrite_bind(frame: &Frame, backend_name: &str, out: &mut BytesMut) -> Option<()> {
    let (portal, rest) = read_cstr(frame.body())?;
    let (_, rest) = read_cstr(rest)?;
    write_msg(out, ft::BIND, |b| {
        b.extend_from_slice(portal);
        b.extend_from_slice(&[0]);
        b.extend_from_slice(backend_name.as_bytes());
        b.extend_from_slice(&[0]);
        b.extend_from_slice(rest);
    });
    Some(())
}

/// Rewrites a Describe of a statement to the backend name.
pub fn rewrite_describe(backend_name: &str, out: &mut BytesMut) {
    write_msg(out, ft::DESCRIBE, |b| {
        b.extend_from_slice(b"S");
        b.extend_from_slice(backend_name.as_bytes());
        b.extend_from_slice(&[0]);
    });
}

/// True when the client's buffered requests (`pending`, after the one being handled) hold,
/// before the next Sync, one that needs a backend: anything but a named Parse, the Close of
/// a named statement or a Flush. What is not buffered yet is not known: false.
pub fn backend_needed_before_sync(pending: &[u8]) -> bool {
    let mut rest = pending;
    while let Some(&tag) = rest.first() {
        let body = rest.get(5..).unwrap_or_default();
        let local = match tag {
            ft::SYNC => return false,
            ft::FLUSH => true,
            ft::PARSE => body.first().is_some_and(|&b| b != 0),
            ft::CLOSE => body.first() == Some(&b'S') && body.get(1).is_some_and(|&b| b != 0),
            _ => false,
        };
        if !local {
            return true;
        }
        let Some(len) = rest
            .get(1..5)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        else {
            return false;
        };
        match rest.get(1 + len..) {
            Some(next) if len >= 4 => rest = next,
            _ => return false,
        }
    }
    false
}

/// True for a Parse of the unnamed statement.
pub fn parse_is_unnamed(frame: &Frame) -> bool {
    frame.body().first() == Some(&0)
}

/// The statement name a Bind body refers to.
pub fn bind_statement(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = read_cstr(body)?;
    read_cstr(rest).map(|(s, _)| s)
}

/// For Describe/Close: `Some(name)` when the target is a statement ('S').
pub fn statement_target(frame: &Frame) -> Option<&[u8]> {
    let body = frame.body();
    if body.first() != Some(&b'S') {
        return None;
    }
    read_cstr(body.get(1..)?).map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            pool: Arc::default(),
            tenant: Arc::default(),
        }
    }

    fn named(c: &mut ClientStatements, parse: &[u8]) -> Arc<StatementDef> {
        match c.define(parse, Reading::default(), usage) {
            Some(Defined::Named(d)) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn named_statements_are_counted_against_the_byte_budgets() {
        let usage = usage();
        let counted = || usage.pool.load(Ordering::Relaxed);
        let define = |c: &mut ClientStatements, parse: &[u8]| match c.define(
            parse,
            Reading::default(),
            || usage.clone(),
        ) {
            Some(Defined::Named(d)) => d,
            other => panic!("{other:?}"),
        };
        let budgets = |client, total, tenant| Budgets {
            client,
            total,
            tenant,
        };
        let counters = (&*usage.pool, &*usage.tenant);
        let over = |c: &ClientStatements, parse: &[u8], limit: usize, total: usize| {
            c.over_budget(parse, budgets(limit, total, usize::MAX), counters)
        };
        let mut c = ClientStatements::default();
        // Name "s1" (2) + body "select 1\0" + no types (2 + 9 + 2 = 13 bytes) + the entry.
        let one = 13 + ENTRY_COST;
        let s1 = b"s1\0select 1\0\0\0";
        assert_eq!(over(&c, s1, one, one), None);
        assert_eq!(over(&c, s1, one - 1, one), Some(Over::Client));
        define(&mut c, s1);
        assert_eq!(counted(), one);
        assert_eq!(
            usage.tenant.load(Ordering::Relaxed),
            one,
            "the tenant's too"
        );
        let s2 = b"s2\0select 2\0\0\0";
        assert_eq!(over(&c, s2, 2 * one - 1, 9 * one), Some(Over::Client));
        assert_eq!(over(&c, s2, 2 * one, 9 * one), None);
        // The tenant's share of the total.
        let tenant_over = c.over_budget(s2, budgets(9 * one, 9 * one, 2 * one - 1), counters);
        assert_eq!(tenant_over, Some(Over::Tenant));
        // The unnamed statement counts (its body, no entry) in the totals only, and
        // replaces the last one.
        let unnamed = b"\0select 3\0\0\0";
        assert_eq!(over(&c, unnamed, 0, one + 11), None);
        assert_eq!(over(&c, unnamed, 0, one + 10), Some(Over::Pool));
        let tenant_over = c.over_budget(unnamed, budgets(0, 9 * one, one + 10), counters);
        assert_eq!(tenant_over, Some(Over::Tenant));
        assert!(matches!(
            c.define(unnamed, Reading::default(), || usage.clone()),
            Some(Defined::Unnamed)
        ));
        c.define(unnamed, Reading::default(), || usage.clone());
        assert_eq!(counted(), one + 11);
        assert_eq!(over(&c, unnamed, one + 11, one + 11), None, "a replacement");
        c.unnamed = None;
        assert_eq!(counted(), one);
        // Another client's statements count in the pool's total, not in this client's.
        let mut other = ClientStatements::default();
        define(&mut other, s1);
        assert_eq!(over(&c, s2, 2 * one, 2 * one), Some(Over::Pool));
        drop(other);
        assert_eq!(counted(), one, "a client's go with it");
        c.remove(b"s1");
        assert_eq!(over(&c, s2, one, one), None);
        let d = define(&mut c, s2);
        c.forget_backend_name(&d.backend_name);
        assert_eq!(counted(), 0);
        define(&mut c, s1);
        c.clear();
        assert_eq!(counted(), 0);
        assert_eq!(usage.tenant.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_named_parse_needs_a_backend_when_a_request_that_needs_one_follows_before_sync() {
        use crate::protocol::messages;
        let mut b = BytesMut::new();
        messages::parse(&mut b, "s1", "select 1");
        messages::sync(&mut b);
        assert!(!backend_needed_before_sync(&b), "Parse, Sync: local");
        let mut b = BytesMut::new();
        messages::bind(&mut b, "s1", std::iter::empty());
        messages::execute(&mut b);
        messages::sync(&mut b);
        assert!(backend_needed_before_sync(&b), "Bind follows");
        let mut b = BytesMut::new();
        write_msg(&mut b, ft::DESCRIBE, |m| m.extend_from_slice(b"Ss1\0"));
        messages::sync(&mut b);
        assert!(backend_needed_before_sync(&b), "Describe follows");
        let mut b = BytesMut::new();
        messages::parse(&mut b, "s2", "select 2");
        write_msg(&mut b, ft::CLOSE, |m| m.extend_from_slice(b"Ss0\0"));
        write_msg(&mut b, ft::FLUSH, |_| {});
        assert!(
            !backend_needed_before_sync(&b),
            "named Parse, Close, Flush, nothing yet"
        );
        messages::parse(&mut b, "", "select 3");
        assert!(
            backend_needed_before_sync(&b),
            "an unnamed Parse goes to a backend"
        );
        let mut b = BytesMut::new();
        messages::sync(&mut b);
        messages::bind(&mut b, "s1", std::iter::empty());
        assert!(
            !backend_needed_before_sync(&b),
            "after the Sync is another pipeline"
        );
        // A partial frame: its tag is known, its end is not; a Parse whose name has not
        // arrived may be the unnamed one.
        assert!(backend_needed_before_sync(b"B\0\0"));
        assert!(backend_needed_before_sync(b"P\0\0"));
        assert!(!backend_needed_before_sync(b""));
    }

    #[test]
    fn same_sql_same_backend_name_and_different_sql_different_name() {
        let mut a = ClientStatements::default();
        let x = named(&mut a, b"s0\0select 1\0\0\0");
        let y = named(&mut a, b"s1\0select 1\0\0\0");
        let z = named(&mut a, b"s0\0select 2\0\0\0");
        assert_eq!(x.backend_name, y.backend_name);
        assert_ne!(x.backend_name, z.backend_name);
        assert!(Arc::ptr_eq(&a.get(b"s0").unwrap(), &z));
    }

    #[test]
    fn unnamed_statement_is_kept_apart_and_replaced() {
        let mut a = ClientStatements::default();
        assert!(matches!(
            a.define(
                b"\0vacuum\0\0\0",
                Reading {
                    no_txn_block: true,
                    ..Reading::default()
                },
                usage,
            ),
            Some(Defined::Unnamed)
        ));
        assert!(a.reading(b"").unwrap().no_txn_block);
        assert!(matches!(
            a.define(b"\0select 3\0\0\0", Reading::default(), usage),
            Some(Defined::Unnamed)
        ));
        assert_eq!(a.unnamed().unwrap().body, b"select 3\0\0\0");
        assert!(!a.reading(b"").unwrap().no_txn_block && a.get(b"").is_none());
        a.clear();
        assert!(a.unnamed().is_none());
    }

    #[test]
    fn rewrites_bind_keeping_parameters() {
        let mut raw = BytesMut::new();
        write_msg(&mut raw, ft::BIND, |b| {
            b.extend_from_slice(b"p\0s0\0\0\0\0\x01\0\0\0\x01x\0\0")
        });
        let frame = Frame {
            tag: ft::BIND,
            raw: raw.freeze(),
        };
        assert_eq!(bind_statement(frame.body()), Some(&b"s0"[..]));
        let mut out = BytesMut::new();
        rewrite_bind(&frame, "pgtenant_s_1", &mut out).unwrap();
        assert_eq!(&out[5..], b"p\0pgtenant_s_1\0\0\0\0\x01\0\0\0\x01x\0\0");
    }
}
