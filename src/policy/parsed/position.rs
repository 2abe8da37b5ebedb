//! Where in a text PostgreSQL's grammar stopped, as the error's position (1-based, in
//! characters) PostgreSQL reports with a syntax error: psql draws its `LINE 1: ... ^` from
//! it, and drivers expose it. libpg_query knows it but the `pg_query` crate passes on only
//! the message, so it is found again from the message: "at end of input" is one past the
//! last character; "at or near "X"" is the first occurrence of X that the grammar cannot
//! take, found by parsing prefixes of the text (the error path only).

/// Longest text whose error is placed (about 20 parses of it at most, by halving).
const MAX_TEXT: usize = 64 * 1024;

/// The position of the syntax error `message` that parsing `text` gives; None when parsing
/// `text` does not give that error (it came from a nested body), or it cannot be placed.
pub fn of(text: &str, message: &str) -> Option<u32> {
    // A few more parses of the text on the error path; not for texts so long that they
    // would hold up the other sessions on this thread.
    if text.len() > MAX_TEXT || error(text)?.as_str() != message {
        return None;
    }
    if message.ends_with(" at end of input") {
        return chars_before(text, text.len());
    }
    let near = near(message)?;
    let candidates: Vec<usize> = match pg_query::scan(text) {
        // The tokens that read as X (not X inside a longer word, a literal or a comment).
        Ok(scanned) => scanned
            .tokens
            .iter()
            .filter_map(|t| Some((usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?)))
            .filter(|&(start, end)| text.get(start..end) == Some(near))
            .map(|(start, _)| start)
            .collect(),
        // The scanner itself stopped (an unterminated literal): every occurrence counts.
        Err(_) => text.match_indices(near).map(|(at, _)| at).collect(),
    };
    let at = match candidates.as_slice() {
        [] => return None,
        [one] => *one,
        // The first occurrence whose prefix already fails as the whole text does: every
        // prefix that stops before the token the grammar rejects is still readable (an LR
        // parser reports an error at the first token no statement can continue with), and
        // every prefix that contains it fails there, so the test is monotone.
        many => {
            let fails = |at: usize| error(&text[..at + near.len()]).as_deref() == Some(message);
            let first = many.partition_point(|&at| !fails(at));
            *many.get(first)?
        }
    };
    chars_before(text, at)
}

/// The grammar's error for `text`, if any.
fn error(text: &str) -> Option<String> {
    match pg_query::parse(text, pg_query::ParserOptions::DEFAULT) {
        Err(pg_query::Error::Parse(m)) => Some(m),
        _ => None,
    }
}

/// X of a message ending `at or near "X"`.
fn near(message: &str) -> Option<&str> {
    const MARK: &str = " at or near \"";
    let from = message.find(MARK)? + MARK.len();
    message[from..].strip_suffix('"').filter(|x| !x.is_empty())
}

/// PostgreSQL's position of byte offset `at`: characters before it, plus one.
fn chars_before(text: &str, at: usize) -> Option<u32> {
    let n = text.get(..at)?.chars().count() + 1;
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each text with the position PostgreSQL 15 reports for it (`P` of its ErrorResponse,
    /// read off a server with the simple protocol).
    const SEEN: &[(&str, u32)] = &[
        ("select 1 +", 11),
        ("selec 1", 1),
        ("select 'abc", 8),
        ("select 1 from from t", 15),
        ("select é from, t", 14),
        ("select 1; selec 2", 11),
        ("select 'selec'; /* selec */ selec 2", 29),
        ("select 1 as nulls from t order by a nulls", 37),
        ("select \"\" from t", 8),
        ("create table x (a int) with", 28),
        ("select 1 from t where a not", 25),
        ("select (1", 10),
        ("select 1 1 1", 10),
        ("/* x */ selec", 9),
        ("select 1.2.3 from", 11),
        ("values (1),(2", 14),
        ("select x::", 11),
        ("SELECT * FROM t ORDER BY a NULLS", 28),
    ];

    #[test]
    fn positions_are_postgresqls() {
        for (text, want) in SEEN {
            let message = error(text).unwrap_or_else(|| panic!("{text} parses"));
            assert_eq!(of(text, &message), Some(*want), "{text}: {message}");
        }
    }

    #[test]
    fn an_error_the_text_does_not_give_has_no_position() {
        assert_eq!(of("select 1", "syntax error at or near \"1\""), None);
        // The text reads; the error came from a body inside it.
        let body = "create function f() returns int language sql as 'selec 1'";
        assert_eq!(of(body, "syntax error at or near \"selec\""), None);
    }

    #[test]
    fn the_rejected_occurrence_is_found_among_many() {
        // The rejected "1" is the last of 2,001; the earlier ones are all readable.
        let text = format!("select {} 1", vec!["1"; 2_000].join("+"));
        let message = error(&text).unwrap();
        assert_eq!(of(&text, &message), Some(text.len() as u32));
    }
}
