//! Verdicts on SQL texts already analyzed. Drivers send the same few statement texts over
//! and over (the unnamed statement is re-parsed for nearly every query), and lexing them
//! again was the largest part of the proxy's per-statement CPU. The analysis is a pure
//! function of the text and the protected setting names, both fixed for a cache's life,
//! so a hit is exactly as strict as a fresh analysis: the whole text is the key.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use super::Analysis;
use crate::policy::analyze;

/// Longest text worth remembering; longer ones are analyzed every time.
const MAX_TEXT: usize = 16 * 1024;
/// Bytes of text held before the cache starts over (bounds memory against clients that
/// send endless distinct texts; they only lose the speed-up).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Slots of the first-sight filter (a power of two; 32 KiB).
const SEEN_SLOTS: usize = 4096;

/// The analyses of texts seen before, for one set of protected settings.
pub struct AnalysisCache {
    protected: Vec<String>,
    /// foldhash (randomly seeded, quality variant): SipHash cost as much as the rest of a
    /// lookup, and a collision only makes a lookup slower, never wrong.
    verdicts: DashMap<Box<[u8]>, Analysis, foldhash::quality::RandomState>,
    bytes: AtomicUsize,
    /// Hashes of texts seen once and not kept: a text is remembered on its second sight,
    /// so texts with inline literals (the simple protocol's `WHERE aid = 4711`), which never
    /// repeat, cost no key copy, no insert and no early clear of the cache.
    seen: Box<[AtomicU64]>,
}

impl AnalysisCache {
    /// A cache for SQL checked against `protected` (lowercase setting names).
    pub fn new(protected: Vec<String>) -> AnalysisCache {
        AnalysisCache {
            protected,
            verdicts: DashMap::with_hasher(Default::default()),
            bytes: AtomicUsize::new(0),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The protected setting names (lowercase).
    pub fn protected(&self) -> &[String] {
        &self.protected
    }

    /// The analysis of `sql`, from the cache when this text was seen before. Refused texts
    /// are not kept: they are rare, and their message is built afresh each time.
    pub fn analyze(&self, sql: &[u8]) -> Analysis {
        if let Some(hit) = self.verdicts.get(sql) {
            return hit.clone();
        }
        let a = analyze(sql, &self.protected);
        if a.protected_change.is_none() && sql.len() <= MAX_TEXT && self.seen_before(sql) {
            if self.bytes.fetch_add(sql.len(), Ordering::Relaxed) + sql.len() > MAX_BYTES {
                self.verdicts.clear();
                self.bytes.store(sql.len(), Ordering::Relaxed);
            }
            self.verdicts.insert(sql.into(), a.clone());
        }
        a
    }

    /// True when `sql` was analyzed before (probably: slots are shared by hash, and a
    /// collision only changes whether a verdict is kept, never the verdict).
    fn seen_before(&self, sql: &[u8]) -> bool {
        let h = self.verdicts.hasher().hash_one(sql);
        let slot = &self.seen[h as usize & (SEEN_SLOTS - 1)];
        slot.swap(h, Ordering::Relaxed) == h
    }

    /// Texts currently remembered.
    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> AnalysisCache {
        AnalysisCache::new(vec!["app.current_tenant".into(), "role".into()])
    }

    #[test]
    fn hits_give_the_same_verdict_as_a_fresh_analysis() {
        let c = cache();
        let texts: [&[u8]; 4] = [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            b"SET search_path = x",
            b"VACUUM t",
            b"PREPARE p AS SELECT 1",
        ];
        for t in texts {
            let fresh = analyze(t, c.protected());
            for sight in ["first", "second"] {
                let miss = c.analyze(t);
                assert_eq!(
                    miss,
                    fresh,
                    "{sight} miss for {:?}",
                    String::from_utf8_lossy(t)
                );
            }
            assert_eq!(
                c.analyze(t),
                fresh,
                "hit for {:?}",
                String::from_utf8_lossy(t)
            );
        }
        assert_eq!(c.len(), texts.len());
    }

    #[test]
    fn refusals_are_never_remembered_and_always_refused() {
        let c = cache();
        let t = b"SELECT set_config('app.current_tenant', 'x', false)";
        for _ in 0..3 {
            assert!(c.analyze(t).protected_change.is_some());
        }
        assert!(c.is_empty());
    }

    #[test]
    fn the_key_is_the_whole_text() {
        let c = cache();
        let harmless = b"SELECT 1 -- set app.current_tenant = 'b'";
        for _ in 0..2 {
            assert!(c.analyze(harmless).protected_change.is_none());
        }
        assert_eq!(c.len(), 1, "the harmless text is remembered");
        // Same length and prefix, different text: must not be served the cached verdict.
        let hostile = b"SELECT 1;   set app.current_tenant = 'b'";
        assert_eq!(harmless.len(), hostile.len());
        assert!(c.analyze(hostile).protected_change.is_some());
    }

    #[test]
    fn memory_is_bounded() {
        let c = cache();
        let mut text = vec![b'x'; MAX_TEXT];
        text[..7].copy_from_slice(b"SELECT ");
        for i in 0..(MAX_BYTES / MAX_TEXT) * 2 {
            text[7..15].copy_from_slice(format!("{i:08}").as_bytes());
            c.analyze(&text);
            c.analyze(&text);
        }
        assert!(c.len() * MAX_TEXT <= MAX_BYTES, "{} entries", c.len());
        let long = vec![b' '; MAX_TEXT + 1];
        c.analyze(&long);
        assert!(c.verdicts.get(&long[..]).is_none());
    }

    #[test]
    fn texts_seen_once_are_not_kept() {
        let c = cache();
        for aid in 0..1000 {
            let t =
                format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {aid}");
            assert!(c.analyze(t.as_bytes()).protected_change.is_none());
        }
        assert!(c.is_empty(), "{} one-off texts kept", c.len());
        c.analyze(b"SELECT 1");
        c.analyze(b"SELECT 1");
        assert_eq!(c.len(), 1);
    }
}
