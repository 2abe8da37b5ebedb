//! Smoke run of the guard's differential fuzz (src/policy/fuzz.rs): a few seconds of random
//! and mutated SQL; any text the fast path clears that PostgreSQL's parser path refuses
//! fails the test. The long run: `cargo run --release --example guard_fuzz -- <seconds>`.

use std::time::{Duration, Instant};

use pgtenant::policy::fuzz;

#[test]
fn fast_path_never_clears_what_the_parser_refuses() {
    let corpus = fuzz::read_corpus(include_str!("guard/fuzz_corpus.sql"));
    assert!(corpus.len() > 100, "corpus: {} texts", corpus.len());
    let deadline = Instant::now() + Duration::from_secs(3);
    let report = fuzz::run(&corpus, 0x5eed, |_| Instant::now() > deadline);
    assert!(report.tried > 1000, "{report:?}");
    assert!(
        report.cleared > 100,
        "too few texts cleared to test anything: {report:?}"
    );
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

#[test]
fn the_check_can_fail() {
    // The property is not vacuous: a text the fast path must not clear is refused by the
    // parser, so a fast path that cleared it would be reported.
    let prot = vec!["app.current_tenant".to_string()];
    let text = b"SELECT pg_catalog.set_config('app.current_tenant', 'b', true)";
    assert!(!pgtenant::policy::fast::clears(text));
    assert!(matches!(
        pgtenant::policy::parsed::check(text, &prot),
        pgtenant::policy::parsed::Parsed::Refused(_)
    ));
}
