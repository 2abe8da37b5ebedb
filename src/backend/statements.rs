//! The statements prepared on one backend connection, under proxy-owned names derived from
//! each definition's content (so identical SQL is prepared once per backend, and two
//! tenants using one name for different SQL never share a statement), least recently used
//! evicted first. The client side (a client's own names) is [`crate::session::statements`].
//!
//! A backend statement serves a client's statement only if the backend parsed it after the
//! client's own Parse, as PostgreSQL parses afresh for every Parse: a statement prepared
//! again after DDL (a column's type changed, the table re-created) gets the new result and
//! parameter types, never a copy parsed before the DDL. Both moments are ticks of one
//! process-wide counter ([`tick`]), so a cache hit stays one comparison.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::protocol::RESERVED_PREFIX;
use crate::protocol::frontend_tag as ft;
use crate::protocol::messages::write_msg;

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
    /// The Parse body after the name: query text and parameter types.
    pub body: Bytes,
    /// What the guard read in its text (transaction block, leftover, setup, end of context).
    pub reading: crate::policy::Reading,
    /// When the client's Parse arrived; only backend copies parsed later may serve it.
    defined_at: u64,
}

impl StatementDef {
    /// Builds the definition from a Parse body after the name (query, types).
    pub fn new(rest: &[u8], reading: crate::policy::Reading) -> StatementDef {
        // A fixed-key hash, so identical SQL from different clients shares one backend
        // statement; a collision is harmless because cache hits compare the whole body.
        let mut h = std::hash::DefaultHasher::new();
        h.write(rest);
        StatementDef {
            backend_name: format!("{RESERVED_PREFIX}s_{:016x}", h.finish()),
            body: Bytes::copy_from_slice(rest),
            reading,
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
/// The proxy-named statements prepared on one backend connection, least recently used
/// evicted first.
#[derive(Debug)]
pub struct BackendStatements {
    entries: HashMap<String, Prepared>,
    tick: u64,
    capacity: usize,
    /// Bytes of statement bodies held, and at most.
    bytes: usize,
    byte_capacity: usize,
}

/// One statement prepared on a backend.
#[derive(Debug)]
struct Prepared {
    body: Bytes,
    /// Last use, for the LRU.
    used: u64,
    /// When the proxy sent its Parse (a [`tick`]); 0 once the copy may have been parsed
    /// under other settings than its `parse_env` says (see [`BackendStatements::distrust`]).
    parsed_at: u64,
    /// The digest of the parse-deciding settings it was parsed under (the client's, which
    /// the proxy brought the backend to before the Parse).
    parse_env: u64,
}

impl BackendStatements {
    /// An empty cache holding at most `capacity` statements of `byte_capacity` bytes in all
    /// (the newest is kept whatever its size).
    pub fn new(capacity: usize, byte_capacity: usize) -> BackendStatements {
        BackendStatements {
            entries: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            bytes: 0,
            byte_capacity,
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
    ///
    /// `parse_env`: the client's digest of the settings that decide what a text means
    /// (DateStyle, TimeZone, ...): a copy parsed under other values fixed other literal
    /// values, so it does not serve (it is parsed again under the client's).
    pub fn touch(&mut self, def: &StatementDef, parse_env: u64) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&def.backend_name) {
            Some(p)
                if p.parsed_at > def.defined_at
                    && p.parse_env == parse_env
                    && p.body == def.body =>
            {
                p.used = self.tick;
                true
            }
            _ => false,
        }
    }

    /// Records `def` as prepared (the caller sends its Parse now); returns a statement name
    /// to close first when an older copy or a different body held the name, or the cache
    /// was full.
    pub fn insert(&mut self, def: &StatementDef, parse_env: u64) -> Vec<String> {
        let mut close = Vec::new();
        if let Some(old) = self.entries.remove(&def.backend_name) {
            self.bytes -= old.body.len();
            close.push(def.backend_name.clone());
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity
                || self.bytes + def.body.len() > self.byte_capacity)
            && let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(k, _)| k.clone())
        {
            if let Some(p) = self.entries.remove(&victim) {
                self.bytes -= p.body.len();
            }
            close.push(victim);
        }
        self.bytes += def.body.len();
        self.tick += 1;
        let prepared = Prepared {
            body: def.body.clone(),
            used: self.tick,
            parsed_at: tick(),
            parse_env,
        };
        self.entries.insert(def.backend_name.clone(), prepared);
        close
    }

    /// No copy serves again until parsed anew: a client changed a parse-deciding setting
    /// itself (`SET DateStyle` in its SQL), and a Parse the proxy sent since may have run
    /// under the new value while recorded under the old. Copies stay known by name, so the
    /// next use closes and parses them again.
    pub fn distrust(&mut self) {
        for p in self.entries.values_mut() {
            p.parsed_at = 0;
        }
    }

    /// Forgets a statement (its Parse failed).
    pub fn remove(&mut self, name: &str) {
        if let Some(p) = self.entries.remove(name) {
            self.bytes -= p.body.len();
        }
    }

    /// Forgets everything (the backend's statements were deallocated).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn def(body: &[u8]) -> StatementDef {
        StatementDef::new(body, Default::default())
    }

    #[test]
    fn backend_cache_evicts_least_recently_used() {
        let mut cache = BackendStatements::new(2, usize::MAX);
        let (a, b, c) = (def(b"a\0\0\0"), def(b"b\0\0\0"), def(b"c\0\0\0"));
        assert!(cache.insert(&a, 0).is_empty());
        assert!(cache.insert(&b, 0).is_empty());
        assert!(cache.touch(&a, 0));
        assert_eq!(cache.insert(&c, 0), vec![b.backend_name.clone()]);
        assert!(cache.touch(&a, 0) && cache.touch(&c, 0) && !cache.touch(&b, 0));
    }

    #[test]
    fn backend_cache_evicts_least_recently_used_beyond_its_bytes() {
        // Bodies of 3 + 3 bytes ("a\0\0\0" is the name-less body "a", NUL, no types).
        let (a, b, c) = (def(b"aa\0\0\0"), def(b"bb\0\0\0"), def(b"cc\0\0\0"));
        let mut cache = BackendStatements::new(100, 2 * a.body.len());
        assert!(cache.insert(&a, 0).is_empty());
        assert!(cache.insert(&b, 0).is_empty());
        assert!(cache.touch(&a, 0));
        assert_eq!(cache.insert(&c, 0), vec![b.backend_name.clone()]);
        // One larger than the whole budget is kept alone.
        let big = def(&[b"x".repeat(64), b"\0\0\0".to_vec()].concat());
        assert_eq!(cache.insert(&big, 0).len(), 2);
        assert!(cache.touch(&big, 0) && !cache.touch(&a, 0));
        cache.remove(&big.backend_name);
        assert!(cache.insert(&a, 0).is_empty() && cache.insert(&c, 0).is_empty());
    }

    #[test]
    fn a_copy_parsed_before_the_clients_parse_is_replaced() {
        let mut cache = BackendStatements::new(4, usize::MAX);
        let first = def(b"select * from t\0\0\0");
        assert!(!cache.touch(&first, 0));
        assert!(cache.insert(&first, 0).is_empty());
        assert!(cache.touch(&first, 0));
        // The same SQL parsed again by a client (after DDL, say): the backend's copy is
        // older, so it is closed and parsed again under the same name.
        let again = def(b"select * from t\0\0\0");
        assert_eq!(again.backend_name, first.backend_name);
        assert!(!cache.touch(&again, 0));
        assert_eq!(cache.insert(&again, 0), vec![again.backend_name.clone()]);
        assert!(cache.touch(&again, 0));
        // The new copy serves the earlier definition too: it was parsed after it.
        assert!(cache.touch(&first, 0));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_copy_parsed_under_other_parse_settings_does_not_serve() {
        let mut cache = BackendStatements::new(4, usize::MAX);
        let (mdy, dmy) = (1, 2);
        let s = def(b"select '03/04/2026'::date\0\0\0");
        assert!(cache.insert(&s, dmy).is_empty());
        assert!(cache.touch(&s, dmy));
        // A client under other DateStyle/TimeZone values: parsed again, under its own.
        assert!(!cache.touch(&s, mdy));
        assert_eq!(cache.insert(&s, mdy), vec![s.backend_name.clone()]);
        assert!(cache.touch(&s, mdy));
        assert!(!cache.touch(&s, dmy));
        // A client changed a parse setting itself: nothing serves until parsed again.
        cache.distrust();
        assert!(!cache.touch(&s, mdy));
        assert_eq!(cache.insert(&s, mdy), vec![s.backend_name.clone()]);
        assert!(cache.touch(&s, mdy));
    }
}
