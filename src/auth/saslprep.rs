//! SASLprep (RFC 4013) of a password exactly as PostgreSQL and libpq apply it before SCRAM,
//! so a verifier minted here matches what every client derives from the same password.

use std::borrow::Cow;

/// The bytes SCRAM hashes for `password`: its SASLprep form, or the password unchanged when
/// SASLprep rejects it (PostgreSQL's `pg_saslprep` rule: prohibited output, bidirectional
/// rule violations, unassigned code points, or an empty result all fall back to raw bytes).
pub fn prepare(password: &str) -> Cow<'_, [u8]> {
    // PostgreSQL returns pure ASCII as is, control characters included; stringprep rejects
    // ASCII control characters, which also leaves the raw bytes, so both agree.
    match stringprep::saslprep(password) {
        Ok(prepped) if !prepped.is_empty() => match prepped {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        },
        // The stringprep crate maps a password of only map-to-nothing characters (a soft
        // hyphen) to "", which PostgreSQL refuses as an empty password and keeps raw.
        _ => Cow::Borrowed(password.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::prepare;

    #[test]
    fn normalizes_like_postgres() {
        let cases: [(&str, &[u8]); 7] = [
            ("secret", b"secret"),
            // U+2168 ROMAN NUMERAL NINE is NFKC "IX".
            ("IX-\u{2168}", b"IX-IX"),
            // No-break space maps to a space, a soft hyphen to nothing.
            ("a\u{A0}b\u{AD}c", b"a bc"),
            // Only map-to-nothing characters: empty after mapping, so raw bytes.
            ("\u{AD}", "\u{AD}".as_bytes()),
            // Prohibited output (a control character) keeps the raw bytes.
            ("ctl\u{7}x\u{E9}", "ctl\u{7}x\u{E9}".as_bytes()),
            ("ascii\u{7}ctl", b"ascii\x07ctl"),
            // Composed and decomposed forms of the same letter meet in NFKC.
            ("e\u{301}", "\u{E9}".as_bytes()),
        ];
        for (input, want) in cases {
            assert_eq!(&*prepare(input), want, "{input:?}");
        }
    }

    /// Verifiers PostgreSQL 15 stored for `CREATE ROLE ... PASSWORD` (read from pg_authid):
    /// the same salt and iterations over `prepare(password)` must give the same keys.
    #[test]
    fn matches_postgres_verifiers() {
        use crate::auth::scram::ScramVerifier;
        let cases = [
            (
                "IX-\u{2168}",
                "SCRAM-SHA-256$4096:xWst4L4Z/Qd/pNACRzkDWw==$lnRwewHehD4nkBjdCg6vJfSBBHiIWm8CkuruIw6LCRI=:8NYdOI2/AyKfVDN69nKbePZmsHmvXLgMwmOVx5bDsWU=",
            ),
            (
                "a\u{A0}b\u{AD}c",
                "SCRAM-SHA-256$4096:ODa2wUL/S3kBhW4bY99L+A==$42kFYrUtXA6CDpV0SolvMZDIEKhPhGLnCPAiekLfqqI=:p5318dXGo4THuHy8Celp6JvsvVu1QauRfHtfz8vcjJE=",
            ),
            (
                "\u{AD}",
                "SCRAM-SHA-256$4096:yK9RwX+cGc7JCvyYt4W+Dw==$yH5D795CH/QlA5LPfQekSOCPU6xcV9xVlbO4RquzZLw=:TyCmkIF2sV3cYaF3VIJ4YIpbWNOPv2DiZjhUHKsVu1I=",
            ),
            (
                "ctl\u{7}x\u{E9}",
                "SCRAM-SHA-256$4096:+7OXWc0XSfFs+g9UzP2qFg==$lnT0nnBLlbi/Hl5mssqY8Gp/RDEmWFw6wHIfxa2oSXg=:xpjBJQ3UnQpyc7lL/lLWHla2n1y2X2Oa+BpxB/mnry4=",
            ),
            (
                "ascii\u{7}ctl",
                "SCRAM-SHA-256$4096:TWN5ry6z7Vn2w+Ygho/VYg==$wTzydtK/Q/bXp9gNaFsvkTpZqt65KsJoKOe4d7mqT34=:qU2FjkUgKhqf2Ll0GLdGkzTOzDl/5I2aLOurRS+/Jtg=",
            ),
        ];
        for (password, stored) in cases {
            let pg = ScramVerifier::parse(stored).unwrap();
            let ours = ScramVerifier::from_password(&prepare(password), &pg.salt, pg.iterations);
            assert_eq!(ours.to_string(), stored, "{password:?}");
        }
    }
}
