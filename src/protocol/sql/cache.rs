//! Verdicts on SQL texts already analyzed. Drivers send the same few statement texts over
//! and over (the unnamed statement is re-parsed for nearly every query), and lexing them
//! again was the largest part of the proxy's per-statement CPU. The analysis is a pure
//! function of the text and the protected setting names, both fixed for a cache's life,
//! so a hit is exactly as strict as a fresh analysis: the whole text is the key.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::{Analysis, analyze};

/// Longest text worth remembering; longer ones are analyzed every time.
const MAX_TEXT: usize = 16 * 1024;
/// Bytes of text held before the cache starts over (bounds memory against clients that
/// send endless distinct texts; they only lose the speed-up).
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The analyses of texts seen before, for one set of protected settings.
pub struct AnalysisCache {
    protected: Vec<String>,
    /// foldhash (randomly seeded, quality variant): SipHash cost as much as the rest of a
    /// lookup, and a collision only makes a lookup slower, never wrong.
    verdicts: DashMap<Box<[u8]>, Analysis, foldhash::quality::RandomState>,
    bytes: AtomicUsize,
}

impl AnalysisCache {
    /// A cache for SQL checked against `protected` (lowercase setting names).
    pub fn new(protected: Vec<String>) -> AnalysisCache {
        AnalysisCache {
            protected,
            verdicts: DashMap::with_hasher(Default::default()),
            bytes: AtomicUsize::new(0),
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
        if a.protected_change.is_none() && sql.len() <= MAX_TEXT {
            if self.bytes.fetch_add(sql.len(), Ordering::Relaxed) + sql.len() > MAX_BYTES {
                self.verdicts.clear();
                self.bytes.store(sql.len(), Ordering::Relaxed);
            }
            self.verdicts.insert(sql.into(), a.clone());
        }
        a
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
            assert_eq!(
                c.analyze(t),
                fresh,
                "miss for {:?}",
                String::from_utf8_lossy(t)
            );
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
        assert!(c.analyze(harmless).protected_change.is_none());
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
        }
        assert!(c.len() * MAX_TEXT <= MAX_BYTES, "{} entries", c.len());
        let long = vec![b' '; MAX_TEXT + 1];
        c.analyze(&long);
        assert!(c.verdicts.get(&long[..]).is_none());
    }
}
