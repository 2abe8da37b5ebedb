//! The differential fuzz of the guard's two paths, on the stable toolchain (cargo-fuzz needs
//! nightly): SQL from a corpus, mutated at random with the pieces attacks are made of, goes
//! through the fast path and the parser path. A text the fast path clears that the parser
//! path refuses is a finding: the fast path would have let through what the authority
//! refuses. (A syntax error is not a finding: PostgreSQL rejects the text before running any
//! of it.) So is a cleared text whose shape (its numbers as `0`, what the verdict cache
//! looks it up by) does not stand for it (`super::shape`). `tests/guard_fuzz.rs` runs a
//! few seconds of it; `examples/guard_fuzz.rs` runs it as long as asked.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::parsed::{self, Parsed};

/// Pieces inserted by the mutator: what attacks are built from.
const PIECES: &[&str] = &[
    ";",
    "'",
    "\"",
    "$$",
    "$a$",
    "--",
    "/*",
    "*/",
    "\n",
    "E'\\'",
    "U&",
    "\\",
    "(",
    ")",
    ",",
    "::",
    "set_config",
    "SET ",
    "pg_",
    "pg_catalog.",
    "app.current_tenant",
    "select ",
    "update ",
    "insert into ",
    "delete from ",
    "begin",
    "end",
    "with x as (",
    ") ",
    "query_to_xml(",
    "table_to_xml(",
    "regclass",
    "regproc",
    "DO ",
    "LANGUAGE plpgsql",
    "EXECUTE ",
    "ALTER ROLE ",
    "CURRENT_USER",
    "pg_settings",
    "pg_stat_activity",
    "returning",
    "from ",
    "where ",
    "values (",
    "1",
    "42",
    "-4711",
    ".5",
    "1e-5",
    "0x1F",
    "$1",
    "x",
    " ",
    "\t",
    "é",
    "\u{0}",
];

/// The protected settings the fuzz checks against.
fn protected() -> Vec<String> {
    vec![
        "app.current_tenant".into(),
        "role".into(),
        "session_authorization".into(),
    ]
}

/// One mutation of `s`.
fn mutate(rng: &mut StdRng, corpus: &[String], s: &str) -> String {
    let mut b: Vec<char> = s.chars().collect();
    let at = |rng: &mut StdRng, len: usize| rng.random_range(0..=len);
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..6) {
            0 => {
                let p = at(rng, b.len());
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                b.splice(p..p, piece.chars());
            }
            1 if !b.is_empty() => {
                let start = rng.random_range(0..b.len());
                let end = (start + rng.random_range(1..8)).min(b.len());
                b.drain(start..end);
            }
            2 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let o: Vec<char> = other.chars().collect();
                let cut = at(rng, o.len());
                let p = at(rng, b.len());
                b.splice(p..p, o[cut..].iter().copied());
            }
            3 if !b.is_empty() => {
                let p = rng.random_range(0..b.len());
                b[p] = if b[p].is_ascii_lowercase() {
                    b[p].to_ascii_uppercase()
                } else {
                    b[p].to_ascii_lowercase()
                };
            }
            4 => {
                let p = at(rng, b.len());
                b.splice(p..p, "'".chars());
            }
            _ => {
                let p = at(rng, b.len());
                b.truncate(p);
            }
        }
    }
    b.retain(|c| *c != '\u{0}');
    b.into_iter().collect()
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Texts tried.
    pub tried: u64,
    /// Of those, texts the fast path cleared.
    pub cleared: u64,
    /// Texts the fast path cleared and the parser refused, or whose shape does not stand
    /// for them (must stay empty).
    pub findings: Vec<(String, String)>,
}

/// Runs until `until` returns true (checked every 64 texts), from `seed`, mutating `corpus`.
pub fn run(corpus: &[String], seed: u64, mut until: impl FnMut(u64) -> bool) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let prot = protected();
    let mut report = Report::default();
    let mut current = corpus[0].clone();
    let mut shaped = Vec::new();
    loop {
        if report.tried % 64 == 0 && until(report.tried) {
            return report;
        }
        if rng.random_range(0..4) == 0 {
            current = corpus[rng.random_range(0..corpus.len())].clone();
        }
        current = mutate(&mut rng, corpus, &current);
        if current.len() > 4096 {
            current = current.chars().take(4096).collect();
        }
        report.tried += 1;
        if !super::fast::clears(current.as_bytes()) {
            continue;
        }
        report.cleared += 1;
        if let Parsed::Refused(v) = parsed::check(current.as_bytes(), &prot) {
            report.findings.push((current.clone(), v.message()));
        }
        if super::shape::masked(current.as_bytes(), &mut shaped) == Some(true)
            && let Some(why) = super::shape::does_not_stand(current.as_bytes(), &shaped, &prot)
        {
            report.findings.push((current.clone(), why));
        }
    }
}

/// The corpus file's statements: one per line, `\n` written as `\\n`; `#` lines are comments.
pub fn read_corpus(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("\\n", "\n"))
        .collect()
}
