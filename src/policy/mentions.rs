//! The words the guard looks for anywhere in a text (strings, comments and function bodies
//! included: substring search is the conservative reading): the analysis's [`Word`]s and
//! the fast path's needles ([`NEEDLES`]), found in one pass of an ASCII
//! case-insensitive automaton instead of one search per word (those searches were a
//! quarter of pgtenant's instructions on TPC-B-like with the simple protocol).

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind};

/// Substrings that send a text to the parser (the fast path, `super::fast`). Every entry of `knowledge::FUNCTIONS` and
/// `knowledge::RELATIONS` contains one (`pg_` covers the catalog).
pub(crate) const NEEDLES: [&[u8]; 13] = [
    b"pg_",
    b"set_config",
    b"_to_xml",
    b"ts_stat",
    b"ts_rewrite",
    b"crosstab",
    b"connectby",
    b"dblink",
    b"lo_import",
    b"lo_export",
    b"u&",
    b"regproc",
    b"setseed",
];

/// One word the analysis searches the whole text for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    SetConfig,
    AdvisoryLock,
    TryAdvisoryLock,
    AdvisoryUnlock,
    DblinkConnect,
    PgSettings,
    Listen,
    Notify,
    PgTemp,
    UnicodeEscape,
    UnicodeIdent,
}

/// The spelling of each [`Word`], in declaration order.
const WORDS: [(Word, &str); 11] = [
    (Word::SetConfig, "set_config"),
    (Word::AdvisoryLock, "pg_advisory_lock"),
    (Word::TryAdvisoryLock, "pg_try_advisory_lock"),
    (Word::AdvisoryUnlock, "pg_advisory_unlock"),
    (Word::DblinkConnect, "dblink_connect"),
    (Word::PgSettings, "pg_settings"),
    (Word::Listen, "listen"),
    (Word::Notify, "notify"),
    (Word::PgTemp, "pg_temp"),
    (Word::UnicodeEscape, "u&"),
    (Word::UnicodeIdent, "u&\""),
];

/// The automaton over every distinct spelling (the words, then the needles that are not
/// words), and the bits that are needles.
struct Finder {
    automaton: AhoCorasick,
    needles: u32,
}

static FINDER: LazyLock<Finder> = LazyLock::new(|| {
    let mut patterns: Vec<&[u8]> = WORDS.iter().map(|(_, w)| w.as_bytes()).collect();
    let mut needles = 0u32;
    for n in NEEDLES {
        let at = match patterns.iter().position(|p| p.eq_ignore_ascii_case(n)) {
            Some(at) => at,
            None => {
                patterns.push(n);
                patterns.len() - 1
            }
        };
        needles |= 1 << at;
    }
    assert!(patterns.len() <= 32, "the mentions fit a u32");
    let automaton = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(AhoCorasickKind::DFA))
        .build(patterns)
        .expect("the words build an automaton");
    Finder { automaton, needles }
});

/// Which [`Word`]s occur in a text (overlapping occurrences included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mentions(u32);

impl Mentions {
    /// Searches `sql` once for every word.
    pub(crate) fn of(sql: &[u8]) -> Mentions {
        let mut found = 0u32;
        for m in FINDER.automaton.find_overlapping_iter(sql) {
            found |= 1 << m.pattern().as_u32();
        }
        Mentions(found)
    }

    /// Whether `word` occurs.
    pub(crate) fn has(self, word: Word) -> bool {
        self.0 & (1 << word as u32) != 0
    }

    /// Whether any of the fast path's needles occurs.
    pub(crate) fn any_needle(self) -> bool {
        self.0 & FINDER.needles != 0
    }

    /// Whether any of `words` occurs.
    pub(crate) fn any(self, words: &[Word]) -> bool {
        words.iter().any(|&w| self.has(w))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sql::contains_ci;
    use super::*;

    #[test]
    fn words_are_listed_in_declaration_order() {
        for (i, (w, _)) in WORDS.iter().enumerate() {
            assert_eq!(*w as usize, i);
        }
    }

    /// One pass finds exactly what a search per word finds: words at every position, in
    /// any case, overlapping (`u&` inside `u&"`), or cut short.
    #[test]
    fn one_pass_agrees_with_a_search_per_word() {
        let mut next = super::super::xorshift(0x2545_F491_4F6C_DD1D_u64);
        let alphabet = b"pgPG_sSeEtTcCoOnNfFiIuU&\"lLaAdDyYkKvVrRmMxXbB 'x;";
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let mut t: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for _ in 0..(next() % 3) {
                let k = (next() % (WORDS.len() + NEEDLES.len()) as u64) as usize;
                let w = match WORDS.get(k) {
                    Some((_, w)) => w.as_bytes(),
                    None => NEEDLES[k - WORDS.len()],
                };
                let at = (next() as usize) % (t.len() + 1);
                let cut = w.len() - (next() % 2) as usize;
                let piece: Vec<u8> = w[..cut]
                    .iter()
                    .map(|b| {
                        if next().is_multiple_of(2) {
                            b.to_ascii_uppercase()
                        } else {
                            *b
                        }
                    })
                    .collect();
                t.splice(at..at, piece);
            }
            let m = Mentions::of(&t);
            assert_eq!(
                m.any_needle(),
                NEEDLES.iter().any(|n| contains_ci(&t, n)),
                "needles in {:?}",
                String::from_utf8_lossy(&t)
            );
            for (word, spelling) in WORDS {
                assert_eq!(
                    m.has(word),
                    contains_ci(&t, spelling.as_bytes()),
                    "{word:?} in {:?}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
    }
}
