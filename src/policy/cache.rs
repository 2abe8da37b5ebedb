//! Verdicts on SQL texts already analyzed. Drivers send the same few statement texts over
//! and over (the unnamed statement is re-parsed for nearly every query), and lexing them
//! again was the largest part of the proxy's per-statement CPU. The analysis is a pure
//! function of the text and the protected setting names, both fixed for a cache's life,
//! so a hit on the whole text is exactly as strict as a fresh analysis. A text the fast
//! path clears is looked up by its shape (its number literals written as `0`, see
//! `super::shape`), whose analysis stands for it: the simple protocol's texts with inline
//! numbers then repeat too. Every entry is the analysis of its own key.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use super::mentions::Mentions;
use super::{Analysis, analyze_mentioning, fast, shape};

/// Longest text worth remembering; longer ones are analyzed every time.
const MAX_TEXT: usize = 16 * 1024;
/// Bytes of text held before the cache starts over (bounds memory against clients that
/// send endless distinct texts; they only lose the speed-up).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Slots of the first-sight filter (a power of two; 32 KiB).
const SEEN_SLOTS: usize = 4096;

/// One remembered text's analysis.
#[derive(Clone)]
struct Entry {
    analysis: Analysis,
    /// The fast path clears the text, and so every text whose shape it is (only then may
    /// the entry answer for them).
    cleared: bool,
}

/// The analyses of texts seen before, for one set of protected settings.
pub struct AnalysisCache {
    protected: Vec<String>,
    /// foldhash (randomly seeded, quality variant): SipHash cost as much as the rest of a
    /// lookup, and a collision only makes a lookup slower, never wrong.
    verdicts: DashMap<Box<[u8]>, Entry, foldhash::quality::RandomState>,
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

    /// The analysis of `sql`, from the cache when this text (or, for a text the fast path
    /// clears, its shape) was seen before. Refused texts are not kept: they are rare, and
    /// their message is built afresh each time.
    pub fn analyze(&self, sql: &[u8]) -> Analysis {
        self.analyze_unless(sql, false)
            .expect("analyzed in full when the parser may run")
    }

    /// [`AnalysisCache::analyze`], or None when the analysis needs PostgreSQL's parser
    /// (nothing remembered answers for the text and the fast path does not clear it): the
    /// session then runs `analyze` off the runtime's thread.
    pub fn analyze_inline(&self, sql: &[u8]) -> Option<Analysis> {
        self.analyze_unless(sql, true)
    }

    fn analyze_unless(&self, sql: &[u8], parser_deferred: bool) -> Option<Analysis> {
        // The text itself first: with bound parameters (most drivers) it repeats, and the
        // shape's scan would only find no number.
        if let Some(hit) = self.verdicts.get(sql) {
            return Some(hit.analysis.clone());
        }
        let mut shaped = Vec::new();
        let by_shape = shape::masked(sql, &mut shaped) == Some(true);
        let key: &[u8] = if by_shape { &shaped } else { sql };
        if by_shape
            && let Some(hit) = self.verdicts.get(key)
            && hit.cleared
        {
            return Some(hit.analysis.clone());
        }
        let m = Mentions::of(sql);
        let cleared = fast::clears_mentioning(sql, m);
        if parser_deferred
            && !cleared
            && !self.protected.is_empty()
            && sql.len() <= super::MAX_PARSED_TEXT
        {
            return None;
        }
        // A shape stands for its text only when the fast path clears the text; it then
        // mentions the same words (`shape::masked`).
        let key = if by_shape && cleared { key } else { sql };
        let analysis = analyze_mentioning(key, m, &self.protected);
        if analysis.protected_change.is_none() && key.len() <= MAX_TEXT && self.seen_before(key) {
            if self.bytes.fetch_add(key.len(), Ordering::Relaxed) + key.len() > MAX_BYTES {
                self.verdicts.clear();
                self.bytes.store(key.len(), Ordering::Relaxed);
            }
            let entry = Entry {
                analysis: analysis.clone(),
                cleared,
            };
            self.verdicts.insert(key.into(), entry);
        }
        Some(analysis)
    }

