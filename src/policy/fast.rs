//! The fast path: a pre-check that clears, without the parser, the texts that provably hold
//! nothing the parser path could refuse. It reads the raw bytes, not tokens, so no lexer
//! disagreement with PostgreSQL can hide anything from it: one statement (no `;` but a
//! trailing one), starting with a word from `knowledge::FAST_FIRST_WORDS` (each a kind the
//! allow-list allows), and no needle anywhere, in strings and comments too. Every name in
//! the function and relation tables contains a needle (checked by the tests), and a
//! `U&` escape, which could spell any name, is a needle itself.

use super::knowledge::FAST_FIRST_WORDS;
use super::mentions::Mentions;
#[cfg(test)]
use super::mentions::NEEDLES;
#[cfg(test)]
use super::sql::contains_ci;

/// True when `sql` is cleared without the parser.
pub fn clears(sql: &[u8]) -> bool {
    clears_mentioning(sql, Mentions::of(sql))
}

/// [`clears`] for a text whose [`Mentions`] are known (one search serves the analysis too).
pub(crate) fn clears_mentioning(sql: &[u8], m: Mentions) -> bool {
    let body = sql.trim_ascii();
    let body = body.strip_suffix(b";").unwrap_or(body);
    if memchr::memchr(b';', body).is_some() {
        return false;
    }
    let word_end = body
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(body.len());
    let (word, rest) = body.split_at(word_end);
    // The first word must end there: `selectx` or `select_1` is another word.
    let ends = rest
        .first()
        .is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80));
    ends && FAST_FIRST_WORDS
        .iter()
        .any(|(w, _)| w.as_bytes().eq_ignore_ascii_case(word))
        && !m.any_needle()
        && !finishes_prepared(word, rest)
}

/// True for `COMMIT PREPARED` / `ROLLBACK PREPARED` (two-phase commit, which the parser
/// path refuses): a COMMIT or ROLLBACK naming `prepared` anywhere is left to the parser.
fn finishes_prepared(word: &[u8], rest: &[u8]) -> bool {
    (word.eq_ignore_ascii_case(b"commit") || word.eq_ignore_ascii_case(b"rollback"))
        && rest.windows(8).any(|w| w.eq_ignore_ascii_case(b"prepared"))
}

#[cfg(test)]
mod tests {
    use super::super::knowledge::{self, Kind};
    use super::*;

    #[test]
    fn every_known_name_is_caught_by_a_needle() {
        let names = knowledge::FUNCTIONS
            .iter()
            .map(|(n, _)| *n)
            .chain(knowledge::RELATIONS.iter().map(|(n, _)| *n));
        for name in names {
            assert!(
                NEEDLES.iter().any(|n| contains_ci(name.as_bytes(), n)),
                "{name} has no needle: the fast path would clear it unread"
            );
        }
    }

    #[test]
    fn fast_first_words_are_allowed_kinds() {
        for (word, kind) in FAST_FIRST_WORDS {
            assert_eq!(knowledge::statement(kind), Kind::Allow, "{word}");
        }
    }

    #[test]
    fn clears_plain_dml_only() {
        for t in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 31;",
            "insert into t values (1, 'x')",
            "BEGIN",
            "END;",
        ] {
            assert!(clears(t.as_bytes()), "{t}");
        }
        for t in [
            "SELECT 1; SET app.current_tenant = 'b'",
            "SELECT set_config('app.current_tenant', 'b', true)",
            "SELECT * FROM PG_STAT_ACTIVITY",
            "SELECT U&\"set\\005fconfig\"('a', 'b', true)",
            "SET search_path = x",
            "selectx 1",
            " /* c */ SELECT 1",
            "SELECT 'x' -- ; ALTER ROLE app PASSWORD 'p'",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "insert into t values (1, 'x; y')",
            "COMMIT PREPARED 'x'",
            "rollback /* */ Prepared 'x';",
        ] {
            assert!(!clears(t.as_bytes()), "{t}");
        }
    }
}
