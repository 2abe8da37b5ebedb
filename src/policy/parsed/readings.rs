//! Other readings of one text. PostgreSQL lexes SQL by two settings a statement can change
//! for the statements after it: `standard_conforming_strings` (off: a backslash in any
//! string escapes the next character) and `client_encoding` (in SJIS, BIG5, GBK, UHC,
//! GB18030 and JOHAB a byte of 0x80 or more can start a two-byte character whose second
//! byte is ASCII: a backslash or `;` there is part of a character). The proxy learns of
//! such a change only at the next ReadyForQuery, after the statements pipelined behind it
//! were judged; no path the guard knows changes them, but one it does not know (a view or
//! a function already in the database) could. So a text is also judged as read under each
//! of those settings, and refused if any reading is refused: its meaning cannot hide
//! behind a reading the guard did not try.

use std::borrow::Cow;

use super::Parsed;
use crate::policy::GuardViolation;

/// The first refusal of `sql` in a reading other than the guard's own, by `check` (the
/// parser path in the guard's reading, applied to each reading's text).
pub(super) fn refused_in_another(
    sql: &[u8],
    check: &dyn Fn(&[u8]) -> Parsed,
) -> Option<GuardViolation> {
    others(sql).into_iter().find_map(|(text, escaping)| {
        let verdict = if escaping {
            super::tree::with_escaping_strings(|| check(&text))
        } else {
            check(&text)
        };
        let Parsed::Refused(mut v) = verdict else {
            return None;
        };
        let how = if escaping {
            "standard_conforming_strings = off"
        } else {
            "a client-only encoding"
        };
        v.setting = format!("{} (read as with {how})", v.setting);
        Some(v)
    })
}

/// Which bytes start a two-byte character, per family of client-only encodings.
const LEAD_BYTES: [fn(u8) -> bool; 3] = [
    // SJIS (and SHIFT_JIS_2004).
    |b| matches!(b, 0x81..=0x9f | 0xe0..=0xfc),
    // BIG5, GBK, UHC, GB18030 (its four-byte characters pair up the same way).
    |b| matches!(b, 0x81..=0xfe),
    // JOHAB.
    |b| matches!(b, 0x84..=0xd3 | 0xd8..=0xde | 0xe0..=0xf9),
];

/// The readings of `sql` other than the guard's own (UTF-8, standard strings), as (text,
/// backslashes in strings escape). Each distinct text of the encodings is read with
/// standard strings on and off; the guard's own text with them off when it has a
/// backslash (without one the setting changes nothing).
fn others(sql: &[u8]) -> Vec<(Cow<'_, [u8]>, bool)> {
    let mut out = Vec::new();
    if sql.contains(&b'\\') {
        out.push((Cow::Borrowed(sql), true));
    }
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for lead in LEAD_BYTES {
        if let Some(text) = as_two_byte_encoding(sql, lead)
            && !seen.contains(&text)
        {
            seen.push(text);
        }
    }
    for text in seen {
        if text.contains(&b'\\') {
            out.push((Cow::Owned(text.clone()), true));
        }
        out.push((Cow::Owned(text), false));
    }
    out
}

/// `sql` as an encoding whose characters start with a `lead` byte reads it: each ASCII byte
/// that is the second byte of such a character is replaced by `x` (an ordinary character,
/// as it is there). None when no ASCII byte is the second byte of a character.
fn as_two_byte_encoding(sql: &[u8], lead: fn(u8) -> bool) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < sql.len() {
        if lead(sql[i]) && i + 1 < sql.len() {
            if sql[i + 1] < 0x80 {
                out.get_or_insert_with(|| sql.to_vec())[i + 1] = b'x';
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ascii_without_a_backslash_has_one_reading() {
        assert!(others(b"SELECT 'a'; SELECT 2").is_empty());
        let two = others(b"SELECT '\\'; SELECT 2");
        assert_eq!(two.len(), 1);
        assert!(two[0].1);
    }

    #[test]
    fn an_ascii_byte_after_a_lead_byte_is_read_as_part_of_a_character() {
        // SJIS: 0x83 0x5C is one character, so the backslash escapes nothing.
        let text = b"SELECT E'\x83\\'; SELECT 2";
        let got = others(text);
        assert!(
            got.iter()
                .any(|(t, _)| &**t == b"SELECT E'\x83x'; SELECT 2")
        );
        // Pairs are found from the start: the second 0x83 is a second byte in SJIS.
        assert_eq!(
            as_two_byte_encoding(b"\x83\x83\\", LEAD_BYTES[0]).as_deref(),
            None
        );
        // JOHAB: a lead byte swallows a `;`.
        let johab = as_two_byte_encoding(b"SELECT 1\x84; SELECT 2", LEAD_BYTES[2]);
        assert_eq!(johab.as_deref(), Some(&b"SELECT 1\x84x SELECT 2"[..]));
        // UTF-8 text whose characters pair up as two-byte ones changes nothing.
        assert!(as_two_byte_encoding("é é".as_bytes(), LEAD_BYTES[1]).is_none());
    }
}