    /// True when `sql` was analyzed before (probably: slots are shared by hash, and a
    /// collision only changes whether a verdict is kept, never the verdict).
    fn seen_before(&self, sql: &[u8]) -> bool {
        let h = self.verdicts.hasher().hash_one(sql);
        let slot = &self.seen[h as usize & (SEEN_SLOTS - 1)];
        slot.swap(h, Ordering::Relaxed) == h
    }

    /// Bytes of text currently remembered (at most 4 MiB).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Memory the cache holds, near enough for a gauge: its texts plus its table's slots
    /// (the table keeps its largest size when the cache starts over).
    pub fn footprint(&self) -> usize {
        let slot = std::mem::size_of::<(Box<[u8]>, Entry)>() + 1;
        self.bytes() + self.verdicts.capacity() * slot
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
    use crate::policy::analyze;

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
    fn only_texts_the_parser_would_read_leave_the_runtimes_thread() {
        let c = cache();
        // Cleared by the fast path: read inline.
        let simple = b"SELECT abalance FROM pgbench_accounts WHERE aid = 7";
        assert_eq!(
            c.analyze_inline(simple),
            Some(analyze(simple, c.protected()))
        );
        // Two statements: the parser reads them, until their analysis is remembered.
        let two = b"SELECT 1; SELECT 2";
        assert_eq!(c.analyze_inline(two), None);
        c.analyze(two);
        c.analyze(two);
        assert_eq!(c.analyze_inline(two), Some(analyze(two, c.protected())));
        // Too long to parse: refused inline.
        let long = format!(
            "SELECT 1; SELECT '{}'",
            "x".repeat(crate::policy::MAX_PARSED_TEXT)
        );
        let refused = c
            .analyze_inline(long.as_bytes())
            .map(|a| a.protected_change.is_some());
        assert_eq!(refused, Some(true));
        // With the guard off nothing is parsed.
        assert!(AnalysisCache::new(Vec::new()).analyze_inline(two).is_some());
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
            let t = format!("SELECT abalance FROM pgbench_accounts WHERE aid = '{aid}'");
            assert!(c.analyze(t.as_bytes()).protected_change.is_none());
        }
        assert!(c.is_empty(), "{} one-off texts kept", c.len());
        c.analyze(b"SELECT 1");
        c.analyze(b"SELECT 1");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn texts_with_new_numbers_share_their_shape() {
        let c = cache();
        for aid in 0..1000 {
            let t = format!(
                "UPDATE pgbench_accounts SET abalance = abalance + -{aid} WHERE aid = {aid}"
            );
            let a = c.analyze(t.as_bytes());
            assert_eq!(a, analyze(t.as_bytes(), c.protected()), "{t}");
        }
        assert_eq!(c.len(), 1, "one shape for every aid");
        // A text that is not plain DML is never looked up by its shape.
        for n in [1, 2] {
            let t = format!("SET statement_timeout = {n}");
            assert_eq!(
                c.analyze(t.as_bytes()),
                analyze(t.as_bytes(), c.protected())
            );
        }
        assert!(c.verdicts.get(&b"SET statement_timeout = 0"[..]).is_none());
        // Nor by an entry for a text that is not plain DML and looks like a shape.
        for _ in 0..2 {
            c.analyze(b"SELECT 0; SELECT 0");
        }
        let t = b"SELECT 5; SELECT 7";
        for _ in 0..3 {
            // The second sight also inserts the text beside the entry that did not answer.
            assert_eq!(c.analyze(t), analyze(t, c.protected()));
        }
        assert!(c.verdicts.get(&t[..]).is_some());
    }

    #[test]
    fn a_shape_hit_is_never_laxer_than_the_text() {
        let c = cache();
        let allowed = b"SELECT 1 FROM t WHERE x = then SET standard_conforming_strings = 1";
        let refused = b"SELECT 1 FROM t WHERE x = then SET standard_conforming_strings = 0";
        for _ in 0..3 {
            assert!(
                c.analyze(allowed).protected_change.is_some(),
                "the shape's verdict"
            );
            assert!(c.analyze(refused).protected_change.is_some());
        }
    }
}
