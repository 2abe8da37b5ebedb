//! Settings that change how PostgreSQL reads SQL text, and so whether the guard reads it
//! the same way. With `standard_conforming_strings = off` a backslash escapes the next
//! byte in a plain `'...'` string; with a client-only multibyte encoding (SJIS, BIG5, GBK,
//! UHC, GB18030, JOHAB) PostgreSQL converts the text before lexing it, and a backslash that
//! is the second byte of a character stops being an escape in `E'...'`. Either way a
//! string would end in a different place for PostgreSQL than for the guard, and SQL hidden
//! in what the guard takes for a string would run unread. Those values are refused, from
//! SQL and at startup; every other value of these settings passes.

/// Encodings whose characters can contain the byte `\` (names as PostgreSQL's
/// `clean_encoding_name` leaves them: lowercase, letters and digits only).
pub const CLIENT_ONLY_ENCODINGS: [&str; 17] = [
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "gb18030",
    "uhc",
    "win949",
    "windows949",
    "johab",
];

/// Why setting `name` to `value` would make client SQL unreadable to the guard, if it
/// would. `name` is lowercase; `NAMES` (as in `SET NAMES`) means client_encoding.
pub fn unreadable(name: &[u8], value: &[u8]) -> Option<&'static str> {
    let clean: Vec<u8> = value
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
        .collect();
    match name {
        b"client_encoding" | b"names" => CLIENT_ONLY_ENCODINGS
            .iter()
            .any(|e| e.as_bytes() == clean)
            .then_some("client_encoding (an encoding whose characters can contain a backslash)"),
        b"standard_conforming_strings" => {
            let on = clean == b"on"
                || clean == b"1"
                || clean == b"default"
                || (!clean.is_empty()
                    && (b"true".starts_with(&clean) || b"yes".starts_with(&clean)));
            (!on).then_some("standard_conforming_strings (only on is supported)")
        }
        _ => None,
    }
}

/// True for the settings [`unreadable`] checks.
pub fn is_lexing_setting(name: &[u8]) -> bool {
    matches!(
        name,
        b"client_encoding" | b"names" | b"standard_conforming_strings"
    )
}

#[cfg(test)]
mod tests {
    use super::super::find_protected_change;
    use super::*;

    #[test]
    fn every_way_to_set_them_is_checked() {
        let p = ["app.current_tenant".to_string()];
        for sql in [
            "SET NAMES 'SJIS'",
            "SET LOCAL client_encoding TO big5",
            "set session standard_conforming_strings = off",
            "ALTER ROLE app SET standard_conforming_strings TO 'false'",
            "SELECT set_config('client_encoding', 'GBK', false)",
            "SELECT set_config('Standard_Conforming_Strings', x, false) FROM t",
            "DO $$ BEGIN SET standard_conforming_strings = off; END $$",
        ] {
            assert!(find_protected_change(sql.as_bytes(), &p).is_some(), "{sql}");
        }
        for sql in [
            "set client_encoding to 'UTF8'",
            "SET NAMES 'UTF8'",
            "SET standard_conforming_strings = on",
            "SELECT set_config('client_encoding', 'UTF8', false)",
            "RESET client_encoding",
        ] {
            assert!(find_protected_change(sql.as_bytes(), &p).is_none(), "{sql}");
        }
    }

    #[test]
    fn refuses_only_values_that_change_how_sql_is_read() {
        for (name, value) in [
            ("client_encoding", "SJIS"),
            ("client_encoding", "Shift_JIS"),
            ("names", "big5"),
            ("client_encoding", "WIN-936"),
            ("standard_conforming_strings", "off"),
            ("standard_conforming_strings", "FALSE"),
            ("standard_conforming_strings", "0"),
            ("standard_conforming_strings", "n"),
        ] {
            assert!(
                unreadable(name.as_bytes(), value.as_bytes()).is_some(),
                "{name} {value}"
            );
        }
        for (name, value) in [
            ("client_encoding", "UTF8"),
            ("client_encoding", "utf-8"),
            ("names", "LATIN1"),
            ("client_encoding", "EUC_JP"),
            ("client_encoding", "default"),
            ("standard_conforming_strings", "on"),
            ("standard_conforming_strings", "true"),
            ("standard_conforming_strings", "Y"),
            ("search_path", "sjis"),
        ] {
            assert!(
                unreadable(name.as_bytes(), value.as_bytes()).is_none(),
                "{name} {value}"
            );
        }
    }
}
