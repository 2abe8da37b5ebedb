//! A text's shape: the text with every number literal written as `0`. With the simple
//! protocol the same statement comes back with new literals each time (pgbench's
//! `UPDATE ... SET abalance = abalance + -4711 WHERE aid = 31`), so whole-text caching never
//! hits. For a text the fast path clears, the guard's verdict on its shape stands for the
//! text (see [`masked`] for why), and the shape repeats.
//!
//! Only number tokens are rewritten. Digits inside identifiers, parameters (`$1`), strings,
//! quoted identifiers and comments are copied as they are, found by a scan that follows the
//! lexer's rules; a text holding a backslash or a dollar quote, whose strings that scan
//! would have to decode, has no shape.

/// Byte classes of the scan: what the lexer could make of a byte outside strings and
/// comments.
const PLAIN: u8 = 0;
const IDENT: u8 = 1;
const DIGIT: u8 = 2;
const DOLLAR: u8 = 3;
const QUOTE: u8 = 4;
const COMMENT: u8 = 5;

/// The class of every byte: letters, `_` and non-ASCII start an identifier; `-` and `/`
/// may start a comment.
static CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => IDENT,
            b'0'..=b'9' => DIGIT,
            b'$' => DOLLAR,
            b'\'' | b'"' => QUOTE,
            b'-' | b'/' => COMMENT,
            _ => PLAIN,
        };
        b += 1;
    }
    t
};

/// True for bytes that continue an identifier (the lexer's rule: letters, digits, `_`, `$`,
/// non-ASCII).
fn ident_cont(b: u8) -> bool {
    CLASS[b as usize] != PLAIN && CLASS[b as usize] <= DOLLAR
}

/// Index just past the quoted body opened by the `q` at `i` (`qq` inside is a quote);
/// the end of the text when it never closes (the lexer stops there too).
fn quoted_end(s: &[u8], i: usize, q: u8) -> usize {
    let mut k = i + 1;
    while let Some(&c) = s.get(k) {
        if c == q && s.get(k + 1) == Some(&q) {
            k += 2;
        } else if c == q {
            return k + 1;
        } else {
            k += 1;
        }
    }
    s.len()
}

/// Index just past the comment that starts at `i` (`--` to the end of the line, or a
/// nested `/* */`), or None when no comment starts there.
fn comment_end(s: &[u8], i: usize) -> Option<usize> {
    match (s[i], s.get(i + 1)) {
        (b'-', Some(b'-')) => Some(
            s[i..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .map_or(s.len(), |n| i + n),
        ),
        (b'/', Some(b'*')) => {
            let (mut depth, mut k) = (1usize, i + 2);
            while depth > 0 && k < s.len() {
                match (s[k], s.get(k + 1)) {
                    (b'/', Some(b'*')) => (depth, k) = (depth + 1, k + 2),
                    (b'*', Some(b'/')) => (depth, k) = (depth - 1, k + 2),
                    _ => k += 1,
                }
            }
            Some(k)
        }
        _ => None,
    }
}

/// `sql`'s shape: None when the text has none, `Some(false)` when the shape is the text
/// itself (no number to rewrite), `Some(true)` when it was written into `out`.
///
/// Why the verdict on the shape stands for the text when the fast path clears the text:
/// every byte that is not a digit is kept, in order, and every run of digits stays a
/// non-empty run, so every word without a digit (all the guard's words and needles) occurs
/// exactly where it did, and the fast path's checks (`;`, the first word, needles) read the
/// same: the fast path clears the shape exactly when it clears the text. Only runs that
/// start a number token change (never one that touches an identifier byte: `t1`, `$1`,
/// `1e5`, `0x1F` and `1_000` are kept whole), so the lexer returns the same tokens, of the
/// same kinds, with only number texts changed. The one place the lexical analysis reads a
/// number's text is a `SET` value, where `0` is the strictest a number can be
/// (`standard_conforming_strings = 0` is refused; no encoding name starts with a digit),
/// and a fast-path text never reaches the parser. So the shape's analysis equals the
/// text's, or refuses where the text's would not (only for a SET that sits where
/// PostgreSQL would report a syntax error). The tests and the guard fuzz check both halves.
pub fn masked(sql: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    // A backslash may escape a quote in `E'...'`, and then strings end elsewhere.
    if memchr::memchr(b'\\', sql).is_some() {
        return None;
    }
    // `sql[..copied]` is in `out` once the first number is rewritten.
    let (mut i, mut copied, mut writing) = (0, 0, false);
    loop {
        // Letters and punctuation need nothing: skip to the next digit, quote, `$`, `-` or
        // `/` (the loop that costs per byte).
        i += skip_plain(&sql[i..]);
        let Some(&c) = sql.get(i) else { break };
        // Nothing skipped is a digit or `$`, and strings and comments are skipped whole, so
        // the byte before tells whether `c` continues a name.
        let in_name = i > 0 && CLASS[sql[i - 1] as usize] == IDENT;
        i = match CLASS[c as usize] {
            DIGIT if in_name => i + run(&sql[i..], |b| b.is_ascii_digit()),
            DIGIT => {
                let e = i + run(&sql[i..], |b| b.is_ascii_digit());
                // `1e5`, `0x1F`, `1_000`, `12abc` are kept whole.
                if !sql.get(e).copied().is_some_and(ident_cont) {
                    if !writing {
                        out.clear();
                        out.reserve(sql.len());
                        writing = true;
                    }
                    out.extend_from_slice(&sql[copied..i]);
                    out.push(b'0');
                    copied = e;
                }
                e
            }
            // A parameter (`$1`): its digits are kept as if they were a name's.
            DOLLAR if in_name || sql.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i + 1 + run(&sql[i + 1..], |b| b.is_ascii_digit())
            }
            DOLLAR => return None,
            QUOTE => quoted_end(sql, i, c),
            _ => comment_end(sql, i).unwrap_or(i + 1),
        };
    }
    if writing {
        out.extend_from_slice(&sql[copied..]);
    }
    Some(writing)
}

