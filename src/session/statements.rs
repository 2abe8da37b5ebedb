//! Named prepared statements under transaction pooling. A client's statement names are its
//! own: the proxy remembers each definition, and on whichever backend serves the client it
//! uses a proxy-owned name derived from the definition's content (so two tenants using the
//! same name for different SQL never share a statement, and identical SQL is prepared once
//! per backend). Each backend keeps a bounded LRU of what it has prepared.
//!
//! A backend statement serves a client's statement only if the backend parsed it after the
//! client's own Parse, as PostgreSQL parses afresh for every Parse: a statement prepared
//! again after DDL (a column's type changed, the table re-created) gets the new result and
//! parameter types, never a copy parsed before the DDL. Both moments are ticks of one
//! process-wide counter ([`tick`]), so a cache hit stays one comparison.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::protocol::codec::{Frame, read_cstr};
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages::write_msg;
use crate::tenant::RESERVED_PREFIX;

/// Orders client Parses and backend Parses: whichever took its tick later happened later.
static PARSES: AtomicU64 = AtomicU64::new(1);

/// The next tick of the process-wide Parse order (unique, increasing).
fn tick() -> u64 {
    PARSES.fetch_add(1, Ordering::Relaxed)
}

/// A statement definition: the Parse body after the name (query and parameter types).
#[derive(Debug)]
pub struct StatementDef {
    /// Proxy-owned name used on backends.
    pub backend_name: String,
    pub body: Bytes,
    /// The statement cannot run inside a transaction block (VACUUM, DISCARD ALL, ...).
    pub no_txn_block: bool,
    /// When the client's Parse arrived; only backend copies parsed later may serve it.
    defined_at: u64,
}

impl StatementDef {
    /// Builds the definition from a Parse body after the name (query, types).
    fn new(rest: &[u8], no_txn_block: bool) -> StatementDef {
        // A fixed-key hash, so identical SQL from different clients shares one backend
        // statement; a collision is harmless because cache hits compare the whole body.
        let mut h = std::hash::DefaultHasher::new();
        h.write(rest);
        StatementDef {
            backend_name: format!("{RESERVED_PREFIX}s_{:016x}", h.finish()),
            body: Bytes::copy_from_slice(rest),
            no_txn_block,
            defined_at: tick(),
        }
    }

    /// A Parse message creating this statement under its backend name.
    pub fn parse_message(&self, out: &mut BytesMut) {
        write_msg(out, ft::PARSE, |b| {
            b.extend_from_slice(self.backend_name.as_bytes());
            b.extend_from_slice(&[0]);
            b.extend_from_slice(&self.body);
        });
    }

    /// A Close message dropping this statement from a backend.
    pub fn close_message(name: &str, out: &mut BytesMut) {
        write_msg(out, ft::CLOSE, |b| {
            b.extend_from_slice(b"S");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&[0]);
        });
    }
}

/// The statements one client has prepared, by the client's names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Vec<u8>, Arc<StatementDef>>,
    /// The unnamed statement, kept apart: drivers re-parse it for nearly every query, so
    /// it is copied into a reused buffer and never hashed, named or shared.
    unnamed: Option<Unnamed>,
}

/// The client's unnamed statement: its Parse body after the (empty) name.
#[derive(Debug, Default)]
pub struct Unnamed {
    pub body: Vec<u8>,
    pub no_txn_block: bool,
}

/// What a Parse defined.
#[derive(Debug)]
pub enum Defined {
    Unnamed,
    Named(Arc<StatementDef>),
}

impl ClientStatements {
    /// Records the statement a Parse defines; `no_txn_block` is what the guard's analysis
    /// found in its query.
    pub fn define(&mut self, parse_body: &[u8], no_txn_block: bool) -> Option<Defined> {
        let (name, rest) = read_cstr(parse_body)?;
        if name.is_empty() {
            let u = self.unnamed.get_or_insert_with(Unnamed::default);
            u.body.clear();
            u.body.extend_from_slice(rest);
            u.no_txn_block = no_txn_block;
            return Some(Defined::Unnamed);
        }
        let def = Arc::new(StatementDef::new(rest, no_txn_block));
        self.by_name.insert(name.to_vec(), def.clone());
        Some(Defined::Named(def))
    }

    /// The definition behind a client statement name (not the unnamed statement).
    pub fn get(&self, name: &[u8]) -> Option<Arc<StatementDef>> {
        self.by_name.get(name).cloned()
    }

    /// The unnamed statement, if the client has parsed one.
    pub fn unnamed(&self) -> Option<&Unnamed> {
        self.unnamed.as_ref()
    }

    /// The SQL text of the statement a Bind names (the unnamed one for an empty name).
    pub fn text(&self, name: &[u8]) -> Option<&[u8]> {
        let body: &[u8] = if name.is_empty() {
            &self.unnamed.as_ref()?.body
        } else {
            &self.by_name.get(name)?.body
        };
        read_cstr(body).map(|(q, _)| q)
    }

    /// Whether the statement a Bind names cannot run in a transaction block.
    pub fn no_txn_block(&self, name: &[u8]) -> bool {
        if name.is_empty() {
            self.unnamed.as_ref().is_some_and(|u| u.no_txn_block)
        } else {
            self.by_name.get(name).is_some_and(|d| d.no_txn_block)
        }
    }

