//! The long run of the guard's differential fuzz (src/policy/fuzz.rs):
//! `cargo run --release --example guard_fuzz -- <seconds> [seed]`. Prints what it tried and
//! every finding (a text the fast path clears and the parser path refuses); exits 1 on any.

use std::time::{Duration, Instant};

use pgtenant::policy::fuzz;

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let seed: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(rand::random);
    let corpus = fuzz::read_corpus(include_str!("../tests/guard/fuzz_corpus.sql"));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let report = fuzz::run(&corpus, seed, |_| Instant::now() > deadline);
    println!(
        "seed {seed}: {} texts in {:.0?}, {} cleared by the fast path, {} findings",
        report.tried,
        start.elapsed(),
        report.cleared,
        report.findings.len()
    );
    for (text, why) in &report.findings {
        println!("FINDING {text:?}: parser refuses: {why}");
    }
    if !report.findings.is_empty() {
        std::process::exit(1);
    }
}