/// What is wrong when `shaped`, the shape of `text`, does not stand for it (see [`masked`]):
/// its analysis must be the text's, or refuse where the text's does not. For the fuzz
/// targets and the tests; None when it stands.
pub(crate) fn does_not_stand(text: &[u8], shaped: &[u8], protected: &[String]) -> Option<String> {
    if !super::fast::clears(shaped) {
        return Some("the fast path clears the text but not its shape".into());
    }
    let (a, mut b) = (
        super::analyze(text, protected),
        super::analyze(shaped, protected),
    );
    if a.protected_change.is_none() {
        b.protected_change = None;
    }
    (a != b).then(|| format!("the text's analysis {a:?}, the shape's {b:?}"))
}

/// Length of the prefix of `s` of letters and punctuation (classes up to [`IDENT`]): eight
/// bytes at a time while no byte of a word lies in `"`..=`9`, the range that holds every
/// other class (and a little punctuation, left to the byte loop).
fn skip_plain(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut k = 0;
    while let Some(chunk) = s.get(k..k + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // Per byte (ASCII only: a non-ASCII byte stops the word check, not the scan):
        // in range when b - 0x22 < 0x18, i.e. (b + 0x5e) has bit 7 set and (b + 0x46) not.
        let low = w & !HIGH;
        let ge = low.wrapping_add(ONES * (0x80 - 0x22)) & HIGH;
        let gt = low.wrapping_add(ONES * (0x80 - 0x3a)) & HIGH;
        if (ge & !gt) | (w & HIGH) != 0 {
            break;
        }
        k += 8;
    }
    k + run(&s[k..], |b| CLASS[b as usize] <= IDENT)
}

/// Length of the prefix of `s` whose bytes satisfy `f`.
fn run(s: &[u8], f: impl Fn(u8) -> bool) -> usize {
    s.iter().position(|&b| !f(b)).unwrap_or(s.len())
}

#[cfg(test)]
mod tests {
    use super::super::{analyze, fast};
    use super::*;
    use crate::policy::sql::{Lexer, TokenKind};

    fn shape(s: &str) -> Option<String> {
        let mut out = Vec::new();
        match masked(s.as_bytes(), &mut out)? {
            true => Some(String::from_utf8(out).unwrap()),
            false => Some(s.to_string()),
        }
    }