    /// Forgets a statement (client Close, or a Parse that failed).
    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }

    /// Forgets every name bound to a backend statement whose Parse failed.
    pub fn forget_backend_name(&mut self, backend_name: &str) {
        self.by_name.retain(|_, d| d.backend_name != backend_name);
    }

    /// Forgets everything (DEALLOCATE ALL / DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.unnamed = None;
    }
}

/// The proxy-named statements prepared on one backend connection, least recently used
/// evicted first.
#[derive(Debug)]
pub struct BackendStatements {
    entries: HashMap<String, Prepared>,
    tick: u64,
    capacity: usize,
}

/// One statement prepared on a backend.
#[derive(Debug)]
struct Prepared {
    body: Bytes,
    /// Last use, for the LRU.
    used: u64,
    /// When the proxy sent its Parse (a [`tick`]).
    parsed_at: u64,
}

impl BackendStatements {
    /// An empty cache holding at most `capacity` statements.
    pub fn new(capacity: usize) -> BackendStatements {
        BackendStatements {
            entries: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    /// True when `def` is prepared here with exactly this body (a hash collision with a
    /// different body counts as absent) and was parsed after the client's Parse of it (an
    /// older copy may predate DDL the client has seen; [`Self::insert`] replaces it).
    ///
    /// A copy that PostgreSQL refuses with "cached plan must not change result type" is
    /// kept, as PostgreSQL keeps the statement: clients that prepared before it was parsed
    /// get that error, as they would on their own connection, and a client that prepares
    /// again is newer than the copy, so it gets a fresh one.
    pub fn touch(&mut self, def: &StatementDef) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&def.backend_name) {
            Some(p) if p.parsed_at > def.defined_at && p.body == def.body => {
                p.used = self.tick;
                true
            }
            _ => false,
        }
    }

    /// Records `def` as prepared (the caller sends its Parse now); returns a statement name
    /// to close first when an older copy or a different body held the name, or the cache
    /// was full.
    pub fn insert(&mut self, def: &StatementDef) -> Vec<String> {
        let mut close = Vec::new();
        if self.entries.contains_key(&def.backend_name) {
            close.push(def.backend_name.clone());
        } else if self.entries.len() >= self.capacity
            && let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&victim);
            close.push(victim);
        }
        self.tick += 1;
        let prepared = Prepared {
            body: def.body.clone(),
            used: self.tick,
            parsed_at: tick(),
        };
        self.entries.insert(def.backend_name.clone(), prepared);
        close
    }

    /// Forgets a statement (its Parse failed).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Forgets everything (the backend's statements were deallocated).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is prepared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

    fn def(body: &[u8]) -> Arc<StatementDef> {
        let mut c = ClientStatements::default();
        let mut parse = b"n\0".to_vec();
        parse.extend_from_slice(body);
        named(&mut c, &parse)
    }

    fn named(c: &mut ClientStatements, parse: &[u8]) -> Arc<StatementDef> {
        match c.define(parse, false) {
            Some(Defined::Named(d)) => d,
            other => panic!("{other:?}"),
        }
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
            a.define(b"\0vacuum\0\0\0", true),
            Some(Defined::Unnamed)
        ));
        assert!(a.no_txn_block(b""));
        assert!(matches!(
            a.define(b"\0select 3\0\0\0", false),
            Some(Defined::Unnamed)
        ));
        assert_eq!(a.unnamed().unwrap().body, b"select 3\0\0\0");
        assert!(!a.no_txn_block(b"") && a.get(b"").is_none());
        a.clear();
        assert!(a.unnamed().is_none());
    }

    #[test]
    fn backend_cache_evicts_least_recently_used() {
        let mut cache = BackendStatements::new(2);
        let (a, b, c) = (def(b"a\0\0\0"), def(b"b\0\0\0"), def(b"c\0\0\0"));
        assert!(cache.insert(&a).is_empty());
        assert!(cache.insert(&b).is_empty());
        assert!(cache.touch(&a));
        assert_eq!(cache.insert(&c), vec![b.backend_name.clone()]);
        assert!(cache.touch(&a) && cache.touch(&c) && !cache.touch(&b));
    }

    #[test]
    fn a_copy_parsed_before_the_clients_parse_is_replaced() {
        let mut cache = BackendStatements::new(4);
        let first = def(b"select * from t\0\0\0");
        assert!(!cache.touch(&first));
        assert!(cache.insert(&first).is_empty());
        assert!(cache.touch(&first));
        // The same SQL parsed again by a client (after DDL, say): the backend's copy is
        // older, so it is closed and parsed again under the same name.
        let again = def(b"select * from t\0\0\0");
        assert_eq!(again.backend_name, first.backend_name);
        assert!(!cache.touch(&again));
        assert_eq!(cache.insert(&again), vec![again.backend_name.clone()]);
        assert!(cache.touch(&again));
        // The new copy serves the earlier definition too: it was parsed after it.
        assert!(cache.touch(&first));
        assert_eq!(cache.len(), 1);
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