    #[test]
    fn the_word_at_a_time_skip_stops_where_the_byte_loop_does() {
        let naive = |s: &[u8]| run(s, |b| CLASS[b as usize] <= IDENT);
        let mut next = super::super::xorshift(0x2545_F491_4F6C_DD1D);
        // Bytes drawn mostly from letters and spaces, with every class and non-ASCII mixed in.
        let alphabet = b"abcXYZ_ ;=<>(),.*+\x80\xff09$'\"-/#%&:@[]";
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => alphabet[(next() % alphabet.len() as u64) as usize],
                    _ => b"abcdefgh SELECT"[(next() % 15) as usize],
                })
                .collect();
            assert_eq!(
                skip_plain(&s),
                naive(&s),
                "{:?}",
                String::from_utf8_lossy(&s)
            );
        }
        for b in 0..=255u8 {
            let mut s = vec![b'a'; 17];
            s[11] = b;
            assert_eq!(skip_plain(&s), naive(&s), "byte {b:#x}");
        }
    }

    #[test]
    fn numbers_become_zero_and_nothing_else_changes() {
        for (text, want) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 31;",
                "UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;",
            ),
            ("SELECT 1.25, .5, 1e5, 1e-5", "SELECT 0.0, .0, 1e5, 1e-0"),
            (
                "SELECT t1.a2 FROM t1 WHERE x = $12",
                "SELECT t1.a2 FROM t1 WHERE x = $12",
            ),
            ("SELECT 0x1F, 1_000, 12abc", "SELECT 0x1F, 1_000, 12abc"),
            (
                "SELECT '12', \"c 3\", 4 -- 5\n, 6",
                "SELECT '12', \"c 3\", 0 -- 5\n, 0",
            ),
            (
                "SELECT 7 /* 8 /* 9 */ 10 */ + 11",
                "SELECT 0 /* 8 /* 9 */ 10 */ + 0",
            ),
            ("SELECT 'it''s 5', B'01', 3", "SELECT 'it''s 5', B'01', 0"),
            ("SELECT 'open 5", "SELECT 'open 5"),
        ] {
            assert_eq!(shape(text).as_deref(), Some(want), "{text}");
        }
        for text in [
            "SELECT E'\\101'",
            "SELECT $$ 1 $$",
            "SELECT $a$1$a$",
            "SELECT 1 \\g",
        ] {
            assert_eq!(shape(text), None, "{text}");
        }
    }

    /// Random texts from SQL-ish pieces: the shape lexes to the same tokens but for number
    /// texts, and for a text the fast path clears, the shape's analysis is the text's or
    /// stricter (a refusal where the text has none), never laxer.
    #[test]
    fn the_shape_stands_for_the_text() {
        let pieces: &[&str] = &[
            "SELECT ",
            "UPDATE t SET ",
            "INSERT INTO t VALUES (",
            "DELETE FROM t WHERE ",
            "BEGIN",
            "END",
            "SET ",
            "then SET ",
            "begin SET ",
            "standard_conforming_strings",
            "client_encoding",
            "app.current_tenant",
            " = ",
            " TO ",
            "'",
            "\"",
            "''",
            "--",
            "\n",
            "/*",
            "*/",
            "$1",
            "$",
            "\\",
            "E'",
            "B'",
            "x",
            "a",
            "t1",
            "1",
            "0",
            "42",
            "4711",
            "1.5",
            ".5",
            "1e",
            "-",
            "+",
            "_",
            "0x",
            " ",
            ",",
            "(",
            ")",
            ";",
            "win-936",
            "WIN-",
            "936",
            "INTO TEMP t",
            "nextval(",
            "listen",
            "pg_",
            "set_config(",
            "U&",
            "do",
            " execute ",
            "'SET ",
            "standard_conforming_strings = ",
            "e5",
            "é",
        ];
        let protected = ["app.current_tenant".to_string()];
        let mut next = super::super::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        let (mut cleared, mut stricter, mut changed, mut refused) = (0, 0, 0, 0);
        let mut out = Vec::new();
        let first = [
            "SELECT ",
            "UPDATE t SET a = ",
            "INSERT INTO t VALUES (",
            "begin ",
            "end ",
        ];
        for _ in 0..60_000 {
            let n = 1 + next() % 12;
            let mut text = first[(next() % first.len() as u64) as usize]
                .as_bytes()
                .to_vec();
            text.extend(
                (0..n).flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].bytes()),
            );
            match masked(&text, &mut out) {
                None => continue,
                Some(false) => out.clone_from(&text),
                Some(true) => {}
            }
            let same_kinds = Lexer::new(&text).zip(Lexer::new(&out)).all(|(a, b)| {
                a.kind == b.kind && (a.kind == TokenKind::Number || a.text == b.text)
            });
            assert!(
                same_kinds && Lexer::new(&text).count() == Lexer::new(&out).count(),
                "tokens differ: {:?} vs {:?}",
                String::from_utf8_lossy(&text),
                String::from_utf8_lossy(&out)
            );
            if !fast::clears(&text) {
                continue;
            }
            cleared += 1;
            changed += usize::from(out != text);
            refused += usize::from(analyze(&text, &protected).protected_change.is_some());
            stricter += usize::from(
                analyze(&text, &protected).protected_change.is_none()
                    && analyze(&out, &protected).protected_change.is_some(),
            );
            let wrong = does_not_stand(&text, &out, &protected);
            assert!(
                wrong.is_none(),
                "{:?}: {wrong:?}",
                String::from_utf8_lossy(&text)
            );
        }
        assert!(cleared > 5_000, "only {cleared} texts the fast path clears");
        assert!(stricter < cleared / 10, "{stricter} stricter of {cleared}");
        assert!(
            changed > cleared / 10 && refused > 100,
            "{changed} changed, {refused} refused"
        );
    }
}
